"""The fast decoder: an incremental NumPy re-implementation of `img2img_transformer`.

The encoder runs once per batch, then each decoder step processes only the new sub-pixel, in the
model's causal order (:mod:`allen_sr.decoding.orders`), with per-layer key/value caches holding
exactly the window t2t's masked local attention gives it (:mod:`allen_sr.decoding.windows`):
`masked_local_attention_1d` in raster order for ``local_1d``, `masked_local_attention_2d` (query
block plus memory flange) in block-raster order for ``local_2d``. Weights are read from a
`t2t-trainer` checkpoint by name (:mod:`allen_sr.decoding.network`); the hparams it implements are
listed in :func:`allen_sr.decoding.support.check_supported`.

Precision: float32 by default, like the TF graph it mirrors; its logits agree with TF's to ~1e-5
and greedy outputs differ only where two values' logits tie to that level.

Memory: the local_2d cache keeps every decoded position's keys and values per layer, 2 x layers
x batch x rows x cols x C x hidden x 4 bytes (e.g. 100 MB for img2img_transformer2d_tiny at batch
16 on 32x32x3; 1.6 GB for img2img_transformer2d_base: lower --batch_size if that is too much).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np

from allen_sr.decoding.batching import BatchedDecoder, as_batch, decode_tta, single_threaded_blas
from allen_sr.decoding.checkpoints import read_model_weights
from allen_sr.decoding.modes import VOCAB
from allen_sr.decoding.network import ImageTransformerNetwork, timing_signal_2d
from allen_sr.decoding.orders import ScanOrder, causal_order
from allen_sr.decoding.support import DEFAULT_MODEL, check_supported
from allen_sr.decoding.windows import make_window
from allen_sr.errors import InvalidInputError, UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["FastDecoder", "timing_signal_2d"]


class FastDecoder(BatchedDecoder):
    """Incremental NumPy re-implementation of `img2img_transformer` for exact, fast decoding.

    Construct with :meth:`from_checkpoint` (reads the variables by name from a t2t checkpoint)
    or directly from a ``{variable name: array}`` mapping. Each step feeds the decoder input t2t
    gives that position (the embedding of the sub-pixel before it in its shift, or zeros, plus the
    timing signal and the input skip), runs every decoder layer on that one position against the
    cached window, and turns the result into 256 logits.
    """

    name = "fast"

    def __init__(
        self,
        hparams: "HParams",
        weights: Mapping[str, np.ndarray],
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
        dtype: str | np.dtype = "float32",
        check: bool = True,
    ) -> None:
        # check=False: the hparams were checked when they were stored (an `allen-sr export`);
        # the check reads t2t's modality functions, which a TF-free install does not have.
        if check:
            check_supported(hparams, model_name)
        self.net = ImageTransformerNetwork(hparams, weights, model_name, dtype)
        self.dtype = self.net.dtype
        self.tta = decode_tta(hparams)
        self.channels = self.net.channels
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))  # type: ignore[assignment]
        self.block_length = int(hparams.block_length)
        rows, cols = self.target_shape
        self.order: ScanOrder = causal_order(hparams, rows, cols, self.channels)
        # Both t2t shifts give a position either the value decoded one step before or zeros.
        previous, positions = self.order.previous, self.order.positions
        ok = (previous == -1) | (previous == np.concatenate([[-1], positions[:-1]]))
        if not ok.all():  # pragma: no cover - a property of orders.py, checked once
            raise AssertionError("decoder input is not the previous step's value")

    @classmethod
    def from_checkpoint(
        cls,
        hparams: "HParams",
        checkpoint: str,
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
        dtype: str | np.dtype = "float32",
    ) -> "FastDecoder":
        """Read the model's variables from a t2t checkpoint (prefix or output dir) by name."""
        check_supported(hparams, model_name)  # fail before reading anything
        weights = read_model_weights(checkpoint, model_name)
        return cls.matching(hparams, weights, model_name, f"checkpoint {checkpoint}", target_shape, dtype)

    @classmethod
    def matching(
        cls,
        hparams: "HParams",
        weights: Mapping[str, np.ndarray],
        model_name: str,
        source: str,
        target_shape: tuple[int, int] | None = None,
        dtype: str | np.dtype = "float32",
    ) -> "FastDecoder":
        """The decoder of ``weights`` (read from ``source``, named in errors), or InvalidInputError
        naming the variable or hparam when the hparams describe another model than they hold."""
        try:
            decoder = cls(hparams, weights, model_name, target_shape, dtype)
        except UserError:
            raise
        except (KeyError, ValueError) as exc:  # a variable missing, unused or of another shape
            detail = str(exc.args[0] if exc.args else exc).split("; ")[0]
            raise InvalidInputError(f"{source} does not hold the model these hparams describe ({detail}): "
                                    "pass the --hparams it was trained with (or none)") from None
        net = decoder.net
        if net.patch_radius:  # image_transformer.input_patches: (2r+1)^2 taps of each of C channels
            taps = net.patch_skip.shape[3] // net.channels
            trained = (round(taps ** 0.5) - 1) // 2
            if taps != (2 * net.patch_radius + 1) ** 2:
                raise InvalidInputError(f"{source} was trained with input_patch={trained}, not input_patch="
                                        f"{net.patch_radius}: pass the --hparams it was trained with (or none)")
        return decoder

    def encode(self, inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The encoder's keys/values for every decoder layer (see ImageTransformerNetwork.encode)."""
        return self.net.encode(inputs)

    def _steps(
        self, inputs: np.ndarray, next_value: Callable[[int, np.ndarray], np.ndarray], steps: int
    ) -> Iterator[int]:
        """Run the decoder for ``steps`` positions of the order; ``next_value(t, logits)`` gives
        the value of step t. A generator so callers can drive a progress bar."""
        net = self.net
        rows, cols = self.target_shape
        c = self.channels
        batch = inputs.shape[0]
        encdec_kv = net.encode(inputs)
        terms = net.position_terms(inputs, rows, cols)  # [B, length, H]
        centres = net.prior_centres(inputs, rows)  # [B, length] or None
        heads = net.heads
        kd, dk, dv = net.key_depth, net.key_depth // heads, net.value_depth // heads
        bh = batch * heads
        scale = self.dtype.type(dk ** -0.5)
        window = make_window(self.order, self.block_length, len(net.decoder), bh, dk, dv, self.dtype)
        positions, previous = self.order.positions, self.order.previous
        embedding = net.target_embedding
        value = np.zeros(batch, np.int64)
        for t in range(steps):
            window.begin(t)
            pos = int(positions[t])
            before = int(previous[t])
            x = np.array(terms[:, pos], dtype=self.dtype)
            if before >= 0:  # the value decoded at step t - 1, channel before % C
                x += embedding[value + (before % c) * VOCAB]
            for i, (layer, (ek, ev)) in enumerate(zip(net.decoder, encdec_kv)):
                y = net.apply(layer.self_pre, x)
                qkv = y @ layer.self_att.w_qkv
                q = qkv[:, :kd].reshape(bh, 1, dk) * scale
                attended = window.attend(i, q, qkv[:, kd:2 * kd].reshape(bh, dk),
                                         qkv[:, 2 * kd:].reshape(bh, dv))
                y = attended.reshape(batch, net.value_depth) @ layer.self_att.wo
                x = net.apply(layer.self_post, y, x)
                y = net.apply(layer.encdec_pre, x)
                q = (y @ layer.encdec_att.wq).reshape(bh, 1, dk) * scale
                attended = net.softmax(q @ ek) @ ev
                y = attended.reshape(batch, net.value_depth) @ layer.encdec_att.wo
                x = net.apply(layer.encdec_post, y, x)
                y = net.apply(layer.ffn_pre, x)
                x = net.apply(layer.ffn_post, net.ffn(layer.ffn, y), x)
            logits = net.output_logits(x, None if centres is None else centres[:, pos])
            value = np.asarray(next_value(t, logits), np.int64)
            yield t

    def logits(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [B, rows, cols, C, 256], computed step by step with the caches.

        The same code path as decoding, with each position's value taken from ``targets``; the
        result must equal the full model's forward pass on ``targets`` (tests check this).
        """
        inputs = as_batch(inputs, self.channels)
        targets = np.asarray(targets, np.int64)
        rows, cols = self.target_shape
        if targets.shape[1:] != (rows, cols, self.channels):
            raise ValueError(f"targets must be [B, {rows}, {cols}, {self.channels}], got {targets.shape}")
        flat = targets.reshape(targets.shape[0], -1)
        out = np.zeros((targets.shape[0], flat.shape[1], VOCAB), np.float32)
        positions = self.order.positions

        def forced(t: int, logits: np.ndarray) -> np.ndarray:
            out[:, positions[t]] = logits
            return flat[:, positions[t]]

        with single_threaded_blas():
            for _ in self._steps(inputs, forced, flat.shape[1]):
                pass
        return out.reshape(targets.shape + (VOCAB,))

    def _decode_batch(self, inputs, choose, steps, bar):
        rows, cols = self.target_shape
        flat = np.zeros((inputs.shape[0], rows * cols * self.channels), np.uint8)
        positions = self.order.positions

        def pick(t: int, logits: np.ndarray) -> np.ndarray:
            values = choose(t, logits)
            flat[:, positions[t]] = values
            return values

        with single_threaded_blas():
            for _ in self._steps(inputs, pick, steps):
                if bar is not None:
                    bar.update(1)
        return flat.reshape(inputs.shape[0], rows, cols, self.channels)
