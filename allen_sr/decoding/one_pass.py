"""The decoder of `img2img_conv_sr`: one forward pass of the model restored from a checkpoint.

`allen_sr.decoding.registry` names :class:`OnePassDecoder` as that model's decoder ("one_pass");
TensorFlow and tensor2tensor load when one is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from allen_sr.decoding.batching import decode_tta, dihedral, dihedral_views, predict_in_chunks, undo_dihedral
from allen_sr.decoding.checkpoints import match_variables, restore
from allen_sr.decoding.laplace import LaplaceViews, views_mean
from allen_sr.decoding.modes import check_one_value_mode
from allen_sr.t2t.names import register_all
from allen_sr.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["OnePassDecoder", "dihedral", "receptive_radius", "undo_dihedral"]

MODEL_NAME = "img2img_conv_sr"  # the model's registered name (allen_sr.models.conv_sr.MODEL_NAME)
# Settings that decide the model's variables, named when a checkpoint lacks some.
VARIABLE_HINT = ("--model/--hparams_set/--hparams (hidden_size, num_res_blocks, upsample, "
                 "upsample_width, normalize_inputs, weight_ema_decay, mean_correction, degradation)")


def receptive_radius(hparams: "HParams", factor: int) -> int:
    """Input px beyond which an input pixel cannot change an output pixel of `img2img_conv_sr`.

    Each 3x3 conv at the input resolution reaches 1 px further: conv_in, two per residual block,
    conv_body_out and the upsampling convs (x2 stages run at 1x, 2x, ... the input resolution,
    so stage s reaches 1/2^s px); conv_out runs at the output resolution (1/factor px); bicubic
    reaches 2 px; the mean correction's 3x3 conv on the features reaches no further than the
    upsampling conv. Tiled prediction with at least this much context equals whole-image prediction.
    ``upsample=input_res`` has no output-resolution conv and no reach beyond its sub-pixel conv.
    """
    reach = 1.0 + 2 * int(hparams.num_res_blocks) + 1.0
    upsample = getattr(hparams, "upsample", "x2_stages")
    if upsample == "input_res":
        # + its one sub-pixel conv; bicubic (inputs n-1 .. n+2) and the projection (the pixel's
        # own sub-pixels) are inside that, and nothing runs at the output resolution.
        return int(max(reach + 1.0, 2.0))
    if upsample == "x2_stages":
        stages = max(int(round(np.log2(max(factor, 1)))), 0)
        reach += sum(0.5 ** s for s in range(stages))
    else:
        reach += 1.0
    reach += 1.0 / max(factor, 1)
    return int(np.ceil(max(reach, 2.0 + 1.0 / max(factor, 1)))) + 1  # + 1: the block-mean projection's block


class OnePassDecoder(LaplaceViews):
    """Predict a batch in one forward pass of `img2img_conv_sr`, restored from a checkpoint.

    Builds the model in PREDICT mode (the graph `t2t-trainer`'s estimator builds for inference:
    ``Img2imgConvSr.infer``), restores its variables by name (the trainable ones from their
    moving averages when hparam ``weight_ema_decay`` > 0) and returns the prediction rounded and
    clipped to uint8. Modes ``greedy`` and ``mean`` both mean "the prediction" (one value per
    sub-pixel); ``sample`` is refused. With ``tta`` (default: hparam ``decode_tta``) the
    continuous predictions of the 8 flips/rotations of each input are averaged before rounding.
    A model trained with hparam ``probabilistic`` also reports each sub-pixel's distribution
    (``decode(..., recorder=...)``, :meth:`predict_uncertain`; `allen_sr.decoding.laplace`).

    Parameters: ``hparams`` as `checkpoints.load_hparams` returns them, ``checkpoint`` a
    checkpoint prefix, ``target_shape`` (rows, cols) of the outputs (default img_len square;
    ``(None, None)``: any size, each batch of one shape, as tiled prediction of large images needs).
    Raises ValueError for hparams the model refuses, a target shape that is not a multiple of
    the scale factor, or a checkpoint that lacks some of the graph's variables.
    """

    name = "one-pass"
    no_distribution = "train it with the hparam probabilistic=True for uncertainty maps"

    def __init__(self, hparams: "HParams", checkpoint: str, model_name: str = MODEL_NAME,
                 target_shape: tuple[int, int] | None = None, tta: bool | None = None) -> None:
        register_all()
        import tensorflow.compat.v1 as tf
        from tensor2tensor.utils import registry
        from tensorflow.python.autograph.core import ag_ctx

        from allen_sr.models import conv_net
        from allen_sr.models.conv_sr import check_hparams, scale_factor

        self.model_name = model_name
        self.channels = int(hparams.num_channels)
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))
        self.factor = scale_factor(hparams)
        check_hparams(hparams, self.factor)
        self.tta = decode_tta(hparams) if tta is None else bool(tta)
        self.probabilistic = bool(getattr(hparams, "probabilistic", False))
        self.radius = receptive_radius(hparams, self.factor)
        rows, cols = self.target_shape
        if rows is None or cols is None:
            self.input_shape: tuple[int | None, int | None] = (None, None)
        elif rows % self.factor or cols % self.factor:
            raise InvalidInputError(f"target shape {self.target_shape} is not a multiple of the scale "
                                    f"factor {self.factor}")
        else:
            self.input_shape = (rows // self.factor, cols // self.factor)
        self._graph = tf.Graph()
        with self._graph.as_default():
            model = registry.model(model_name)(hparams, tf.estimator.ModeKeys.PREDICT)
            self._inputs = tf.placeholder(tf.int32, [None, *self.input_shape, self.channels], "inputs")
            # AutoGraph would only rewrite t2t's Python control flow, at a cost of seconds per graph.
            with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
                self._outputs = model.infer({"inputs": self._inputs})["outputs"]
            # The single prediction rounded in the graph (round half to even, as np.rint): the
            # tiles leave TensorFlow as uint8, a quarter of the bytes, on all cores. For
            # upsample=input_res the sub-pixels are rounded before TF's depth-to-space, which is
            # slow on float (a fifth of the model's time): the uint8 one is done in NumPy.
            scales = tf.get_collection(conv_net.LAPLACE_LOG_SCALE)
            self._scale = tf.exp(scales[0]) if scales else None
            sub_pixels = tf.get_collection(conv_net.SUB_PIXELS)
            self._sub_pixels = len(sub_pixels) == 1
            self._rounded = tf.cast(tf.clip_by_value(tf.round(sub_pixels[0] if self._sub_pixels else self._outputs),
                                                     0.0, 255.0), tf.uint8)
            ema = float(getattr(hparams, "weight_ema_decay", 0.0)) > 0
            averaged = tf.trainable_variables() if ema else []
            names = match_variables(tf.global_variables(), checkpoint, model_name, averaged,
                                    hint=VARIABLE_HINT)
            saver = tf.train.Saver(var_list=names)
            self._session = tf.Session(graph=self._graph)
            restore(saver, self._session, checkpoint)

    def predict(self, inputs: np.ndarray, batch_size: int | None = None,
                progress: bool = False) -> np.ndarray:
        """Continuous predictions float32 [N, H, W, C] (0-255 scale, not clipped)."""
        x = self._checked(inputs)
        return predict_in_chunks(x, lambda chunk: self._predict_chunk(chunk.astype(np.int32)),
                                 self.factor, self.channels, batch_size, progress, self._desc())

    def _checked(self, inputs: np.ndarray) -> np.ndarray:
        """``inputs`` as an array of the graph's input shape; ValueError naming the shape if not."""
        x = np.asarray(inputs)
        expected = tuple(x.shape[1 + i] if x.ndim == 4 and d is None else d
                         for i, d in enumerate(self.input_shape)) + (self.channels,)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise InvalidInputError(f"inputs must be [N, {expected[0]}, {expected[1]}, {expected[2]}], "
                                    f"got shape {x.shape}")
        return x

    def _desc(self) -> str:
        return f"{self.model_name} one pass" + (" (8-fold TTA)" if self.tta else "")

    @property
    def reports_distributions(self) -> bool:
        """True when the model predicts a distribution per sub-pixel (hparam ``probabilistic``)."""
        return self.probabilistic

    def _predict_chunk(self, x: np.ndarray) -> np.ndarray:
        if not self.tta:
            return self._session.run(self._outputs, {self._inputs: x})
        views = dihedral_views(lambda batch: [self._session.run(self._outputs, {self._inputs: batch})], x, True)
        return views_mean(views)

    def _mean_scale(self, x: np.ndarray) -> list[np.ndarray]:
        """The prediction and the Laplace scale of a batch (`laplace.LaplaceViews`)."""
        return self._session.run([self._outputs, self._scale], {self._inputs: x.astype(np.int32)})

    def decode(self, inputs: np.ndarray, mode: str = "greedy", temperature: float = 1.0,
               seed: int | None = None, batch_size: int | None = None,
               max_steps: int | None = None, progress: bool = False, recorder: Any = None) -> np.ndarray:
        """uint8 [N, H, W, C] predictions of [N, h, w, C] inputs (the batching.Decoder protocol).

        ``mode`` greedy or mean: the prediction, rounded and clipped. ``temperature``, ``seed``
        and ``max_steps`` belong to autoregressive decoding and are ignored. ``recorder`` (an
        `allen_sr.decoding.uncertainty.Recorder`; probabilistic models only) gets each
        sub-pixel's distribution; the predictions are the same with or without it.
        """
        del temperature, seed, max_steps
        check_one_value_mode(mode, self.model_name, self.reports_distributions)
        if recorder is not None:
            return self._laplace_decode(self._distribution_inputs(inputs), recorder, batch_size, progress)
        if self.tta:
            prediction = self.predict(inputs, batch_size=batch_size, progress=progress)
            return np.clip(np.rint(prediction), 0, 255).astype(np.uint8)
        x = self._checked(inputs)
        return predict_in_chunks(x, self._rounded_chunk, self.factor, self.channels, batch_size, progress,
                                 self._desc(), np.uint8)

    def _rounded_chunk(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run(self._rounded, {self._inputs: x})
        if not self._sub_pixels:
            return out
        n, h, w, _ = out.shape
        f, c = self.factor, self.channels
        sub_pixels = out.reshape(n, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(sub_pixels).reshape(n, h * f, w * f, c)

    def close(self) -> None:
        """Release the TF session."""
        self._session.close()
