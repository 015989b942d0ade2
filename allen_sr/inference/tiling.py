"""Tiled, blended, streaming prediction of an image of any size.

:func:`predict_bands` walks the tile grid row by row, predicts the tiles of a group of tile rows
in batches, adds each prediction times its blending weight (`allen_sr.inference.blend`) into an
accumulator that spans only the output rows those tiles cover, and yields every output row as
soon as no later tile can touch it. Memory is the accumulator (about one tile row of output) and
one batch of tiles, whatever the size of the image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from allen_sr.inference.blend import axis_profiles, axis_weight_sum, tile_starts
from allen_sr.inference.sources import ImageSource

__all__ = ["TileLayout", "first_tile_row", "plan_tiles", "predict_bands", "Predict"]

# uint8 [N, h, w, C] tiles -> float [N, h*f, w*f, C] predictions (0-255 scale).
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TileLayout:
    """The tile grid of an image: tile sizes, starts along each axis, the blending context."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    rows: list[int]
    cols: list[int]
    overlap: int
    context: int

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_tiles(height: int, width: int, tile: int, overlap: int, context: int = 0,
               min_tile: int = 1, name: str = "the image", exact_tile: bool = False) -> TileLayout:
    """Tiles of ``tile`` px (or the image's side where smaller) overlapping by ``overlap`` px.

    ``exact_tile``: the model takes only ``tile`` x ``tile`` inputs (the Image Transformer), so
    tiles never shrink. ValueError for an image smaller than ``min_tile`` or bad sizes.
    """
    if tile < min_tile:
        raise ValueError(f"--tile must be at least {min_tile} px, got {tile}")
    if overlap < 0 or 2 * overlap > tile:
        raise ValueError(f"--overlap must be between 0 and half the tile ({tile // 2} px), got {overlap}")
    smallest = tile if exact_tile else min_tile
    if height < smallest or width < smallest:
        raise ValueError(f"{name}: the region is {width}x{height} px, smaller than one "
                         f"{smallest}x{smallest} px tile; choose a larger region or image")
    tile_h, tile_w = (tile, tile) if exact_tile else (min(tile, height), min(tile, width))
    return TileLayout(height, width, tile_h, tile_w, tile_starts(height, tile_h, overlap),
                      tile_starts(width, tile_w, overlap), overlap, context)


def first_tile_row(layout: TileLayout, factor: int, first_row: int) -> int:
    """Index of the first tile row whose prediction reaches output row ``first_row`` or below."""
    return next((i for i, s in enumerate(layout.rows) if (s + layout.tile_h) * factor > first_row),
                len(layout.rows))


def predict_bands(source: ImageSource, layout: TileLayout, predict: Predict, factor: int,
                  batch_tiles: int = 1, progress: bool = True, channels: int = 3,
                  to_model: Callable[[np.ndarray], np.ndarray] | None = None,
                  first_row: int = 0) -> Iterator[np.ndarray]:
    """Yield the blended uint8 prediction of ``source`` as consecutive bands of output rows.

    ``to_model`` converts an input block before it is cut into tiles (e.g. to greyscale).
    The bands add up to height * factor - ``first_row`` rows of width * factor px: output rows
    from ``first_row`` on (the ones above come from an earlier, interrupted run). Only the tile
    rows that reach those rows are predicted, and each output row still gets every tile that
    covers it, so the rows equal those of a run from the top.
    """
    bands = _blended_bands(source, layout, predict, factor, batch_tiles, progress, channels,
                           to_model, first_tile_row(layout, factor, first_row))
    for y0, band in bands:
        skip = max(0, first_row - y0)
        if skip < band.shape[0]:
            yield band[skip:]


def _blended_bands(source: ImageSource, layout: TileLayout, predict: Predict, factor: int,
                   batch_tiles: int, progress: bool, channels: int,
                   to_model: Callable[[np.ndarray], np.ndarray] | None,
                   r0: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first output row, band) of the prediction from tile row ``r0`` on. Rows that tile rows
    before ``r0`` also reach lack those tiles' share; the caller drops them."""
    th, tw = layout.tile_h, layout.tile_w
    rows, cols = layout.rows, layout.cols
    prof_y = [w.astype(np.float32) for w in axis_profiles(rows, th, factor, layout.context)]
    prof_x = [w.astype(np.float32) for w in axis_profiles(cols, tw, factor, layout.context)]
    sum_y = axis_weight_sum(rows, prof_y, layout.height * factor, factor)
    sum_x = axis_weight_sum(cols, prof_x, layout.width * factor, factor).astype(np.float32)
    out_w = layout.width * factor
    group = max(1, min(len(rows), math.ceil(batch_tiles / len(cols))))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(len(rows) - r0) * len(cols), unit="tile", mininterval=1.0, smoothing=0.1,
                   desc=f"x{factor} {layout.width}x{layout.height} px")
    acc_y0 = rows[r0] * factor if r0 < len(rows) else layout.height * factor
    acc: np.ndarray | None = None
    start_time = time.perf_counter()
    try:
        for g0 in range(r0, len(rows), group):
            g_rows = list(range(g0, min(g0 + group, len(rows))))
            top = rows[g_rows[0]] * factor
            bottom = (rows[g_rows[-1]] + th) * factor
            # Rows above this group's first tile are final: no later tile reaches them.
            if acc is not None and top > acc_y0:
                yield acc_y0, finish(acc[:top - acc_y0], sum_y[acc_y0:top], sum_x)
                acc = acc[top - acc_y0:]
                acc_y0 = top
            need = bottom - acc_y0
            if acc is None or acc.shape[0] < need:
                grown = np.zeros((need, out_w, channels), np.float32)
                if acc is not None:
                    grown[:acc.shape[0]] = acc
                acc = grown
            jobs = [(r, c) for r in g_rows for c in range(len(cols))]
            blocks = {}
            for r in g_rows:
                block = source.read(rows[r], 0, th, layout.width)
                blocks[r] = to_model(block) if to_model is not None else block
            for b in range(0, len(jobs), batch_tiles):
                chunk = jobs[b:b + batch_tiles]
                tiles = np.stack([blocks[r][:, cols[c]:cols[c] + tw] for r, c in chunk])
                preds = predict(tiles)
                for (r, c), p in zip(chunk, preds):
                    y = rows[r] * factor - acc_y0
                    x = cols[c] * factor
                    acc[y:y + th * factor, x:x + tw * factor] += weighted(p, prof_y[r], prof_x[c])
                if bar is not None:
                    bar.update(len(chunk))
                    mp = bar.n / layout.tiles * layout.height * layout.width * factor * factor / 1e6
                    bar.set_postfix_str(f"{mp / max(time.perf_counter() - start_time, 1e-9):.2f} out MP/s",
                                        refresh=False)
            del blocks
        if acc is not None:
            yield acc_y0, finish(acc[:layout.height * factor - acc_y0], sum_y[acc_y0:], sum_x)
    finally:
        if bar is not None:
            bar.close()


def not_one(values: np.ndarray) -> list[slice]:
    """The runs of ``values`` that differ from 1, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (values != 1.0).view(np.int8), [0]])))
    return [slice(a, b) for a, b in zip(edges[0::2], edges[1::2])]


def weighted(pred: np.ndarray, prof_y: np.ndarray, prof_x: np.ndarray) -> np.ndarray:
    """``pred`` [h, w, C] times the outer product of its axis profiles, in place where it can be.

    A profile is 1 except in the ramps at its ends, so only those rows and columns are scaled:
    a few per cent of the tile, instead of a weight array and a product the size of the tile."""
    if not pred.flags.writeable or pred.dtype != np.float32:
        pred = pred.astype(np.float32)
    for sl in not_one(prof_y):
        pred[sl] *= prof_y[sl, None, None]
    for sl in not_one(prof_x):
        pred[:, sl] *= prof_x[None, sl, None]
    return pred


def finish(acc: np.ndarray, sum_y: np.ndarray, sum_x: np.ndarray) -> np.ndarray:
    """Normalise accumulated rows by the weight sums and round to uint8, in place: the rows are
    final and their float copy is dropped, so no second float band is ever allocated."""
    sum_y = sum_y.astype(np.float32)
    for sl in not_one(sum_y):  # the weights add up to 1 outside the overlaps
        acc[sl] /= sum_y[sl, None, None]
    for sl in not_one(sum_x):
        acc[:, sl] /= sum_x[None, sl, None]
    np.rint(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)
