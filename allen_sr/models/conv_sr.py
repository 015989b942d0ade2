"""`img2img_conv_sr`: the residual CNN of `allen_sr.models.conv_net` as a tensor2tensor model.

It predicts the high-resolution image in one forward pass, as continuous 0-255 values, with our
problems' IDENTITY modalities (``logits`` in train, eval and infer is the [B, H, W, C] image):

* :meth:`Img2imgConvSr.body` normalizes the inputs, runs the CNN, adds bicubic and projects
  block means; with ``gan_weight > 0`` in TRAIN it also returns the adversarial loss;
* :meth:`Img2imgConvSr.loss` is the pixel loss instead of the modality's cross-entropy;
* :meth:`Img2imgConvSr.estimator_spec_eval` reports ``metrics-<problem>/targets/{psnr,mae}``
  of the rounded output instead of the problem's logit metrics;
* :meth:`Img2imgConvSr.infer` is one forward pass;
* :meth:`Img2imgConvSr.optimize` adds the cosine decay, restricts t2t's optimizer to the
  generator, groups the discriminator's own Adam step, the weight average and the training clock
  into the train op.

Its hparams are :data:`HPARAMS` (added by :func:`add_conv_sr_hparams`; sets in
hparams/conv_sr.py). Decoding: `allen_sr.decoding.one_pass`. Design notes: docs/ARCHITECTURE.md ("The models").
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Sequence

import tensorflow.compat.v1 as tf
from tensor2tensor.utils import learning_rate as t2t_learning_rate
from tensor2tensor.utils import optimize as t2t_optimize
from tensor2tensor.utils import t2t_model

from allen_sr.data.degrade import REAL_INPUTS
from allen_sr.models.variables import EMA_NAME
from allen_sr.models import conv_net, schedule
from allen_sr.models.normalization import input_statistics
from allen_sr.t2t import metrics as t2t_metrics
from allen_sr.t2t.degradation import training_degradation
from allen_sr.t2t import registration
from allen_sr.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = [
    "HPARAMS",
    "MODEL_NAME",
    "Img2imgConvSr",
    "add_conv_sr_hparams",
    "check_hparams",
    "scale_factor",
]

MODEL_NAME = "img2img_conv_sr"

# The model's hparams besides t2t's basic_params1 (whose hidden_size is the CNN width):
# (name, default, what it does), one line each.
HPARAMS: tuple[tuple[str, Any, str], ...] = (
    ("num_res_blocks", 6, "residual blocks of two 3x3 convs of hidden_size channels"),
    ("img_len", 32, "target tile size in px (set by our problems)"),
    ("num_channels", 3, "image channels (set by our problems)"),
    ("normalize_inputs", False, "scale by the dataset's mean/std (kept in the checkpoint), else by 127.5"),
    ("pixel_loss", "l1", "l1 | l2 (MSE) | charbonnier | psnr (minus mean per-example PSNR); 0-1 scale"),
    ("charbonnier_epsilon", 1e-3, "epsilon of the Charbonnier loss sqrt(diff^2 + epsilon^2)"),
    ("block_mean_projection", True, "shift each output block so its mean equals its input pixel"),
    ("mean_correction", 0.0, "> 0: then shift each output block's mean by a learned amount of at most this "
     "many grey levels (a zero-initialised conv on the CNN's features), to correct noisy or JPEG "
     "inputs; left out with degradation=none (nothing to correct)"),
    ("cosine_decay_steps", 0, "clamped half-cosine learning-rate decay over this many steps; 0 = none"),
    ("cosine_decay_min", 0.0, "the decay's final factor of the learning rate, in [0, 1]"),
    ("train_budget_seconds", 0.0, "> 0: stop after this much training time; the decay follows it"),
    ("gan_weight", 0.0, "weight of the adversarial loss; 0 = pure pixel loss, no discriminator"),
    ("gan_filters", 32, "channels of the patch discriminator's first conv (then x2, x4)"),
    ("gan_learning_rate", 2e-4, "learning rate of the discriminator's own Adam"),
    ("gan_beta1", 0.5, "beta1 of the discriminator's Adam"),
    ("decode_tta", False, "decoders average the predictions of the 8 flips/rotations of each input"),
    ("weight_ema_decay", 0.0, "> 0: checkpoint a moving average of the weights, for decoding; 0 = off"),
    ("upsample", "x2_stages", "x2_stages (log2(factor) x2 conv stages) | pixel_shuffle (one sub-pixel conv) "
     "| input_res (everything at the input resolution, bicubic and projection folded in)"),
    ("upsample_width", 16, "channels per output pixel of the pixel_shuffle conv"),
    ("degradation", REAL_INPUTS, "training inputs made realistic (blur, noise, JPEG, stain; "
     "allen_sr.data.degrade, items joined by ;); none = the exact area average"),
    ("probabilistic", False, "also predict each sub-pixel's Laplace scale, trained by the Laplace likelihood "
     "instead of pixel_loss (CARE's probabilistic mode): uncertainty maps with --uncertainty"),
)


def add_conv_sr_hparams(hp: "HParams") -> "HParams":
    """Add each of :data:`HPARAMS` that ``hp`` lacks, with its default; returns ``hp``."""
    for name, value, _ in HPARAMS:
        if not hasattr(hp, name):
            hp.add_hparam(name, value)
    return hp


def mean_correction_bound(hparams: Any) -> float:
    """The ``mean_correction`` head's bound in grey levels, 0 where the model has none: trained on
    ideal inputs (``degradation=none``) there is nothing for it to correct."""
    bound = float(getattr(hparams, "mean_correction", 0.0))
    return bound if bound > 0 and training_degradation(hparams) is not None else 0.0


def scale_factor(hparams: "HParams", input_size: int | None = None) -> int:
    """The upscaling factor: the problem's output_dim / input_dim, else img_len / input_size."""
    problem = getattr(hparams, "problem", None)
    if problem is not None and hasattr(problem, "input_dim") and hasattr(problem, "output_dim"):
        inp, out = int(problem.input_dim), int(problem.output_dim)
    elif input_size:
        inp, out = int(input_size), int(hparams.img_len)
    else:
        raise InvalidInputError(
            f"{MODEL_NAME}: cannot tell the scale factor: hparams have no problem with "
            "input_dim/output_dim and the input size is unknown")
    if out % inp:
        raise InvalidInputError(f"{MODEL_NAME} needs an integer scale factor, got {inp} -> {out} px")
    return out // inp


def check_hparams(hparams: "HParams", factor: int | None = None) -> None:
    """Raise ValueError naming the hparam if this model cannot run with ``hparams``."""
    def fail(msg: str) -> None:
        raise InvalidInputError(f"{MODEL_NAME}: {msg}")

    missing = [n for n in ("num_res_blocks", "pixel_loss", "gan_weight", "normalize_inputs")
               if not hasattr(hparams, n)]
    if missing:
        fail(f"hparams lack {', '.join(missing)}: use an img2img_conv_sr_* hparams set "
             "(hparams/conv_sr.py), not one made for another model")
    if int(hparams.hidden_size) < 1:
        fail(f"hidden_size must be >= 1, got {hparams.hidden_size}")
    if int(hparams.num_res_blocks) < 0:
        fail(f"num_res_blocks must be >= 0, got {hparams.num_res_blocks}")
    upsample = getattr(hparams, "upsample", conv_net.UPSAMPLERS[0])
    if upsample not in conv_net.UPSAMPLERS:
        fail(f"upsample must be one of {conv_net.UPSAMPLERS}, got {upsample!r}")
    if int(getattr(hparams, "upsample_width", 1)) < 1:
        fail(f"upsample_width must be >= 1, got {hparams.upsample_width}")
    if hparams.pixel_loss not in conv_net.PIXEL_LOSSES:
        fail(f"pixel_loss must be one of {conv_net.PIXEL_LOSSES}, got {hparams.pixel_loss!r}")
    if not float(hparams.charbonnier_epsilon) > 0:
        fail(f"charbonnier_epsilon must be > 0, got {hparams.charbonnier_epsilon}")
    if float(getattr(hparams, "mean_correction", 0.0)) < 0:
        fail(f"mean_correction must be >= 0 (0 = none), got {hparams.mean_correction}")
    if float(hparams.gan_weight) < 0:
        fail(f"gan_weight must be >= 0 (0 = no adversarial loss), got {hparams.gan_weight}")
    if bool(getattr(hparams, "probabilistic", False)) and float(hparams.gan_weight) > 0:
        fail("probabilistic=True trains by the Laplace likelihood alone: set gan_weight=0")
    if float(hparams.gan_weight) > 0 and int(hparams.gan_filters) < 1:
        fail(f"gan_filters must be >= 1 when gan_weight > 0, got {hparams.gan_filters}")
    if not float(getattr(hparams, "train_budget_seconds", 0.0)) >= 0:
        fail(f"train_budget_seconds must be >= 0 (0 = no time budget), got "
             f"{hparams.train_budget_seconds}")
    if int(hparams.cosine_decay_steps) < 0 or not 0 <= float(hparams.cosine_decay_min) <= 1:
        fail("cosine_decay_steps must be >= 0 and cosine_decay_min in [0, 1], got "
             f"{hparams.cosine_decay_steps} and {hparams.cosine_decay_min}")
    if not 0 <= float(getattr(hparams, "weight_ema_decay", 0.0)) < 1:
        fail(f"weight_ema_decay must be in [0, 1) (0 = no averaging), got {hparams.weight_ema_decay}")
    if factor is not None and factor < 1:
        fail(f"the scale factor must be >= 1, got {factor}")
    if factor is not None and factor & (factor - 1) and upsample == "x2_stages":
        fail(f"upsample=x2_stages needs a power-of-2 scale factor, got {factor}; "
             "upsample=pixel_shuffle or input_res takes any integer factor")


@registration.model
class Img2imgConvSr(t2t_model.T2TModel):
    """Residual CNN on top of bicubic upsampling; pixel loss, optional hybrid adversarial loss."""

    # What `allen-sr train` calls on the registered class before training (allen_sr.t2t.tools).
    check_hparams = staticmethod(check_hparams)
    # The smallest integer scale factor its upsampling takes (factor 1: no sub-pixel step to learn).
    min_scale_factor = 2
    honours_train_budget = True  # its training clock stops at train_budget_seconds (allen_sr.models.schedule)

    @staticmethod
    def needs_integer_factor(hparams: Any) -> str:
        """What needs an integer scale factor (allen_sr.t2t.tools.check_problem_hparams): its upsampling."""
        return f"upsample={getattr(hparams, 'upsample', conv_net.UPSAMPLERS[0])}"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Discriminator losses of each data shard's body, for optimize() (TRAIN, gan_weight > 0).
        self._discriminator_losses: list[tf.Tensor] = []
        # The probabilistic head's log scale of the data shard whose body ran last, for loss()
        # (t2t runs each shard's body and then its loss).
        self._log_scale: tf.Tensor | None = None
        # (elapsed, step_start) of schedule.training_clock(), made by optimize() when
        # train_budget_seconds > 0.
        self._clock: tuple[tf.Tensor, tf.Tensor] | None = None

    # --- the network ----------------------------------------------------------------------
    def _normalization(self, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-channel (mean, std) used to scale the CNN's inputs and outputs."""
        if not self.hparams.normalize_inputs:
            return tf.constant([127.5] * channels), tf.constant([127.5] * channels)
        return input_statistics(self.hparams, channels, MODEL_NAME)

    def body(self, features: dict[str, tf.Tensor]) -> Any:
        """Continuous prediction [B, H, W, C] in 0-255 (plus the adversarial loss in TRAIN)."""
        hp = self.hparams
        inputs = tf.to_float(features["inputs"])
        channels = int(hp.num_channels)
        factor = scale_factor(hp, inputs.shape[1] if inputs.shape.rank == 4 else None)
        check_hparams(hp, factor)
        mean, std = self._normalization(channels)
        x = (inputs - mean) / std
        bound = mean_correction_bound(hp)
        trunk = None  # the CNN's features, made once when a second head shares them
        if hp.probabilistic or bound:
            trunk = conv_net.generator_features(x, int(hp.hidden_size), int(hp.num_res_blocks))
        if hp.probabilistic:
            self._log_scale = conv_net.laplace_log_scale(trunk, factor, channels)
        shift = conv_net.mean_correction(trunk, channels, std, bound) if bound else None
        # bicubic is linear with weights summing to 1: bicubic(x) + residual in normalized
        # units is bicubic(inputs) + residual * std in 0-255.
        if hp.upsample == "input_res":
            prediction = conv_net.input_res_prediction(inputs, x, std, int(hp.hidden_size),
                                                       int(hp.num_res_blocks), factor,
                                                       bool(hp.block_mean_projection), trunk, shift)
        else:
            residual = conv_net.generator_residual(x, int(hp.hidden_size), int(hp.num_res_blocks), factor,
                                                   channels, hp.upsample, int(hp.upsample_width), trunk)
            prediction = conv_net.bicubic_upsample(inputs, factor) + residual * std
            if hp.block_mean_projection:
                prediction = conv_net.block_mean_projection(prediction, inputs, factor)
            if shift is not None:
                prediction += conv_net.nearest_upsample(shift, factor)
        if float(hp.gan_weight) > 0 and hp.mode == tf.estimator.ModeKeys.TRAIN:
            condition = conv_net.bicubic_upsample(inputs, factor) / 127.5 - 1.0
            g_loss, d_loss = conv_net.adversarial_losses(condition, features["targets"], prediction,
                                                         int(hp.gan_filters))
            tf.summary.scalar("losses/discriminator", d_loss)
            tf.summary.scalar("losses/generator_adversarial", g_loss)
            self._discriminator_losses.append(d_loss)
            return prediction, {"adversarial": float(hp.gan_weight) * g_loss}
        return prediction

    # --- loss, metrics, inference -----------------------------------------------------------
    def loss(self, logits: tf.Tensor, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Pixel loss (hparams.pixel_loss) of the prediction against the raw targets; with
        ``probabilistic`` the Laplace likelihood of the targets instead."""
        hp = self.hparams
        if hp.probabilistic:
            return conv_net.laplace_nll(logits, self._log_scale, tf.to_float(features["targets"]))
        return conv_net.pixel_loss(logits, tf.to_float(features["targets"]), hp.pixel_loss,
                                   float(hp.charbonnier_epsilon))

    def infer(self, features: dict[str, tf.Tensor] | None = None, decode_length: int = 0,
              beam_size: int = 1, top_beams: int = 1, alpha: float = 0.0,
              use_tpu: bool = False) -> dict[str, Any]:
        """One forward pass: {"outputs": continuous prediction [B, H, W, C], "scores": None}."""
        del decode_length, beam_size, top_beams, alpha, use_tpu
        prediction, _ = self(features)  # PREDICT mode: model_fn skips the loss (no targets needed)
        return {"outputs": prediction, "scores": None}

    def estimator_spec_eval(self, features: dict[str, tf.Tensor], logits: tf.Tensor, labels: Any,
                            loss: tf.Tensor, losses_dict: dict[str, Any]) -> Any:
        """EVAL spec with PSNR (`allen_sr.t2t.metrics.psnr`) and the mean absolute error of the
        rounded output, instead of the problem's metrics, which assume a 256-way softmax."""
        del labels, losses_dict
        hp = self.hparams
        targets = tf.to_float(features["targets"])
        rounded = tf.clip_by_value(tf.round(logits), 0.0, 255.0)
        psnr, _ = t2t_metrics.psnr(logits, targets)
        prefix = f"metrics-{hp.problem.name}/targets"
        eval_metrics = {
            f"{prefix}/psnr": tf.metrics.mean(psnr),
            f"{prefix}/mae": tf.metrics.mean(tf.abs(rounded - targets)),
        }
        eval_dir = os.path.join(hp.model_dir, hp.get("eval_dir_name", "eval"))
        hooks = [tf.train.SummarySaverHook(save_steps=1, output_dir=eval_dir,
                                           summary_op=tf.summary.merge_all())]
        hooks += hp.problem.eval_hooks(features, logits, hp)
        return tf.estimator.EstimatorSpec(
            tf.estimator.ModeKeys.EVAL, predictions={"predictions": logits},
            eval_metric_ops=eval_metrics, evaluation_hooks=hooks, loss=loss)

    # --- optimization ---------------------------------------------------------------------
    def _learning_rate(self, num_async_replicas: int) -> tf.Tensor:
        """t2t's learning_rate_schedule times the clamped cosine decay (schedule.cosine_decay)."""
        hp = self.hparams
        lr = t2t_learning_rate.learning_rate_schedule(hp)
        budget = float(hp.get("train_budget_seconds", 0.0))
        if budget > 0 and self._clock is None:
            self._clock = schedule.training_clock()
        lr = schedule.cosine_decay(lr, float(hp.cosine_decay_min), int(hp.cosine_decay_steps), budget,
                                   self._clock[0] if self._clock is not None else None)
        return lr / math.sqrt(float(num_async_replicas))

    def optimize(self, loss: tf.Tensor, num_async_replicas: int = 1, use_tpu: bool = False,
                 variables: Sequence[Any] | None = None) -> Any:
        """Generator step with t2t's optimizer; with the hybrid loss also a discriminator step.

        t2t's optimizer gets only the generator's variables (the adversarial term must not train
        the discriminator to be fooled); the discriminator's own Adam minimizes its loss over its
        variables, after the generator's update, in the same train op.
        """
        lr = self._learning_rate(num_async_replicas)  # t2t's optimize() summarizes it
        all_vars = list(tf.trainable_variables() if variables is None else variables)
        d_vars = conv_net.discriminator_variables(all_vars)
        d_ids = {id(v) for v in d_vars}  # by identity: `in` would call Variable.__eq__
        g_vars = [v for v in all_vars if id(v) not in d_ids]
        g_op = t2t_optimize.optimize(loss, lr, self.hparams, use_tpu=use_tpu, variables=g_vars)
        if self._discriminator_losses:
            hp = self.hparams
            d_loss = tf.add_n(self._discriminator_losses) / len(self._discriminator_losses)
            with tf.control_dependencies([g_op]):
                d_opt = tf.train.AdamOptimizer(float(hp.gan_learning_rate), beta1=float(hp.gan_beta1),
                                               name="DiscriminatorAdam")
                d_op = d_opt.minimize(d_loss, var_list=d_vars)
            train_op = tf.group(g_op, d_op, name="generator_and_discriminator_step")
        else:
            train_op = g_op
        # Ops that run once the step's updates are written: the weight average follows the new
        # weights (warmed up by t2t's step count, as num_updates does), the clock stamps the step.
        after_step = []
        decay = float(getattr(self.hparams, "weight_ema_decay", 0.0))
        with tf.control_dependencies([train_op]):
            if decay > 0:
                ema = tf.train.ExponentialMovingAverage(
                    decay, num_updates=tf.train.get_or_create_global_step(), name=EMA_NAME)
                after_step.append(ema.apply(g_vars))
        if self._clock is not None:
            after_step.append(schedule.tick_after(self._clock, train_op))
        if not after_step:
            return train_op
        return tf.group(train_op, *after_step, name="step_and_after_step")

    def estimator_spec_train(self, loss: tf.Tensor, num_async_replicas: int = 1,
                             use_tpu: bool = False) -> Any:
        """t2t's TRAIN spec, plus the hook ending training at train_budget_seconds (if set)."""
        spec = super().estimator_spec_train(loss, num_async_replicas=num_async_replicas,
                                            use_tpu=use_tpu)
        if use_tpu:
            return spec
        return schedule.with_stop_hook(spec, self._clock, self.hparams.train_budget_seconds, MODEL_NAME)
