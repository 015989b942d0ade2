"""Reading image files: unusual modes, the JPEG fast path, bad files, Pillow's limit (no TensorFlow)."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from allen_sr.data import images
from allen_sr.data.samples import white_level
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


@pytest.mark.parametrize("kind, white", [("png-rgb", 4095), ("png-grey", 4095), ("tiff-rgb", 1023),
                                         ("tiff-rgba", 16383), ("tiff-grey", 65535), ("tiff-float", 1.0)])
def test_deep_images_are_read_at_the_depth_their_samples_use(tmp_path, kind, white):
    """A 12-bit camera's 0-4095 in a 16-bit file reads as 0-255, not 0-16 (Pillow alone cuts 16-bit
    colour to its top 8 bits): every image of more than 8 bits per sample, whatever its format."""
    import imagecodecs
    import tifffile

    rgb = tissue_image(96, 80)
    scaled = rgb * (white / 255)
    deep = scaled.astype(np.float32) if kind.endswith("float") else np.rint(scaled).astype(np.uint16)
    path = tmp_path / f"{kind}.{kind.split('-')[0]}"
    if kind == "png-rgb":
        path.write_bytes(imagecodecs.png_encode(deep))
    elif kind == "png-grey":
        Image.fromarray(deep[:, :, 0]).save(path)
    elif kind == "tiff-rgba":
        alpha = np.full(rgb.shape[:2] + (1,), 65535, np.uint16)
        alpha[:, :40] = 0  # transparent: white glass
        tifffile.imwrite(path, np.concatenate([deep, alpha], axis=2), photometric="rgb", extrasamples=["unassalpha"])
    elif kind == "tiff-grey":
        tifffile.imwrite(path, deep[:, :, 0])
    else:
        tifffile.imwrite(path, deep, photometric="rgb")
    with pytest.warns(UserWarning) as caught:
        out = images.load_image(str(path))
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if "grey" in kind else rgb.copy()
    if kind == "tiff-rgba":
        expected[:, :40] = 255
    np.testing.assert_array_equal(out, expected)
    message = " ".join(str(w.message) for w in caught)
    assert str(path) in message and f"0-{white:g} read as 0-255" in message
    if not kind.endswith("float"):
        assert f"({int(white).bit_length()}-bit data)" in message


def test_white_levels():
    assert white_level(255, np.uint16) == 255  # 8-bit data in a 16-bit file
    assert white_level(256, np.uint16) == 1023
    assert white_level(4095, np.uint16) == 4095 and white_level(4096, np.uint16) == 16383
    assert white_level(100, np.uint16, significant_bits=12) == 4095  # the file says: believed
    assert white_level(100, np.uint16, significant_bits=20) == 255  # impossible for uint16: ignored
    assert white_level(70000, np.uint32) == 2 ** 17 - 1 and white_level(4000, np.uint32) == 4095
    assert white_level(0.99, np.float32) == 1.0 and white_level(200.0, np.float64) == 255.0
    assert white_level(1.02, np.float32) == 1.0 and white_level(4000.0, np.float32) == 4095  # overshoot; camera
    assert white_level(65535, np.uint16, significant_bits=12) == 65535  # samples beyond the stated depth


@pytest.mark.parametrize("kind, white, words", [
    ("float-camera", 4095, "float32 image, samples up to 4095: 0-4095 read as 0-255 (12-bit data)"),
    ("float-overshoot", 1.0, "samples up to 1.02: 0-1 read as 0-255 (samples above 1 as white)"),
    ("uint32", 2 ** 24 - 1, "uint32 image, samples up to 16711680: 0-16777215 read as 0-255 (24-bit data)"),
    ("stated-12-bits", 65535, "SignificantBits=12 but samples up to 65535 (beyond 12 bits: SignificantBits ignored)")])
def test_samples_beyond_the_assumed_range_read_by_their_brightest_not_white_or_black(tmp_path, kind, white, words):
    """A Fiji 32-bit image of 12-bit camera data read all white, a 0-1 float image with one sample at 1.02
    all black, uint32 counts black, a 16-bit OME-TIFF whose SignificantBits=12 its samples exceed white:
    each now reads by the depth its samples use, by both readers, saying how in one warning."""
    import tifffile

    grey = tissue_image(64, 80)[:, :, 1]
    grey[0, 0] = 255
    samples = {"float-camera": grey.astype(np.float32) * np.float32(4095 / 255),
               "float-overshoot": grey.astype(np.float32) / np.float32(255),
               "uint32": grey.astype(np.uint32) * 65536, "stated-12-bits": grey.astype(np.uint16) * 257}[kind]
    if kind == "float-overshoot":
        samples[0, 0] = 1.02
    path = tmp_path / f"{kind}.ome.tif"
    tifffile.imwrite(path, samples, metadata={"axes": "YX"} | ({"SignificantBits": 12} if "stated" in kind else {}))
    scaled = np.clip(np.rint(samples.astype(np.float32) * np.float32(255 / white)), 0, 255).astype(np.uint8)
    expected = np.repeat(scaled[:, :, None], 3, axis=2)
    assert 100 < expected.mean() < 200  # neither white nor black
    for read in (images.load_image, read_region):
        said, _ = read_as(read, path, expected, "read as 0-255")
        assert len(said) == 1 and said[0].startswith(f"{path}: ") and words in said[0], said


def test_signed_deep_images_are_skipped_with_a_message_naming_them(tmp_path):
    path = tmp_path / "signed.tif"
    Image.fromarray(np.full((80, 80), -5, np.int32), mode="I").save(path)
    with pytest.raises(images.ImageSkipped, match="signed.tif: int32 samples are not supported"):
        images.load_image(str(path))


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
    ("small", "smaller than one 64x64 tile"), ("folder", "is a folder, not an image file")])
def test_bad_files_are_skipped_with_a_message_naming_them(tmp_path, kind, message):
    """Also through `upscale`'s reader (open_image), which names them the same way."""
    from allen_sr.inference.sources import open_image

    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
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
    if kind in ("empty", "folder", "text"):
        with pytest.raises(images.ImageSkipped, match=message):
            open_image(str(path))


def test_list_images_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        images.list_images(str(tmp_path / "does_not_exist"))


def test_a_folder_of_images_lists_its_image_files_only_and_a_quoted_tilde_is_home(tmp_path, monkeypatch):
    """A subfolder named like an image is not an image (it ended folder runs, evaluate and datagen
    in an IsADirectoryError); `--images '~/slides'` (quoted, so no shell expands it) is found."""
    from allen_sr.api.folders import collect_images

    slides = tmp_path / "slides"
    slides.mkdir()
    Image.fromarray(tissue_image(64, 64)).save(slides / "a.png")
    (slides / "b.png").mkdir()
    assert images.list_images(str(slides)) == [str(slides / "a.png")]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert collect_images("~/slides") == collect_images("~/slides/*") == [str(slides / "a.png")]
    bracketed = tmp_path / "run[1]"  # an existing file is itself, not a glob of '[1]'
    bracketed.mkdir()
    Image.fromarray(tissue_image(64, 64)).save(bracketed / "a.png")
    assert collect_images(str(bracketed / "a.png")) == [str(bracketed / "a.png")]



@pytest.mark.parametrize("kind", ["miniswhite", "palette", "cmyk", "ycbcr", "ycbcr-jpeg"])
def test_tiff_colour_spaces_read_as_pillow_reads_them(tmp_path, kind):
    """White-is-zero grey, a palette, CMYK inks and YCbCr (uncompressed, or JPEG: tifffile decodes that
    to RGB), in tiles: `upscale`'s region reader (tifffile) and the whole-image reader give Pillow's
    picture, not the stored numbers (the region reader read them as grey or RGB)."""
    import tifffile

    from allen_sr.inference.sources import open_image

    rgb = tissue_image(96, 80)
    path = tmp_path / f"{kind}.tif"
    if kind == "miniswhite":
        tifffile.imwrite(path, 255 - rgb[:, :, 1], photometric="miniswhite", tile=(32, 32))
    elif kind == "palette":
        quantised = Image.fromarray(rgb).quantize(64)
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, :64] = np.asarray(quantised.getpalette()[:192], np.uint16).reshape(64, 3).T * 257
        tifffile.imwrite(path, np.asarray(quantised), photometric="palette", colormap=colormap, tile=(32, 32))
    elif kind == "ycbcr":
        ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
        tifffile.imwrite(path, ycbcr, photometric="ycbcr", subsampling=(1, 1), tile=(32, 32))
    elif kind == "ycbcr-jpeg":
        tifffile.imwrite(path, rgb, photometric="rgb", compression="jpeg", tile=(32, 32))
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].photometric == 6  # stored as YCbCr
    else:
        inks = 255 - rgb.astype(np.int16)
        black = inks.min(axis=2, keepdims=True)
        tifffile.imwrite(path, np.concatenate([inks - black, black], axis=2).astype(np.uint8),
                         photometric="separated", tile=(32, 32))
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 20  # a picture, not a flat colour
    if kind == "miniswhite":
        np.testing.assert_array_equal(expected[..., 1], rgb[..., 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "greyscale image converted to RGB"
        whole = images.load_image(str(path))
    region = open_image(str(path))
    try:
        np.testing.assert_array_equal(region.read(0, 0, 96, 80), expected)
    finally:
        region.close()
    np.testing.assert_array_equal(whole, expected)


@pytest.mark.parametrize("kind", ["gif", "png", "webp"])
def test_animations_are_refused_not_read_as_their_first_frame(tmp_path, kind):
    frames = [Image.fromarray(tissue_image(64, 64, seed)) for seed in range(3)]
    path = tmp_path / f"animated.{kind}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(images.ImageSkipped, match="holds 3 frames"):
        images.load_image(str(path))
    frames[0].save(tmp_path / f"still.{kind}")  # one frame: read as before
    assert images.load_image(str(tmp_path / f"still.{kind}")).shape == (64, 64, 3)


@pytest.mark.parametrize("kind, words", [
    ("rgb-stack", "holds 5 planes (axes QYXS, shape 5x96x80x3"),
    ("channel-pages", "holds 3 planes"),
    ("grey-channels", "4 channels per pixel stored as grey"),
    ("lab", "colour space CIE L*a*b* is not supported"),
])
def test_tiffs_that_are_not_one_picture_are_refused_by_both_readers(tmp_path, kind, words):
    """A z-stack or channels, in pages or samples, and CIE Lab: refused by name by the whole-image
    and the region reader alike (Pillow alone reads the first plane, or the channels as RGB)."""
    import tifffile

    from allen_sr.inference.sources import open_image

    rng = np.random.default_rng(0)
    path = tmp_path / f"{kind}.tif"
    if kind == "rgb-stack":
        tifffile.imwrite(path, rng.integers(0, 256, (5, 96, 80, 3), np.uint8), photometric="rgb")
    elif kind == "channel-pages":
        tifffile.imwrite(path, rng.integers(0, 256, (3, 96, 80), np.uint8), photometric="minisblack")
    elif kind == "grey-channels":
        tifffile.imwrite(path, rng.integers(0, 256, (96, 80, 4), np.uint8), photometric="minisblack",
                         planarconfig="contig")
    else:
        tifffile.imwrite(path, rng.integers(0, 256, (96, 80, 3), np.uint8), photometric="cielab")
    with pytest.raises(images.ImageSkipped, match="save") as whole:
        images.load_image(str(path))
    with pytest.raises(ValueError, match="save") as region:
        open_image(str(path))
    for caught in (whole, region):
        assert str(path) in str(caught.value) and words in str(caught.value), caught.value


def write_turned(path, rgb, orientation):
    """``rgb`` saved to ``path`` (by its suffix) as stored pixels with an Orientation tag: EXIF for
    JPEG, PNG and WebP (written by Pillow), the TIFF tag (tifffile; tiled; ``.16.tif``: 16-bit)."""
    import tifffile

    name = str(path)
    if name.endswith(".tif"):
        pixels = rgb.astype(np.uint16) * 257 if name.endswith(".16.tif") else rgb
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(32, 32), extratags=[(274, "H", 1, orientation, True)])
        return
    exif = Image.Exif()
    exif[274] = orientation
    options = {"jpg": {"quality": 95}, "webp": {"lossless": True}}.get(name.rsplit(".", 1)[-1], {})
    Image.fromarray(rgb).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", "tif", "16.tif"])
def test_images_are_read_as_viewers_show_them_by_every_reader(tmp_path, suffix, orientation):
    """A camera held upright stores its pixels turned and says so in an Orientation tag (EXIF, or
    TIFF's own): the whole-image reader (datagen, evaluate; the JPEG fast path included) and the
    region reader (upscale; a tiled TIFF region by region) show it as Pillow's exif_transpose does,
    and a region is a region of the image as shown."""
    from PIL import ImageOps

    from allen_sr.inference.sources import open_image

    path = tmp_path / f"turned.{suffix}"
    write_turned(path, tissue_image(80, 96), orientation)
    with Image.open(path) as img:
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert shown.shape == ((96, 80, 3) if orientation >= 5 else (80, 96, 3))  # 5-8 swap rows and columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "uint16 image, samples up to 65535"
        np.testing.assert_array_equal(images.load_image(str(path)), shown)
        source = open_image(str(path))
        assert (source.height, source.width) == shown.shape[:2]
        np.testing.assert_array_equal(source.read(0, 0, source.height, source.width), shown)
        np.testing.assert_array_equal(source.read(37, 5, 40, 33), shown[37:77, 5:38])  # across tiles
        source.close()


@pytest.mark.parametrize("kind", ["png", "png16", "tiff"])
def test_transparent_pixels_are_put_on_white_with_a_warning_naming_the_file(tmp_path, kind):
    """Every reader composites alpha on white (the slide background) and says so, once there is a
    pixel that is not opaque; an opaque RGBA image reads as its RGB, without a word."""
    import imagecodecs
    import tifffile

    from allen_sr.inference.sources import open_image

    rgb = tissue_image(80, 96)
    for alpha_value, name in ((128, "half"), (255, "opaque")):
        alpha = np.full((80, 96, 1), 255, np.uint8)
        alpha[:, :20] = alpha_value
        path = tmp_path / f"{name}.{'tif' if kind == 'tiff' else 'png'}"
        if kind == "png":
            Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(path)
        elif kind == "png16":
            path.write_bytes(imagecodecs.png_encode(np.concatenate([rgb, alpha], axis=2).astype(np.uint16) * 257))
        else:
            tifffile.imwrite(path, np.concatenate([rgb, alpha], axis=2), photometric="rgb", tile=(32, 32),
                             extrasamples=["unassalpha"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            whole = images.load_image(str(path))
            source = open_image(str(path))
            region = source.read(0, 0, 80, 96)
            source.close()
        said = [str(w.message) for w in caught if "put on white" in str(w.message)]
        np.testing.assert_array_equal(whole, region)
        if alpha_value == 255:
            np.testing.assert_array_equal(whole, rgb)
            assert not said, said
        else:
            expected = np.rint(rgb[:, :20] * (128 / 255) + 255 * (127 / 255))
            assert np.abs(whole[:, :20] - expected).max() <= 1
            assert said and set(said) == {f"{path}: transparent pixels put on white (the slide background)"}, said


def read_as(read, path, expected, about):
    """Read ``path`` with ``read`` (a whole-image or region reader), assert it gives ``expected``;
    (the warnings that mention ``about``, every warning caught)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(read(str(path)), expected)
    return [str(w.message) for w in caught if about in str(w.message)], caught


@pytest.mark.parametrize("kind", ["rgb-255", "grey-1"])
def test_nan_samples_read_as_black_with_one_warning_by_both_readers(tmp_path, kind):
    """A float TIFF with a few NaN pixels is read by the white level of its other samples (a NaN was
    taken as the brightest sample, or dropped by the order of the tiles: all white or all black, the
    readers disagreeing), the NaN pixels black, said once with their number; all NaN: refused."""
    import tifffile

    rgb = tissue_image(96, 80)
    samples = rgb.astype(np.float32) if kind == "rgb-255" else rgb[:, :, 1].astype(np.float32) / 255
    samples[50, 50], samples[3:5, 70:72] = np.nan, np.nan  # 5 pixels, in two tiles
    path = tmp_path / f"{kind}.tif"
    tifffile.imwrite(path, samples, photometric="rgb" if samples.ndim == 3 else "minisblack", tile=(32, 32))
    expected = rgb.copy() if kind == "rgb-255" else np.repeat(rgb[:, :, 1:2], 3, axis=2)
    expected[50, 50], expected[3:5, 70:72] = 0, 0
    for read in (images.load_image, read_region):
        said, caught = read_as(read, path, expected, "NaN")
        assert said == [f"{path}: 5 of 7680 pixels are NaN (not a number): read as black"], said
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    tifffile.imwrite(path, np.full((96, 80), np.nan, np.float32))
    for read in (images.load_image, read_region):
        with pytest.raises(images.ImageSkipped, match=f"{path}: every pixel is NaN"):
            read(str(path))


def read_region(path):
    """The whole of ``path`` as `upscale`'s region reader reads it (the file closed again)."""
    from allen_sr.inference.sources import open_image

    source = open_image(path)
    try:
        return source.read(0, 0, source.height, source.width)
    finally:
        source.close()


@pytest.mark.parametrize("reader", ["whole", "region", "array"])
def test_a_12_bit_rgba_image_is_opaque_at_its_own_white(tmp_path, reader):
    """12-bit RGBA in a 16-bit TIFF (or a uint16 array given to the Upscaler): alpha 4095 is opaque,
    as the colour's 4095 is white (alpha was read against 65535: 6% opaque, the picture nearly
    white, with a warning of transparent pixels); half-transparent pixels are put on white."""
    import tifffile

    from allen_sr.api.upscaler import array_source

    rgb = tissue_image(80, 96)
    camera = np.rint(rgb * (4095 / 255)).astype(np.uint16)
    for alpha_value, name in ((4095, "opaque"), (2048, "half")):
        alpha = np.full((80, 96, 1), 4095, np.uint16)
        alpha[:, :20] = alpha_value
        rgba = np.concatenate([camera, alpha], axis=2)
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(32, 32))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if reader == "array":
                got = array_source(rgba).read(0, 0, 80, 96)
            else:
                got = (images.load_image if reader == "whole" else read_region)(str(path))
        said = [str(w.message) for w in caught if "put on white" in str(w.message)]
        np.testing.assert_array_equal(got[:, 20:], rgb[:, 20:])
        if alpha_value == 4095:
            np.testing.assert_array_equal(got, rgb)
            assert not said, said
        else:
            a = 2048 / 4095
            assert np.abs(got[:, :20] - np.rint(rgb[:, :20] * a + 255 * (1 - a))).max() <= 1
            named = "image" if reader == "array" else path
            assert set(said) == {f"{named}: transparent pixels put on white (the slide background)"}, said


def write_12_bit_tiff(path, samples):
    """``samples`` (uint16 of 0-4095, [h, w] or [h, w, 3] with an even number per row) as a TIFF of
    BitsPerSample 12, packed as cameras write it (tifffile's own packing needs another imagecodecs)."""
    import tifffile

    values = samples.reshape(samples.shape[0], -1).astype(np.uint32)
    first, second = values[:, 0::2], values[:, 1::2]
    packed = np.stack([first >> 4, (first & 15) << 4 | second >> 8, second & 255], axis=-1).astype(np.uint8)
    tifffile.imwrite(path, iter([packed.tobytes()]), shape=samples.shape, dtype=np.uint16, bitspersample=12,
                     rowsperstrip=samples.shape[0], photometric="rgb" if samples.ndim == 3 else "minisblack")


@pytest.mark.parametrize("kind", ["rgb", "grey"])
def test_a_tiff_of_12_bits_per_sample_is_read_as_12_bit_by_both_readers(tmp_path, kind):
    """BitsPerSample 12 says the depth, as OME's SignificantBits does: a dark 12-bit image (samples up
    to 1000) reads as dark, not as 10-bit data (4x too bright), by the region and whole-image readers."""
    import tifffile

    rgb = tissue_image(64, 96)
    camera = np.rint(rgb * (1000 / 255)).astype(np.uint16)
    camera = camera if kind == "rgb" else camera[:, :, 1]
    path = tmp_path / f"{kind}12.tif"
    write_12_bit_tiff(path, camera)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].bitspersample == 12
        np.testing.assert_array_equal(tif.asarray(), camera)
    expected = np.rint(camera.astype(np.float32) * np.float32(255 / 4095)).astype(np.uint8)
    expected = expected if kind == "rgb" else np.repeat(expected[:, :, None], 3, axis=2)
    for read in (images.load_image, read_region):
        said, _ = read_as(read, path, expected, "read as 0-255")
        assert said == [f"{path}: uint16 image, BitsPerSample=12: 0-4095 read as 0-255 (12-bit data)"], said


@pytest.mark.parametrize("kind", ["raw", "group4", "miniswhite"])
def test_bilevel_tiffs_read_as_black_and_white_by_both_readers(tmp_path, kind):
    """A 1-bit TIFF (Pillow's, uncompressed or CCITT group 4, which tifffile cannot decode; tifffile's
    white-is-zero) reads as Pillow shows it, 0 and 255, by the region reader too (which refused it:
    "bool pixels are not supported")."""
    import tifffile

    from allen_sr.inference.sources import open_image

    path = tmp_path / f"{kind}.tif"
    bits = tissue_image(64, 96)[:, :, 1] > 120
    if kind == "miniswhite":
        tifffile.imwrite(path, ~bits, photometric="miniswhite", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    else:
        Image.fromarray(bits).save(path, compression="group4" if kind == "group4" else None, dpi=(50800, 50800))
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(expected[..., 0], np.where(bits, 255, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "greyscale image converted to RGB"
        np.testing.assert_array_equal(images.load_image(str(path)), expected)
        source = open_image(str(path))
    try:
        np.testing.assert_array_equal(source.read(0, 0, 64, 96), expected)
        assert source.pixel_size_um == pytest.approx(0.5)  # the group 4 one read whole, with its size
    finally:
        source.close()


def test_a_folder_lists_every_kind_of_image_a_single_file_may_be(tmp_path):
    """`--images DIR` (upscale, evaluate) and datagen's folders take the GIFs that `--image x.gif`
    reads, and TIFFs and JPEGs by their other names: BigTIFF's .btf and .tf8, .qptiff, .jpe, .jfif
    (they were left out without a word)."""
    import tifffile

    from allen_sr.api.folders import collect_images
    from allen_sr.inference.sources import open_image

    formats = {"png": "PNG", "jpg": "JPEG", "tif": "TIFF", "bmp": "BMP", "webp": "WEBP", "gif": "GIF", "GIF": "GIF",
               "jpe": "JPEG", "JFIF": "JPEG"}
    rgb = tissue_image(64, 64)
    for suffix, kind in formats.items():
        Image.fromarray(rgb).save(tmp_path / f"a_{suffix}.{suffix}", format=kind)
    for suffix in ("btf", "tf8", "qptiff"):
        tifffile.imwrite(tmp_path / f"a_{suffix}.{suffix}", rgb, bigtiff=suffix != "qptiff", photometric="rgb")
        formats[suffix] = "TIFF"
    (tmp_path / "notes.txt").write_text("not an image")
    listed = [os.path.basename(p) for p in images.list_images(str(tmp_path))]
    assert listed == sorted(f"a_{s}.{s}" for s in formats)
    assert collect_images(str(tmp_path)) == images.list_images(str(tmp_path))
    assert images.load_image(str(tmp_path / "a_gif.gif")).shape == (64, 64, 3)
    for suffix in ("btf", "tf8", "qptiff"):
        np.testing.assert_array_equal(images.load_image(str(tmp_path / f"a_{suffix}.{suffix}")), rgb)
        np.testing.assert_array_equal(read_region(str(tmp_path / f"a_{suffix}.{suffix}")), rgb)
    for suffix in ("jpe", "JFIF"):
        assert images.load_image(str(tmp_path / f"a_{suffix}.{suffix}")).shape == (64, 64, 3)
        open_image(str(tmp_path / f"a_{suffix}.{suffix}")).close()


def _png_whose_data_ends_early(path, pixels):
    """A PNG of ``pixels`` whose one zlib stream ends, validly, after half the rows' data (as a
    writer that stopped early makes it); every chunk's CRC is right."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    rows = zlib.decompress(data[start + 8:start + 8 + length])
    short = zlib.compress(rows[:len(rows) // 2])
    chunk = struct.pack(">I", len(short)) + b"IDAT" + short + struct.pack(">I", zlib.crc32(b"IDAT" + short))
    path.write_bytes(data[:start] + chunk + data[start + 12 + length:])


def test_a_png_whose_picture_data_ends_early_is_refused_not_read_with_black_rows(tmp_path):
    """Pillow stops at the early end of the stream without an error and leaves the rest black."""
    pixels = tissue_image(96, 100)
    _png_whose_data_ends_early(tmp_path / "short.png", pixels)
    with pytest.raises(images.ImageSkipped, match="short.png: not a readable image .*ends early"):
        images.load_image(str(tmp_path / "short.png"))
    pixels[-8:] = 0  # a whole PNG whose last rows are black is read as it is
    Image.fromarray(pixels).save(tmp_path / "dark.png")
    assert np.array_equal(images.load_image(str(tmp_path / "dark.png")), pixels)


def png_with_sbit(path, samples, bits):
    """``samples`` (uint16, [h, w] or [h, w, 3]) as a 16-bit PNG whose sBIT chunk states ``bits`` per sample."""
    import struct
    import zlib

    import imagecodecs

    data = imagecodecs.png_encode(np.ascontiguousarray(samples))
    body = bytes([bits] * (3 if samples.ndim == 3 else 1))
    chunk = struct.pack(">I", len(body)) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    path.write_bytes(data[:33] + chunk + data[33:])  # after the signature and IHDR, as sBIT must be


@pytest.mark.parametrize("kind", ["rgb", "grey"])
def test_a_16_bit_png_is_read_at_the_depth_its_sbit_states_by_both_readers(tmp_path, kind):
    """sBIT=12 says the depth of a 16-bit PNG, as a TIFF's BitsPerSample does: a dark 12-bit image (samples up to
    1020) reads as dark, not as 10-bit data (4x too bright), by the region and whole-image readers."""
    rgb = tissue_image(64, 96)
    camera = np.rint(rgb * (1020 / 255)).astype(np.uint16)
    camera = camera if kind == "rgb" else camera[:, :, 1]
    path = tmp_path / f"{kind}12.png"
    png_with_sbit(path, camera, 12)
    assert images.png_depth(str(path)) == (12, "sBIT")
    expected = np.rint(camera.astype(np.float32) * np.float32(255 / 4095)).astype(np.uint8)
    expected = expected if kind == "rgb" else np.repeat(expected[:, :, None], 3, axis=2)
    for read in (images.load_image, read_region):
        said, _ = read_as(read, path, expected, "read as 0-255")
        assert said == [f"{path}: uint16 image, sBIT=12: 0-4095 read as 0-255 (12-bit data)"], said
