"""The reference decoder: the real tensor2tensor graph, one full forward pass per sub-pixel.

Slow by construction and meant as the reference the fast decoders are tested against: it builds
the registered model in EVAL mode (no dropout), restores a `t2t-trainer` checkpoint and fills the
canvas in the model's causal order (:mod:`allen_sr.decoding.orders`: raster order for local 1-D
attention, block-raster order for local 2-D attention), feeding the whole canvas as
teacher-forced ``targets`` and reading the logits of the next position in that order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from allen_sr.decoding.batching import BatchedDecoder, decode_tta
from allen_sr.decoding.checkpoints import match_variables, restore
from allen_sr.decoding.modes import VOCAB
from allen_sr.decoding.orders import ScanOrder, causal_order
from allen_sr.decoding.support import DEFAULT_MODEL, check_decodable
from allen_sr.t2t.names import register_all

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams


class NaiveDecoder(BatchedDecoder):
    """The real t2t model graph (EVAL mode), one full forward pass per decoded sub-pixel.

    Slow by construction (3072 forward passes for a 32x32x3 image) and meant as the reference
    the fast decoder is tested against. ``target_shape`` (rows, cols) defaults to
    ``hparams.img_len`` square; the model itself accepts other sizes. ``order`` is the causal
    order it decodes in.
    """

    name = "naive"

    def __init__(
        self,
        hparams: "HParams",
        checkpoint: str,
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
    ) -> None:
        check_decodable(hparams)
        register_all()
        import tensorflow as tf
        from tensor2tensor.utils import registry
        from tensorflow.python.autograph.core import ag_ctx

        self.channels = int(hparams.num_channels)
        self.tta = decode_tta(hparams)
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))  # type: ignore[assignment]
        rows, cols = self.target_shape
        self.order: ScanOrder = causal_order(hparams, rows, cols, self.channels)
        self._graph = tf.Graph()
        with self._graph.as_default():
            v1 = tf.compat.v1
            model = registry.model(model_name)(hparams, tf.estimator.ModeKeys.EVAL)
            self._inputs = v1.placeholder(tf.int32, [None, None, None, self.channels], "inputs")
            self._targets = v1.placeholder(tf.int32, [None, rows, cols, self.channels], "targets")
            self._position = v1.placeholder(tf.int32, [], "position")
            # Keras' legacy Layer.__call__ would run all of t2t's (TF1, Python-control-flow)
            # model code through AutoGraph, which only rewrites Python `if`/`for` on Python
            # values here and costs ~20-30 s per graph; the ops built are the same without it.
            with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
                logits, _ = model({"inputs": self._inputs, "targets": self._targets})
            # [B, rows, cols, C, 256]; gather one position in-graph so each step copies 256
            # floats per example out of TF instead of the whole logits tensor.
            self._logits = logits
            flat = tf.reshape(logits, [tf.shape(logits)[0], rows * cols * self.channels, VOCAB])
            self._step_logits = tf.gather(flat, self._position, axis=1)
            var_list = match_variables(v1.global_variables(), checkpoint, model_name)
            saver = v1.train.Saver(var_list=var_list)
            self._session = v1.Session(graph=self._graph)
            # Inside the graph context: outside it (eager by default in TF 2) the Saver would
            # try to build its restore ops eagerly and fail.
            restore(saver, self._session, checkpoint)

    def logits(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [B, rows, cols, C, 256] of one forward pass on ``targets``."""
        return self._session.run(
            self._logits, {self._inputs: np.asarray(inputs), self._targets: np.asarray(targets)}
        )

    def step_logits(self, inputs: np.ndarray, canvas: np.ndarray, position: int) -> np.ndarray:
        """Logits [B, 256] at flat sub-pixel ``position`` given the current canvas."""
        return self._session.run(
            self._step_logits,
            {self._inputs: inputs, self._targets: canvas, self._position: int(position)},
        )

    def _decode_batch(self, inputs, choose, steps, bar):
        rows, cols = self.target_shape
        canvas = np.zeros((inputs.shape[0], rows, cols, self.channels), np.int32)
        flat = canvas.reshape(inputs.shape[0], -1)  # a view: writes land in canvas
        for t, position in enumerate(self.order.positions[:steps]):
            flat[:, position] = choose(t, self.step_logits(inputs, canvas, int(position)))
            if bar is not None:
                bar.update(1)
        return canvas.astype(np.uint8)

    def close(self) -> None:
        """Release the TF session."""
        self._session.close()
