"""The input check (allen_sr.inference.input_check): the JPEG quality read from files and TIFF
tiles, the noise estimated on real tissue, and the warnings `allen-sr upscale` gives for inputs
beyond what the model trained on, in one file and in a folder."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SAMPLE_IMAGES
from allen_sr import pretrained
from allen_sr.cli import main as cli
from allen_sr.data.degrade import REAL_INPUTS, degrade_image, parse_fixed
from allen_sr.data.images import load_image
from allen_sr.inference import sources
from allen_sr.inference.input_check import NOISE_FLOOR, check_input, estimate_noise, file_jpeg_quality, jpeg_tables

BRAIN = os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")
IHC = os.path.join(SAMPLE_IMAGES, "other_skimage_ihc_colon_DAB.png")
ALLEN_SR = os.path.join(os.path.dirname(sys.executable), "allen-sr")


def low_res(path, spec=""):
    """The 4x area-averaged input of a sample image, degraded by the fixed ``spec`` (seeded)."""
    image = load_image(path)
    image = image[:image.shape[0] // 4 * 4, :image.shape[1] // 4 * 4]
    return degrade_image(image, 4, parse_fixed(spec) if spec else [], seed=0)


def checked(path, trained=REAL_INPUTS):
    source = sources.open_image(str(path))
    try:
        return check_input(source, trained)
    finally:
        source.close()


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_the_jpeg_quality_is_read_from_a_jpeg_file_and_from_jpeg_tiff_tiles(tmp_path, quality):
    pixels = low_res(BRAIN)
    Image.fromarray(pixels).save(tmp_path / "in.jpg", quality=quality)
    tifffile.imwrite(tmp_path / "in.tif", pixels[:128, :128], tile=(64, 64), photometric="rgb",
                     compression="jpeg", compressionargs={"level": quality})
    assert checked(tmp_path / "in.jpg").jpeg_quality == quality
    assert checked(tmp_path / "in.tif").jpeg_quality == quality


def test_a_tiff_s_shared_jpeg_tables_come_first(tmp_path):
    """Whole-slide TIFFs (Aperio's, say) keep the tables once, in the JPEGTables tag, and leave
    them out of the tiles: the tag is read, not the first tile."""
    pixels = low_res(BRAIN)[:128, :128]
    full = io.BytesIO()
    Image.fromarray(pixels).save(full, "JPEG", quality=60)
    data, i, segments = full.getvalue(), 2, []
    while data[i + 1] != 0xDA:  # up to the scan: keep the DQT segments
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segments += [data[i:i + 2 + length]] if data[i + 1] == 0xDB else []
        i += 2 + length
    tables = b"\xff\xd8" + b"".join(segments) + b"\xff\xd9"
    tifffile.imwrite(tmp_path / "slide.tif", pixels, tile=(64, 64), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 90}, extratags=[(347, "B", len(tables), tables, True)])
    assert checked(tmp_path / "slide.tif").jpeg_quality == 60
    for cut in range(len(tables)):  # a stream cut anywhere: the tables before the cut, no crash
        assert len(jpeg_tables(tables[:cut])) <= len(jpeg_tables(tables))
    assert jpeg_tables(tables[:-1]) == jpeg_tables(tables)


def test_files_that_are_not_jpeg_have_no_quality(tmp_path):
    pixels = low_res(BRAIN)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    tifffile.imwrite(tmp_path / "in.tif", pixels, tile=(64, 64), photometric="rgb", compression="zlib")
    assert checked(tmp_path / "in.png").jpeg_quality is None
    assert checked(tmp_path / "in.tif").jpeg_quality is None
    assert file_jpeg_quality(sources.ArraySource("image", pixels)) is None  # no file behind it


def test_the_noise_estimate_is_calibrated_on_pure_noise():
    rng = np.random.default_rng(0)
    for sigma in (3, 8, 15):
        flat = np.clip(np.round(128 + rng.normal(0, sigma, (256, 256, 3))), 0, 255).astype(np.uint8)
        assert estimate_noise(flat) == pytest.approx(sigma, rel=0.06), sigma


@pytest.mark.parametrize("path", [BRAIN, IHC])
def test_the_noise_estimate_tracks_noise_added_to_real_tissue(path):
    estimates = {sigma: estimate_noise(low_res(path, f"noise={sigma}" if sigma else "")) for sigma in (0, 6, 12, 16)}
    assert estimates[0] < NOISE_FLOOR  # texture alone stays under the floor
    assert estimates[0] < estimates[6] < estimates[12] < estimates[16]
    for sigma in (12, 16):  # texture adds a little on top: within -10% and +30%
        assert 0.9 * sigma <= estimates[sigma] <= 1.3 * sigma, (sigma, estimates)


def test_saturated_pixels_are_left_out():
    rng = np.random.default_rng(1)
    tissue = np.clip(np.round(128 + rng.normal(0, 10, (128, 256, 3))), 0, 255).astype(np.uint8)
    glass = np.clip(np.round(255 + rng.normal(0, 10, (128, 256, 3))), 0, 255).astype(np.uint8)
    both = np.concatenate([tissue, glass])
    assert estimate_noise(both) == pytest.approx(estimate_noise(tissue), rel=0.05)  # glass hides half the noise
    assert estimate_noise(glass) is None  # nothing unclipped left to measure


def test_noise_heavy_enough_to_clip_most_pixels_is_still_reported(tmp_path):
    """Noise of 60 grey levels puts a fifth of the pixels at 0 or 255: every block was left out as
    clipped, the estimate was None and the image passed as "within" the training. A lower bound read
    through the clipping is reported; pure glass (all at 255) stays unknown."""
    noisy = low_res(IHC, "noise=60")
    assert ((noisy == 0) | (noisy == 255)).any(axis=-1).mean() > 0.15
    assert 45 < estimate_noise(noisy) <= 60
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    (warning,) = checked(tmp_path / "noisy.png").warnings
    assert "its noise is about" in warning and "0-10 grey levels" in warning
    assert estimate_noise(np.full((256, 256, 3), 255, np.uint8)) is None


def test_warnings_follow_the_model_s_recorded_training_inputs(tmp_path):
    Image.fromarray(low_res(BRAIN, "noise=14")).save(tmp_path / "noisy.png")
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "q40.jpg", quality=40)
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "q50.jpg", quality=50)
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "q80.jpg", quality=80)
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "clean.png")

    (warning,) = checked(tmp_path / "noisy.png").warnings
    assert str(tmp_path / "noisy.png") in warning and "0-10 grey levels" in warning
    assert not checked(tmp_path / "noisy.png", REAL_INPUTS.replace("noise=0:10", "noise=0:20")).warnings
    (warning,) = checked(tmp_path / "q40.jpg").warnings
    assert "quality 40, below the 50-95" in warning
    assert not checked(tmp_path / "q50.jpg").warnings and not checked(tmp_path / "q80.jpg").warnings
    assert not checked(tmp_path / "clean.png").warnings
    (warning,) = checked(tmp_path / "q80.jpg", "none").warnings  # a model trained on clean inputs
    assert "quality 80" in warning and "clean inputs only" in warning
    (warning,) = checked(tmp_path / "q80.jpg", "noise=0:20").warnings  # noise, but never JPEG
    assert "quality 80) and this model trained on no JPEG" in warning
    (warning,) = checked(tmp_path / "noisy.png", "jpeg=50:95").warnings
    assert "above what this model trained on (no noise)" in warning
    for unknown in (None, "an older grammar=1"):  # nothing (readable) recorded: numbers, no warnings
        found = checked(tmp_path / "noisy.png", unknown)
        assert found.noise > 12 and not found.warnings


def test_upscale_warns_about_an_input_beyond_the_training_and_still_writes_it(tmp_path, capsys):
    from allen_sr import Upscaler

    Image.fromarray(low_res(BRAIN, "noise=14")).save(tmp_path / "noisy.png")
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "clean.png")
    assert cli(["upscale", "--pretrained", "conv-fast", "--image", str(tmp_path / "noisy.png"),
                "--out", str(tmp_path / "noisy_x4.png"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {tmp_path / 'noisy.png'}: its noise is about" in out
    assert (tmp_path / "noisy_x4.png").is_file()

    with Upscaler.open("conv-fast") as up:
        summary = up.predict_file(tmp_path / "clean.png", tmp_path / "clean_x4.png")
        assert summary["input_check"]["warnings"] == [] and summary["input_check"]["noise"] < NOISE_FLOOR
        assert up.check(low_res(BRAIN, "noise=14")).warnings  # an array, as predict takes it

    os.mkdir(tmp_path / "in")
    for name in ("noisy.png", "clean.png"):
        os.rename(tmp_path / name, tmp_path / "in" / name)
    assert cli(["upscale", "--pretrained", "conv-fast", "--images", str(tmp_path / "in"),
                "--out_dir", str(tmp_path / "out")]) == 0
    summary = capsys.readouterr().out
    assert "2 written" in summary and "1 beyond the inputs the model trained on" in summary
    assert f"warning: {tmp_path / 'in' / 'noisy.png'}: its noise" in summary


def test_upscale_check_reports_every_image_and_writes_nothing_else(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(low_res(BRAIN, "noise=14")).save(folder / "noisy.png")
    Image.fromarray(low_res(BRAIN)).save(folder / "clean.png")
    Image.fromarray(low_res(BRAIN)).save(folder / "q40.jpg", quality=40)
    (folder / "broken.png").write_bytes(b"not a png")
    inputs = sorted(os.listdir(folder))

    assert cli(["upscale", "--check", "--images", str(folder), "--report", str(tmp_path / "r.csv"),
                "--no_progress"]) == 1
    out = capsys.readouterr().out
    assert "pretrained conv-cpu trained on: clean=0.5;" in out
    assert any(line.split()[:2] == ["within", "not"] and line.endswith("clean.png") for line in out.splitlines())
    assert any(line.split()[:3] == ["beyond", "JPEG", "40"] for line in out.splitlines())
    assert f"warning: {folder / 'noisy.png'}: its noise is about" in out
    assert f"failed: {folder / 'broken.png'}" in out
    assert "2 of 4 images beyond the inputs the model trained on, 1 unreadable" in out
    with open(tmp_path / "r.csv", newline="") as f:
        rows = {os.path.basename(r["image"]): r for r in csv.DictReader(f)}
    assert rows["clean.png"]["within_training"] == "True" and rows["clean.png"]["jpeg_quality"] == ""
    assert rows["q40.jpg"]["jpeg_quality"] == "40" and rows["q40.jpg"]["within_training"] == "False"
    assert float(rows["noisy.png"]["noise"]) > 12 and "0-10 grey levels" in rows["noisy.png"]["warnings"]
    assert rows["broken.png"]["warnings"].startswith("unreadable: ")
    assert sorted(os.listdir(folder)) == inputs and sorted(os.listdir(tmp_path)) == ["in", "r.csv"]

    # one image: what is checked is the region upscale would enlarge (the estimate reads an image's
    # quietest blocks: half of it clean reads clean, exit 0; its noisy half alone does not)
    half = low_res(BRAIN)
    width = half.shape[1] // 2
    half[:, :width] = low_res(BRAIN, "noise=14")[:, :width]
    Image.fromarray(half).save(tmp_path / "half.png")
    assert cli(["upscale", "--check", "--image", str(tmp_path / "half.png")]) == 0
    assert "0 of 1 image beyond" in capsys.readouterr().out
    assert cli(["upscale", "--check", "--image", str(tmp_path / "half.png"), "--width", str(width)]) == 1
    assert "1 of 1 image beyond" in capsys.readouterr().out
    # smaller than the model's input tile: refused as upscale refuses it (it was "within", exit 0)
    assert cli(["upscale", "--check", "--image", str(tmp_path / "half.png"), "--width", "3"]) == 2
    assert "the region is 3x" in capsys.readouterr().err

    # a model whose export records no degradation: the numbers, no verdict, no warning
    export = tmp_path / "old_export"
    shutil.copytree(pretrained.find("conv-fast").folder, export)
    config = json.loads((export / "config.json").read_text())
    del config["degradation"]
    (export / "config.json").write_text(json.dumps(config))
    assert cli(["upscale", "--check", "--exported", str(export), "--image", str(folder / "noisy.png"),
                "--report", str(tmp_path / "r.json")]) == 0
    assert "trained on: not recorded" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert row["noise"] > 12 and row["within_training"] is None and row["warnings"] == []


@pytest.mark.parametrize("argv, message", [
    (["--check", "--report", "r.txt"], "--report r.txt: give a .csv or .json file name"),
    (["--check", "--report", "clean.png/r.csv"], "--report clean.png/r.csv: the folder clean.png is not writable"),
    (["--report", "r.csv", "--out", "x.png"], "--report writes the table of --check"),
    (["--check", "--left", "4000"], "region left=4000 top=0"),
])
def test_upscale_check_refuses_what_it_cannot_check_or_write(tmp_path, capsys, monkeypatch, argv, message):
    """One line naming the flag or the image, exit 2, nothing written; one image that cannot be read
    is an error, as `upscale` would give (in a folder it is named and the others go on)."""
    Image.fromarray(low_res(BRAIN)).save(tmp_path / "clean.png")
    monkeypatch.chdir(tmp_path)
    assert cli(["upscale", "--image", "clean.png"] + argv) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["clean.png"]


def test_a_12_bit_camera_tiff_is_checked_as_the_picture_it_holds(tmp_path):
    """A 12-bit camera's samples in a 16-bit TIFF are the same picture as its 8-bit PNG: the same
    noise estimate and verdict, and `allen-sr` says in one line how it read the file."""
    pixels = low_res(BRAIN, "noise=3")[:128, :160]
    Image.fromarray(pixels).save(tmp_path / "png8.png")
    tifffile.imwrite(tmp_path / "camera.tif", np.rint(pixels * (4095 / 255)).astype(np.uint16), photometric="rgb")
    done = subprocess.run([ALLEN_SR, "upscale", "--check", "--images", str(tmp_path), "--no_progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    noise = {line.split()[-1]: line.split("noise ~")[1].split()[0]
             for line in done.stdout.splitlines() if "noise ~" in line}
    assert set(noise) == {str(tmp_path / "camera.tif"), str(tmp_path / "png8.png")}
    assert (len(set(noise.values())) == 1
            and float(noise[str(tmp_path / "png8.png")]) > 2), done.stdout  # 16x darker: < 1
    warned = [line for line in done.stderr.splitlines() if "camera.tif" in line]
    assert warned == [f"warning: {tmp_path / 'camera.tif'}: uint16 image, samples up to 4095: 0-4095 read as 0-255 "
                      "(12-bit data)"], done.stderr
