"""The ``degradation`` hparam in graph: a random, realistic low-resolution input per training example.

:func:`degrade_pair` turns one training target into (target, input) the way a real section is
captured: stain variation of the tissue (HED jitter of the target itself), optical blur, a
downsampling kernel, sensor noise (constant and signal-dependent) and a JPEG round trip whose 8x8
block grid falls at a random offset relative to the input (the input is mirrored outwards and the
encoded window starts 0-15 px before it, so the grid cuts it as it cuts a tile of a real JPEG). Every value is drawn
per example from the spec's ranges (:mod:`allen_sr.data.degrade` parses it); a share ``clean``
of the examples keeps the exact rounded area average. Used by the problems' preprocess_example in
training only: evaluation, decoding and the problems' dev metrics see clean inputs.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow.compat.v1 as tf

from allen_sr.data.degrade import HED_FROM_RGB_STAINS, Range, TrainingDegradation, parse_training

__all__ = ["training_degradation", "degrade_pair", "area_input", "hed_jitter", "jpeg_offset_roundtrip"]

JPEG_PERIOD = 16  # the 4:2:0 MCU: luma blocks are 8 px, chroma blocks 16 px of the image


def training_degradation(hparams) -> TrainingDegradation | None:
    """The parsed ``degradation`` hparam of a model's hparams (None: none, or a set without it)."""
    return parse_training(getattr(hparams, "degradation", None), "--hparams degradation")


def area_input(target, size: int):
    """The rounded area average of ``target`` [H, W, C] at size x size, uint8 (the clean input)."""
    small = tf.image.resize(tf.cast(target, tf.float32), [size, size], method=tf.image.ResizeMethod.AREA)
    return tf.cast(tf.round(small), tf.uint8)


def _draw(value: Range | None):
    """A value of ``value``'s range for this example, or 0 when it does not apply (its share)."""
    if value is None:
        return tf.constant(0.0)
    drawn = tf.random.uniform([], value.lo, value.hi) if value.hi > value.lo else tf.constant(float(value.lo))
    if value.p >= 1.0:
        return drawn
    return tf.where(tf.random.uniform([]) < value.p, drawn, 0.0)


def hed_jitter(image, amount: float):
    """Stain variation of float RGB [H, W, 3] (0-255): each HED density times U(1-a, 1+a) plus U(-a, a)."""
    stains = HED_FROM_RGB_STAINS / np.linalg.norm(HED_FROM_RGB_STAINS, axis=1, keepdims=True)
    to_rgb = tf.constant(stains, tf.float32)
    to_hed = tf.constant(np.linalg.inv(stains), tf.float32)
    density = -tf.math.log((tf.reshape(image, [-1, 3]) + 1.0) / 256.0)
    hed = tf.matmul(density, to_hed)
    hed = hed * tf.random.uniform([1, 3], 1.0 - amount, 1.0 + amount) + tf.random.uniform([1, 3], -amount, amount)
    rgb = 256.0 * tf.exp(-tf.matmul(hed, to_rgb)) - 1.0
    return tf.clip_by_value(tf.reshape(rgb, tf.shape(image)), 0.0, 255.0)


def _gaussian_blur(image, sigma, max_sigma: float):
    """Separable Gaussian blur of float [H, W, C] with mirrored edges; sigma is a scalar tensor."""
    radius = max(1, math.ceil(3.0 * max_sigma))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, 1e-3)))
    taps /= tf.reduce_sum(taps)
    channels = image.shape[-1]
    padded = _mirror_pad(image[None], radius, axes=(1, 2))
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")
    return out[0]


def _mirror_pad(x, amount: int, axes=(0, 1)):
    """``x`` mirrored outwards by ``amount`` px on both sides of ``axes`` (repeated mirrors if larger)."""
    done = 0
    while done < amount:
        step = min(amount - done, min(int(x.shape[a]) for a in axes))  # SYMMETRIC adds at most the size
        paddings = [[0, 0] for _ in x.shape]
        for a in axes:
            paddings[a] = [step, step]
        x = tf.pad(x, paddings, mode="SYMMETRIC")
        done += step
    return x


def jpeg_offset_roundtrip(image, quality, offset_y, offset_x):
    """JPEG round trip of uint8 [S, S, C] with the block grid starting ``offset`` px before it.

    The image is first mirrored outwards by ``JPEG_PERIOD`` px on each side, then a window that
    starts (offset_y, offset_x) px before the image (0 <= offset < JPEG_PERIOD) is encoded at
    ``quality`` (a scalar int32 tensor; 4:2:0 chroma, as Pillow) and decoded, and the image's
    pixels are cut out again.
    """
    size = int(image.shape[0])
    channels = int(image.shape[-1])
    wide = _mirror_pad(image, JPEG_PERIOD)
    window = size + JPEG_PERIOD
    start_y, start_x = JPEG_PERIOD - offset_y, JPEG_PERIOD - offset_x
    crop = tf.slice(wide, tf.stack([start_y, start_x, 0]), [window, window, channels])
    coded = tf.image.adjust_jpeg_quality(crop, quality)
    out = tf.slice(coded, tf.stack([offset_y, offset_x, 0]), [size, size, channels])
    return tf.reshape(out, [size, size, channels])


def _resize(image, size: int, kernel: str):
    """``image`` resized to size x size by ``kernel`` (one of KERNELS; antialiased when reducing)."""
    return tf.compat.v2.image.resize(image, [size, size], method=kernel, antialias=kernel != "area")


def _downsample(image, size: int, kernels: tuple[str, ...]):
    if len(kernels) == 1:
        return _resize(image, size, kernels[0])
    pick = tf.random.uniform([], 0, len(kernels), dtype=tf.int32)
    branches = [lambda k=k: _resize(image, size, k) for k in kernels]
    return tf.reshape(tf.switch_case(pick, branches), [size, size, int(image.shape[-1])])


def _degraded(target, spec: TrainingDegradation, size: int):
    """(target, input) of one example with every degradation drawn."""
    x = tf.cast(target, tf.float32)
    if (spec.hed or spec.permute) and int(target.shape[-1]) == 3:
        if spec.hed:
            x = hed_jitter(x, spec.hed)
        if spec.permute:
            order = tf.where(tf.random.uniform([]) < spec.permute, tf.random.shuffle(tf.range(3)), tf.range(3))
            x = tf.gather(x, order, axis=-1)
        target = tf.cast(tf.round(x), target.dtype)
        x = tf.cast(target, tf.float32)
    if spec.blur is not None and spec.blur.hi > 0:
        sigma = _draw(spec.blur)
        x = tf.cond(sigma > 0, lambda: _gaussian_blur(x, sigma, spec.blur.hi), lambda: x)
    x = _downsample(x, size, spec.kernels)
    if spec.noise is not None or spec.shot is not None:
        signal = tf.clip_by_value(x, 0.0, 255.0) / 255.0
        sd = tf.sqrt(tf.square(_draw(spec.noise)) + tf.square(_draw(spec.shot)) * signal)
        x = x + sd * tf.random.normal(tf.shape(x))
    small = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
    if spec.jpeg is not None:
        quality = tf.cast(tf.round(_draw(spec.jpeg)), tf.int32)
        offset = tf.random.uniform([2], 0, JPEG_PERIOD, dtype=tf.int32)
        small = tf.cond(quality > 0, lambda: jpeg_offset_roundtrip(small, quality, offset[0], offset[1]),
                        lambda: small)
    return target, small


def degrade_pair(target, spec: TrainingDegradation | None, size: int):
    """(target, input uint8 [size, size, C]) of one training example under ``spec`` (None: clean)."""
    shape = [int(d) for d in target.shape]
    if spec is None or spec.clean >= 1.0:
        return target, area_input(target, size)
    if spec.clean > 0.0:
        keep = tf.random.uniform([]) < spec.clean
        out_target, small = tf.cond(keep, lambda: (target, area_input(target, size)),
                                    lambda: _degraded(target, spec, size))
    else:
        out_target, small = _degraded(target, spec, size)
    return tf.reshape(out_target, shape), tf.reshape(small, [size, size, shape[-1]])
