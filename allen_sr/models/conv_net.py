"""The residual CNN of `img2img_conv_sr`, its patch discriminator and pixel losses (TensorFlow only).

    prediction = bicubic(inputs) + std * generator_residual((inputs - mean) / std)

optionally followed by :func:`block_mean_projection`. All weights are made with
``tf.get_variable`` under fixed variable scopes, so checkpoint names do not depend on the name
scopes around the call (t2t's ``parallel_0_4``); the names are part of the checkpoint format.
The tensor2tensor glue is `allen_sr.models.conv_sr`; the design notes are docs/ARCHITECTURE.md ("The models").
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import tensorflow.compat.v1 as tf

from allen_sr.t2t.metrics import mse_db

__all__ = [
    "DISCRIMINATOR_SCOPE",
    "PIXEL_LOSSES",
    "PSNR_LOSS_MSE_FLOOR",
    "UPSAMPLERS",
    "adversarial_losses",
    "bicubic_upsample",
    "block_mean_projection",
    "conv2d",
    "discriminator_variables",
    "generator_residual",
    "nearest_upsample",
    "patch_discriminator",
    "pixel_loss",
]

PIXEL_LOSSES: tuple[str, ...] = ("l1", "l2", "charbonnier", "psnr")
UPSAMPLERS: tuple[str, ...] = ("x2_stages", "pixel_shuffle")  # see generator_residual
# pixel_loss=psnr floors each example's MSE (0-1 scale) here, i.e. at 50 dB, so that a nearly
# perfect example cannot take over the gradient (its weight is 1/MSE).
PSNR_LOSS_MSE_FLOOR = 1e-5
DISCRIMINATOR_SCOPE = "discriminator"


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


def generator_residual(x: tf.Tensor, width: int, blocks: int, factor: int, channels: int,
                       upsample: str = "x2_stages", upsample_width: int = 16) -> tf.Tensor:
    """The CNN: normalized inputs [B, h, w, C] -> residual [B, h*f, w*f, C] (normalized units).

    conv in -> ``blocks`` residual blocks of ``width`` channels -> conv (+ long skip) ->
    upsampling -> 3x3 conv out (zero-initialized, so the untrained model is bicubic).
    ``upsample`` "x2_stages" (EDSR's): log2(f) stages of a 3x3 conv to 4 * width channels and a
    x2 depth-to-space; needs a power-of-2 f. "pixel_shuffle" (ESPCN's sub-pixel layer): one 3x3
    conv at the input resolution to f * f * upsample_width channels and one x f depth-to-space.
    """
    head = conv2d(x, width, 3, "conv_in")
    h = head
    for i in range(blocks):
        with tf.variable_scope(f"res_block_{i}"):
            # A small init of each block's last conv starts every block near the identity.
            r = tf.nn.relu(conv2d(h, width, 3, "conv_a"))
            h = h + conv2d(r, width, 3, "conv_b", init_scale=0.1)
    h = conv2d(h, width, 3, "conv_body_out") + head
    if upsample == "x2_stages":
        for stage in range(int(round(math.log2(factor)))):
            h = tf.nn.relu(tf.nn.depth_to_space(conv2d(h, 4 * width, 3, f"upsample_{stage}"), 2))
    else:
        h = tf.nn.relu(tf.nn.depth_to_space(
            conv2d(h, factor * factor * upsample_width, 3, "upsample_pixel_shuffle"), factor))
    return conv2d(h, channels, 3, "conv_out", init_scale=0.0)


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
