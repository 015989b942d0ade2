"""What `upscale --uncertainty` writes and says: the map as the model predicts it (no cap), the
refusals of --check and of modes the conv model has not, and the heat map's colour bar.

The real shipped models (conv-fast, conv-probabilistic), real files, the command in-process or in a
subprocess that is killed."""
import json
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr import pretrained
from allen_sr.api import Upscaler
from allen_sr.commands import upscale
from allen_sr.errors import InvalidInputError
from allen_sr.evaluation.uncertainty_pictures import heat_map_with_bar
from allen_sr.export.runtime import open_exported
from conftest import kill_upscale_once_rows_are_saved


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def error_of(capsys, flags):
    code = upscale.upscale_main(flags)
    return code, capsys.readouterr().err.strip()


def test_check_refuses_uncertainty_of_a_model_without_a_distribution(tmp_path, capsys):
    """--check --uncertainty with conv-fast said nothing of --uncertainty and exited 0; the run then failed."""
    src = tmp_path / "small.png"
    Image.fromarray(noise(16, 16)).save(src)
    code, err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--uncertainty", "--check",
                                  "--no_progress"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "conv-fast predicts one value per sub-pixel, not a distribution" in err and "conv-probabilistic" in err
    real, real_err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--uncertainty",
                                       f"--out={tmp_path / 'o.png'}", "--no_progress"])
    assert real == 2 and real_err.split(" predicts ")[1] == err.split(" predicts ")[1]  # what the run says
    for model in ("conv-probabilistic", "transformer-tiny"):
        assert upscale.upscale_main(["--pretrained", model, f"--image={src}", "--uncertainty", "--check",
                                     "--no_progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]


def test_an_uncertainty_above_256_grey_levels_is_written_as_predicted(tmp_path):
    """Random noise gives sds above 256 grey levels: the TIFF and Upscaler.predict capped them at
    255.996 (two bytes of 1/256 levels in the rows); now both hold the decoder's float32 sd."""
    image = noise(16, 16)
    src = tmp_path / "noise.png"
    Image.fromarray(image).save(src)
    with Upscaler.open("conv-probabilistic") as up:
        _, sd = up.predict(image, uncertainty=True)
        summary = up.predict_file(src, tmp_path / "o.tif", uncertainty=True)
    assert sd.dtype == np.float32 and sd.max() > 300, sd.max()
    np.testing.assert_array_equal(tifffile.imread(summary["uncertainty"][0]), sd)


def test_rows_saved_by_an_older_version_are_not_read_as_this_ones(tmp_path, capsys):
    """A resume folder whose rows keep the sd in two bytes (1/256 grey levels, the version before)
    is not resumed from: the run predicts afresh and its map equals an uninterrupted run's."""
    src = tmp_path / "noise.png"
    Image.fromarray(noise(400, 48)).save(src)
    out, saved = tmp_path / "o.tif", tmp_path / ".o.tif.resume"
    argv = ["--pretrained", "conv-probabilistic", f"--image={src}", f"--out={out}", "--no_progress",
            "--preview_size=0", "--uncertainty", "--tile=72", "--overlap=34"]  # 10 bands: time to stop it
    kill_upscale_once_rows_are_saved(argv, saved)
    key = json.loads((saved / "key.json").read_text())
    assert key["uncertainty"].pop("sd") == "float32"  # the older version's key had no such entry
    (saved / "key.json").write_text(json.dumps(key))
    width = 48 * 4
    for band in sorted(saved.glob("rows-*")):
        start, stop = map(int, band.name.split("-")[1:3])
        rows = np.frombuffer(band.read_bytes(), np.uint8).reshape(stop - start, width, 3 + 4)
        sd = np.clip(np.rint(rows[..., 3:].copy().view("<f4")[..., 0] * 256), 0, 65535).astype(np.uint16)
        old = np.concatenate([rows[..., :3], (sd >> 8).astype(np.uint8)[..., None],
                              (sd & 255).astype(np.uint8)[..., None]], axis=-1).tobytes()
        band.unlink()
        (saved / f"rows-{start:09d}-{stop:09d}-{zlib.crc32(old):08x}.u8").write_bytes(old)
    capsys.readouterr()
    assert upscale.upscale_main(argv) == 0
    assert "resuming" not in capsys.readouterr().out
    fresh = tmp_path / "fresh.tif"
    assert upscale.upscale_main([a if not a.startswith("--out=") else f"--out={fresh}" for a in argv]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.uncertainty.tif"),
                                  tifffile.imread(tmp_path / "fresh.uncertainty.tif"))
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(fresh))
    assert not saved.exists()


def test_the_bar_top_of_a_low_spread_map_says_it_is_the_floor():
    """A map of 0.09-0.26 grey levels was labelled "1+" and captioned "bar top: 99th percentile";
    1.4 was labelled "1"."""
    from allen_sr.evaluation.uncertainty_pictures import bar_top, level_text

    low = np.linspace(0.09, 0.26, 64 * 64).reshape(64, 64)
    top, label, note = bar_top(low)
    assert top == 1.0 and label == "1" and note == "bar top: 1, the floor (99th percentile 0.26)"
    top, label, note = bar_top(np.linspace(0, 1.4, 1000))
    assert label == f"{level_text(top)}+" and label.startswith("1.4") and note == "bar top: 99th percentile"
    assert [level_text(v) for v in (0.0042, 0.26, 1.0, 9.5, 37.2, 255.0)] == ["0.0042", "0.26", "1", "9.5", "37",
                                                                                "255"]


def test_a_low_spread_maps_heat_map_is_captioned_with_its_floor(tmp_path):
    """The caption of a map below the floor is the longer one that gives its 99th percentile."""
    low = np.linspace(0.09, 0.26, 32 * 32).reshape(32, 32)
    pictures = [np.asarray(Image.open(heat_map_with_bar(values, tmp_path / f"{i}.png", label="sd")).convert("L"))
                for i, values in enumerate((low, low * 40))]
    inked = [np.flatnonzero((p[-16:] < 128).any(axis=0))[-1] for p in pictures]
    assert inked[0] > inked[1]  # "...the floor (99th percentile 0.26)" against "...99th percentile"


def test_a_mode_of_the_image_transformer_is_refused_in_the_probabilistic_conv_models_words(tmp_path, capsys):
    """conv-probabilistic --mode sample was refused because "it predicts one value per sub-pixel and
    sample draws from a distribution": this model predicts a distribution (a Laplace scale)."""
    src = tmp_path / "small.png"
    Image.fromarray(noise(16, 16)).save(src)
    for mode in ("sample", "mean_bicubic"):
        code, err = error_of(capsys, ["--pretrained", "conv-probabilistic", f"--image={src}", f"--mode={mode}",
                                      "--uncertainty", f"--out={tmp_path / 'o.png'}", "--no_progress"])
        assert code == 2 and len(err.splitlines()) == 1, err  # the mode first: no calibration warning before it
        assert f"--mode {mode} is not available" in err and "Image Transformer modes" in err, err
        assert "Laplace scale" in err and "draws from a distribution" not in err, err
    code, err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--mode=sample",
                                  f"--out={tmp_path / 'o.png'}", "--no_progress"])
    assert code == 2 and "it predicts one value per sub-pixel and sample draws from a distribution" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]
    with pytest.raises(InvalidInputError, match="Laplace scale"):
        Upscaler.open("conv-probabilistic", mode="sample")
    model = open_exported(pretrained.find("conv-probabilistic").folder)  # the decoder's own check too
    try:
        with pytest.raises(InvalidInputError, match="Laplace scale"):
            model.decoder.decode(noise(8, 8)[None], mode="sample")
    finally:
        model.close()
