"""Residual CNN super-resolution (`img2img_conv_sr`): one forward pass, continuous RGB output.

The Image Transformer predicts a 256-way distribution per sub-pixel and must be decoded
autoregressively. This model instead predicts the high-resolution image directly:

    prediction = bicubic(inputs) + std * CNN((inputs - mean) / std)

where the CNN is conv in -> N residual blocks of width C -> conv (+ long skip) -> upsampling
(hparam ``upsample``: log2(factor) x2 depth-to-space stages, or one sub-pixel conv and a
x factor depth-to-space) -> conv out. Optionally (hparam ``block_mean_projection``) each
factor x factor block of the prediction is shifted so that its mean equals the input pixel it
was averaged from (the inputs are exactly such block means, rounded). It trains with an L1 or
Charbonnier loss on the 0-1 scale, and optionally (``gan_weight > 0``) a pix2pix-style hybrid
loss: pixel loss + gan_weight * non-saturating adversarial loss from a patch discriminator that
sees (bicubic input, image) pairs and is updated by its own Adam optimizer in the same step.

How it fits tensor2tensor 1.15.7 with our problems' IDENTITY modalities (no problem change):

* bottom/top are t2t's identity ones (float cast / pass-through), so ``body`` returns the
  prediction in 0-255 and ``logits`` everywhere (train, eval, infer) is that continuous
  [B, H, W, C] image;
* :meth:`Img2imgConvSr.loss` replaces the modality's cross-entropy with the pixel loss;
* :meth:`Img2imgConvSr.estimator_spec_eval` replaces the problem's logit metrics (accuracy,
  perplexity: meaningless here, and they would crash on a continuous output) with PSNR on the
  rounded output and the mean absolute error, named ``metrics-<problem>/targets/{psnr,mae}``;
* :meth:`Img2imgConvSr.infer` is one forward pass (t2t's would run its autoregressive loop);
* :meth:`Img2imgConvSr.optimize` adds the cosine learning-rate decay and, for the hybrid loss,
  restricts t2t's optimizer to the generator's variables and groups the discriminator's update
  into the returned train op, so t2t-trainer's estimator needs nothing else.

Input normalization (hparam ``normalize_inputs``) uses the per-channel mean/std written by
datagen (``<data_dir>/<dataset>-stats.json``). They are stored in the checkpoint as
non-trainable variables when training starts, so a trained model always decodes with the
statistics it was trained with, and decoding needs no data_dir.

:class:`OnePassDecoder` restores a checkpoint into the model graph and predicts a batch in one
pass (optionally averaging the 8 flips/rotations, hparam ``decode_tta``); it is registered with
:mod:`allen_sr.decoding` at import, so `allen-sr decode/evaluate/upscale --model=img2img_conv_sr`
work like for the Transformer.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from allen_sr import t2t_compat

t2t_compat.apply()

import tensorflow.compat.v1 as tf  # noqa: E402
from tensor2tensor.utils import learning_rate as t2t_learning_rate  # noqa: E402
from tensor2tensor.utils import optimize as t2t_optimize  # noqa: E402
from tensor2tensor.utils import t2t_model  # noqa: E402

from allen_sr import decoding, records, registration  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = [
    "MODEL_NAME",
    "PIXEL_LOSSES",
    "UPSAMPLERS",
    "Img2imgConvSr",
    "OnePassDecoder",
    "add_conv_sr_hparams",
    "bicubic_upsample",
    "block_mean_projection",
    "check_hparams",
    "discriminator_variables",
    "scale_factor",
    "StopAfterSecondsHook",
    "training_clock",
]

MODEL_NAME = "img2img_conv_sr"
PIXEL_LOSSES: tuple[str, ...] = ("l1", "l2", "charbonnier", "psnr")
# hparam upsample: x2 conv + depth-to-space stages at the CNN's width, or one conv at the input
# resolution to factor^2 * upsample_width channels and one depth-to-space (see generator_residual).
UPSAMPLERS: tuple[str, ...] = ("x2_stages", "pixel_shuffle")
# pixel_loss=psnr: the per-example MSE (0-1 scale) is floored here, i.e. at 50 dB, so that a
# nearly perfect example cannot take over the gradient (its weight is 1/MSE).
PSNR_LOSS_MSE_FLOOR = 1e-5
DISCRIMINATOR_SCOPE = "discriminator"
EMA_NAME = "ExponentialMovingAverage"  # weight_ema_decay: checkpoint name <variable>/<EMA_NAME>
NORMALIZATION_SCOPE = "input_normalization"


# --------------------------------------------------------------------------- hparams


def add_conv_sr_hparams(hp: "HParams") -> "HParams":
    """Add this model's hparams (with their defaults) to ``hp``; returns it.

    hidden_size (from t2t's base) is the CNN width. Added here:
    num_res_blocks, upsample ("x2_stages" | "pixel_shuffle", see :func:`generator_residual`)
    and upsample_width, img_len/num_channels (set by our problems), normalize_inputs,
    pixel_loss ("l1" | "l2" | "charbonnier" | "psnr"; l2 is the mean squared error over the
    batch; psnr is minus the mean per-example PSNR, exactly what the benchmark averages over
    tiles, which weighs each example by 1/its MSE) and charbonnier_epsilon (0-1 scale),
    block_mean_projection, cosine_decay_steps / cosine_decay_min (the learning rate follows
    t2t's learning_rate_schedule times a half cosine from 1 to cosine_decay_min over
    cosine_decay_steps steps, then stays there; 0 steps = no decay), train_budget_seconds
    (> 0: train for this many seconds of wall-clock time and stop, the cosine decay following
    that time instead of cosine_decay_steps; see :func:`training_clock`), gan_weight (0 = pure
    pixel loss, no discriminator is built), gan_filters, gan_learning_rate, gan_beta1,
    decode_tta (decoder averages the 8 flips/rotations), weight_ema_decay (> 0: keep an
    exponential moving average of the generator's weights with this decay, warmed up by t2t's
    step count as tf.train.ExponentialMovingAverage's num_updates does; the checkpoint holds both
    and our decoders predict with the average, t2t's own evaluation during training with the
    raw weights; 0 = off).
    """
    for name, value in (
        ("num_res_blocks", 6),
        ("img_len", 32),
        ("num_channels", 3),
        ("normalize_inputs", False),
        ("pixel_loss", "l1"),
        ("charbonnier_epsilon", 1e-3),
        ("block_mean_projection", True),
        ("cosine_decay_steps", 0),
        ("cosine_decay_min", 0.0),
        ("train_budget_seconds", 0.0),
        ("gan_weight", 0.0),
        ("gan_filters", 32),
        ("gan_learning_rate", 2e-4),
        ("gan_beta1", 0.5),
        ("decode_tta", False),
        ("weight_ema_decay", 0.0),
        ("upsample", "x2_stages"),
        ("upsample_width", 16),
    ):
        if not hasattr(hp, name):
            hp.add_hparam(name, value)
    return hp


def scale_factor(hparams: "HParams", input_size: int | None = None) -> int:
    """The upscaling factor: the problem's output_dim / input_dim, else img_len / input_size."""
    problem = getattr(hparams, "problem", None)
    if problem is not None and hasattr(problem, "input_dim") and hasattr(problem, "output_dim"):
        inp, out = int(problem.input_dim), int(problem.output_dim)
    elif input_size:
        inp, out = int(input_size), int(hparams.img_len)
    else:
        raise ValueError(
            f"{MODEL_NAME}: cannot tell the scale factor: hparams have no problem with "
            "input_dim/output_dim and the input size is unknown")
    if out % inp:
        raise ValueError(f"{MODEL_NAME} needs an integer scale factor, got {inp} -> {out} px")
    return out // inp


def check_hparams(hparams: "HParams", factor: int | None = None) -> None:
    """Raise ValueError naming the hparam if this model cannot run with ``hparams``."""
    def fail(msg: str) -> None:
        raise ValueError(f"{MODEL_NAME}: {msg}")

    missing = [n for n in ("num_res_blocks", "pixel_loss", "gan_weight", "normalize_inputs")
               if not hasattr(hparams, n)]
    if missing:
        fail(f"hparams lack {', '.join(missing)}: use an img2img_conv_sr_* hparams set "
             "(hparams/conv_sr.py), not one made for another model")
    if int(hparams.hidden_size) < 1:
        fail(f"hidden_size must be >= 1, got {hparams.hidden_size}")
    if int(hparams.num_res_blocks) < 0:
        fail(f"num_res_blocks must be >= 0, got {hparams.num_res_blocks}")
    upsample = getattr(hparams, "upsample", UPSAMPLERS[0])
    if upsample not in UPSAMPLERS:
        fail(f"upsample must be one of {UPSAMPLERS}, got {upsample!r}")
    if int(getattr(hparams, "upsample_width", 1)) < 1:
        fail(f"upsample_width must be >= 1, got {hparams.upsample_width}")
    if hparams.pixel_loss not in PIXEL_LOSSES:
        fail(f"pixel_loss must be one of {PIXEL_LOSSES}, got {hparams.pixel_loss!r}")
    if not float(hparams.charbonnier_epsilon) > 0:
        fail(f"charbonnier_epsilon must be > 0, got {hparams.charbonnier_epsilon}")
    if float(hparams.gan_weight) < 0:
        fail(f"gan_weight must be >= 0 (0 = no adversarial loss), got {hparams.gan_weight}")
    if float(hparams.gan_weight) > 0 and int(hparams.gan_filters) < 1:
        fail(f"gan_filters must be >= 1 when gan_weight > 0, got {hparams.gan_filters}")
    if float(getattr(hparams, "train_budget_seconds", 0.0)) < 0:
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
             "upsample=pixel_shuffle takes any integer factor")


# --------------------------------------------------------------------------- building blocks


def bicubic_upsample(images: tf.Tensor, factor: int) -> tf.Tensor:
    """Bicubic resize of float [B, h, w, C] by ``factor`` (TF's Keys a=-0.5 kernel, half-pixel)."""
    if factor == 1:
        return images
    shape = tf.shape(images)
    return tf.image.resize(images, [shape[1] * factor, shape[2] * factor],
                           method=tf.image.ResizeMethod.BICUBIC)


def nearest_upsample(images: tf.Tensor, factor: int) -> tf.Tensor:
    """Repeat each pixel factor x factor times (exact, unlike resize's rounding)."""
    if factor == 1:
        return images
    tiled = tf.tile(images, [1, 1, 1, factor * factor])
    return tf.nn.depth_to_space(tiled, factor)


def block_mean_projection(prediction: tf.Tensor, inputs: tf.Tensor, factor: int) -> tf.Tensor:
    """Shift each factor x factor block of ``prediction`` so its mean equals the input pixel.

    The inputs are the (rounded) area averages of the targets, so this removes any error in
    the low frequencies the input already determines, and leaves the detail to the network.
    """
    means = tf.nn.avg_pool2d(prediction, factor, factor, "VALID")
    return prediction + nearest_upsample(inputs - means, factor)


def _conv(x: tf.Tensor, filters: int, kernel: int, name: str, stride: int = 1,
          init_scale: float = 1.0, bias: bool = True) -> tf.Tensor:
    """SAME convolution with He-normal weights times ``init_scale`` (0: zeros).

    tf.get_variable (not Keras layers) keeps checkpoint names independent of name scopes such as
    t2t's `parallel_0_4`, so the decoder finds them however its graph was built.
    """
    channels = int(x.shape[-1])
    stddev = init_scale * math.sqrt(2.0 / (kernel * kernel * channels))
    init = tf.random_normal_initializer(stddev=stddev) if init_scale else tf.zeros_initializer()
    with tf.variable_scope(name):
        w = tf.get_variable("kernel", [kernel, kernel, channels, filters], initializer=init)
        y = tf.nn.conv2d(x, w, [1, stride, stride, 1], "SAME")
        if bias:
            y += tf.get_variable("bias", [filters], initializer=tf.zeros_initializer())
        return y


def generator_residual(x: tf.Tensor, width: int, blocks: int, factor: int, channels: int,
                       upsample: str = "x2_stages", upsample_width: int = 16) -> tf.Tensor:
    """The CNN: normalized inputs [B, h, w, C] -> residual [B, h*f, w*f, C] (normalized units).

    ``upsample`` "x2_stages" (EDSR's upsampler): log2(f) stages of a 3x3 conv to 4 * width
    channels and a x2 depth-to-space. "pixel_shuffle": one 3x3 conv at the input resolution to
    f * f * upsample_width channels and one x f depth-to-space (ESPCN's sub-pixel layer), which
    skips the costly conv at the intermediate resolution (measured on 2 CPU cores, width 64, 6
    blocks, batch 64: 1.7x the training steps per second, the same quality after 5 minutes).
    Both end in a 3x3 conv at the output resolution.
    """
    head = _conv(x, width, 3, "conv_in")
    h = head
    for i in range(blocks):
        with tf.variable_scope(f"res_block_{i}"):
            # A small init of each block's last conv starts every block near the identity,
            # which keeps the early steps stable without batch norm.
            r = tf.nn.relu(_conv(h, width, 3, "conv_a"))
            h = h + _conv(r, width, 3, "conv_b", init_scale=0.1)
    h = _conv(h, width, 3, "conv_body_out") + head
    if upsample == "x2_stages":
        for stage in range(int(round(math.log2(factor)))):
            h = tf.nn.relu(tf.nn.depth_to_space(_conv(h, 4 * width, 3, f"upsample_{stage}"), 2))
    else:
        h = tf.nn.relu(tf.nn.depth_to_space(
            _conv(h, factor * factor * upsample_width, 3, "upsample_pixel_shuffle"), factor))
    # Starting at 0 makes the untrained model bicubic, the right first guess (a random start
    # would add noise of the data's scale: the residual is multiplied by std). Its gradient
    # is not 0, so training moves it away at the first step.
    return _conv(h, channels, 3, "conv_out", init_scale=0.0)


def patch_discriminator(condition: tf.Tensor, image: tf.Tensor, filters: int) -> tf.Tensor:
    """pix2pix-style patch discriminator: logits [B, h/4, w/4, 1], one per ~34 px patch.

    Inputs are in [-1, 1]; ``condition`` is the bicubic-upsampled input, so the discriminator
    judges whether ``image`` is a plausible sharp version of that particular input.
    """
    x = tf.concat([condition, image], axis=-1)
    x = tf.nn.leaky_relu(_conv(x, filters, 4, "conv_0", stride=2), 0.2)
    x = tf.nn.leaky_relu(_conv(x, 2 * filters, 4, "conv_1", stride=2), 0.2)
    x = tf.nn.leaky_relu(_conv(x, 4 * filters, 4, "conv_2"), 0.2)
    return _conv(x, 1, 4, "logits")


def discriminator_variables(variables: Sequence[Any] | None = None) -> list[Any]:
    """The discriminator's variables among ``variables`` (default: all trainable variables)."""
    variables = tf.trainable_variables() if variables is None else variables
    return [v for v in variables if f"/{DISCRIMINATOR_SCOPE}/" in v.op.name]


def pixel_loss(prediction: tf.Tensor, targets: tf.Tensor, kind: str, epsilon: float) -> tf.Tensor:
    """Mean L1, squared (l2) or Charbonnier distance on the 0-1 scale (inputs in 0-255), or
    (psnr) the mean over examples of 10 log10(MSE), i.e. minus their mean PSNR in dB."""
    diff = (prediction - targets) / 255.0
    if kind == "l1":
        return tf.reduce_mean(tf.abs(diff))
    if kind == "l2":
        return tf.reduce_mean(tf.square(diff))
    if kind == "psnr":
        mse = tf.reduce_mean(tf.square(diff), axis=list(range(1, diff.shape.rank)))
        return tf.reduce_mean(10.0 * tf.log(mse + PSNR_LOSS_MSE_FLOOR) / math.log(10.0))
    return tf.reduce_mean(tf.sqrt(tf.square(diff) + epsilon * epsilon))


# --------------------------------------------------------------------------- time budget

CLOCK_SCOPE = "train_clock"


def training_clock() -> tuple[tf.Tensor, tf.Tensor]:
    """(elapsed, tick): seconds of training so far, and the op that advances them by one step.

    ``elapsed`` (float64, in the checkpoint as ``train_clock/elapsed_seconds``) adds up the
    wall-clock time between consecutive training steps of each run, so it counts from the first
    step (graph building and the input pipeline's warm-up excluded) and a restart from a
    checkpoint resumes it without counting the time the job was down. Run ``tick`` once per
    step, after the update (it stamps the step's time in a local, not checkpointed, variable).
    """
    with tf.variable_scope(CLOCK_SCOPE, reuse=tf.AUTO_REUSE):
        elapsed = tf.get_variable("elapsed_seconds", [], tf.float64, tf.zeros_initializer(),
                                  trainable=False)
        last = tf.get_variable("last_step_timestamp", [], tf.float64, tf.zeros_initializer(),
                               trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])
    now = tf.timestamp()
    delta = tf.where(last > 0.0, now - last, tf.constant(0.0, tf.float64))
    with tf.control_dependencies([tf.assign_add(elapsed, delta)]):
        tick = tf.assign(last, now)
    return elapsed, tick


class StopAfterSecondsHook(tf.train.SessionRunHook):
    """Request the end of training once ``elapsed`` (see :func:`training_clock`) >= ``seconds``.

    The estimator then ends as at its last step: its checkpoint saver writes a final checkpoint,
    so the model trained for the budget is the newest checkpoint of the run.
    """

    def __init__(self, elapsed: tf.Tensor, seconds: float) -> None:
        self._elapsed = elapsed
        self._seconds = float(seconds)

    def before_run(self, run_context: Any) -> Any:
        return tf.train.SessionRunArgs(self._elapsed)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        if run_values.results >= self._seconds:
            tf.logging.info("%s: train_budget_seconds=%g reached; stopping", MODEL_NAME, self._seconds)
            run_context.request_stop()


# --------------------------------------------------------------------------- the model


@registration.model
class Img2imgConvSr(t2t_model.T2TModel):
    """Residual CNN on top of bicubic upsampling; pixel loss, optional hybrid adversarial loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Discriminator losses of each data shard's body, for optimize() (TRAIN, gan_weight > 0).
        self._discriminator_losses: list[tf.Tensor] = []
        # (elapsed, tick) of training_clock(), made by optimize() when train_budget_seconds > 0.
        self._clock: tuple[tf.Tensor, tf.Tensor] | None = None

    # --- the network ----------------------------------------------------------------------
    def _normalization(self, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-channel (mean, std) tensors used to scale the CNN's inputs and outputs."""
        hp = self.hparams
        if not hp.normalize_inputs:
            # Without dataset statistics: a fixed 0-255 -> about [-1, 1] scaling.
            return tf.constant([127.5] * channels), tf.constant([127.5] * channels)
        if hp.mode == tf.estimator.ModeKeys.TRAIN:
            mean, std = records.normalization_stats(hp, channels, MODEL_NAME)
        else:
            # Eval/predict always restore a checkpoint, which holds the training statistics;
            # the file is not needed (the decoder may run with no data_dir at all).
            mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
        with tf.variable_scope(NORMALIZATION_SCOPE):
            mean_var = tf.get_variable("mean", initializer=tf.constant(mean), trainable=False)
            std_var = tf.get_variable("std", initializer=tf.constant(std), trainable=False)
        return mean_var, std_var

    def body(self, features: dict[str, tf.Tensor]) -> Any:
        """Continuous prediction [B, H, W, C] in 0-255 (plus the adversarial loss in TRAIN)."""
        hp = self.hparams
        inputs = tf.to_float(features["inputs"])
        channels = int(hp.num_channels)
        factor = scale_factor(hp, inputs.shape[1] if inputs.shape.rank == 4 else None)
        check_hparams(hp, factor)
        mean, std = self._normalization(channels)
        x = (inputs - mean) / std
        # In normalized units the prediction is bicubic(x) + residual; bicubic is linear with
        # weights summing to 1, so in 0-255 that is bicubic(inputs) + residual * std.
        residual = generator_residual(x, int(hp.hidden_size), int(hp.num_res_blocks), factor, channels,
                                      hp.upsample, int(hp.upsample_width))
        prediction = bicubic_upsample(inputs, factor) + residual * std
        if hp.block_mean_projection:
            prediction = block_mean_projection(prediction, inputs, factor)
        if float(hp.gan_weight) > 0 and hp.mode == tf.estimator.ModeKeys.TRAIN:
            adversarial = self._adversarial_losses(inputs, prediction, features["targets"], factor)
            return prediction, {"adversarial": float(hp.gan_weight) * adversarial}
        return prediction

    def _adversarial_losses(self, inputs: tf.Tensor, prediction: tf.Tensor, targets: tf.Tensor,
                            factor: int) -> tf.Tensor:
        """Generator's adversarial loss; records the discriminator's loss for optimize()."""
        condition = bicubic_upsample(inputs, factor) / 127.5 - 1.0
        with tf.variable_scope(DISCRIMINATOR_SCOPE, reuse=tf.AUTO_REUSE):
            real_logits = patch_discriminator(condition, tf.to_float(targets) / 127.5 - 1.0,
                                              int(self.hparams.gan_filters))
            fake_logits = patch_discriminator(condition, prediction / 127.5 - 1.0,
                                              int(self.hparams.gan_filters))
        bce = tf.nn.sigmoid_cross_entropy_with_logits
        d_loss = (tf.reduce_mean(bce(labels=tf.ones_like(real_logits), logits=real_logits))
                  + tf.reduce_mean(bce(labels=tf.zeros_like(fake_logits), logits=fake_logits)))
        # Non-saturating generator loss: -log D(G(x)).
        g_loss = tf.reduce_mean(bce(labels=tf.ones_like(fake_logits), logits=fake_logits))
        tf.summary.scalar("losses/discriminator", d_loss)
        tf.summary.scalar("losses/generator_adversarial", g_loss)
        self._discriminator_losses.append(d_loss)
        return g_loss

    # --- loss, metrics, inference -----------------------------------------------------------
    def loss(self, logits: tf.Tensor, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Pixel loss (hparams.pixel_loss) of the prediction against the raw targets."""
        hp = self.hparams
        return pixel_loss(logits, tf.to_float(features["targets"]), hp.pixel_loss,
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
        """EVAL spec with image metrics (PSNR of the rounded output, MAE) instead of the
        problem's logit metrics, which assume a 256-way softmax output."""
        del labels, losses_dict
        hp = self.hparams
        targets = tf.to_float(features["targets"])
        rounded = tf.clip_by_value(tf.round(logits), 0.0, 255.0)
        mse = tf.reduce_mean(tf.square(rounded - targets), axis=[1, 2, 3])
        # Per-tile PSNR capped like allen_sr.metrics (identical tiles would be infinite).
        psnr = tf.minimum(10.0 * tf.log(255.0 ** 2 / tf.maximum(mse, 1e-12)) / math.log(10.0), 100.0)
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
        """t2t's learning_rate_schedule times the clamped cosine decay over cosine_decay_steps
        steps, or over train_budget_seconds of training time when that is set."""
        hp = self.hparams
        lr = t2t_learning_rate.learning_rate_schedule(hp)
        budget = float(hp.get("train_budget_seconds", 0.0))
        steps = int(hp.cosine_decay_steps)
        progress = None
        if budget > 0:
            # The schedule ends when the time does, whatever the step rate (a shared machine's
            # varies by 2x): no step-rate estimate to get wrong.
            if self._clock is None:
                self._clock = training_clock()
            progress = tf.to_float(tf.minimum(self._clock[0] / budget, 1.0))
        elif steps > 0:
            # Clamped (not t2t's cyclic cosdecay): a run longer than planned stays at the floor
            # instead of climbing back to the peak.
            step = tf.minimum(tf.to_float(tf.train.get_or_create_global_step()), float(steps))
            progress = step / steps
        if progress is not None:
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            floor = float(hp.cosine_decay_min)
            lr *= floor + (1.0 - floor) * cosine
        return lr / math.sqrt(float(num_async_replicas))

    def optimize(self, loss: tf.Tensor, num_async_replicas: int = 1, use_tpu: bool = False,
                 variables: Sequence[Any] | None = None) -> Any:
        """Generator step with t2t's optimizer; with the hybrid loss also a discriminator step.

        t2t builds one optimizer from the returned loss over all trainable variables. Here the
        generator's optimizer gets only the generator's variables (the adversarial term must
        not train the discriminator to be fooled), and the discriminator's own Adam minimizes
        its loss over its variables only, after the generator's update, in the same train op.
        """
        lr = self._learning_rate(num_async_replicas)  # t2t's optimize() summarizes it
        all_vars = list(tf.trainable_variables() if variables is None else variables)
        d_vars = discriminator_variables(all_vars)
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
        # weights, the clock stamps the step's end.
        after_step = []
        decay = float(getattr(self.hparams, "weight_ema_decay", 0.0))
        with tf.control_dependencies([train_op]):
            if decay > 0:
                ema = tf.train.ExponentialMovingAverage(
                    decay, num_updates=tf.train.get_or_create_global_step(), name=EMA_NAME)
                after_step.append(ema.apply(g_vars))
            if self._clock is not None:
                after_step.append(self._clock[1])
        if not after_step:
            return train_op
        return tf.group(train_op, *after_step, name="step_and_after_step")

    def estimator_spec_train(self, loss: tf.Tensor, num_async_replicas: int = 1,
                             use_tpu: bool = False) -> Any:
        """t2t's TRAIN spec, plus the hook ending training at train_budget_seconds (if set)."""
        spec = super().estimator_spec_train(loss, num_async_replicas=num_async_replicas,
                                            use_tpu=use_tpu)
        if self._clock is None or use_tpu:
            return spec
        hook = StopAfterSecondsHook(self._clock[0], float(self.hparams.train_budget_seconds))
        return spec._replace(training_hooks=list(spec.training_hooks) + [hook])


# --------------------------------------------------------------------------- one-pass decoder


def _dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of [N, H, W, C] images (k = 0 is the identity)."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def _undo_dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`_dihedral`."""
    out = images[:, :, ::-1] if k >= 4 else images
    return np.rot90(out, -(k % 4), axes=(1, 2))


class OnePassDecoder:
    """Predict a batch in one forward pass of `img2img_conv_sr`, restored from a checkpoint.

    Builds the model in PREDICT mode (the graph `t2t-trainer`'s estimator builds for
    inference: :meth:`Img2imgConvSr.infer`), restores the generator's variables by name and
    returns the prediction rounded and clipped to uint8. Modes ``greedy`` and ``mean`` both
    mean "the prediction": the model outputs one value per sub-pixel, which is already its
    estimate of the mean (L1 training pulls it toward the median). ``sample`` is refused: the
    model has no distribution to sample from. With ``tta`` (default: hparam ``decode_tta``) the
    continuous predictions of the 8 flips/rotations of each input are averaged before rounding.
    """

    name = "one-pass"

    def __init__(self, hparams: "HParams", checkpoint: str, model_name: str = MODEL_NAME,
                 target_shape: tuple[int, int] | None = None, tta: bool | None = None) -> None:
        from tensor2tensor.utils import registry
        from tensorflow.python.autograph.core import ag_ctx

        self.channels = int(hparams.num_channels)
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))
        self.factor = scale_factor(hparams)
        check_hparams(hparams, self.factor)
        self.tta = bool(getattr(hparams, "decode_tta", False)) if tta is None else bool(tta)
        rows, cols = self.target_shape
        if rows % self.factor or cols % self.factor:
            raise ValueError(f"target shape {self.target_shape} is not a multiple of the scale "
                             f"factor {self.factor}")
        self.input_shape = (rows // self.factor, cols // self.factor)
        self._graph = tf.Graph()
        with self._graph.as_default():
            model = registry.model(model_name)(hparams, tf.estimator.ModeKeys.PREDICT)
            self._inputs = tf.placeholder(tf.int32, [None, *self.input_shape, self.channels], "inputs")
            # AutoGraph would only rewrite t2t's Python control flow, at a cost of seconds per graph.
            with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
                self._outputs = model.infer({"inputs": self._inputs})["outputs"]
            # With weight_ema_decay the trainable weights are restored from their averages.
            averaged = tf.trainable_variables() if float(getattr(hparams, "weight_ema_decay", 0.0)) > 0 else []
            saver = tf.train.Saver(var_list=self._match_variables(tf.global_variables(), checkpoint, averaged))
            self._session = tf.Session(graph=self._graph)
            saver.restore(self._session, checkpoint)

    @staticmethod
    def _match_variables(variables: Sequence[Any], checkpoint: str,
                         averaged: Sequence[Any] = ()) -> dict[str, Any]:
        """{checkpoint name: graph variable}, matched by name without data-parallel scopes.

        Variables in ``averaged`` are restored from their moving average
        (``<name>/ExponentialMovingAverage``, see weight_ema_decay).
        """
        import tensorflow as tf2

        in_ckpt = {decoding.canonical_variable_name(n): n for n, _ in tf2.train.list_variables(checkpoint)}
        averaged_ids = {id(v) for v in averaged}
        found, missing = {}, []
        for var in variables:
            key = decoding.canonical_variable_name(var.op.name)
            if id(var) in averaged_ids:
                key = f"{key}/{EMA_NAME}"
            if key in in_ckpt:
                found[in_ckpt[key]] = var
            else:
                missing.append(key)
        if missing:
            raise ValueError(
                f"checkpoint {checkpoint} lacks {len(missing)} variable(s) of {MODEL_NAME}, e.g. "
                f"{missing[:3]}: was it trained with this --model/--hparams_set/--hparams "
                "(hidden_size, num_res_blocks, upsample, upsample_width, normalize_inputs, "
                "weight_ema_decay)?")
        return found

    def predict(self, inputs: np.ndarray, batch_size: int | None = None,
                progress: bool = False) -> np.ndarray:
        """Continuous predictions float32 [N, H, W, C] (0-255 scale, not clipped)."""
        x = np.asarray(inputs)
        expected = (*self.input_shape, self.channels)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"inputs must be [N, {expected[0]}, {expected[1]}, {expected[2]}], "
                             f"got shape {x.shape}")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError("inputs must hold values in 0..255")
        n = x.shape[0]
        batch_size = n if not batch_size else int(batch_size)
        out = np.zeros((n, *self.target_shape, self.channels), np.float32)
        bar = None
        if progress:
            from tqdm import tqdm

            desc = f"{MODEL_NAME} one pass" + (" (8-fold TTA)" if self.tta else "")
            bar = tqdm(total=n, desc=desc, unit="tile", mininterval=0.5)
        try:
            for start in range(0, n, max(batch_size, 1)):
                chunk = x[start:start + batch_size].astype(np.int32)
                out[start:start + len(chunk)] = self._predict_chunk(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _predict_chunk(self, x: np.ndarray) -> np.ndarray:
        if not self.tta:
            return self._session.run(self._outputs, {self._inputs: x})
        if x.shape[1] != x.shape[2]:
            raise ValueError("test-time augmentation needs square inputs (rotations)")
        # All 8 transforms in one run: one batch of 8N is faster than 8 runs of N on CPU.
        stacked = np.concatenate([_dihedral(x, k) for k in range(8)])
        preds = np.split(self._session.run(self._outputs, {self._inputs: stacked}), 8)
        return np.mean([_undo_dihedral(p, k) for k, p in enumerate(preds)], axis=0)

    def decode(self, inputs: np.ndarray, mode: str = "greedy", temperature: float = 1.0,
               seed: int | None = None, batch_size: int | None = None,
               max_steps: int | None = None, progress: bool = False) -> np.ndarray:
        """uint8 [N, H, W, C] predictions of [N, h, w, C] inputs (the decoding.Decoder protocol).

        ``mode`` greedy or mean: the prediction, rounded and clipped. ``temperature``, ``seed``
        and ``max_steps`` belong to autoregressive decoding and are ignored.
        """
        del temperature, seed, max_steps
        if mode == "sample":
            raise ValueError(
                f"--mode sample is not available for {MODEL_NAME}: it predicts one value per "
                "sub-pixel, not a distribution; use --mode greedy (or mean, the same here)")
        if mode not in decoding.MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {decoding.MODES}")
        prediction = self.predict(inputs, batch_size=batch_size, progress=progress)
        return np.clip(np.rint(prediction), 0, 255).astype(np.uint8)

    def close(self) -> None:
        """Release the TF session."""
        self._session.close()


def register_decoders() -> None:
    """Make :class:`OnePassDecoder` both the "fast" and the "naive" decoder of the model.

    There is nothing slower to compare against: the one pass is the model's exact prediction.
    """
    for kind in ("fast", "naive"):
        decoding.register_decoder(MODEL_NAME, kind, OnePassDecoder)


register_decoders()
