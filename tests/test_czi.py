"""Zeiss CZI slides (allen_sr.data.czi): real CZI files written with pylibCZIrw, Zeiss's own libCZI,
read region by region, enlarged by `allen-sr upscale`, and refused clearly where they cannot be."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr.commands import upscale
from allen_sr.data.czi import PYLIBCZIRW
from allen_sr.data.images import ImageSkipped, load_image
from allen_sr.errors import InvalidInputError
from allen_sr.inference import sources
from conftest import SAMPLE_IMAGES

pyczi = pytest.importorskip("pylibCZIrw.czi")
BRAIN = load_image(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png"))[200:440, 300:620]


def write_czi(path, scenes, um_per_px=None, um_per_px_y=None):
    """A CZI of ``scenes``: (x, y, samples [h, w, 3] RGB or [h, w, 1] grey) on the stage, one each."""
    with pyczi.create_czi(str(path)) as czi:
        for index, (x, y, samples) in enumerate(scenes):
            czi.write(np.ascontiguousarray(samples[..., ::-1]), location=(x, y), scene=index)
        if um_per_px:
            czi.write_metadata(document_name="slide", scale_x=um_per_px * 1e-6,
                               scale_y=(um_per_px_y or um_per_px) * 1e-6)
    return path


def test_rectangular_pixels_of_a_czi_keep_their_height(tmp_path):
    """Scaling X and Y differ (a line scanner's pixels): both reach the source, per level."""
    path = write_czi(tmp_path / "scan.czi", [(0, 0, BRAIN)], um_per_px=0.5, um_per_px_y=0.75)
    for level, (x, y) in enumerate([(0.5, 0.75), (1.0, 1.5)]):
        src = sources.open_image(str(path), level=level)
        assert (src.pixel_size_um, src.pixel_size_y_um) == (pytest.approx(x), pytest.approx(y))
        src.close()
    square = sources.open_image(str(write_czi(tmp_path / "square.czi", [(0, 0, BRAIN)], um_per_px=0.5)))
    assert (square.pixel_size_um, square.pixel_size_y_um) == (pytest.approx(0.5), None)
    square.close()


def test_a_two_scene_slide_is_read_region_by_region_with_white_glass_between(tmp_path):
    path = write_czi(tmp_path / "slide.czi", [(1000, 500, BRAIN), (1600, 500, BRAIN[:100, :120])], um_per_px=0.5)
    src = sources.open_image(str(path))
    assert (src.width, src.height, src.pixel_size_um) == (720, 240, pytest.approx(0.5))
    np.testing.assert_array_equal(src.read(30, 40, 100, 150), BRAIN[30:130, 40:190])
    np.testing.assert_array_equal(src.read(0, 600, 100, 120), BRAIN[:100, :120])  # the second scene
    assert (src.read(150, 400, 50, 100) == 255).all()  # glass between and below the scenes
    src.close()
    level = sources.open_image(str(path), level=1)
    assert (level.width, level.height, level.pixel_size_um) == (360, 120, pytest.approx(1.0))
    # libCZI reads a level from the file's pyramid; this file has none, so every other pixel
    np.testing.assert_array_equal(level.read(0, 0, 120, 160), BRAIN[::2, ::2])
    level.close()
    with pytest.raises(InvalidInputError, match=r"slide.czi is 720x240 px: its levels are 0-7"):
        sources.open_image(str(path), level=8)
    np.testing.assert_array_equal(load_image(str(path))[:, :320], BRAIN)


@pytest.mark.parametrize("bits, colour", [(12, False), (14, True)])
def test_a_deep_czi_reads_as_the_picture_it_holds(tmp_path, bits, colour):
    """Gray16 and Bgr48 planes of a 12- or 14-bit camera read by their white level."""
    picture = BRAIN if colour else np.repeat(BRAIN[..., 1:2], 3, axis=2)
    white = 2 ** bits - 1
    camera = np.rint(picture[..., :3 if colour else 1] * (white / 255)).astype(np.uint16)
    path = write_czi(tmp_path / "camera.czi", [(0, 0, camera)])
    with pytest.warns(UserWarning, match=f"camera.czi: uint16 image, samples up to {white}: 0-{white} read as 0-255"):
        src = sources.open_image(str(path))
    np.testing.assert_array_equal(src.read(10, 20, 60, 70), picture[10:70, 20:90])
    src.close()


def test_upscale_enlarges_a_czi_as_it_enlarges_the_same_picture_in_a_png(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_czi(folder / "slide.czi", [(0, 0, BRAIN)], um_per_px=0.5)
    Image.fromarray(BRAIN).save(folder / "same.png")
    argv = ["--images", str(folder), "--out_dir", str(tmp_path / "out"), "--pretrained", "conv-fast", "--no_progress"]
    assert upscale.upscale_main(argv) == 0
    assert "2 written" in capsys.readouterr().out
    with tifffile.TiffFile(tmp_path / "out" / "slide.tif") as tif:  # a CZI cannot be written: a TIFF of its name
        enlarged = tif.asarray()
        assert tif.pages[0].tags["ResolutionUnit"].value == 3  # cm: 0.125 um per px, the CZI's 0.5 / 4
        assert tif.pages[0].tags["XResolution"].value == pytest.approx((80000, 1), rel=1e-6)
    np.testing.assert_array_equal(enlarged, np.asarray(Image.open(tmp_path / "out" / "same.png")))


@pytest.mark.parametrize("kind, message", [
    ("two channels", r"2 channels \(fluorescence\?\)"),
    ("truncated", "CZI"),
])
def test_czis_allen_sr_cannot_use_are_refused_naming_them(tmp_path, kind, message):
    path = tmp_path / "bad.czi"
    if kind == "two channels":
        with pyczi.create_czi(str(path)) as czi:
            for channel in (0, 1):
                czi.write(np.ascontiguousarray(BRAIN[..., channel:channel + 1]), plane={"C": channel})
    else:
        write_czi(path, [(0, 0, BRAIN)])
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
    with pytest.raises(ImageSkipped, match=rf"bad.czi: .*{message}") as caught:
        src = sources.open_image(str(path))
        src.read(0, 0, src.height, src.width)
    assert "\n" not in str(caught.value)


def test_without_pylibczirw_a_czi_is_refused_with_the_command_that_installs_it(tmp_path):
    path = write_czi(tmp_path / "slide.czi", [(0, 0, BRAIN)])
    code = ("import sys; sys.modules['pylibCZIrw'] = None; from allen_sr.cli import main; "
            f"sys.exit(main(['upscale', '--image', {str(path)!r}, '--out', {str(tmp_path / 'x4.png')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"pip install {PYLIBCZIRW}" in done.stderr and "slide.czi" in done.stderr
    assert not (tmp_path / "x4.png").exists()


def test_datagen_sizes_its_shards_by_czi_and_float_tiff_headers(tmp_path):
    """Pillow cannot size a CZI or a floating-point TIFF; they counted as 0 tiles, so a folder of large
    slides made one shard per split, past the tiles-per-shard (and memory) bound. Their headers size them."""
    from allen_sr.data import datagen, images

    czis, tiffs = tmp_path / "czis", tmp_path / "tiffs"
    czis.mkdir()
    tiffs.mkdir()
    write_czi(czis / "slide.czi", [(0, 0, BRAIN)])
    tifffile.imwrite(tiffs / "float.tif", BRAIN.astype(np.float32) / 255, photometric="rgb")
    for folder in (czis, tiffs):
        (path,) = images.list_images(str(folder))
        assert images.image_size(path) == (320, 240)
        data = tmp_path / f"data-{folder.name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the float TIFF is read as 0-1, and says so
            datagen.build_tile_dataset([path], str(data), "p", dev_fraction=0.0, tiles_per_shard=2, workers=1)
        assert len([n for n in os.listdir(data) if n.startswith("p-train-")]) == 4  # 15 tiles' half in twos
