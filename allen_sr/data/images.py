"""Reading image files robustly as uint8 RGB arrays (no TensorFlow).

Everything a user might point us at is handled here: corrupt or truncated files, greyscale, RGBA,
16-bit and palette images are converted or skipped with a warning naming the file, so that one
bad file never stops a dataset build. Images are read as viewers show them: an EXIF or TIFF
Orientation tag (a camera held upright) is applied (:func:`upright`). Every function here that
opens a file with Pillow first calls :func:`configure_pillow`.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from allen_sr.data.errors import ImageSkipped
from allen_sr.data.samples import announced_white, sample_peak, samples_to_rgb, say_not_numbers
from allen_sr.errors import MissingInputError

__all__ = [
    "MAX_IMAGE_PIXELS", "IMAGE_SUFFIXES", "ImageSkipped", "configure_pillow", "list_images", "file_or_broken_link",
    "image_id", "is_tiff", "tiff_problem", "check_image_file", "image_size", "to_rgb_uint8", "decode_colour_jpeg",
    "load_image", "deep_to_rgb", "tiff_depth", "ORIENTATION_TAG", "ORIENTATIONS", "upright", "exif_orientation",
    "tiff_orientation", "png_depth",
]

# Full-resolution Allen section images are about 15000 x 8500 px (~130 MP), above Pillow's
# default decompression-bomb limit (~89 MP: a warning; twice that: an error). 250 MP, about twice
# a full section, opens every real section without a warning, while a header claiming more is far
# more likely corrupt than a section. A 250 MP RGB image is 750 MB as uint8: images are decoded
# once as uint8 (never float), so peak memory stays about that per worker.
MAX_IMAGE_PIXELS = 250_000_000

# The files a folder of images holds (list_images): every kind load_image reads. TIFFs go by many
# names: BigTIFF (.btf, .tf8), Akoya's .qptiff, Aperio's .svs; JPEGs by .jpe and .jfif too.
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
IMAGE_SUFFIXES = (*JPEG_SUFFIXES, ".png", ".tif", ".tiff", ".btf", ".tf8", ".qptiff", ".svs", ".bmp", ".webp", ".gif",
                  ".czi")


def configure_pillow() -> None:
    """Set Pillow's process-wide decompression-bomb limit to :data:`MAX_IMAGE_PIXELS`.

    Called by every function that opens image files with Pillow (here and in
    :func:`allen_sr.data.manifest.verify_image_file`), right before it opens one; importing a
    module never changes Pillow's settings.
    """
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def file_or_broken_link(path: str) -> bool:
    """A file, or a symbolic link to nothing: listed, so that reading it names it as unreadable."""
    return os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path))


def list_images(folder: str) -> list[str]:
    """Image files directly inside `folder` (and broken links named as images), sorted (hidden and
    partial files ignored)."""
    if not os.path.isdir(folder):
        raise MissingInputError(f"image folder {folder!r} does not exist: pass the folder holding your images")
    names = sorted(
        n for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".") and file_or_broken_link(os.path.join(folder, n))
    )
    return [os.path.join(folder, n) for n in names]


# TIFF Photometric (colour space) values read; others are refused by name (photometric_problem).
MINISWHITE, MINISBLACK, RGB, PALETTE, SEPARATED, YCBCR = 0, 1, 2, 3, 5, 6
PHOTOMETRIC_NAMES = {4: "transparency mask", 8: "CIE L*a*b*", 9: "ICC L*a*b*", 10: "ITU L*a*b*",
                     32803: "colour filter array (raw)", 32844: "LogL", 32845: "LogLuv", 34892: "linear raw"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# How each EXIF/TIFF Orientation value (tag 274) shows the stored pixels: (rows and columns swapped,
# then rows reversed, columns reversed). 1: as stored; 3: turned 180 degrees; 6: turned 90 degrees
# clockwise (a camera held upright); 8: 90 degrees counter-clockwise; 2, 4, 5, 7: mirrored.
ORIENTATION_TAG = 274
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` [h, w, ...] as stored, shown as the file's ``orientation`` says (as Pillow's
    exif_transpose, OpenCV's imread and image viewers show them); 1 or an unknown value: as stored."""
    transposed, rows, columns = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    if transposed:
        pixels = pixels.swapaxes(0, 1)
    return np.ascontiguousarray(pixels[::-1 if rows else 1, ::-1 if columns else 1])


def exif_orientation(img: Image.Image) -> int:
    """The Orientation tag of the file Pillow opened as ``img`` (1 when none, or one Pillow has
    already applied, as it does for TIFFs on load). A PNG's is the eXIf chunk Pillow has read so far
    (before the pixels, or anywhere once loaded): asking for more would decode the image."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        orientation = int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the pixels as stored
        return 1
    return orientation if orientation in ORIENTATIONS else 1


def tiff_orientation(page: Any) -> int:
    """The Orientation tag of a tifffile page (1 when none or not a known value)."""
    orientation = int(page.tags.valueof(ORIENTATION_TAG, 1) or 1)
    return orientation if orientation in ORIENTATIONS else 1


def is_tiff(path: str) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def tiff_problem(path: str, tif: Any = None) -> str | None:
    """Why the TIFF ``path`` (or the open tifffile ``tif``) is not read as one picture, or None:
    several planes in its image (a z-stack, a time series, channels stored as separate pages:
    Pillow alone would read the first plane without a word), or a colour space that is not one
    picture's (:func:`photometric_problem`)."""
    import tifffile

    try:
        with contextlib.ExitStack() as stack:
            tif = tif if tif is not None else stack.enter_context(tifffile.TiffFile(path))
            series = tif.series[0]
            planes = len(series.levels[0].pages)
            page = series.levels[0].keyframe
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader itself
        return None
    if planes > 1:
        return (f"holds {planes} planes (axes {series.axes}, shape {'x'.join(map(str, series.shape))}: a stack, "
                "or channels stored as separate pages); save the plane you want, or an RGB composite, as its own "
                "file")
    return photometric_problem(page)


def photometric_problem(page: Any) -> str | None:
    """Why a TIFF page's colour space is not read, or None: grey (either way round), RGB, palette,
    YCbCr (JPEG tiles) and CMYK are; several grey channels, other inks and CIE Lab are refused,
    never read as something else."""
    photometric, samples = int(page.photometric), int(page.samplesperpixel)
    if photometric in (MINISWHITE, MINISBLACK) and samples > 2:  # grey, or grey and one extra (alpha)
        return (f"{samples} channels per pixel stored as grey (a multi-channel image, not RGB); save one "
                "channel, or an RGB composite, as its own file")
    if photometric == SEPARATED and (samples != 4 or int(page.tags.valueof(332, 1)) != 1):  # InkSet 1: CMYK
        return f"{samples} inks that are not CMYK; save it as RGB"
    if photometric not in (MINISWHITE, MINISBLACK, RGB, PALETTE, SEPARATED, YCBCR):
        return f"colour space {PHOTOMETRIC_NAMES.get(photometric, photometric)} is not supported; save it as RGB"
    return None


def tiff_depth(tif: Any, page: Any) -> tuple[int | None, str]:
    """How many bits of each sample of a TIFF's ``page`` carry data, as the open tifffile ``tif``
    states it, and the field that does: OME-XML's SignificantBits, else a BitsPerSample narrower
    than the samples' type (a 12-bit camera's samples held as uint16); (None, "") when it does not."""
    found = re.search(r'SignificantBits="([0-9]+)"', tif.ome_metadata or "")
    if found:
        return int(found.group(1)), "SignificantBits"
    bits, dtype = int(page.bitspersample), page.dtype
    if dtype is not None and dtype.kind == "u" and 8 <= bits < dtype.itemsize * 8:
        return bits, "BitsPerSample"
    return None, ""


def tiff_file_depth(path: str) -> tuple[int | None, str]:
    """:func:`tiff_depth` of the first image of the TIFF ``path``, its header read once; (None, "")
    when tifffile cannot read it (the reader says why); ImageSkipped when the file is not one
    picture (:func:`tiff_problem`)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader itself
        return None, ""
    with tif:
        if problem := tiff_problem(path, tif):
            raise ImageSkipped(f"{path}: {problem}")
        try:
            return tiff_depth(tif, tif.series[0].levels[0].keyframe)
        except Exception:  # noqa: BLE001 - as above
            return None, ""


def png_depth(path: str) -> tuple[int | None, str]:
    """The bits per colour sample a PNG's sBIT chunk states (a 16-bit file of 12-bit camera data says 12), as
    :func:`tiff_depth` gives a TIFF's; (None, "") without one, or for a file that is not a PNG."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None, ""
            while len(head := f.read(8)) == 8:
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:  # sBIT comes before the picture data
                    return None, ""
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)  # the chunk's CRC
                if kind == b"sBIT" and data:
                    return max(data[:3] if length >= 3 else data[:1]), "sBIT"  # colour, not alpha
    except OSError:  # the reader says what is wrong with the file
        pass
    return None, ""


def image_id(path: str) -> str:
    """The id a file is known by: its name without extension (Allen downloads are `<id>.jpg`)."""
    return os.path.splitext(os.path.basename(path))[0]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header only (a CZI's subblock directory, the tags of a TIFF
    Pillow does not open, such as floating-point colour); OSError/ValueError/ImageSkipped when unreadable."""
    if path.lower().endswith(".czi"):
        from allen_sr.data.czi import czi_size

        return czi_size(path)
    configure_pillow()
    try:
        with Image.open(path) as im:
            return im.size
    except UnidentifiedImageError:
        if not is_tiff(path):
            raise
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        return int(page.imagewidth), int(page.imagelength)


def deep_to_rgb(raw: np.ndarray, path: str, depth: tuple[int | None, str] = (None, "")) -> np.ndarray:
    """HxWx3 uint8 from a whole image's samples ([h, w] or [h, w, 1-4]) as the file stores them:
    more than 8 bits by the image's :func:`~allen_sr.data.samples.white_level` (the bits per sample
    the file states, ``depth`` as :func:`tiff_depth` gives it, else its brightest sample; with a warning
    saying how), alpha composited on white (saying so), NaN samples read as black (saying how many)."""
    if raw.dtype.kind not in "uf":
        raise ImageSkipped(f"{path}: {raw.dtype} samples are not supported; "
                           "convert the image to unsigned 8 or 16 bit")
    pixels = raw[:, :, None] if raw.ndim == 2 else raw
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ImageSkipped(f"{path}: pixels of shape {raw.shape[2:]} per position; expected greyscale or RGB(A)")
    white = 255.0
    if raw.dtype != np.uint8:
        peak, not_numbers = sample_peak(pixels)
        say_not_numbers(path, not_numbers, pixels.shape[0] * pixels.shape[1])
        white = announced_white(path, raw.dtype, peak, *depth)
    return samples_to_rgb(pixels, white, "straight", path)


def to_rgb_uint8(img: Image.Image, path: str = "<image>", depth: tuple[int | None, str] = (None, "")) -> np.ndarray:
    """Convert any Pillow image to an HxWx3 uint8 array, with a warning for lossy conversions.

    RGBA and LA are composited on white (the brightfield slide background; as every reader does:
    :func:`~allen_sr.data.samples.samples_to_rgb`, with a warning when any pixel is not opaque), 16-bit and
    floating-point greyscale are scaled by their :func:`~allen_sr.data.samples.white_level` (or
    the ``depth`` the file states: :func:`deep_to_rgb`),
    palette and CMYK images are converted. (16-bit colour, which Pillow cuts to its top 8 bits,
    is read by :func:`load_image`.)
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        if mode == "I" and arr.min(initial=0) >= 0:  # 32-bit signed as Pillow holds it; negative: refused
            arr = arr.astype(np.uint16 if arr.max(initial=0) <= 65535 else np.uint32)
        return deep_to_rgb(arr, path, depth)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        return samples_to_rgb(np.asarray(img.convert("RGBA")), 255.0, "straight", path)
    if mode in ("L", "1"):
        warnings.warn(f"{path}: greyscale image converted to RGB (equal channels)")
    return np.asarray(img.convert("RGB") if mode != "RGB" else img)


def deep_colour(img: Image.Image) -> bool:
    """True for a colour image Pillow would read cut to 8 bits per sample (16-bit RGB(A) PNG, TIFF)."""
    return img.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in img.tile if len(tile) > 3)


def read_samples(path: str) -> np.ndarray:
    """A PNG's or TIFF's samples as the file stores them (imagecodecs, tifffile): for what Pillow
    reads cut to 8 bits (16-bit colour) or cannot open (floating-point colour TIFFs)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"\x89PNG"):
            import imagecodecs

            return imagecodecs.png_decode(data)
        import tifffile

        return tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001 - the codecs raise many kinds for corrupt files
        raise ImageSkipped(f"{path}: not a readable image ({exc}); replace or remove the file") from exc


def check_png_whole(path: str, img: Image.Image) -> None:
    """ImageSkipped when the PNG ``img`` (loaded by Pillow from ``path``) lacks picture data.

    Pillow stops without an error where a PNG's compressed stream ends before the last row and
    leaves the rest black; libpng (imagecodecs) refuses such a file. Only an image whose last row
    Pillow left blank (or an interlaced one, whose missing rows are scattered) is decoded again.
    """
    if img.info.get("interlace") or not np.asarray(img)[-1].any():
        import imagecodecs

        try:
            with open(path, "rb") as f:
                imagecodecs.png_decode(f.read())
        except Exception as exc:  # noqa: BLE001 - libpng names what is wrong
            raise ImageSkipped(f"{path}: not a readable image ({exc}: its picture data ends early); "
                               "replace or remove the file") from exc


def check_size(path: str, width: int, height: int, min_size: int) -> None:
    """ImageSkipped when ``path`` is smaller than one ``min_size`` tile."""
    if min(width, height) < min_size:
        raise ImageSkipped(f"{path}: {width}x{height} px is smaller than one {min_size}x{min_size} tile")


def decode_colour_jpeg(path: str, min_size: int) -> np.ndarray | None:
    """A colour JPEG decoded by libjpeg-turbo straight into a NumPy array (its EXIF Orientation
    applied, as Pillow's path does), or None.

    simplejpeg decodes colour JPEGs to the same pixels as Pillow (both use libjpeg-turbo's
    accurate IDCT) in ~70% of the time, without Pillow's extra copy into NumPy. Anything else
    (greyscale, CMYK, smaller than `min_size`, above MAX_IMAGE_PIXELS), or anything it refuses
    (truncated data raises in strict mode), is left to Pillow, whose errors name the problem.
    """
    import simplejpeg

    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "RGB") or min(height, width) < min_size or height * width > MAX_IMAGE_PIXELS:
            return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except Exception:  # noqa: BLE001 - whatever it is, Pillow reads the file again and reports it
        return None
    configure_pillow()
    with Image.open(io.BytesIO(data)) as img:  # the header only: its EXIF block
        return upright(pixels, exif_orientation(img))


def load_czi(path: str, min_size: int) -> np.ndarray:
    """A whole CZI (:mod:`allen_sr.data.czi`) as HxWx3 uint8, within the same limits as other files."""
    from allen_sr.data.czi import CziImage

    image = CziImage(path)
    try:
        check_size(path, image.width, image.height, min_size)
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageSkipped(f"{path}: larger than {MAX_IMAGE_PIXELS} pixels; `allen-sr upscale` reads it region "
                               "by region, or export a region or a lower level")
        return image.read(0, 0, image.height, image.width)
    finally:
        image.close()


def check_image_file(path: str, missing: type[Exception] = ImageSkipped) -> None:
    """Raise an error naming ``path`` unless it is a file with something in it: ``missing`` when it
    cannot be read, ImageSkipped for a folder or an empty file."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise missing(f"{path}: cannot read ({exc.strerror}); check the path") from exc
    if os.path.isdir(path):
        raise ImageSkipped(f"{path} is a folder, not an image file; pass an image (a folder goes to --images)")
    if size == 0:
        raise ImageSkipped(f"{path}: empty file (0 bytes); replace it (download or export it again)")


def load_image(path: str, min_size: int = 64) -> np.ndarray:
    """Read `path` completely as HxWx3 uint8 or raise ImageSkipped saying why.

    Files smaller than `min_size` px on a side are skipped. Truncated files are errors, not
    silently padded: Pillow's LOAD_TRUNCATED_IMAGES stays off and simplejpeg runs in strict mode.
    """
    check_image_file(path)
    if path.lower().endswith(JPEG_SUFFIXES):
        pixels = decode_colour_jpeg(path, min_size)
        if pixels is not None:
            return pixels
    if path.lower().endswith(".czi"):
        return load_czi(path, min_size)
    depth: tuple[int | None, str] = (None, "")
    if is_tiff(path):
        depth = tiff_file_depth(path)
    elif path.lower().endswith(".png"):
        depth = png_depth(path)
    configure_pillow()
    try:
        with Image.open(path) as img:
            if img.format in ("GIF", "PNG", "WEBP") and img.n_frames > 1:  # Pillow would read the first frame
                raise ImageSkipped(f"{path}: holds {img.n_frames} frames (an animation); save the frame you want as "
                                   "its own file")
            deep = deep_colour(img)  # before load(), which forgets how the file stores its samples
            if not deep:
                img.load()
                if img.format == "PNG":
                    check_png_whole(path, img)
            check_size(path, *img.size, min_size)
            orientation = exif_orientation(img)
            if deep:
                return upright(deep_to_rgb(read_samples(path), path, depth), orientation)
            return upright(to_rgb_uint8(img, path, depth), orientation)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(f"{path}: larger than {MAX_IMAGE_PIXELS} pixels; downsample it first ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and OSError for
        # truncated data ("image file is truncated").
        if isinstance(exc, UnidentifiedImageError) and is_tiff(path):
            import tifffile

            pixels = read_samples(path)  # a TIFF Pillow does not read (floating-point colour)
            check_size(path, pixels.shape[1], pixels.shape[0], min_size)
            with tifffile.TiffFile(path) as tif:
                return upright(deep_to_rgb(pixels, path, depth), tiff_orientation(tif.pages[0]))
        raise ImageSkipped(f"{path}: not a readable image ({exc}); replace or remove the file") from exc
