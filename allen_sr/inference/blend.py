"""Where tiles go along one axis and how much each tile's prediction counts where they overlap.

Along an axis of ``length`` input px, tiles of ``tile`` px overlap by at least ``overlap`` px
and the last one ends flush with the edge. In an overlap of ``o`` px between two neighbours, the
``context`` px next to each tile's inner edge get weight 0 (a conv model's prediction there
lacks context and differs from the whole-image prediction), and across the rest the weight of one
tile rises as sin^2 while its neighbour's falls as cos^2: the weights of neighbours add up to 1
and are smooth, so no step is left at a tile border. Edges on the image border are not tapered.
The 2-D weight of a tile is the outer product of its two axis profiles, so the normalising sum
of all tiles' weights is separable too.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["tile_starts", "axis_profiles", "axis_weight_sum"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start of each tile: the fewest tiles that overlap by >= ``overlap``, spread evenly."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap ({overlap} px) must be smaller than the tile ({tile} px)")
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    return [int(round(i * (length - tile) / (count - 1))) for i in range(count)]


def ramp(width: int, context: int) -> np.ndarray:
    """Weights of the tile that starts an overlap of ``width`` px: 0 for ``context`` px, then a
    sin^2 rise to 1 (its neighbour's weights are this reversed, and the two add up to 1)."""
    x = np.arange(width, dtype=np.float64) + 0.5
    span = width - 2 * context
    if span <= 0:  # no room for a ramp: a hard cut in the middle
        return (x >= width / 2).astype(np.float64)
    return np.sin(0.5 * np.pi * np.clip((x - context) / span, 0.0, 1.0)) ** 2


def axis_profiles(starts: list[int], tile: int, factor: int, context: int,
                  ramp_width: int | None = None) -> list[np.ndarray]:
    """Per tile, its weights along the axis at the output resolution (``tile * factor`` values).

    ``context`` is in input px; in each overlap it is capped at half the overlap. ``ramp_width``
    (input px): the rise spans at most this much, centred in the overlap, and the rest of the
    overlap belongs to the nearer tile alone (tiles spread evenly overlap by more than asked;
    without the cap the whole surplus would be blended). None: the whole overlap but the context.
    """
    def edge(o: int) -> int:
        """The px at each end of an overlap of ``o`` px where the rising tile's weight is 0 (at
        its start) or 1 (at its end)."""
        inner = min(context, o // 2)
        return inner if ramp_width is None else max(inner, (o - ramp_width) // 2)

    profiles = []
    n = tile * factor
    for i, start in enumerate(starts):
        w = np.ones(n, np.float64)
        if i > 0:
            o = starts[i - 1] + tile - start
            if o > 0:
                w[:o * factor] *= ramp(o * factor, edge(o) * factor)
        if i + 1 < len(starts):
            o = start + tile - starts[i + 1]
            if o > 0:
                # The complement of the neighbour's rise over the same pixels.
                w[n - o * factor:] *= 1.0 - ramp(o * factor, edge(o) * factor)
        profiles.append(w)
    return profiles


def axis_weight_sum(starts: list[int], profiles: list[np.ndarray], length_out: int, factor: int) -> np.ndarray:
    """Sum of all tiles' weights at each output px of the axis (> 0 everywhere)."""
    total = np.zeros(length_out, np.float64)
    for start, w in zip(starts, profiles):
        total[start * factor:start * factor + len(w)] += w
    if total.min() <= 0:
        raise AssertionError("tile weights leave a gap; this is a bug in the tile layout")
    return total
