"""The residual CNN of `img2img_conv_sr`, its patch discriminator and pixel losses (TensorFlow only).

    prediction = bicubic(inputs) + std * generator_residual((inputs - mean) / std)

optionally followed by :func:`block_mean_projection`; with ``upsample="input_res"`` the same sum is
computed at the input resolution (:func:`input_res_prediction`). All weights are made with
``tf.get_variable`` under fixed variable scopes, so checkpoint names do not depend on the name
scopes around the call (t2t's ``parallel_0_4``); the names are part of the checkpoint format.
The tensor2tensor glue is `allen_sr.models.conv_sr`; the design notes are docs/ARCHITECTURE.md ("The models").
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import tensorflow.compat.v1 as tf

from allen_sr.evaluation.bicubic import tf1_phase_taps
from allen_sr.t2t.metrics import mse_db

__all__ = [
    "DISCRIMINATOR_SCOPE",
    "PIXEL_LOSSES",
    "PSNR_LOSS_MSE_FLOOR",
    "SUB_PIXELS",
    "UPSAMPLERS",
    "adversarial_losses",
    "bicubic_phase_kernel",
    "bicubic_upsample",
    "block_mean_projection",
    "conv2d",
    "discriminator_variables",
    "generator_features",
    "generator_residual",
    "input_res_prediction",
    "mean_correction",
    "LAPLACE_LOG_SCALE",
    "laplace_log_scale",
    "laplace_nll",
    "nearest_upsample",
    "patch_discriminator",
    "pixel_loss",
]

PIXEL_LOSSES: tuple[str, ...] = ("l1", "l2", "charbonnier", "psnr")
UPSAMPLERS: tuple[str, ...] = ("x2_stages", "pixel_shuffle", "input_res")  # see generator_residual
# pixel_loss=psnr floors each example's MSE (0-1 scale) here, i.e. at 50 dB, so that a nearly
# perfect example cannot take over the gradient (its weight is 1/MSE).
PSNR_LOSS_MSE_FLOOR = 1e-5
DISCRIMINATOR_SCOPE = "discriminator"
# Graph collection of input_res_prediction's [B, h, w, f*f*C] sub-pixels before the depth-to-space:
# a decoder can round them there and rearrange uint8 (TF's float DepthToSpace is slow on CPU).
SUB_PIXELS = "allen_sr_sub_pixels"
# Graph collection of the probabilistic head's log Laplace scale [B, H, W, C] (grey levels).
LAPLACE_LOG_SCALE = "allen_sr_laplace_log_scale"
# The untrained head's scale and the range the scale is clipped to, in grey levels.
LAPLACE_SCALE_INIT = 8.0
LAPLACE_SCALE_RANGE = (0.05, 255.0)


def bicubic_upsample(images: tf.Tensor, factor: int) -> tf.Tensor:
    """Bicubic resize of float [B, h, w, C] by ``factor``: TF 1's resize_bicubic (a=-0.75, no half-pixel)."""
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


def mean_correction(features: tf.Tensor, channels: int, std: Any, bound: float) -> tf.Tensor:
    """A learned shift of each output block's mean, [B, h, w, C] in grey levels (one value per
    input pixel, for its f x f block): one 3x3 conv ``mean_correction`` from the generator's
    features [B, h, w, width] (zero-initialised: the untrained shift is 0), times ``std``, kept
    within +-``bound`` by a scaled tanh. What the block-mean projection copies from a noisy or
    JPEG input, this can correct."""
    raw = conv2d(features, channels, 3, "mean_correction", init_scale=0.0) * std
    return bound * tf.tanh(raw / bound)


def conv2d(x: tf.Tensor, filters: int, kernel: int, name: str, stride: int = 1,
           init_scale: float = 1.0, bias: bool = True) -> tf.Tensor:
    """SAME convolution with variables ``<name>/kernel`` (He-normal times ``init_scale``; 0:
    zeros) and ``<name>/bias`` (zeros)."""
    channels = int(x.shape[-1])
    stddev = init_scale * math.sqrt(2.0 / (kernel * kernel * channels))
    init = tf.random_normal_initializer(stddev=stddev) if init_scale else tf.zeros_initializer()
    with tf.variable_scope(name):
        w = tf.get_variable("kernel", [kernel, kernel, channels, filters], initializer=init)
        y = tf.nn.conv2d(x, w, [1, stride, stride, 1], "SAME")
        if bias:
            y += tf.get_variable("bias", [filters], initializer=tf.zeros_initializer())
        return y


def generator_features(x: tf.Tensor, width: int, blocks: int) -> tf.Tensor:
    """conv in -> ``blocks`` residual blocks of ``width`` channels -> conv (+ long skip), at the
    input resolution: [B, h, w, C] -> [B, h, w, width]."""
    head = conv2d(x, width, 3, "conv_in")
    h = head
    for i in range(blocks):
        with tf.variable_scope(f"res_block_{i}"):
            # A small init of each block's last conv starts every block near the identity.
            r = tf.nn.relu(conv2d(h, width, 3, "conv_a"))
            h = h + conv2d(r, width, 3, "conv_b", init_scale=0.1)
    return conv2d(h, width, 3, "conv_body_out") + head


def generator_residual(x: tf.Tensor, width: int, blocks: int, factor: int, channels: int,
                       upsample: str = "x2_stages", upsample_width: int = 16,
                       features: tf.Tensor | None = None) -> tf.Tensor:
    """The CNN: normalized inputs [B, h, w, C] -> residual [B, h*f, w*f, C] (normalized units).

    :func:`generator_features` -> upsampling -> 3x3 conv out (zero-initialized, so the untrained
    model is bicubic). ``upsample`` "x2_stages" (EDSR's): log2(f) stages of a 3x3 conv to
    4 * width channels and a x2 depth-to-space; needs a power-of-2 f. "pixel_shuffle" (ESPCN's
    sub-pixel layer): one 3x3 conv at the input resolution to f * f * upsample_width channels and
    one x f depth-to-space. ("input_res" is :func:`input_res_prediction`, not a residual.)
    ``features``: :func:`generator_features` of ``x`` made already (in the same variable scope).
    """
    h = generator_features(x, width, blocks) if features is None else features
    if upsample == "x2_stages":
        for stage in range(int(round(math.log2(factor)))):
            h = tf.nn.relu(tf.nn.depth_to_space(conv2d(h, 4 * width, 3, f"upsample_{stage}"), 2))
    else:
        h = tf.nn.relu(tf.nn.depth_to_space(
            conv2d(h, factor * factor * upsample_width, 3, "upsample_pixel_shuffle"), factor))
    return conv2d(h, channels, 3, "conv_out", init_scale=0.0)


def bicubic_phase_kernel(factor: int, channels: int, projection: bool) -> np.ndarray:
    """[4, 4, C, f*f*C] float32: :func:`bicubic_upsample` as a VALID convolution at the input
    resolution, on inputs padded by repeating their edge (1 px before, 2 after, as resize_bicubic
    clamps), followed by a depth-to-space by f.

    Output px (n*f + d) sits at input coordinate n + d/f (TF 1's resize_bicubic: no half-pixel
    offset, Keys' cubic with a = -0.75), so it weighs inputs n-1 .. n+2. Output channel
    (dy*f + dx)*C + c is the sub-pixel (dy, dx) of channel c (depth_to_space's order). With
    ``projection`` the kernel also does :func:`block_mean_projection` of the bicubic image: each
    pixel's f x f block is shifted so its mean is the input pixel.
    """
    taps = tf1_phase_taps(factor).astype(np.float64)  # [sub-pixel, tap]
    kernel = np.zeros((4, 4, channels, factor * factor * channels))
    for dy in range(factor):
        for dx in range(factor):
            for c in range(channels):
                kernel[:, :, c, (dy * factor + dx) * channels + c] = np.outer(taps[dy], taps[dx])
    if projection:
        by_phase = kernel.reshape(4, 4, channels, factor * factor, channels)
        by_phase -= by_phase.mean(axis=3, keepdims=True)
        for c in range(channels):
            by_phase[1, 1, c, :, c] += 1.0  # + the input pixel itself, in every sub-pixel
    return kernel.astype(np.float32)


def _pad_edge(x: tf.Tensor, before: int, after: int) -> tf.Tensor:
    """Pad rows and columns of [B, h, w, C] by repeating the edge pixels."""
    for axis in (1, 2):
        first = tf.gather(x, [0], axis=axis)
        last = tf.gather(x, [tf.shape(x)[axis] - 1], axis=axis)
        x = tf.concat([first] * before + [x] + [last] * after, axis=axis)
    return x


def input_res_prediction(inputs: tf.Tensor, x: tf.Tensor, std: tf.Tensor, width: int, blocks: int,
                         factor: int, projection: bool, features: tf.Tensor | None = None,
                         shift: tf.Tensor | None = None) -> tf.Tensor:
    """The prediction [B, h*f, w*f, C] in 0-255 with everything at the input resolution.

    ``inputs`` [B, h, w, C] in 0-255, ``x`` the same normalized, ``std`` [C] the normalization's
    scale. :func:`generator_features`, then one 3x3 conv (``upsample_input_res``, zero-initialized)
    to f*f*C values per input pixel, plus bicubic as a fixed convolution
    (:func:`bicubic_phase_kernel`), then a single depth-to-space: bicubic(inputs) + std *
    residual, as ``pixel_shuffle`` predicts, without any convolution at the output resolution
    (f*f times fewer positions for the last conv). With ``projection`` the block-mean projection
    is folded into the weights: the learned sub-pixels of each input pixel are centred on their
    mean (an exact linear map of the conv's weights), and the bicubic kernel is projected.
    ``features`` as :func:`generator_residual` takes them; ``shift`` [B, h, w, C] (grey levels,
    :func:`mean_correction`) is added to every sub-pixel of its pixel.
    """
    channels = int(inputs.shape[-1])
    phases = factor * factor * channels
    h = generator_features(x, width, blocks) if features is None else features
    with tf.variable_scope("upsample_input_res"):
        w = tf.get_variable("kernel", [3, 3, width, phases], initializer=tf.zeros_initializer())
        b = tf.get_variable("bias", [phases], initializer=tf.zeros_initializer())
    if projection:
        w = w - tf.tile(tf.reduce_mean(tf.reshape(w, [3, 3, width, factor * factor, channels]), 3),
                        [1, 1, 1, factor * factor])
        b = b - tf.tile(tf.reduce_mean(tf.reshape(b, [factor * factor, channels]), 0), [factor * factor])
    scale = tf.tile(tf.reshape(std, [channels]), [factor * factor])
    base = tf.nn.conv2d(_pad_edge(inputs, 1, 2), bicubic_phase_kernel(factor, channels, projection),
                        [1, 1, 1, 1], "VALID")
    learned = tf.nn.conv2d(h, w * scale, [1, 1, 1, 1], "SAME") + b * scale
    sub_pixels = base + learned
    if shift is not None:
        sub_pixels += tf.tile(shift, [1, 1, 1, factor * factor])
    tf.add_to_collection(SUB_PIXELS, sub_pixels)
    return tf.nn.depth_to_space(sub_pixels, factor)


def laplace_log_scale(features: tf.Tensor, factor: int, channels: int) -> tf.Tensor:
    """The probabilistic head: log of each sub-pixel's Laplace scale b in grey levels, [B, h*f,
    w*f, C], from the generator's features [B, h, w, width] (one 3x3 conv ``scale_out`` to f*f*C
    values per input pixel and a depth-to-space). The conv starts at zero, so the untrained head
    says b = :data:`LAPLACE_SCALE_INIT` everywhere; b is clipped to :data:`LAPLACE_SCALE_RANGE`.
    Added to the collection :data:`LAPLACE_LOG_SCALE` for the decoders."""
    raw = tf.nn.depth_to_space(conv2d(features, factor * factor * channels, 3, "scale_out", init_scale=0.0), factor)
    lo, hi = (math.log(v) for v in LAPLACE_SCALE_RANGE)
    log_scale = tf.clip_by_value(raw + math.log(LAPLACE_SCALE_INIT), lo, hi)
    tf.add_to_collection(LAPLACE_LOG_SCALE, log_scale)
    return log_scale


def laplace_nll(prediction: tf.Tensor, log_scale: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean negative log-likelihood of ``targets`` under Laplace(prediction, exp(log_scale)), all in
    grey levels, on the 0-1 scale and without its constant log 2: mean(|y - mu| / b + log b), the
    loss of CARE's probabilistic mode. For a given error it is least at b = |y - mu|, so the head
    learns the size of the error it should expect at each sub-pixel."""
    scale = tf.exp(log_scale) / 255.0
    diff = tf.abs(prediction - targets) / 255.0
    return tf.reduce_mean(diff / scale + tf.log(scale))


def patch_discriminator(condition: tf.Tensor, image: tf.Tensor, filters: int) -> tf.Tensor:
    """pix2pix-style patch discriminator: logits [B, h/4, w/4, 1], one per ~34 px patch.

    Inputs are in [-1, 1]; ``condition`` is the bicubic-upsampled input, so the discriminator
    judges whether ``image`` is a plausible sharp version of that particular input.
    """
    x = tf.concat([condition, image], axis=-1)
    x = tf.nn.leaky_relu(conv2d(x, filters, 4, "conv_0", stride=2), 0.2)
    x = tf.nn.leaky_relu(conv2d(x, 2 * filters, 4, "conv_1", stride=2), 0.2)
    x = tf.nn.leaky_relu(conv2d(x, 4 * filters, 4, "conv_2"), 0.2)
    return conv2d(x, 1, 4, "logits")


def discriminator_variables(variables: Sequence[Any] | None = None) -> list[Any]:
    """The discriminator's variables among ``variables`` (default: all trainable variables)."""
    variables = tf.trainable_variables() if variables is None else variables
    return [v for v in variables if f"/{DISCRIMINATOR_SCOPE}/" in v.op.name]


def adversarial_losses(condition: tf.Tensor, targets: tf.Tensor, prediction: tf.Tensor,
                       filters: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(generator loss, discriminator loss) of a :func:`patch_discriminator` in the current scope.

    ``condition`` in [-1, 1] (the bicubic input), ``targets`` and ``prediction`` in 0-255. The
    generator's loss is non-saturating, -log D(G(x)); the discriminator's is the binary
    cross-entropy of real (targets) vs fake (prediction).
    """
    with tf.variable_scope(DISCRIMINATOR_SCOPE, reuse=tf.AUTO_REUSE):
        real_logits = patch_discriminator(condition, tf.to_float(targets) / 127.5 - 1.0, filters)
        fake_logits = patch_discriminator(condition, prediction / 127.5 - 1.0, filters)
    bce = tf.nn.sigmoid_cross_entropy_with_logits
    d_loss = (tf.reduce_mean(bce(labels=tf.ones_like(real_logits), logits=real_logits))
              + tf.reduce_mean(bce(labels=tf.zeros_like(fake_logits), logits=fake_logits)))
    g_loss = tf.reduce_mean(bce(labels=tf.ones_like(fake_logits), logits=fake_logits))
    return g_loss, d_loss


def pixel_loss(prediction: tf.Tensor, targets: tf.Tensor, kind: str, epsilon: float) -> tf.Tensor:
    """A scalar loss of ``prediction`` against ``targets`` (both 0-255), on the 0-1 scale.

    ``kind``: "l1" mean absolute error; "l2" mean squared error; "charbonnier" mean of
    sqrt(diff^2 + epsilon^2); "psnr" minus the mean per-example PSNR in dB (the MSE floored at
    :data:`PSNR_LOSS_MSE_FLOOR`), which weighs each example by 1/its MSE.
    """
    diff = (prediction - targets) / 255.0
    if kind == "l1":
        return tf.reduce_mean(tf.abs(diff))
    if kind == "l2":
        return tf.reduce_mean(tf.square(diff))
    if kind == "psnr":
        mse = tf.reduce_mean(tf.square(diff), axis=list(range(1, diff.shape.rank)))
        return tf.reduce_mean(mse_db(mse + PSNR_LOSS_MSE_FLOOR))  # minus the PSNR at a peak of 1
    return tf.reduce_mean(tf.sqrt(tf.square(diff) + epsilon * epsilon))
