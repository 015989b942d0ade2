"""PSNR and SSIM as tensor2tensor eval metrics, so t2t-trainer's eval reports them in TensorBoard.

`TileSuperResolution.eval_metric_fns` adds :data:`EVAL_METRIC_FNS` to t2t's defaults, and
t2t-trainer's evaluation then writes ``metrics-<problem>/targets/psnr`` and ``.../ssim`` next to
accuracy and neg_log_perplexity (`img2img_conv_sr` has no softmax: its own eval spec writes
``psnr`` with this module's :func:`psnr` and ``mae``). The functions have the signature of t2t's
own metric functions (``tensor2tensor/utils/metrics.py``): ``(predictions, labels, weights_fn=..., **kwargs) ->
(values, weights)``; t2t averages ``values`` with ``weights`` over the whole eval set with
``tf.metrics.mean``.

What they measure: during eval t2t runs the model teacher-forced (every sub-pixel is predicted
from the true previous ones), so the image here is the per-sub-pixel argmax of the categorical
logits under teacher forcing. It tracks training progress and is cheap; it is *not* the quality
of an autoregressive decode (``allen-sr decode`` measures that), which is lower.

Protocol, the same as allen_sr/metrics.py (which tests check this against): uint8 RGB 0..255, no
border crop; PSNR per tile over H x W x C with MAX=255, capped at ``PSNR_CAP_DB`` so identical tiles
do not make the mean infinite; SSIM with ``tf.image.ssim``'s defaults (11x11 Gaussian, sigma 1.5,
k1=0.01, k2=0.03, VALID) computed in float64 (``tf.image.ssim`` itself works in float32, which is
off by up to ~1e-3 on flat bright tiles). Each tile weighs 1, so the reported value is the mean of
per-tile values over the eval set.

Predictions may be categorical logits ``[B, H, W, C, 256]`` (the Image Transformer) or
continuous intensities ``[B, H, W, C]`` on the 0..255 scale (a convolutional model predicting RGB
directly); they are told apart by rank, and continuous values are rounded and clipped to 0..255
first, as a saved PNG would be.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import tensorflow.compat.v1 as tf

from allen_sr.evaluation.metrics import PSNR_CAP_DB, SSIM_FILTER_SIZE, SSIM_K1, SSIM_K2, gaussian_kernel_1d

__all__ = ["EVAL_METRIC_FNS", "mse_db", "predicted_image", "psnr", "psnr_from_mse", "ssim"]

MAX_VALUE = 255.0  # uint8 intensities


def mse_db(mse: tf.Tensor) -> tf.Tensor:
    """A mean squared error in decibels, 10 log10(mse): the one in-graph PSNR formula.

    PSNR = 20 log10(MAX) - mse_db(mse) (:func:`psnr_from_mse`); on a 0-1 scale it is minus the
    PSNR, which is how `img2img_conv_sr`'s psnr pixel loss uses it. mse = 0 gives -inf.
    """
    return 10.0 * tf.math.log(mse) / math.log(10.0)


def psnr_from_mse(mse: tf.Tensor, max_value: float = MAX_VALUE) -> tf.Tensor:
    """PSNR in dB of a mean squared error on a scale that peaks at ``max_value`` (no cap)."""
    return 20.0 * math.log10(max_value) - mse_db(mse)


def predicted_image(predictions: tf.Tensor) -> tf.Tensor:
    """The predicted uint8-valued image [B, H, W, C] as float64, from logits or intensities.

    Rank 5 ``[B, H, W, C, 256]``: argmax over the 256 intensity classes. Rank 4 ``[B, H, W, C]``:
    continuous intensities, rounded and clipped to 0..255.
    """
    rank = predictions.shape.rank
    if rank == 5:
        return tf.cast(tf.argmax(predictions, axis=-1), tf.float64)
    if rank == 4:
        return tf.clip_by_value(tf.round(tf.cast(predictions, tf.float64)), 0.0, MAX_VALUE)
    raise ValueError(
        f"PSNR/SSIM need predictions of shape [B, H, W, C, 256] (logits) or [B, H, W, C] "
        f"(intensities); got shape {predictions.shape}")


def _images(predictions: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    pred = predicted_image(predictions)
    target = tf.cast(labels, tf.float64)
    # Labels sometimes keep a trailing axis of 1 (t2t's generic image targets); drop it.
    if target.shape.rank == 5 and target.shape[-1] == 1:
        target = tf.squeeze(target, -1)
    if target.shape.rank != 4:
        raise ValueError(f"PSNR/SSIM need labels of shape [B, H, W, C]; got shape {labels.shape}")
    target = tf.reshape(target, tf.shape(pred))
    return pred, target


def _per_example_weights(values: tf.Tensor) -> tf.Tensor:
    # One weight per tile: t2t's weights_fn weighs pixels (weights_nonzero would even drop black
    # pixels), which has no meaning for a per-tile score.
    return tf.ones_like(values)


def psnr(predictions: tf.Tensor, labels: tf.Tensor,
         weights_fn: Callable[..., Any] | None = None, **kwargs: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-tile PSNR in dB (MAX=255, capped at PSNR_CAP_DB) and a weight of 1 per tile."""
    del weights_fn, kwargs
    with tf.name_scope("psnr"):
        pred, target = _images(predictions, labels)
        mse = tf.reduce_mean(tf.square(pred - target), axis=[1, 2, 3])
        # mse = 0 gives +inf here, which the cap turns into PSNR_CAP_DB (as allen_sr.metrics does).
        values = tf.minimum(psnr_from_mse(mse), PSNR_CAP_DB)
        return values, _per_example_weights(values)


def _filter_valid(x: tf.Tensor, kernel: list[float]) -> tf.Tensor:
    """Separable VALID Gaussian filtering of [B, H, W, C] over H and W, by shifted sums.

    Plain slices and adds run in float64 on any device (depthwise convolutions in float64 are
    not available everywhere), and 11 taps on a 32x32 tile cost nothing.
    """
    k = len(kernel)
    height = x.shape[1] - k + 1
    rows = tf.add_n([kernel[i] * x[:, i:i + height, :, :] for i in range(k)])
    width = x.shape[2] - k + 1
    return tf.add_n([kernel[i] * rows[:, :, i:i + width, :] for i in range(k)])


def ssim(predictions: tf.Tensor, labels: tf.Tensor,
         weights_fn: Callable[..., Any] | None = None, **kwargs: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-tile SSIM (tf.image.ssim's defaults, in float64) and a weight of 1 per tile."""
    del weights_fn, kwargs
    with tf.name_scope("ssim"):
        x, y = _images(predictions, labels)
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError("SSIM needs images with a static height and width")
        if height < SSIM_FILTER_SIZE or width < SSIM_FILTER_SIZE:
            raise ValueError(
                f"SSIM needs images of at least {SSIM_FILTER_SIZE}x{SSIM_FILTER_SIZE} (the "
                f"tf.image.ssim window); got {height}x{width}")
        kernel = gaussian_kernel_1d().tolist()
        c1 = (SSIM_K1 * MAX_VALUE) ** 2
        c2 = (SSIM_K2 * MAX_VALUE) ** 2
        mu_x = _filter_valid(x, kernel)
        mu_y = _filter_valid(y, kernel)
        # The algebra of TF's _ssim_helper (covariances as E[xy] - E[x]E[y]).
        num0 = 2.0 * mu_x * mu_y
        den0 = tf.square(mu_x) + tf.square(mu_y)
        luminance = (num0 + c1) / (den0 + c1)
        num1 = 2.0 * _filter_valid(x * y, kernel)
        den1 = _filter_valid(tf.square(x) + tf.square(y), kernel)
        contrast_structure = (num1 - num0 + c2) / (den1 - den0 + c2)
        per_channel = tf.reduce_mean(luminance * contrast_structure, axis=[1, 2])
        values = tf.reduce_mean(per_channel, axis=-1)
        return values, _per_example_weights(values)


# Metric name -> function, merged into TileSuperResolution.eval_metric_fns.
EVAL_METRIC_FNS: dict[str, Callable[..., tuple[tf.Tensor, tf.Tensor]]] = {"psnr": psnr, "ssim": ssim}
