"""Image Transformer variant for super-resolution (registered as `img2img_transformer_sr`).

The network is tensor2tensor's `img2img_transformer` plus these additions, switched by hparams
(declared in allen_sr/models/transformer_options.py); what the decoders run is only this network:

* ``input_skip``: each target sub-pixel's decoder input also receives the embedding of the
  low-resolution input pixel it lies in (same colour channel, nearest upsampling). It depends on
  the inputs only, so causal decoding is unchanged.
* ``normalize_inputs``: each input sub-pixel's embedding also receives a learned projection of its
  value normalized by the dataset's per-channel mean/std (`allen_sr.models.normalization`; stored
  in the checkpoint, so decoding needs no data_dir).
* ``bicubic_prior``: each sub-pixel's 256 logits also receive a Gaussian log-density in the value,
  -((v - mu) / sigma)^2 / 2, centred on mu = the bicubic value of its input (a fixed operator,
  `allen_sr.evaluation.bicubic`) plus a learned offset, with a learned width; both come from the
  decoder's output at that position by a zero-initialised dense layer, so training starts at
  "bicubic, give or take ``prior_sigma`` grey levels" and learns what to change. The distribution
  is smooth in the value and its expected value is close to mu: what mean decoding needs, and a
  new stain cannot drift it far from the bicubic.
* ``input_patch`` = r > 0: each sub-pixel also sees its input pixel's (2r+1)^2 neighbourhood of
  normalized values (all channels) through linear maps specific to its place in the f x f block
  and its channel: one added to its decoder input, one (with the prior) to the prior's centre.
  The centre starts at bicubic and becomes a learned linear upsampler; the decoder reads local
  structure directly instead of only through attention over the encoder.

Training-only options (the network, and so decoding, is unchanged by them):

* ``train_budget_seconds`` > 0: a checkpointed training clock (`allen_sr.models.schedule`); the
  learning rate is t2t's schedule times a clamped half cosine (to ``cosine_decay_min``) over that
  time, and training stops at the budget with a final checkpoint, as `img2img_conv_sr` does.
  Without it, ``cosine_decay_steps`` > 0 runs the same cosine over steps.
* ``embedding_init`` = "smooth": the two 256*C-row value embeddings start as smooth functions of
  the value (random combinations of low-frequency cosines of v/255), so values never seen in
  training start near their neighbours instead of at random.
* ``embedding_smoothness`` > 0: adds that weight times the mean squared difference of the
  embeddings of neighbouring values (v, v+1) of each channel to the loss.
* ``context_bicubic`` > 0: in training, each conditioning sub-pixel is replaced, with that
  probability, by its rounded bicubic value: contexts like the smooth ones decoding produces.
* ``target_noise`` > 0: in training, the previous sub-pixels the decoder is conditioned on are
  (after ``context_bicubic``) perturbed by uniform integer noise of up to that many grey levels
  (the loss still scores the clean targets): a cheap guard against exposure bias.
* ``self_condition`` > 0: scheduled sampling with the model's own mean-decoding values. A first,
  forward-only pass (its usual training context) gives each sub-pixel's expected value; the
  second pass, which alone is trained, is conditioned on those rounded values at that fraction of
  the sub-pixels, drawn at random, and on the true ones elsewhere (no bicubic context, no noise).
  Contexts like the ones free-running mean decoding feeds itself, for about a third more time per
  step (tensor2tensor's own ``scheduled_sampling_prob`` samples multinomially, as the noisy
  "sample" mode does; it stays available when this is 0).
* ``ev_loss_weight`` > 0: adds that weight times the mean absolute error of each sub-pixel's
  expected value (what mean decoding outputs), in ``prior_sigma`` grey levels, to the
  cross-entropy. The cross-entropy alone, through the learned width, moves the centre of a wide
  (uncertain: edges, texture) distribution little, and those sub-pixels carry most of the squared
  error PSNR counts; this term trains every centre as a pixel loss would.

Colour augmentation and realistic (degraded) inputs of training tiles are the problem's
(`allen_sr.t2t.problems`, hparams ``color_augment`` and ``degradation``). Every option is declared
once, with its default, in `allen_sr.models.transformer_options`. Why: docs/ARCHITECTURE.md ("The
models") and docs/decisions/image_transformer.md.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

import tensorflow.compat.v1 as tf
from tensor2tensor.layers import common_image_attention as cia
from tensor2tensor.layers import common_layers
from tensor2tensor.models import image_transformer_2d
from tensor2tensor.utils import learning_rate as t2t_learning_rate
from tensor2tensor.utils import optimize as t2t_optimize

from allen_sr.evaluation.bicubic import PRIOR_SIGMA_RANGE
from allen_sr.models import schedule, transformer_options
from allen_sr.models.normalization import input_statistics
from allen_sr.t2t import registration

MODEL_NAME = "img2img_transformer_sr"


def normalized_values(raw_inputs, hparams):
    """[B, h, w, C] float: the input values normalized by the dataset's per-channel mean/std."""
    mean, std = input_statistics(hparams, hparams.num_channels, MODEL_NAME)
    return (tf.cast(raw_inputs, tf.float32) - mean) / std


def normalized_input_term(normalized, hparams):
    """[B, h, w*C, H]: a learned projection of each input sub-pixel's normalized value."""
    batch, h, w, c = common_layers.shape_list(normalized)
    x = tf.reshape(normalized, [batch, h, w * c, 1])
    return tf.layers.dense(x, hparams.hidden_size, name="normalized_inputs")


PATCH_SCOPE = "input_patch"


def input_patches(normalized, radius: int):
    """[B, h, w, (2r+1)^2 * C]: each input pixel's neighbourhood of normalized values, rows then
    columns then channels, the image mirrored at its border (numpy's "symmetric" pad)."""
    _, h, w, _ = common_layers.shape_list(normalized)
    side = 2 * radius + 1
    x = tf.pad(normalized, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    return tf.concat([x[:, dy:dy + h, dx:dx + w, :] for dy in range(side) for dx in range(side)], axis=-1)


def patch_terms(patches, rows: int, cols: int, hparams):
    """The ``input_patch`` head: per sub-pixel position (i, j) in its f x f block and channel c,
    two linear maps of its input pixel's neighbourhood ``patches`` [B, h, w, K]:

    * [B, rows, cols, H] added to the decoder input (cols counts sub-pixels, as
      `upsample_input_embeddings`), a learned filter bank the decoder reads;
    * with ``bicubic_prior``, [B, rows, cols] added to the prior's centre, in units of
      ``prior_sigma`` grey levels (zero-initialised: training starts at bicubic): a learned linear
      upsampler. Without the prior this is None.
    """
    batch, h, w, k = common_layers.shape_list(patches)
    channels, hidden = int(hparams.num_channels), int(hparams.hidden_size)
    f = int(hparams.upscale_factor)  # static: the weights' shape (the input side may be dynamic)
    with tf.control_dependencies([tf.debugging.assert_equal(
            h * f, rows, message="input_patch: upscale_factor does not match the problem's sizes")]):
        patches = tf.identity(patches)
    with tf.variable_scope(PATCH_SCOPE):
        skip = tf.get_variable("skip", [f, f, channels, k, hidden],
                               initializer=tf.random_normal_initializer(stddev=(k * hidden) ** -0.5))
        decoder = tf.reshape(tf.einsum("nyxk,ijckh->nyixjch", patches, skip), [batch, rows, cols, hidden])
        if not hparams.bicubic_prior:
            return decoder, None
        offset = tf.get_variable("offset", [f, f, channels, k], initializer=tf.zeros_initializer())
        bias = tf.get_variable("offset_bias", [f, f, channels], initializer=tf.zeros_initializer())
    # [B, y, i, x, j, c] + bias [i, j, c] broadcast as [1, 1, i, 1, j, c]
    centre = tf.einsum("nyxk,ijck->nyixjc", patches, offset) + bias[None, None, :, None]
    return decoder, tf.reshape(centre, [batch, rows, cols]) * float(hparams.prior_sigma)


def upsample_input_embeddings(inputs, rows: int, cols: int, channels: int):
    """Nearest-upsample embedded inputs [B, h, w*C, H] to the decoder grid [B, rows, cols, H].

    Sub-pixel (r, c, ch) of the target receives input pixel (r // f, c // f), channel ch.
    """
    batch, h, wc, hidden = common_layers.shape_list(inputs)
    w = wc // channels
    factor = rows // h
    x = tf.reshape(inputs, [batch, h, 1, w, 1, channels, hidden])
    x = tf.tile(x, [1, 1, factor, 1, factor, 1, 1])
    return tf.reshape(x, [batch, rows, cols, hidden])


PRIOR_SCOPE = "bicubic_prior"


def bicubic_matrix_tf(size, out_size: int):
    """`allen_sr.evaluation.bicubic.pillow_bicubic_matrix` (scale = out_size / size) for an
    input size known only at run time."""
    a = -0.5
    scale = float(out_size) / tf.cast(size, tf.float32)
    centre = (tf.cast(tf.range(out_size), tf.float32)[:, None] + 0.5) / scale
    x = tf.abs(tf.cast(tf.range(size), tf.float32)[None, :] + 0.5 - centre)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    weights = tf.where(x < 1.0, inner, tf.where(x < 2.0, outer, tf.zeros_like(x)))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def bicubic_tf(raw_inputs, out_rows: int, out_cols: int):
    """float [B, out_rows, out_cols, C]: `allen_sr.evaluation.bicubic.bicubic_centres` in TF."""
    x = tf.cast(raw_inputs, tf.float32)
    _, h, w, _ = common_layers.shape_list(x)
    wide = tf.clip_by_value(tf.einsum("kl,bjlc->bjkc", bicubic_matrix_tf(w, out_cols), x), 0.0, 255.0)
    return tf.clip_by_value(tf.einsum("ij,bjkc->bikc", bicubic_matrix_tf(h, out_rows), wide), 0.0, 255.0)


def bicubic_prior_logits(decoder_output, raw_inputs, rows: int, cols: int, hparams, shift=None):
    """[B, rows, cols, 256] Gaussian log-densities (up to a constant per position); cols counts
    sub-pixels (pixels x C), as t2t's postprocess_image lays out the logits. ``shift`` [B, rows,
    cols] (grey levels, inputs only: the ``input_patch`` head) moves the centre from the bicubic."""
    batch = common_layers.shape_list(decoder_output)[0]
    x = tf.reshape(decoder_output, [batch, rows, cols, hparams.hidden_size])
    params = tf.layers.dense(x, 2, kernel_initializer=tf.zeros_initializer(), name=PRIOR_SCOPE)
    sigma0 = float(hparams.prior_sigma)
    offset = params[..., 0] * sigma0
    low, high = (math.log(v) for v in PRIOR_SIGMA_RANGE)
    inv_sigma = tf.exp(-tf.clip_by_value(math.log(sigma0) + params[..., 1], low, high))
    centre = tf.reshape(bicubic_tf(raw_inputs, rows, cols // hparams.num_channels), [batch, rows, cols])
    if shift is not None:
        centre += shift
    z = (tf.range(256, dtype=tf.float32) - (centre + offset)[..., None]) * inv_sigma[..., None]
    return -0.5 * tf.square(z)


def add_prior(logits, prior, rows: int, hparams):
    """``logits`` (create_output's layout for the mode) plus the [B, rows, cols, 256] prior."""
    batch = common_layers.shape_list(prior)[0]
    if hparams.mode == tf.estimator.ModeKeys.PREDICT:  # create_output's [B, rows, 1, 1, 256]
        return logits + tf.reshape(prior, [batch, -1, 1, 1, 256])[:, :rows]
    return logits + tf.reshape(prior, common_layers.shape_list(logits))


# The value embeddings of t2t's image_channel_embeddings_bottom (cia.get_channel_embeddings).
EMBEDDING_SUFFIX = "rgb_target_emb_input_bottom"
SMOOTH_FREQUENCIES = 8


def smooth_embedding_initializer(base_initializer: Any, channels: int, frequencies: int = SMOOTH_FREQUENCIES):
    """Initializer for a [256*C, H] value embedding: row c*256+v = sum_k A_ck cos(pi k v / 255).

    A_ck is Gaussian with variance decaying as 1/(1+k); the result is rescaled to the standard
    deviation of what ``base_initializer`` draws for the same shape, so the embeddings start at
    the usual scale but vary smoothly with the value.
    """
    def init(shape, dtype=tf.float32, partition_info=None):
        del partition_info
        rows, hidden = int(shape[0]), int(shape[1])
        vocab = rows // channels
        v = np.arange(vocab, dtype=np.float32)[:, None]
        k = np.arange(frequencies, dtype=np.float32)[None, :]
        basis = tf.constant(np.cos(np.pi * k * v / (vocab - 1)) / np.sqrt(1.0 + k), tf.float32)
        parts = [tf.matmul(basis, tf.random.normal([frequencies, hidden])) for _ in range(channels)]
        smooth = tf.concat(parts, axis=0)
        base = base_initializer(shape, dtype=dtype) if base_initializer is not None else \
            tf.random.normal(shape, stddev=hidden ** -0.5)
        _, base_var = tf.nn.moments(tf.reshape(base, [-1]), axes=[0])
        _, smooth_var = tf.nn.moments(tf.reshape(smooth, [-1]), axes=[0])
        return tf.cast(smooth * tf.sqrt(base_var / smooth_var), dtype)
    return init


def embedding_smoothness_penalty(embedding: tf.Tensor, channels: int) -> tf.Tensor:
    """Mean over channels and v of ||e[c, v+1] - e[c, v]||^2 for a [256*C, H] value embedding."""
    rows, hidden = common_layers.shape_list(embedding)
    e = tf.reshape(embedding, [channels, rows // channels, hidden])
    return tf.reduce_mean(tf.reduce_sum(tf.square(e[:, 1:] - e[:, :-1]), axis=-1))


def expected_values(logits: tf.Tensor) -> tf.Tensor:
    """Each sub-pixel's expected grey level (float32) under ``logits`` [..., 256]: what mean
    decoding outputs."""
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
    return tf.reduce_sum(probabilities * tf.range(256, dtype=tf.float32), axis=-1)


def expected_value_error(logits, targets, unit: float):
    """Mean absolute difference, in ``unit`` grey levels, between each sub-pixel's expected value
    under ``logits`` [..., 256] and its target [...] (what PSNR scores)."""
    expected = expected_values(logits)
    target = tf.reshape(tf.cast(targets, tf.float32), common_layers.shape_list(expected))
    return tf.reduce_mean(tf.abs(expected - target)) / unit


def add_to_loss(loss, term):
    """t2t's modality loss (a (numerator, denominator) pair, or a scalar) plus a mean ``term``."""
    if isinstance(loss, tuple):
        num, den = loss
        return num + term * den, den
    return loss + term


def noisy_targets(targets: tf.Tensor, amplitude: int) -> tf.Tensor:
    """``targets`` plus uniform integer noise in [-amplitude, amplitude], clipped to 0-255."""
    noise = tf.random.uniform(tf.shape(targets), -amplitude, amplitude + 1, dtype=tf.int32)
    noisy = tf.clip_by_value(tf.cast(targets, tf.int32) + noise, 0, 255)
    return tf.cast(noisy, targets.dtype)


def bicubic_context(inputs: tf.Tensor, targets: tf.Tensor, probability: float) -> tf.Tensor:
    """``targets`` with each sub-pixel replaced, with ``probability``, by its rounded bicubic value."""
    shape = common_layers.shape_list(targets)
    bicubic = tf.cast(tf.round(bicubic_tf(inputs, shape[1], shape[2])), targets.dtype)
    pick = tf.random.uniform(shape) < probability
    return tf.where(pick, bicubic, targets)


@registration.model
class Img2imgTransformerSr(image_transformer_2d.Img2imgTransformer):
    """img2img_transformer plus the hparam-switched additions of the module docstring."""

    honours_train_budget = True  # its training clock stops at train_budget_seconds (allen_sr.models.schedule)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every option present from here on: a set that lacks one (a stock set) gets its
        # documented default (allen_sr.models.transformer_options), as the decoders do.
        transformer_options.add_transformer_hparams(self._hparams)
        # (elapsed, step_start) of schedule.training_clock(), made by optimize() when
        # train_budget_seconds > 0.
        self._clock: tuple[tf.Tensor, tf.Tensor] | None = None
        self._embeddings: list[tf.Tensor] = []
        # While the self_condition pass is built: no bicubic/noisy context, loss on these targets.
        self._self_conditioned = False
        self._loss_targets: tf.Tensor | None = None

    @staticmethod
    def needs_integer_factor(hparams: Any) -> str | None:
        """The options of ``hparams`` (a stock set's: the defaults) that are on and lay each input pixel
        over an f x f block of sub-pixels, in the graph or the decoders ("input_patch=2, input_skip=True",
        ...), or None: with any on, a problem of a non-integer ratio (48 -> 64 px) cannot train or decode."""
        names = ("input_patch", "input_skip", "bicubic_prior", "context_bicubic")
        on = [f"{name}={transformer_options.option(hparams, name)}" for name in names
              if transformer_options.option(hparams, name)]
        return ", ".join(on) or None

    # --- bottoms: the same network; training-only initialisation and noise ----------------
    def bottom(self, features):
        hp = self._hparams
        training = hp.mode == tf.estimator.ModeKeys.TRAIN and not self._self_conditioned
        # The conditioning the decoder sees in training: some sub-pixels bicubic, then noise.
        mix = float(hp.context_bicubic)
        if training and mix > 0 and "targets" in features:
            features = dict(features)
            features["targets"] = bicubic_context(features["inputs"], features["targets"], mix)
        amplitude = int(hp.target_noise)
        if training and amplitude > 0 and "targets" in features:
            features = dict(features)
            features["targets"] = noisy_targets(features["targets"], amplitude)
        smooth = hp.embedding_init == "smooth"
        channels = int(hp.num_channels)
        embeddings = self._embeddings

        def getter(getter, *args, **kwargs):  # TF passes getter=, name=, ... by keyword
            name = kwargs.get("name", args[0] if args else "")
            if name.endswith(EMBEDDING_SUFFIX):
                if smooth:
                    kwargs["initializer"] = smooth_embedding_initializer(
                        kwargs.get("initializer"), channels)
                var = getter(*args, **kwargs)
                embeddings.append(var)
                return var
            return getter(*args, **kwargs)

        with tf.variable_scope(tf.get_variable_scope(), custom_getter=getter):
            return super().bottom(features)

    def body(self, features):
        hparams = copy.copy(self._hparams)
        inputs, targets = features["inputs"], features["targets"]
        radius = int(hparams.input_patch)
        if hparams.normalize_inputs or radius:
            normalized = normalized_values(features["inputs_raw"], hparams)
        if hparams.normalize_inputs:
            inputs += normalized_input_term(normalized, hparams)
        encoder_input = cia.prepare_encoder(inputs, hparams)
        encoder_output = cia.transformer_encoder_layers(
            encoder_input, hparams.num_encoder_layers, hparams,
            attention_type=hparams.enc_attention_type, name="encoder")
        decoder_input, rows, cols = cia.prepare_decoder(targets, hparams)
        if hparams.input_skip:
            decoder_input += upsample_input_embeddings(inputs, rows, cols, hparams.num_channels)
        shift = None
        if radius:
            patch_input, shift = patch_terms(input_patches(normalized, radius), rows, cols, hparams)
            decoder_input += patch_input
        decoder_output = cia.transformer_decoder_layers(
            decoder_input, encoder_output, hparams.num_decoder_layers, hparams,
            attention_type=hparams.dec_attention_type, name="decoder")
        logits = cia.create_output(decoder_output, rows, cols, targets, hparams)
        if hparams.bicubic_prior:
            logits *= float(hparams.free_logit_scale)
            prior = bicubic_prior_logits(decoder_output, features["inputs_raw"], rows, cols, hparams, shift)
            logits = add_prior(logits, prior, rows, hparams)
        return logits

    def model_fn(self, features):
        """t2t's model_fn, then the ``self_condition`` pass (see the module docstring)."""
        logits, losses = super().model_fn(features)
        fraction = float(self._hparams.self_condition)
        if fraction <= 0 or self._hparams.mode != tf.estimator.ModeKeys.TRAIN:
            return logits, losses
        targets = features["targets"]
        shape = common_layers.shape_list(targets)
        expected = expected_values(tf.stop_gradient(logits))
        own = tf.cast(tf.reshape(tf.round(expected), shape), targets.dtype)
        new_features = dict(features)
        new_features["targets"] = tf.where(tf.random.uniform(shape) < fraction, own, targets)
        self._self_conditioned, self._loss_targets = True, targets
        try:
            with tf.variable_scope(tf.get_variable_scope(), reuse=True):
                return super().model_fn(new_features)
        finally:
            self._self_conditioned, self._loss_targets = False, None

    # --- loss and optimization -----------------------------------------------------------
    def loss(self, logits, features):
        if self._loss_targets is not None:  # the self_condition pass: score the true targets
            features = dict(features, targets=self._loss_targets)
        loss = super().loss(logits, features)
        if self._hparams.mode != tf.estimator.ModeKeys.TRAIN:
            return loss
        weight = float(self._hparams.embedding_smoothness)
        if weight > 0 and self._embeddings:
            channels = int(self._hparams.num_channels)
            unique = list({id(e): e for e in self._embeddings}.values())
            penalty = tf.add_n([embedding_smoothness_penalty(e, channels) for e in unique])
            tf.summary.scalar("losses/embedding_smoothness", penalty)
            loss = add_to_loss(loss, weight * penalty)
        weight = float(self._hparams.ev_loss_weight)
        if weight > 0:
            error = expected_value_error(logits, features["targets"], float(self._hparams.prior_sigma))
            tf.summary.scalar("losses/expected_value_l1", error)
            loss = add_to_loss(loss, weight * error)
        return loss

    def _learning_rate(self, num_async_replicas: int) -> tf.Tensor:
        """t2t's learning_rate_schedule times the clamped cosine decay (schedule.cosine_decay)."""
        hp = self.hparams
        lr = t2t_learning_rate.learning_rate_schedule(hp)
        budget = float(hp.get("train_budget_seconds", 0.0) or 0.0)
        if budget > 0 and self._clock is None:
            self._clock = schedule.training_clock()
        lr = schedule.cosine_decay(lr, float(hp.get("cosine_decay_min", 0.0)),
                                   int(hp.get("cosine_decay_steps", 0)), budget,
                                   self._clock[0] if self._clock is not None else None)
        return lr / math.sqrt(float(num_async_replicas))

    def optimize(self, loss, num_async_replicas: int = 1, use_tpu: bool = False,
                 variables: Sequence[Any] | None = None):
        """t2t's optimizer step with the time-driven learning rate; the clock stamps each step."""
        lr = self._learning_rate(num_async_replicas)
        train_op = t2t_optimize.optimize(loss, lr, self.hparams, use_tpu=use_tpu, variables=variables)
        if self._clock is None:
            return train_op
        return tf.group(train_op, schedule.tick_after(self._clock, train_op), name="step_and_clock")

    def estimator_spec_train(self, loss, num_async_replicas: int = 1, use_tpu: bool = False):
        """t2t's TRAIN spec, plus the hook ending training at train_budget_seconds (if set)."""
        spec = super().estimator_spec_train(loss, num_async_replicas=num_async_replicas,
                                            use_tpu=use_tpu)
        if use_tpu:
            return spec
        return schedule.with_stop_hook(spec, self._clock, self.hparams.train_budget_seconds, MODEL_NAME)
