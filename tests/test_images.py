"""Reading image files: unusual modes, the JPEG fast path, bad files, Pillow's limit (no TensorFlow)."""
import warnings

import numpy as np
import pytest
from PIL import Image

from allen_sr.data import images
from conftest import tissue_image


@pytest.mark.parametrize("kind", ["rgba", "grey", "grey16", "palette"])
def test_unusual_modes_are_converted_to_rgb(tmp_path, kind):
    rgb = tissue_image(96, 96)
    path = tmp_path / f"{kind}.png"
    if kind == "rgba":
        alpha = np.full((96, 96), 255, np.uint8)
        alpha[:, :48] = 0  # transparent half must become white glass
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
    elif kind == "grey":
        Image.fromarray(rgb[:, :, 0]).save(path)
    elif kind == "grey16":
        Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(path)
    else:
        Image.fromarray(rgb).convert("P").save(path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = images.load_image(str(path))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    if kind == "rgba":
        assert (out[:, :48] == 255).all()
    if kind in ("grey", "grey16"):
        np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 0])


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpegs_decode_to_pillows_pixels(tmp_path, mode):
    """Colour JPEGs take the libjpeg-turbo fast path (simplejpeg), others Pillow's; either way
    the pixels are exactly what Pillow decodes (and greyscale still warns)."""
    path = tmp_path / f"{mode}.jpg"
    Image.fromarray(tissue_image(130, 200)).convert(mode).save(path, quality=90)
    if mode == "RGB":
        assert images.decode_colour_jpeg(str(path), 64) is not None
    else:
        assert images.decode_colour_jpeg(str(path), 64) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = images.load_image(str(path))
    with Image.open(path) as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    assert any("greyscale" in str(w.message) for w in caught) == (mode == "L")


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file"), ("text", "not a readable image"), ("truncated", "not a readable image"),
    ("small", "smaller than one 64x64 tile")])
def test_bad_files_are_skipped_with_a_message_naming_them(tmp_path, kind, message):
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("<html>not an image</html>")
    elif kind == "truncated":
        Image.fromarray(tissue_image(200, 200)).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        Image.fromarray(tissue_image(40, 300)).save(path)
    with pytest.raises(images.ImageSkipped) as err:
        images.load_image(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_list_images_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        images.list_images(str(tmp_path / "does_not_exist"))

