"""Cutting uint8 RGB images into tissue tiles, the train/dev split, and area downsampling.

One image array in, tiles out (reading files is :mod:`allen_sr.data.images`). No TensorFlow.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

__all__ = [
    "TILE_SIZE", "TISSUE_MAX_MEAN", "TISSUE_MIN_SPREAD", "TISSUE_MIN_FRACTION", "tissue_mask",
    "tissue_fraction", "grid_tiles", "tissue_tile_strips", "tissue_tiles", "split_of",
    "area_downsample",
]

TILE_SIZE = 64

# Tissue filter for brightfield slides (white background, dark stain). A pixel is tissue when
# its mean over RGB is below TISSUE_MAX_MEAN (darker than the bright slide glass) or its channel
# spread max-min is at least TISSUE_MIN_SPREAD (coloured stain, even when pale). A tile is kept
# when at least TISSUE_MIN_FRACTION of its pixels are tissue. Tuned on real brightfield slides
# (tests/test_tiles.py checks it keeps stained tissue and drops glass).
TISSUE_MAX_MEAN = 200
TISSUE_MIN_SPREAD = 30
TISSUE_MIN_FRACTION = 0.2


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
    ones between splits, and one image's tiles never land in both. A name that is not UTF-8 (its
    undecodable bytes held as surrogates) hashes its bytes as they are; any other name, as UTF-8.
    """
    digest = hashlib.sha256(image_key.encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "dev" if u < dev_fraction else "train"


def area_downsample(tile: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks (the 'area' resize), rounded to uint8."""
    h, w, c = tile.shape
    blocks = tile.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
