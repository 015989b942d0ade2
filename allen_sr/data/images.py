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
from PIL import Image

from allen_sr.errors import MissingInputError, UserError

__all__ = [
    "MAX_IMAGE_PIXELS", "IMAGE_SUFFIXES", "ImageSkipped", "configure_pillow", "list_images",
    "image_id", "image_size", "to_rgb_uint8", "decode_colour_jpeg", "load_image",
]

# Full-resolution Allen section images are about 15000 x 8500 px (~130 MP), above Pillow's
# default decompression-bomb limit (~89 MP: a warning; twice that: an error). 250 MP, about twice
# a full section, opens every real section without a warning, while a header claiming more is far
# more likely corrupt than a section. A 250 MP RGB image is 750 MB as uint8: images are decoded
# once as uint8 (never float), so peak memory stays about that per worker.
MAX_IMAGE_PIXELS = 250_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


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


def image_id(path: str) -> str:
    """The id a file is known by: its name without extension (Allen downloads are `<id>.jpg`)."""
    return os.path.splitext(os.path.basename(path))[0]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header only; OSError/ValueError when unreadable."""
    configure_pillow()
    with Image.open(path) as im:
        return im.size


def to_rgb_uint8(img: Image.Image, path: str = "<image>") -> np.ndarray:
    """Convert any Pillow image to an HxWx3 uint8 array, with a warning for lossy conversions.

    RGBA and LA are composited on white (the brightfield slide background), 16-bit greyscale is
    scaled from its full range, palette and CMYK images are converted.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        warnings.warn(f"{path}: {mode} image scaled from 0-{top:.0f} to 8 bits")
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        warnings.warn(f"{path}: floating-point image rescaled from [{lo:g}, {hi:g}] to 8 bits")
        grey = np.round((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode in ("L", "1"):
        warnings.warn(f"{path}: greyscale image converted to RGB (equal channels)")
    return np.asarray(img.convert("RGB") if mode != "RGB" else img)


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
            img.load()
            if min(img.size) < min_size:
                raise ImageSkipped(
                    f"{path}: {img.size[0]}x{img.size[1]} px is smaller than one {min_size}x{min_size} tile")
            return to_rgb_uint8(img, path)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(f"{path}: larger than {MAX_IMAGE_PIXELS} pixels; downsample it first ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images and OSError for
        # truncated data ("image file is truncated").
        raise ImageSkipped(f"{path}: not a readable image ({exc}); replace or remove the file") from exc
