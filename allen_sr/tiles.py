"""Reading microscopy images robustly and cutting them into tissue tiles (no TensorFlow).

One image in, uint8 RGB tiles out. Everything a user might point us at is handled here: corrupt
or truncated files, greyscale, RGBA, 16-bit and palette images are converted or skipped with a
warning naming the file, so that one bad file never stops a dataset build.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Iterator

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Full-resolution Allen section images are about 15000 x 8500 px (~130 MP). Pillow's default
# bomb guard warns at ~89 MP and refuses at ~179 MP; we allow up to 250 MP deliberately and
# refuse anything larger with a clear message. A 250 MP RGB image is 750 MB as uint8: images
# are decoded once as uint8 (never float), so peak memory stays about that per worker.
MAX_IMAGE_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

TILE_SIZE = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

# Tissue filter for brightfield slides (white background, dark stain). A pixel is tissue when
# its mean over RGB is below TISSUE_MAX_MEAN (darker than the bright slide glass) or its channel
# spread max-min is at least TISSUE_MIN_SPREAD (coloured stain, even when pale). A tile is kept
# when at least TISSUE_MIN_FRACTION of its pixels are tissue. Tuned on the real slides in
# shared/data/dev-images (tests/test_tiles.py checks it keeps stained tissue and drops glass).
TISSUE_MAX_MEAN = 200
TISSUE_MIN_SPREAD = 30
TISSUE_MIN_FRACTION = 0.2


class ImageSkipped(Exception):
    """An input file that cannot be used; the message names the file and the reason."""


def list_images(folder: str) -> list[str]:
    """Image files directly inside `folder`, sorted (hidden and partial files ignored)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist: pass the folder holding your images")
    names = sorted(
        n for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
    )
    return [os.path.join(folder, n) for n in names]


def image_id(path: str) -> str:
    """The id a file is known by: its name without extension (Allen downloads are `<id>.jpg`)."""
    return os.path.splitext(os.path.basename(path))[0]


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


def _decode_colour_jpeg(path: str, min_size: int) -> np.ndarray | None:
    """A colour JPEG decoded by libjpeg-turbo straight into a NumPy array, or None.

    Allen section images are colour JPEGs: simplejpeg decodes them to the same pixels as Pillow
    (both use libjpeg-turbo's accurate IDCT) in ~70% of the time, without Pillow's extra copy
    into NumPy. Anything else, or anything it refuses (truncated data raises in strict mode), is
    left to Pillow, whose errors name the problem.
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


def load_image(path: str, min_size: int = TILE_SIZE) -> np.ndarray:
    """Read `path` completely as HxWx3 uint8 or raise ImageSkipped saying why.

    Truncated files are errors, not silently padded: Pillow's LOAD_TRUNCATED_IMAGES stays off
    and simplejpeg runs in strict mode.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageSkipped(f"{path}: cannot read ({exc.strerror})") from exc
    if size == 0:
        raise ImageSkipped(f"{path}: empty file (0 bytes); delete it or download it again")
    if path.lower().endswith((".jpg", ".jpeg")):
        pixels = _decode_colour_jpeg(path, min_size)
        if pixels is not None:
            return pixels
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


def tissue_mask(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask (..., H, W) of tissue pixels for uint8 RGB arrays (..., H, W, 3)."""
    # This runs over every pixel of every image datagen reads. Copy the interleaved RGB into
    # three contiguous planes first: the ten element-wise passes below then run at SIMD speed
    # instead of striding (reductions over a last axis of length 3 are slower still).
    r, g, b = np.moveaxis(pixels, -1, 0).copy()
    total = r.astype(np.uint16)
    total += g
    total += b
    spread = np.maximum(r, g)
    np.maximum(spread, b, out=spread)
    low = np.minimum(r, g)
    np.minimum(low, b, out=low)
    spread -= low
    mask = total < 3 * TISSUE_MAX_MEAN
    mask |= spread >= TISSUE_MIN_SPREAD
    return mask


def tissue_fraction(tiles: np.ndarray) -> np.ndarray:
    """Fraction of tissue pixels per tile, for an array of tiles (N, H, W, 3)."""
    return tissue_mask(tiles).mean(axis=(-2, -1))


def grid_tiles(image: np.ndarray, size: int = TILE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All non-overlapping size x size tiles of `image` on a grid from the top-left corner.

    Returns (tiles [N, size, size, C], positions [N, 2] as (top, left)). A view-based reshape:
    no per-tile Python loop and no copy of the whole image beyond the cropped grid.
    """
    rows, cols = image.shape[0] // size, image.shape[1] // size
    if rows == 0 or cols == 0:
        return np.zeros((0, size, size, image.shape[2]), np.uint8), np.zeros((0, 2), np.int64)
    grid = image[: rows * size, : cols * size]
    tiles = grid.reshape(rows, size, cols, size, -1).swapaxes(1, 2).reshape(rows * cols, size, size, -1)
    ys, xs = np.meshgrid(np.arange(rows) * size, np.arange(cols) * size, indexing="ij")
    return tiles, np.stack([ys.ravel(), xs.ravel()], axis=1)


def tissue_tile_strips(image: np.ndarray, size: int = TILE_SIZE,
                       min_fraction: float = TISSUE_MIN_FRACTION) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Per strip of `size` rows: (kept tiles, their positions, number rejected).

    Working one strip at a time keeps the temporaries (int16 copies for the filter, the tile
    reshape) to one strip's size, so a 15000 x 8500 px slide needs little beyond its own pixels.
    """
    cols = image.shape[1] // size
    if cols == 0:
        return
    for top in range(0, image.shape[0] - size + 1, size):
        strip = image[top:top + size, :cols * size]
        # Tissue pixels per tile, counted on the strip as it lies in memory (no tile copies),
        # then only the kept tiles are gathered (one copy).
        counts = tissue_mask(strip).view(np.uint8).reshape(size, cols, size).sum(axis=(0, 2), dtype=np.int32)
        keep = np.flatnonzero(counts >= min_fraction * size * size)
        kept = strip.reshape(size, cols, size, -1).swapaxes(0, 1)[keep]
        positions = np.stack([np.full(len(keep), top), keep * size], axis=1).astype(np.int64)
        yield kept, positions, cols - len(keep)


def tissue_tiles(image: np.ndarray, size: int = TILE_SIZE,
                 min_fraction: float = TISSUE_MIN_FRACTION) -> tuple[np.ndarray, np.ndarray, int]:
    """Grid tiles that pass the tissue filter: (tiles, positions, number rejected)."""
    kept, positions, rejected = [], [], 0
    for k, p, r in tissue_tile_strips(image, size, min_fraction):
        kept.append(k)
        positions.append(p)
        rejected += r
    if not kept:
        return np.zeros((0, size, size, image.shape[2]), np.uint8), np.zeros((0, 2), np.int64), rejected
    return np.concatenate(kept), np.concatenate(positions), rejected


def split_of(image_key: str, dev_fraction: float) -> str:
    """'train' or 'dev' for an image, from a hash of its id.

    Deterministic and independent of the other images, so adding images never moves existing
    ones between splits, and one image's tiles never land in both.
    """
    digest = hashlib.sha256(image_key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "dev" if u < dev_fraction else "train"


def area_downsample(tile: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks (the 'area' resize), rounded to uint8."""
    h, w, c = tile.shape
    blocks = tile.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
