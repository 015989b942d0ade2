"""The order a decoder fills the canvas in: the Image Transformer's own causal order.

tensor2tensor's image decoder works on a grid of sub-pixels ``[rows, cols * C]``:
`image_channel_embeddings_bottom` embeds each channel separately and reshapes
``[B, rows, cols, C*H]`` to ``[B, rows, cols*C, H]``, so grid column ``g = col * C + channel``
(sub-pixel (r, col, ch) is flat grid index ``r * cols*C + col*C + ch``, the same as the flat
index of a ``[rows, cols, C]`` array). Which sub-pixels a position may see depends on
``dec_attention_type`` (`common_image_attention.transformer_decoder_layers`):

* ``local_1d`` / ``rel_local_1d`` (``local_mask_right`` / ``local_relative_mask_right``): the grid
  is flattened and `prepare_decoder` shifts it right by one (`shift_right_3d`); each position sees
  itself and earlier flat positions: **raster order** (row, column, channel).
* ``local_2d`` (``masked_local_attention_2d``): the grid is cut into ``query_shape`` (qh, qw)
  blocks (zero-padded to a multiple). `prepare_decoder` calls `right_shift_blockwise`, which
  shifts each block's positions, in raster order inside the block, right by one: a block's first
  position gets a zero input, and the value of a block's last position is never an input. A query
  in block (i, j) attends to its block's positions up to itself (`attention_bias_lower_triangle`
  over the in-block raster index) and to the memory flange (`get_memory_region`): the ``fh`` rows
  above the block, from ``fw`` columns left of it to ``fw`` right of it, and the ``fw`` columns
  left of it in its own rows, where ``(fh, fw) = memory_flange``; flange cells outside the image
  are zero and masked (`embedding_to_padding`). All of the flange lies in earlier blocks, so the
  model is causal in **block-raster order**: blocks in raster order over the block grid, raster
  order inside each block. It is *not* causal in raster order (the left flange holds lower rows).

``block_raster_scan`` changes only t2t's PREDICT-mode reshaping of its own inference canvas
(`prepare_decoder`, `postprocess_image`), not the network trained and evaluated, so it does not
change the order. The other types are causal in no order or not implemented (:data:`REFUSED`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from allen_sr.decoding.errors import UnsupportedHParamsError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

RASTER_TYPES = ("local_1d", "rel_local_1d")
BLOCK_RASTER_TYPES = ("local_2d",)
DECODABLE = RASTER_TYPES + BLOCK_RASTER_TYPES
DECODABLE_TEXT = ("'local_1d' or 'rel_local_1d' (raster order) or 'local_2d' (block-raster order "
                  "over query_shape blocks)")

# dec_attention_type -> why no decoder here can decode it.
REFUSED = {
    "global": "causal in no order: the image decoder passes no mask (self_attention_bias=None) to "
              "full self-attention, so in training every sub-pixel saw the whole target",
    "global_local": "causal in no order: its global half gets no mask in the image decoder",
    "local_1d_noncausal": "causal in no order: unmasked local attention sees later sub-pixels",
    "dilated": "not implemented here (masked dilated 1-D attention, gap_sizes per layer)",
    "local_block": "not implemented here (local within-block attention)",
    "moe_local1d": "not decodable: t2t's image decoder has no self-attention branch for it",
}


@dataclass(frozen=True)
class ScanOrder:
    """The sub-pixels of a ``[rows, width]`` grid (width = cols * C) in the model's causal order.

    ``positions[t]`` is the flat grid index decoded at step t. ``previous[t]`` is the flat grid
    index whose value the model's decoder input holds at that position (its predecessor after
    t2t's right shift), or -1 where the input is zeros.
    """

    kind: str  # "raster" or "block_raster"
    rows: int
    width: int
    positions: np.ndarray
    previous: np.ndarray
    query_shape: tuple[int, int] = (0, 0)
    memory_flange: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.positions)

    def steps_of(self) -> np.ndarray:
        """[rows * width]: the step at which each flat grid position is decoded."""
        steps = np.empty(len(self.positions), np.int64)
        steps[self.positions] = np.arange(len(self.positions))
        return steps


def raster_order(rows: int, width: int) -> ScanOrder:
    """Row by row, left to right; the decoder input at p is the value at p - 1 (`shift_right_3d`)."""
    n = rows * width
    positions = np.arange(n, dtype=np.int64)
    return ScanOrder("raster", rows, width, positions, positions - 1)


def block_raster_order(
    rows: int, width: int, query_shape: Sequence[int], memory_flange: Sequence[int] = (0, 0)
) -> ScanOrder:
    """Blocks of ``query_shape`` in raster order over the (padded) block grid, raster inside.

    Positions in the zero padding up to a multiple of ``query_shape`` are skipped; a position
    whose in-block predecessor is padding (or that starts a block) gets a zero decoder input,
    as `right_shift_blockwise` on the padded grid gives it.
    """
    qh, qw = (int(v) for v in query_shape)
    padded_rows, padded_width = -(-rows // qh) * qh, -(-width // qw) * qw
    block_rows, block_cols = padded_rows // qh, padded_width // qw
    # [block_rows, block_cols, qh, qw] grid coordinates of every padded position, in scan order.
    r = (np.arange(block_rows)[:, None, None, None] * qh + np.arange(qh)[None, None, :, None])
    g = (np.arange(block_cols)[None, :, None, None] * qw + np.arange(qw)[None, None, None, :])
    r, g = np.broadcast_arrays(r, g)
    r, g = r.reshape(-1), g.reshape(-1)
    real = (r < rows) & (g < width)
    flat = np.where(real, r * width + g, -1)
    previous = np.concatenate([[-1], flat[:-1]])
    previous[::qh * qw] = -1  # each block starts from a zero input
    return ScanOrder("block_raster", rows, width, flat[real], previous[real], (qh, qw),
                     tuple(int(v) for v in memory_flange))  # type: ignore[arg-type]


def pair(hparams: "HParams", name: str, minimum: int) -> tuple[int, int]:
    """A (height, width) hparam such as query_shape, checked; UnsupportedHParamsError naming it otherwise."""
    value = getattr(hparams, name, None)
    try:
        a, b = (int(v) for v in value)  # type: ignore[union-attr]
        ok = a >= minimum and b >= minimum and [a, b] == [v for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UnsupportedHParamsError(f"{name}={value!r} is not a pair of integers >= {minimum} "
                         f"(e.g. --hparams={name}=[8,16])")
    return a, b


def check_causal(hparams: "HParams") -> str:
    """The order kind ("raster" / "block_raster") of these hparams, or UnsupportedHParamsError naming why not."""
    kind = getattr(hparams, "dec_attention_type", None)
    if kind in RASTER_TYPES:
        return "raster"
    if kind in BLOCK_RASTER_TYPES:
        pair(hparams, "query_shape", 1)
        pair(hparams, "memory_flange", 0)
        return "block_raster"
    why = REFUSED.get(kind, "not a decoder attention type of tensor2tensor's image models")
    raise UnsupportedHParamsError(f"dec_attention_type={kind!r} cannot be decoded: {why}; decodable: {DECODABLE_TEXT}")


def causal_order(hparams: "HParams", rows: int, cols: int, channels: int) -> ScanOrder:
    """The causal order of a model with these hparams on a ``rows x cols x channels`` canvas."""
    width = cols * channels
    if check_causal(hparams) == "raster":
        return raster_order(rows, width)
    return block_raster_order(rows, width, pair(hparams, "query_shape", 1),
                              pair(hparams, "memory_flange", 0))


def flange_cells(order: ScanOrder, block_row: int, block_col: int) -> np.ndarray:
    """Flat grid indices a query block attends to besides itself (its memory flange), in t2t's
    order (the top region, then the left one), without the cells outside the image, which
    `masked_local_attention_2d` masks."""
    qh, qw = order.query_shape
    fh, fw = order.memory_flange
    top, left = block_row * qh, block_col * qw
    regions = []
    if fh > 0:
        regions.append((np.arange(top - fh, top), np.arange(left - fw, left + qw + fw)))
    if fw > 0:
        regions.append((np.arange(top, top + qh), np.arange(left - fw, left)))
    cells = []
    for r, g in regions:
        r, g = np.meshgrid(r, g, indexing="ij")
        inside = (r >= 0) & (r < order.rows) & (g >= 0) & (g < order.width)
        cells.append((r * order.width + g)[inside])
    return np.concatenate(cells) if cells else np.zeros(0, np.int64)
