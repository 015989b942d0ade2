"""Reading image files robustly as uint8 RGB arrays (no TensorFlow).

Everything a user might point us at is handled here: corrupt or truncated files, greyscale, RGBA,
16-bit and palette images are converted or skipped with a warning naming the file, so that one
bad file never stops a dataset build. Every function here that opens a file with Pillow first
calls :func:`configure_pillow`.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from allen_sr.errors import MissingInputError, UserError

__all__ = [
    "MAX_IMAGE_PIXELS", "IMAGE_SUFFIXES", "ImageSkipped", "configure_pillow", "list_images",
    "image_id", "is_tiff", "image_size", "to_rgb_uint8", "decode_colour_jpeg", "load_image",
    "SAMPLE_BITS", "white_level", "scale_to_uint8", "announced_white", "colour_samples", "samples_to_rgb", "deep_to_rgb",
]

# Full-resolution Allen section images are about 15000 x 8500 px (~130 MP), above Pillow's
# default decompression-bomb limit (~89 MP: a warning; twice that: an error). 250 MP, about twice
# a full section, opens every real section without a warning, while a header claiming more is far
# more likely corrupt than a section. A 250 MP RGB image is 750 MB as uint8: images are decoded
# once as uint8 (never float), so peak memory stays about that per worker.
MAX_IMAGE_PIXELS = 250_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

# Sample depths cameras and scanners write. An image of more than 8 bits per sample is read as the
# shallowest of these that holds its brightest sample: a 12-bit camera's 0-4095, stored in a 16-bit
# file, reads as 0-255 rather than as 0-16 (near black). Metadata that names the depth
# (OME-XML's SignificantBits) wins.
SAMPLE_BITS = (8, 10, 12, 14, 16)


class ImageSkipped(UserError):
    """An input file that cannot be used; the message names the file and the reason."""


def configure_pillow() -> None:
    """Set Pillow's process-wide decompression-bomb limit to :data:`MAX_IMAGE_PIXELS`.

    Called by every function that opens image files with Pillow (here and in
    :func:`allen_sr.data.manifest.verify_image_file`), right before it opens one; importing a
    module never changes Pillow's settings.
    """
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def list_images(folder: str) -> list[str]:
    """Image files directly inside `folder`, sorted (hidden and partial files ignored)."""
    if not os.path.isdir(folder):
        raise MissingInputError(f"image folder {folder!r} does not exist: pass the folder holding your images")
    names = sorted(
        n for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
    )
    return [os.path.join(folder, n) for n in names]


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: str) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def image_id(path: str) -> str:
    """The id a file is known by: its name without extension (Allen downloads are `<id>.jpg`)."""
    return os.path.splitext(os.path.basename(path))[0]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header only; OSError/ValueError when unreadable."""
    configure_pillow()
    with Image.open(path) as im:
        return im.size


def white_level(peak: float, dtype: np.dtype | type, significant_bits: int | None = None) -> float:
    """The sample value of an image of ``dtype`` that reads as 255 (white).

    uint8: 255. Deeper unsigned integers: ``2**significant_bits - 1`` when the file says how many
    bits are significant, else the smallest depth of :data:`SAMPLE_BITS` (or the type's own) whose
    top holds ``peak``, the image's brightest sample. Floating point: 1.0 when every sample lies
    within [0, 1], else 255 (samples already on the 8-bit scale).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 1.0 if peak <= 1.0 else 255.0
    bits = dtype.itemsize * 8
    if significant_bits and 8 <= significant_bits <= bits:
        return float(2 ** significant_bits - 1)
    for depth in (*(b for b in SAMPLE_BITS if b < bits), bits):
        if peak <= 2 ** depth - 1:
            return float(2 ** depth - 1)
    return float(2 ** bits - 1)


def scale_to_uint8(pixels: np.ndarray, white: float) -> np.ndarray:
    """``pixels`` with ``white`` read as 255, rounded and clipped to uint8."""
    if pixels.dtype == np.uint8 and white == 255:
        return pixels
    return np.clip(np.rint(pixels.astype(np.float32) * np.float32(255.0 / white)), 0, 255).astype(np.uint8)


def announced_white(name: str, dtype: np.dtype | type, peak: float, significant_bits: int | None = None) -> float:
    """:func:`white_level` of an image of more than 8 bits per sample, with a warning naming the
    image that says how it is read (``peak``: its brightest colour sample, unused when
    ``significant_bits`` states an unsigned integer image's depth)."""
    white = white_level(peak, dtype, significant_bits)
    if np.dtype(dtype).kind == "u":
        found = f"SignificantBits={significant_bits}" if white == 2 ** (significant_bits or 0) - 1 else f"samples up to {peak:g}"
        how, depth = found, f" ({int(white).bit_length()}-bit data)"
    else:
        how, depth = f"samples up to {peak:g}", ""
    warnings.warn(f"{name}: {np.dtype(dtype)} image, {how}: 0-{white:g} read as 0-255{depth}")
    return white


def colour_samples(samples: np.ndarray) -> np.ndarray:
    """The colour samples of [..., 1|2|3|4] (grey, grey + extra, RGB, RGB + extra): [..., :1] or [..., :3]."""
    return samples[..., :3] if samples.shape[-1] >= 3 else samples[..., :1]


def samples_to_rgb(samples: np.ndarray, white: float, alpha: str | None = None) -> np.ndarray:
    """uint8 [h, w, 3] from samples [h, w, 1|2|3|4]: the colour samples with ``white`` read as 255,
    greyscale repeated; an extra (last) sample of 2 or 4 is alpha composited on white (the
    brightfield background) when ``alpha`` is ``"straight"`` or ``"premultiplied"``, else ignored."""
    rgb = scale_to_uint8(colour_samples(samples), white)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if alpha is None or samples.shape[-1] not in (2, 4):
        return rgb
    top = 1.0 if samples.dtype.kind == "f" else float(np.iinfo(samples.dtype).max)  # alpha: the type's range
    a = np.clip(samples[..., -1:].astype(np.float32) / np.float32(top), 0.0, 1.0)
    covered = rgb if alpha == "premultiplied" else rgb * a
    return np.clip(np.rint(covered + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)


def deep_to_rgb(raw: np.ndarray, path: str) -> np.ndarray:
    """HxWx3 uint8 from a whole image of more than 8 bits per sample ([h, w] or [h, w, 1-4]),
    scaled by its :func:`white_level`, with a warning that says how; alpha is composited on white."""
    if raw.dtype.kind not in "uf":
        raise ImageSkipped(f"{path}: {raw.dtype} samples are not supported; convert the image to unsigned 8 or 16 bit")
    pixels = raw[:, :, None] if raw.ndim == 2 else raw
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ImageSkipped(f"{path}: pixels of shape {raw.shape[2:]} per position; expected greyscale or RGB(A)")
    white = 255.0
    if raw.dtype != np.uint8:
        white = announced_white(path, raw.dtype, float(colour_samples(pixels).max(initial=0)))
    return samples_to_rgb(pixels, white, "straight")


def to_rgb_uint8(img: Image.Image, path: str = "<image>") -> np.ndarray:
    """Convert any Pillow image to an HxWx3 uint8 array, with a warning for lossy conversions.

    RGBA and LA are composited on white (the brightfield slide background), 16-bit and
    floating-point greyscale are scaled by their :func:`white_level`, palette and CMYK images are
    converted. (16-bit colour, which Pillow cuts to its top 8 bits, is read by :func:`load_image`.)
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        if mode == "I" and arr.min(initial=0) >= 0:  # 32-bit signed as Pillow holds it; negative: refused
            arr = arr.astype(np.uint16 if arr.max(initial=0) <= 65535 else np.uint32)
        return deep_to_rgb(arr, path)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
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


def check_size(path: str, width: int, height: int, min_size: int) -> None:
    """ImageSkipped when ``path`` is smaller than one ``min_size`` tile."""
    if min(width, height) < min_size:
        raise ImageSkipped(f"{path}: {width}x{height} px is smaller than one {min_size}x{min_size} tile")


def decode_colour_jpeg(path: str, min_size: int) -> np.ndarray | None:
    """A colour JPEG decoded by libjpeg-turbo straight into a NumPy array, or None.

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
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except Exception:  # noqa: BLE001 - whatever it is, Pillow reads the file again and reports it
        return None


def load_image(path: str, min_size: int = 64) -> np.ndarray:
    """Read `path` completely as HxWx3 uint8 or raise ImageSkipped saying why.

    Files smaller than `min_size` px on a side are skipped. Truncated files are errors, not
    silently padded: Pillow's LOAD_TRUNCATED_IMAGES stays off and simplejpeg runs in strict mode.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageSkipped(f"{path}: cannot read ({exc.strerror})") from exc
    if size == 0:
        raise ImageSkipped(f"{path}: empty file (0 bytes); delete it or download it again")
    if path.lower().endswith((".jpg", ".jpeg")):
        pixels = decode_colour_jpeg(path, min_size)
        if pixels is not None:
            return pixels
    configure_pillow()
    try:
        with Image.open(path) as img:
            deep = deep_colour(img)  # before load(), which forgets how the file stores its samples
            if not deep:
                img.load()
            check_size(path, *img.size, min_size)
            if deep:
                return deep_to_rgb(read_samples(path), path)
            return to_rgb_uint8(img, path)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(f"{path}: larger than {MAX_IMAGE_PIXELS} pixels; downsample it first ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and OSError for
        # truncated data ("image file is truncated").
        if isinstance(exc, UnidentifiedImageError) and is_tiff(path):
            pixels = read_samples(path)  # a TIFF Pillow does not read (floating-point colour)
            check_size(path, pixels.shape[1], pixels.shape[0], min_size)
            return deep_to_rgb(pixels, path)
        raise ImageSkipped(f"{path}: not a readable image ({exc}); replace or remove the file") from exc
