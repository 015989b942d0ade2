"""`allen_sr.Upscaler` from Python: the images predict and check take (arrays, Pillow images, files)
read as `allen-sr upscale` reads files, regions, the model it opens, a closed Upscaler and the
errors a caller catches."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image
import tifffile

import allen_sr
from allen_sr import pretrained
from allen_sr.api import InputImageError, Upscaler
from allen_sr.api.arrays import as_region, Region
from allen_sr.commands import upscale as upscale_cmd
from allen_sr.data.images import load_image
from allen_sr.errors import InvalidInputError, UserError
from conftest import SAMPLE_IMAGES

HELD_OUT_BRAIN = os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")


@pytest.fixture(scope="module")
def up():
    with Upscaler.open("conv-fast") as opened:
        yield opened


@pytest.fixture(scope="module")
def rgb():
    return load_image(HELD_OUT_BRAIN)[100:148, 100:164]


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr", "HSV", "LAB", "L", "RGBA"])
def test_a_pillow_image_of_any_mode_is_converted_as_its_file_would_be(up, rgb, mode):
    """A palette image's indices were read as grey, CMYK's K as alpha (differences up to 255)."""
    image = Image.fromarray(rgb).convert(mode)
    expected = quiet(up.predict, quiet(np.asarray, image.convert("RGBA" if mode == "RGBA" else "RGB"))[..., :3])
    np.testing.assert_array_equal(quiet(up.predict, image), expected)


def test_a_pillow_image_carries_its_16_bits_and_its_exif_orientation(up, rgb, tmp_path):
    grey16 = (rgb[..., 1].astype(np.uint16) * 257)
    image16 = Image.fromarray(grey16)  # mode I;16
    np.testing.assert_array_equal(quiet(up.predict, image16), quiet(up.predict, rgb[..., 1]))
    exif = Image.Exif()
    exif[274] = 6  # turned: shown 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "rot.png", exif=exif)
    with Image.open(tmp_path / "rot.png") as turned:
        np.testing.assert_array_equal(quiet(up.predict, turned), quiet(up.predict, np.rot90(rgb, -1)))


@pytest.mark.parametrize("orientation, upright", [(6, lambda a: np.rot90(a, -1)), (3, lambda a: a[::-1, ::-1])])
@pytest.mark.parametrize("deep", [False, True])
def test_a_pillow_tiff_is_turned_upright_once(up, rgb, tmp_path, orientation, upright, deep):
    """Pillow turns a TIFF upright as it loads it: an 8-bit one passed unloaded was turned twice."""
    stored = rgb.astype(np.uint16) * 257 if deep else rgb
    tifffile.imwrite(tmp_path / "o.tif", stored, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
    expected = quiet(up.predict, upright(rgb))
    np.testing.assert_array_equal(quiet(up.predict, str(tmp_path / "o.tif")), expected)
    for load in (False, True):
        with Image.open(tmp_path / "o.tif") as opened:
            if load:
                opened.load()
            np.testing.assert_array_equal(quiet(up.predict, opened), expected)


def test_read_image_and_a_path_give_the_clis_pixels_where_the_readmes_pillow_line_did_not(up, rgb, tmp_path):
    """16-bit RGB PNG (Pillow's convert("RGB") clips it to white), alpha and EXIF orientation."""
    import imagecodecs

    deep = np.rint(rgb * (4095 / 255)).astype(np.uint16)  # 12-bit samples in a 16-bit PNG
    (tmp_path / "deep.png").write_bytes(imagecodecs.png_encode(deep))
    assert upscale_cmd.upscale_main(["--image", str(tmp_path / "deep.png"), "--out", str(tmp_path / "out.png"),
                                     "--pretrained", "conv-fast", "--no_progress", "--preview_size", "0"]) == 0
    cli = np.asarray(Image.open(tmp_path / "out.png"))
    pixels = quiet(allen_sr.read_image, tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels, rgb)
    np.testing.assert_array_equal(quiet(up.predict, pixels), cli)
    np.testing.assert_array_equal(quiet(up.predict, str(tmp_path / "deep.png")), cli)
    with Image.open(tmp_path / "deep.png") as opened:  # Pillow holds 16-bit colour cut to 8 bits: read its file
        np.testing.assert_array_equal(quiet(up.predict, opened), cli)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "deep.png").convert("RGB")), rgb)
    with pytest.raises(InvalidInputError, match="bits=12 with a file"):
        up.predict(tmp_path / "deep.png", bits=12)


def test_bits_states_the_white_level_of_a_dim_uint16_image(up, rgb):
    """A dim crop of a 12-bit image was read as 10-bit (brightened 4x) with no way to say otherwise."""
    dim = (rgb[..., 1].astype(np.uint16) * 3)  # 12-bit samples no brighter than 765
    with pytest.warns(UserWarning, match="bits=12: 0-4095 read as 0-255"):
        stated = up.predict(dim, bits=12)
    np.testing.assert_array_equal(stated, up.predict(np.rint(dim * (255 / 4095)).astype(np.uint8)))
    with pytest.warns(UserWarning, match="10-bit"):
        assert not np.array_equal(up.predict(dim), stated)
    with pytest.warns(UserWarning, match="bits=12"):
        up.check(dim, bits=12)
    for bad in (7, 17, 12.5, True):
        with pytest.raises(InvalidInputError, match="bits="):
            up.predict(dim, bits=bad)
    with pytest.raises(InvalidInputError, match="float samples"):
        up.predict(dim.astype(np.float32), bits=12)
    with pytest.raises(InvalidInputError, match="a uint8 array holds 8 bits per sample; bits= is for the deeper"):
        up.predict(rgb, bits=12)  # it said "a whole number from 8 to 8"


def test_arrays_are_read_as_files_are_and_what_stays_refused_says_how_to_convert(up, rgb):
    want = up.predict(rgb)
    with pytest.warns(UserWarning, match="float32 image"):
        np.testing.assert_array_equal(up.predict(rgb.astype(np.float32)), want)  # 0-255
    with pytest.warns(UserWarning, match="0-1 read as 0-255"):
        np.testing.assert_array_equal(up.predict(rgb / 255.0), want)  # float64 0-1
    camera = rgb.astype(np.uint16) * 16
    with pytest.warns(UserWarning, match="12-bit"):
        np.testing.assert_array_equal(up.predict(camera.astype(">u2")), up.predict(camera))  # big-endian
    grey_alpha = np.stack([rgb[..., 1], np.full(rgb.shape[:2], 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(up.predict(grey_alpha), up.predict(rgb[..., 1]))
    for bad, said in ((rgb.tolist(), "Python list: pass a NumPy array"), (rgb.astype(np.int16), "convert it, e.g."),
                      (rgb[None], "one image at a time"), (rgb.astype(bool), "convert it")):
        with pytest.raises(InputImageError, match=said):
            up.predict(bad)


def test_regions_take_none_to_the_edge_and_name_what_is_wrong(up, tmp_path):
    assert as_region((0, 0, None, 40)) == Region(0, 0, None, 40)
    up.predict_file(HELD_OUT_BRAIN, tmp_path / "edge.png", region=(0, 0, None, 40))
    assert Image.open(tmp_path / "edge.png").size == (load_image(HELD_OUT_BRAIN).shape[1] * 4, 160)
    for bad, said in (((0, 0, 0, 10), "width must be >= 1"), ((0, 0, 10, -3), "height must be >= 1"),
                      ((-1, 0, 10, 10), "left must be >= 0"), (Region(0, 0, 0, 5), "width must be >= 1"),
                      ("0,0,10,10", r"region '0,0,10,10' is text"), ((0, None, 10, 10), "whole numbers")):
        with pytest.raises(InvalidInputError, match=said):
            up.predict_file(HELD_OUT_BRAIN, tmp_path / "bad.png", region=bad)


def test_predict_file_expands_the_home_folder(up, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    Image.fromarray(load_image(HELD_OUT_BRAIN)[:64, :64]).save(tmp_path / "in.png")
    summary = up.predict_file("~/in.png", "~/o.png", preview_size=16, preview_to="~/previews")
    assert summary["output"] == str(tmp_path / "o.png") and not (tmp_path / "~").exists()
    assert (tmp_path / "o.png").is_file() and (tmp_path / "previews" / "o.compare.png").is_file()


def test_a_closed_upscaler_says_so_for_every_property_and_repr_says_what_it_is():
    up = Upscaler.open("conv-fast")
    text = repr(up)
    assert "pretrained conv-fast" in text and "x4" in text and "img2img_conv_sr" in text and "closed" not in text
    up.close()
    assert repr(up) == "<Upscaler pretrained conv-fast: closed>"
    for name in ("factor", "describe", "channels", "min_input", "made_by"):
        with pytest.raises(InvalidInputError, match="this Upscaler is closed; open another"):
            getattr(up, name)


def test_the_constructor_given_a_name_says_to_use_open():
    with pytest.raises(TypeError, match=r"Upscaler.open\('conv-fast'\)"):
        Upscaler("conv-fast")


def test_check_refuses_what_predict_refuses_and_reads_a_pillow_jpegs_quality(up, rgb, tmp_path):
    with pytest.raises(InvalidInputError, match="smaller than one"):
        up.check(rgb[:1, :1])
    with pytest.raises(InvalidInputError, match="smaller than one"):
        up.predict(rgb[:1, :1])
    Image.fromarray(load_image(HELD_OUT_BRAIN)[:128, :128]).save(tmp_path / "q20.jpg", quality=20)
    with Image.open(tmp_path / "q20.jpg") as image:
        assert up.check(image).jpeg_quality == up.check(tmp_path / "q20.jpg").jpeg_quality == 20


def test_a_folder_named_like_a_shipped_model_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conv-fast").mkdir()  # say, outputs kept under the model's name
    with Upscaler.open("conv-fast") as up:
        assert up.source == "pretrained conv-fast"


def test_open_refuses_options_an_export_does_not_take_and_points_from_its_files_to_the_folder():
    for options in ({"hparams": "x=1"}, {"decoder": "fast"}, {"problem": "p"}, {"hparams_set": "s"}):
        with pytest.raises(InvalidInputError, match=f"{next(iter(options))}=: the shipped model conv-fast is exported"):
            Upscaler.open("conv-fast", **options)
    with pytest.raises(InvalidInputError, match="hparams=: the default model"):
        Upscaler.open(None, hparams="x=1")
    folder = pretrained.find("conv-fast").folder
    for inside in ("model.onnx", "config.json"):
        with pytest.raises(allen_sr.ModelNotFoundError, match=f"file of the export folder {folder}: open the folder"):
            Upscaler.open(folder / inside)


def test_errors_are_importable_from_allen_sr_and_input_mistakes_are_value_errors(up, tmp_path):
    for name in ("UserError", "InvalidInputError", "InputImageError", "MissingInputError", "ModelNotFoundError",
                 "UnknownModelError", "UnsupportedInputError", "ImageSkipped"):
        assert issubclass(getattr(allen_sr, name), UserError), name
        assert getattr(allen_sr, name) is getattr(allen_sr.api, name)
    with pytest.raises(ValueError, match="predicts one value per sub-pixel"):
        up.predict_file(HELD_OUT_BRAIN, tmp_path / "u.tif", uncertainty=True)
    with pytest.raises(ValueError, match=r"--temperature is for --mode sample \(temperature= is for mode='sample'\)"):
        Upscaler.open("transformer-tiny", temperature=0.5)
    with pytest.raises(ValueError, match=r"Upscaler.open\(NAME\)"):
        up.predict(np.zeros((64, 64, 3), np.uint8), uncertainty=True)


def test_the_readme_snippet_reads_with_read_image():
    from conftest import REPO

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "read_image(" in snippet and "convert(\"RGB\")" not in snippet and "bits=12" in snippet
