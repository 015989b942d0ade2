"""Key/value caches for the decoder's masked local self-attention, one new sub-pixel at a time.

Each cache holds, per decoder layer, the keys and values of exactly the positions t2t's attention
lets the current sub-pixel see, in a buffer laid out so that the visible keys are one prefix
``[:slot + 1]``; ``attend`` writes the new key/value at ``slot`` and attends over that prefix.

* :class:`RasterWindow`: `masked_local_attention_1d` (``local_1d``) in raster order. With block
  length b (b = length if length < 2b), a query in block n sees block n-1 and its own block up to
  itself: a 2-block buffer that slides by one block when a block starts.
* :class:`BlockRasterWindow`: `masked_local_attention_2d` (``local_2d``) in block-raster order
  (see :mod:`allen_sr.decoding.orders`). When a query block starts, the keys/values of its
  memory flange (the cells t2t does not mask) are gathered from a per-layer store of every decoded
  position; its own block follows in in-block raster order, zeros where the block is padding
  (t2t's padded center keys/values are zero and, unlike the flange, not masked).

Batch and heads are flattened: q is [B*heads, 1, dk], k [B*heads, dk], v [B*heads, dv].
"""
from __future__ import annotations

from typing import Any

import numpy as np

from allen_sr.decoding.orders import ScanOrder, flange_cells


def softmax_last(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - np.maximum.reduce(logits, axis=-1, keepdims=True))
    return e / np.add.reduce(e, axis=-1, keepdims=True)


class PrefixWindow:
    """Per layer, a key and a value buffer whose prefix ``[:slot + 1]`` is what the current
    sub-pixel sees; subclasses lay the buffers out and set ``slot`` in ``begin(step)``."""

    keys: list[np.ndarray]
    values: list[np.ndarray]
    slot: int

    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        k_cache, v_cache = self.keys[layer], self.values[layer]
        slot = self.slot
        k_cache[:, slot] = k
        v_cache[:, slot] = v
        weights = softmax_last(q @ k_cache[:, :slot + 1].transpose(0, 2, 1))  # [BH, 1, T]
        return weights @ v_cache[:, :slot + 1]  # [BH, 1, dv]


class RasterWindow(PrefixWindow):
    """`masked_local_attention_1d` with block length ``block_length`` over ``length`` positions."""

    def __init__(self, length: int, block_length: int, layers: int, bh: int, dk: int, dv: int,
                 dtype: Any) -> None:
        # masked_local_attention_1d uses one block of the whole length if length < 2 * block.
        self.block = length if length < 2 * block_length else block_length
        self.single = self.block == length
        capacity = length if self.single else 2 * self.block
        self.keys = [np.zeros((bh, capacity, dk), dtype) for _ in range(layers)]
        self.values = [np.zeros((bh, capacity, dv), dtype) for _ in range(layers)]
        self.slot = 0

    def begin(self, step: int) -> None:
        block = self.block
        n = step // block
        if not self.single and n >= 2 and step % block == 0:
            # A new block starts: its window is the previous block (now in slots block..2b) and
            # itself, so slide the buffer left by one block.
            for k_cache, v_cache in zip(self.keys, self.values):
                k_cache[:, :block] = k_cache[:, block:]
                v_cache[:, :block] = v_cache[:, block:]
        self.slot = step if n == 0 else block + (step - n * block)


class BlockRasterWindow(PrefixWindow):
    """`masked_local_attention_2d` with the order's query_shape and memory_flange."""

    def __init__(self, order: ScanOrder, layers: int, bh: int, dk: int, dv: int, dtype: Any) -> None:
        if order.kind != "block_raster":
            raise ValueError(f"BlockRasterWindow needs a block-raster order, got {order.kind!r}")
        qh, qw = order.query_shape
        self.block_size = qh * qw
        block_cols = -(-order.width // qw)
        rows, cols = order.positions // order.width, order.positions % order.width
        self.step_block = (rows // qh) * block_cols + cols // qw
        self.in_block = (rows % qh) * qw + cols % qw
        self.positions = order.positions
        # Per block: its flange cells, and its real positions with their in-block slots.
        self.flanges: dict[int, np.ndarray] = {}
        self.members: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for block in np.unique(self.step_block):
            self.flanges[int(block)] = flange_cells(order, int(block) // block_cols, int(block) % block_cols)
            mine = self.step_block == block
            self.members[int(block)] = (order.positions[mine], self.in_block[mine])
        capacity = max(len(f) for f in self.flanges.values()) + self.block_size
        self.keys = [np.zeros((bh, capacity, dk), dtype) for _ in range(layers)]
        self.values = [np.zeros((bh, capacity, dv), dtype) for _ in range(layers)]
        grid = order.rows * order.width
        self.key_store = [np.zeros((bh, grid, dk), dtype) for _ in range(layers)]
        self.value_store = [np.zeros((bh, grid, dv), dtype) for _ in range(layers)]
        self.current = -1
        self.base = 0
        self.slot = 0

    def flush(self) -> None:
        """Copy the current block's keys/values into the store (later blocks' flanges read it)."""
        if self.current < 0:
            return
        cells, slots = self.members[self.current]
        for layer in range(len(self.keys)):
            self.key_store[layer][:, cells] = self.keys[layer][:, self.base + slots]
            self.value_store[layer][:, cells] = self.values[layer][:, self.base + slots]

    def begin(self, step: int) -> None:
        block = int(self.step_block[step])
        if block != self.current:
            self.flush()
            cells = self.flanges[block]
            base = len(cells)
            for layer in range(len(self.keys)):
                for buffer, store in ((self.keys[layer], self.key_store[layer]),
                                      (self.values[layer], self.value_store[layer])):
                    buffer[:, :base] = store[:, cells]
                    buffer[:, base:base + self.block_size] = 0
            self.current, self.base = block, base
        self.slot = self.base + int(self.in_block[step])


def make_window(order: ScanOrder, block_length: int, layers: int, bh: int, dk: int, dv: int,
                dtype: Any) -> RasterWindow | BlockRasterWindow:
    """The cache for ``order``: raster (local_1d) or block-raster (local_2d)."""
    if order.kind == "raster":
        return RasterWindow(len(order), block_length, layers, bh, dk, dv, dtype)
    return BlockRasterWindow(order, layers, bh, dk, dv, dtype)
