"""`allen-sr upscale` settings a user can get wrong: a tiling too tight for exact results (a warning
naming one that is not), pixel sizes the outputs cannot hold (refused before anything is predicted,
or a file's own dropped with a note), output names too long for the file system, and --compression
reaching every TIFF written.

The shipped pretrained models, real files.
"""
import os
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr.api import Upscaler
from allen_sr.commands import upscale
from allen_sr.errors import InvalidInputError
from allen_sr.inference import writers
from conftest import tissue_image

FAST = ["--pretrained", "conv-fast", "--no_progress", "--preview_size", "0"]


def opened_warnings(model, **tiling):
    """The warnings given while ``model`` opens with ``tiling``, and the Upscaler."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        up = Upscaler.open(model, **tiling)
    return [str(w.message) for w in caught if "seams" in str(w.message)], up


@pytest.fixture(scope="module")
def section():
    return tissue_image(160, 200, seed=4)


def test_a_tiling_too_tight_for_the_conv_model_warns_once_and_names_one_that_is_not(section):
    """conv-fast needs tiles overlapping by 10 px (twice its receptive radius of 5) to give the
    whole image's prediction; less gives seams (up to 67 grey levels with abutting tiles)."""
    with Upscaler.open("conv-fast") as up:
        whole = up.predict(section)
    for tiling in ({"tile": 64, "overlap": 0}, {"tile": 8}, {"tile": 64, "overlap": 9}):
        said, up = opened_warnings("conv-fast", **tiling)
        with up:
            seamed = up.predict(section)
        assert len(said) == 1, (tiling, said)
        assert "the output can show seams where tiles meet" in said[0], said
        assert np.abs(seamed.astype(int) - whole).max() >= 1, tiling  # it does differ
        fix = said[0].rsplit("; ", 1)[1]
        assert fix.startswith("--tile ") and fix.endswith(" gives none"), said
        tile, overlap = int(fix.split()[1]), int(fix.split()[3])
        said, up = opened_warnings("conv-fast", tile=tile, overlap=overlap)  # the tiling it names
        with up:
            assert not said and np.array_equal(up.predict(section), whole), (tiling, tile, overlap)
    for tiling in ({}, {"tile": 20}, {"tile": 64, "overlap": 10}):  # enough: the default cut to half a tile too
        said, up = opened_warnings("conv-fast", **tiling)
        up.close()
        assert not said, (tiling, said)


def test_the_image_transformer_warns_of_abutting_tiles_and_refuses_a_bad_overlap_before_any_image():
    """Its 8 px tiles are decoded alone: abutting, they leave seams (seam ratio 2.2 on a 64 px
    section); overlapping by 1 px or more, none was measured (0.98-1.03)."""
    said, up = opened_warnings("transformer-tiny", overlap=0)
    up.close()
    assert len(said) == 1 and "--overlap 4 (half a tile, the default)" in said[0], said
    said, up = opened_warnings("transformer-tiny", overlap=1)
    up.close()
    assert not said
    with pytest.raises(InvalidInputError, match="between 0 and half the tile"):
        Upscaler.open("transformer-tiny", overlap=5)


@pytest.mark.parametrize("size, out", [("1e-9", "o.ome.tif"), ("0.0001", "o.png"), ("5e6", "o.jpg")])
def test_a_pixel_size_the_outputs_cannot_hold_is_refused_before_anything_is_predicted(tmp_path, capsys, section,
                                                                                       size, out):
    """Once a PNG's pHYs overflowed (0.0001 um) or tifffile's rational failed (1e-9) after the
    whole image was predicted."""
    src = tmp_path / "in.png"
    Image.fromarray(section).save(src)
    assert upscale.upscale_main(FAST + ["--image", str(src), "--out", str(tmp_path / out), "--pixel_size", size]) == 2
    captured = capsys.readouterr()
    assert "give 0.004 to 4e+06 um (output pixels of 0.001 to 1e+06 um at x4)" in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "upscaling" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
    with Upscaler.open("conv-fast") as up, pytest.raises(InvalidInputError, match="--pixel_size"):
        up.predict_file(src, tmp_path / out, pixel_size_um=float(size))
    assert upscale.upscale_main(FAST + ["--image", str(src), "--out", str(tmp_path / out), "--pixel_size", "4"]) == 0


@pytest.mark.parametrize("out", ["o.png", "o.ome.tif", "o.jpg"])
def test_a_file_s_absurd_pixel_size_is_dropped_with_a_note(tmp_path, capsys, section, out):
    """A TIFF saying 1e9 px per cm (1e-5 um/px): its PNG output failed on the pHYs."""
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, section, resolution=(1e9, 1e9), resolutionunit="CENTIMETER")
    assert upscale.upscale_main(FAST + ["--image", str(src), "--out", str(tmp_path / out)]) == 0
    said = capsys.readouterr().out
    assert f"in.tif says its pixels are 1e-05 um/px, output pixels of 2.5e-06 um/px: beyond the 0.001 to 1e+06 um " \
           f"outputs hold, so {out} gets no pixel size (--pixel_size gives one)" in said, said
    if out == "o.png":
        assert "dpi" not in Image.open(tmp_path / out).info
    assert upscale.upscale_main(FAST + ["--image", str(src), "--out", str(tmp_path / out), "--pixel_size", "1"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_an_output_name_too_long_for_the_file_system_is_one_line_saying_by_how_much(tmp_path, capsys):
    """255-byte names here: 300 chars gave an OSError traceback, 246 a false "the folder is not
    writable" (the hidden partial name beside it was too long)."""
    longest = 255 - len(".") - len(".1234567.partial")  # the hidden name: a pid has up to 7 digits
    for name in ("a" * 296 + ".png", "a" * 242 + ".png"):
        with pytest.raises(writers.OutputError) as caught:
            writers.check_writable(tmp_path / name)
        assert f"its name is {len(name)} bytes, {len(name) - longest} too long" in str(caught.value), caught.value
        assert f"shorten it to {longest} bytes or less" in str(caught.value)
    fits = tmp_path / ("a" * (longest - 4) + ".png")
    writers.check_writable(fits)
    writers.write_image(fits, [np.zeros((4, 4, 3), np.uint8)], 4, 4)
    assert fits.exists()
    assert upscale.upscale_main(FAST + ["--image", str(fits), "--out", str(tmp_path / ("b" * 300 + ".png"))]) == 2
    err = capsys.readouterr().err
    assert "too long" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(writers.OutputError, match="the path is too long"):
        writers.check_writable(tmp_path / ("c/" * 3000) / "x.png")
    # a file where the --out path needs a folder: it said "the folder ... is not writable (File exists)"
    with pytest.raises(writers.OutputError, match=rf"cannot write .*x\.png: {fits} is a file, not a folder"):
        writers.check_writable(fits / "sub" / "x.png")


def test_zstd_reaches_the_uncertainty_map_too(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(tissue_image(64, 64, seed=2)).save(src)
    out = tmp_path / "zu.ome.tif"
    assert upscale.upscale_main(["--pretrained", "conv-probabilistic", "--no_progress", "--image", str(src),
                                 "--out", str(out), "--uncertainty", "--compression", "zstd"]) == 0
    for path in (out, tmp_path / "zu.uncertainty.tif"):
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD, path


def test_the_partial_files_of_a_killed_write_are_removed_by_the_next_write_of_that_output(tmp_path):
    """A write killed mid-image leaves hidden `.NAME.<pid>.*` files beside the output; the next
    write of that output removes them (a running writer's stay), other outputs' stay too."""
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    out = tmp_path / "out.tif"
    left = [tmp_path / f".out.tif.{ended.pid}.partial", tmp_path / f".out.tif.{ended.pid}.level1"]
    kept = [tmp_path / f".out.tif.{os.getppid()}.partial", tmp_path / f".other.tif.{ended.pid}.partial"]
    for path in left + kept:
        path.write_bytes(b"partial")
    writers.write_image(out, [np.zeros((4, 4, 3), np.uint8)], 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + [p.name for p in kept])
