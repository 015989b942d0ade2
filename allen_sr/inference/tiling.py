"""Tiled, blended, streaming prediction of an image of any size.

:func:`predict_bands` walks the tile grid row by row, predicts the tiles of a group of tile rows
in batches and yields every output row as soon as no later tile can touch it. Where a tile's
blending weight (`allen_sr.inference.blend`) is 1 and its neighbours' 0, its prediction is
copied into a uint8 band that spans only the output rows those tiles cover; in the overlaps'
ramps each prediction times its weight goes into a float accumulator of the same rows,
normalised when the rows are final. Memory is the band (about one tile row of output) and one
batch of tiles, whatever the size of the image.
"""
from __future__ import annotations

import collections
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar

import numpy as np

from allen_sr.inference.blend import axis_profiles, axis_weight_sum, tile_starts
from allen_sr.inference.sources import ImageSource
from allen_sr.errors import InvalidInputError

__all__ = ["TileLayout", "check_region_size", "check_tile", "first_tile_row", "plan_tiles", "predict_bands", "Predict",
           "region_rows"]

T = TypeVar("T")
# uint8 [N, h, w, C] tiles -> [N, h*f, w*f, C] predictions, 0-255: uint8 (already rounded) or float.
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
    ramp: int | None = None  # input px the blending rises over at most (None: the whole overlap)

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)


def check_tile(tile: int, overlap: int, min_tile: int = 1) -> None:
    """InvalidInputError unless ``tile`` >= ``min_tile`` px and ``overlap`` is 0 to half a tile."""
    if tile < min_tile:
        raise InvalidInputError(f"tile size must be at least {min_tile} px, got {tile}")
    if overlap < 0 or 2 * overlap > tile:
        raise InvalidInputError(f"tile overlap must be between 0 and half the tile ({tile // 2} px), got {overlap}")


def check_region_size(height: int, width: int, smallest: int, name: str = "the image") -> None:
    """InvalidInputError naming ``name`` when a side is below ``smallest`` px (one tile)."""
    if height < smallest or width < smallest:
        raise InvalidInputError(f"{name}: the region is {width}x{height} px, smaller than one "
                                f"{smallest}x{smallest} px tile; choose a larger region or image")


def plan_tiles(height: int, width: int, tile: int, overlap: int, context: int = 0,
               min_tile: int = 1, name: str = "the image", exact_tile: bool = False,
               ramp: int | None = None) -> TileLayout:
    """Tiles of at most ``tile`` px (:func:`fitted`; the image's side where smaller) overlapping by
    ``overlap`` px.

    ``exact_tile``: the model takes only ``tile`` x ``tile`` inputs (the Image Transformer), so
    tiles never shrink. ``context`` and ``ramp``: see `allen_sr.inference.blend.axis_profiles`.
    ValueError for an image smaller than ``min_tile`` or bad sizes.
    """
    check_tile(tile, overlap, min_tile)
    check_region_size(height, width, tile if exact_tile else min_tile, name)
    tile_h, tile_w = (tile, tile) if exact_tile else (fitted(height, tile, overlap), fitted(width, tile, overlap))
    return TileLayout(height, width, tile_h, tile_w, tile_starts(height, tile_h, overlap),
                      tile_starts(width, tile_w, overlap), overlap, context, ramp)


def fitted(length: int, tile: int, overlap: int) -> int:
    """The smallest tile side, at most ``tile``, that covers ``length`` px with as few tiles as
    ``tile`` px would, overlapping by ``overlap``: no more recomputed overlap than asked for
    (2500 px in 384 px tiles: 7 of 380 px, not 7 of 384 spread to overlap by 31)."""
    if tile >= length:
        return length
    count = max(2, math.ceil((length - overlap) / (tile - overlap)))
    return min(tile, math.ceil((length - overlap) / count) + overlap)


def first_tile_row(layout: TileLayout, factor: int, first_row: int) -> int:
    """Index of the first tile row whose prediction reaches output row ``first_row`` or below."""
    return next((i for i, s in enumerate(layout.rows) if (s + layout.tile_h) * factor > first_row),
                len(layout.rows))


def predict_bands(source: ImageSource, layout: TileLayout, predict: Predict, factor: int,
                  batch_tiles: int = 1, progress: bool = True, channels: int = 3,
                  to_model: Callable[[np.ndarray], np.ndarray] | None = None,
                  first_row: int = 0, rounded: bool = True,
                  origin: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield the blended uint8 prediction of ``source`` as consecutive bands of output rows
    (``rounded=False``: float32, not rounded, e.g. to carry an uncertainty map as a channel).

    ``to_model`` converts an input block before it is cut into tiles (e.g. to greyscale).
    The bands add up to height * factor - ``first_row`` rows of width * factor px: output rows
    from ``first_row`` on (the ones above come from an earlier, interrupted run). Only the tile
    rows that reach those rows are predicted, and each output row still gets every tile that
    covers it, so the rows equal those of a run from the top.
    ``origin``: where ``source`` starts in its whole image (input px, top and left); given, ``predict``
    is called with the tiles and a list of their (top, left) there (e.g. to key random draws on).
    """
    bands = _blended_bands(source, layout, predict, factor, batch_tiles, progress, channels,
                           to_model, first_tile_row(layout, factor, first_row), rounded, origin)
    for y0, band in bands:
        skip = max(0, first_row - y0)
        if skip < band.shape[0]:
            yield band[skip:]


def region_rows(bands: Iterator[np.ndarray], left: int, width: int, count: int) -> Iterator[np.ndarray]:
    """The columns ``left``..``left + width`` of the first ``count`` rows of ``bands`` (output px):
    a region's rows out of the prediction of the region and its margin (whose top rows the bands
    already skip). ``bands`` is closed once ``count`` rows are out: tile rows below are not predicted."""
    try:
        for band in bands if count > 0 else ():
            yield band[:count, left:left + width]
            count -= band.shape[0]
            if count <= 0:
                break
    finally:
        close = getattr(bands, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class AxisPlan:
    """Along one axis, per tile: its weights at the output resolution (float32), where they are
    not 0 (``lo``..``hi``) and where the tile alone counts (``solo``: its weight is 1 and every
    other tile's is 0), all in output px from the tile's start; and the weight sums of the axis."""

    starts: list[int]  # output px
    profiles: list[np.ndarray]
    lo: list[int]
    hi: list[int]
    solo: list[tuple[int, int]]
    sums: np.ndarray  # float32, per output px of the axis
    solo_mask: np.ndarray  # bool, per output px: one tile alone counts there


def plan_axis(starts: list[int], tile: int, factor: int, context: int, length: int,
              ramp: int | None = None) -> AxisPlan:
    """The plan of tiles of ``tile`` px at ``starts`` (input px) along an axis of ``length`` input
    px; ``context`` and ``ramp`` as `allen_sr.inference.blend.axis_profiles` takes them."""
    profiles = axis_profiles(starts, tile, factor, context, ramp)
    sums = axis_weight_sum(starts, profiles, length * factor, factor)
    lo, hi, solo = [], [], []
    mask = np.zeros(length * factor, bool)
    for start, w in zip(starts, profiles):
        nonzero = np.flatnonzero(w > 0)
        lo.append(int(nonzero[0]))
        hi.append(int(nonzero[-1]) + 1)
        alone = np.flatnonzero((w == 1.0) & (sums[start * factor:start * factor + len(w)] == 1.0))
        # One run (always, for layouts of plan_tiles); anything else counts as no solo run.
        a, b = (int(alone[0]), int(alone[-1]) + 1) if len(alone) and alone[-1] - alone[0] + 1 == len(alone) \
            else (lo[-1], lo[-1])
        solo.append((a, b))
        mask[start * factor + a:start * factor + b] = True
    return AxisPlan([s * factor for s in starts], [w.astype(np.float32) for w in profiles], lo, hi, solo,
                    sums.astype(np.float32), mask)


def runs(mask: np.ndarray) -> list[slice]:
    """The runs of True in a boolean ``mask``, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
    return [slice(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def _blended_bands(source: ImageSource, layout: TileLayout, predict: Predict, factor: int,
                   batch_tiles: int, progress: bool, channels: int,
                   to_model: Callable[[np.ndarray], np.ndarray] | None,
                   r0: int, rounded: bool = True,
                   origin: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first output row, band) of the prediction from tile row ``r0`` on. Rows that tile rows
    before ``r0`` also reach lack those tiles' share; the caller drops them.

    Where one tile alone counts (most of each tile: the weights are 1 there and its neighbours'
    0) its prediction is copied into the uint8 band; only the overlaps' blending ramps are
    accumulated in float and normalised, so a large tile costs about one copy per pixel.
    """
    th, tw = layout.tile_h, layout.tile_w
    rows, cols = layout.rows, layout.cols
    py = plan_axis(rows, th, factor, layout.context, layout.height, layout.ramp)
    px = plan_axis(cols, tw, factor, layout.context, layout.width, layout.ramp)
    blend_cols = runs(~px.solo_mask)
    out_w = layout.width * factor
    group = max(1, min(len(rows), math.ceil(batch_tiles / len(cols))))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(len(rows) - r0) * len(cols), unit="tile", mininterval=1.0, smoothing=0.1,
                   desc=f"x{factor} {layout.width}x{layout.height} px")
    y0 = rows[r0] * factor if r0 < len(rows) else layout.height * factor
    dtype = np.uint8 if rounded else np.float32
    band: np.ndarray | None = None  # uint8 rows y0.., final where one tile alone counts
    # float32 rows y0.. (its first ``active`` rows), the weighted sums of the blending ramps. One
    # buffer for the whole run, zero wherever it is not in use: a fresh one per group of tiles
    # would fault in its pages again, which cost more than the blending itself.
    acc = np.zeros((0, out_w, channels), np.float32)
    active = 0

    def finished(stop: int) -> np.ndarray:
        """Rows y0..stop of the band, their blended pixels normalised from ``acc`` (whose rows
        are left zero)."""
        assert band is not None
        for ys in runs(~py.solo_mask[y0:stop]):  # rows in a ramp: every pixel is blended
            band[ys] = finish(acc[ys], py.sums[y0 + ys.start:y0 + ys.stop], px.sums, rounded)
            acc[ys] = 0
        for ys in runs(py.solo_mask[y0:stop]):
            for xs in blend_cols:
                band[ys, xs] = finish(acc[ys, xs], py.sums[y0 + ys.start:y0 + ys.stop], px.sums[xs], rounded)
                acc[ys, xs] = 0
        return band[:stop - y0]

    start_time = time.perf_counter()
    # Up to a tile row of predictions ahead: writing a finished band (compressing it) takes a
    # while, and the model should not wait for it.
    def run(job: tuple[tuple[int, ...], list[tuple[int, int]], np.ndarray]) -> np.ndarray:
        if origin is None:
            return predict(job[2])
        origins = [(origin[0] + rows[r], origin[1] + cols[c]) for r, c in job[1]]
        return predict(job[2], origins)  # type: ignore[call-arg]

    predictions = ahead_map(lambda job: (job[0], job[1], run(job)),
                            _tile_batches(source, layout, batch_tiles, to_model, r0, group),
                            ahead=max(1, len(cols) // batch_tiles))
    current = None
    try:
        for g_rows, chunk, preds in predictions:
            if g_rows != current:  # the first batch of a group of tile rows
                current = g_rows
                top = rows[g_rows[0]] * factor
                bottom = (rows[g_rows[-1]] + th) * factor
                # Rows above this group's first tile are final: no later tile reaches them.
                if band is not None and top > y0:
                    yield y0, finished(top)
                    done, active = top - y0, max(active - (top - y0), 0)
                    band, y0 = band[done:], top
                    acc[:active] = acc[done:done + active]  # the rows still accumulating, to the top
                    acc[max(active, done):done + active] = 0
                need = bottom - y0
                if band is None or band.shape[0] < need:
                    grown = np.empty((need, out_w, channels), dtype)
                    if band is not None:
                        grown[:band.shape[0]] = band
                    band = grown
                if acc.shape[0] < need:
                    grown_acc = np.zeros((need, out_w, channels), np.float32)
                    grown_acc[:active] = acc[:active]
                    acc = grown_acc
                active = max(active, need)
            for (r, c), p in zip(chunk, preds):
                add_tile(band, acc, p, py.starts[r] - y0, px.starts[c], py, px, r, c)
            if bar is not None:
                bar.update(len(chunk))
                mp = bar.n / layout.tiles * layout.height * layout.width * factor * factor / 1e6
                bar.set_postfix_str(f"{mp / max(time.perf_counter() - start_time, 1e-9):.2f} out MP/s",
                                    refresh=False)
        if band is not None:
            yield y0, finished(layout.height * factor)
    finally:
        predictions.close()
        if bar is not None:
            bar.close()


def _tile_batches(source: ImageSource, layout: TileLayout, batch_tiles: int,
                  to_model: Callable[[np.ndarray], np.ndarray] | None, r0: int,
                  group: int) -> Iterator[tuple[tuple[int, ...], list[tuple[int, int]], np.ndarray]]:
    """(tile rows of the group, the batch's (row, column) tiles, the tiles), in order: groups of
    ``group`` tile rows from ``r0`` on, each read once and cut into batches."""
    th, tw, rows, cols = layout.tile_h, layout.tile_w, layout.rows, layout.cols
    for g0 in range(r0, len(rows), group):
        g_rows = tuple(range(g0, min(g0 + group, len(rows))))
        blocks = {}
        for r in g_rows:
            block = source.read(rows[r], 0, th, layout.width)
            blocks[r] = to_model(block) if to_model is not None else block
        jobs = [(r, c) for r in g_rows for c in range(len(cols))]
        for b in range(0, len(jobs), batch_tiles):
            chunk = jobs[b:b + batch_tiles]
            yield g_rows, chunk, np.stack([blocks[r][:, cols[c]:cols[c] + tw] for r, c in chunk])


def ahead_map(fn: Callable[[Any], T], items: Iterable[Any], ahead: int = 1) -> Generator[T, None, None]:
    """``fn(item)`` for each of ``items``, in order, computed in a background thread up to
    ``ahead`` items beyond the one the caller holds.

    While the caller blends and writes, the next batches are predicted (TensorFlow, NumPy and the
    codecs release the GIL), so both cores have work. (Two threads, two tiles in the model at
    once, measured no faster end to end: the cores are busy either way.) Items are taken from
    ``items`` in the caller's thread; an exception in ``fn`` is raised here; closing the
    generator cancels what has not started and waits for the rest.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="allen-sr-predict")
    pending: collections.deque[Future[T]] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def add_tile(band: np.ndarray, acc: np.ndarray, pred: np.ndarray, y: int, x: int,
             py: AxisPlan, px: AxisPlan, r: int, c: int) -> None:
    """Put tile (r, c)'s prediction, its top left at band row ``y`` and column ``x``: copied where
    it alone counts, weighted into ``acc`` where its weight is in a ramp (and not where it is 0)."""
    (sy0, sy1), (sx0, sx1) = py.solo[r], px.solo[c]
    ly, hy, lx, hx = py.lo[r], py.hi[r], px.lo[c], px.hi[c]
    if sy1 > sy0 and sx1 > sx0:
        solo = pred[sy0:sy1, sx0:sx1]
        band[y + sy0:y + sy1, x + sx0:x + sx1] = as_uint8(solo) if band.dtype == np.uint8 else solo
    # The rest of its non-zero weights: the rows above and below the solo block (all columns),
    # then the columns left and right of it in its rows.
    for rs, cs in (((ly, sy0), (lx, hx)), ((sy1, hy), (lx, hx)), ((sy0, sy1), (lx, sx0)), ((sy0, sy1), (sx1, hx))):
        if rs[1] > rs[0] and cs[1] > cs[0]:
            weight = py.profiles[r][rs[0]:rs[1], None, None] * px.profiles[c][None, cs[0]:cs[1], None]
            acc[y + rs[0]:y + rs[1], x + cs[0]:x + cs[1]] += pred[rs[0]:rs[1], cs[0]:cs[1]] * weight


def as_uint8(values: np.ndarray) -> np.ndarray:
    """Rounded and clipped to 0..255 as uint8 (uint8 values as they are)."""
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def not_one(values: np.ndarray) -> list[slice]:
    """The runs of ``values`` that differ from 1, as slices."""
    return runs(values != 1.0)


def finish(acc: np.ndarray, sum_y: np.ndarray, sum_x: np.ndarray, rounded: bool = True) -> np.ndarray:
    """Normalise accumulated rows by the weight sums and round to uint8, in place: the rows are
    final and their float copy is dropped, so no second float band is ever allocated.
    ``rounded=False``: the normalised float32 values."""
    sum_y = sum_y.astype(np.float32)
    for sl in not_one(sum_y):  # the weights add up to 1 outside the overlaps
        acc[sl] /= sum_y[sl, None, None]
    for sl in not_one(sum_x):
        acc[:, sl] /= sum_x[None, sl, None]
    if not rounded:
        return acc
    np.rint(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)
