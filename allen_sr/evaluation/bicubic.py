"""Pillow's bicubic upscaling as a fixed linear operator, in NumPy (no TensorFlow); and TF 1's
bicubic as fixed per-phase filters (:func:`tf1_phase_taps`).

The Image Transformer's bicubic prior (hparam ``bicubic_prior``, `allen_sr.models.image_transformer`)
centres each sub-pixel's distribution on the bicubic value of its input, and the fast decoder
(`allen_sr.decoding.network`) must compute exactly the same centres. Both use these matrices.

Pillow resamples separably, horizontal pass first, keeping an 8-bit intermediate image. The
operator here is its float version: each pass is a matrix of Pillow's weights (from its kernel;
a test compares them with the weights read off Pillow by resizing unit impulses of a float image),
the intermediate is clipped to 0..255 but not rounded
(rounding would make the two frameworks' centres differ by a grey level where float32 sums land
on .5). It stays within about a grey level of ``Image.resize(..., BICUBIC)`` on uint8 images (at
most 1.1 on random noise, 0.3 on average; test).
"""
from __future__ import annotations

import functools

import numpy as np

# Bounds of the Image Transformer prior's width in grey levels (below ~0.3 its softmax is one-hot,
# above 64 nearly flat); the model and the fast decoder clip the learned width to them.
PRIOR_SIGMA_RANGE = (0.3, 64.0)


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5, support 2)."""
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def tf1_phase_taps(factor: int) -> np.ndarray:
    """[factor, 4] float32: the 4 taps of TF 1's resize_bicubic for each output phase.

    TF 1's kernel (``half_pixel_centers=False``): Keys' cubic with a = -0.75, output pixel
    ``factor * i + p`` sampling input position ``i + p / factor`` from pixels i-1 .. i+2, the
    indices clamped to the image (the border pixels repeat). The conv model's bicubic
    (`allen_sr.models.conv_net`) and its ONNX export compute it as these fixed filters.
    """
    t = np.arange(factor, dtype=np.float64) / factor
    return cubic(np.stack([t + 1, t, 1 - t, 2 - t], axis=1), a=-0.75).astype(np.float32)


@functools.lru_cache(maxsize=64)
def pillow_bicubic_matrix(size: int, scale: int) -> np.ndarray:
    """[size*scale, size] float64: row i holds Pillow's bicubic weights of output pixel i.

    Upscaling (scale >= 1): output pixel i samples the input at (i + 0.5) / scale (pixel centres);
    input pixel j weighs cubic(j + 0.5 - that), and each row is divided by its sum, which is how
    Pillow treats pixels beyond the border (they are left out). `bicubic_matrix_tf` in
    `allen_sr.models.image_transformer` builds the same matrix in TensorFlow for sizes known only
    at run time; a test reads Pillow's own weights off unit impulses and compares.
    """
    if size < 1 or scale < 1:
        raise ValueError(f"size and scale must be >= 1, got {size} and {scale}")
    centre = (np.arange(size * scale, dtype=np.float64)[:, None] + 0.5) / scale
    weights = cubic(np.arange(size, dtype=np.float64)[None, :] + 0.5 - centre)
    matrix = weights / weights.sum(axis=1, keepdims=True)
    matrix.setflags(write=False)
    return matrix


def bicubic_centres(images: np.ndarray, scale: int, dtype: np.dtype | str = "float32") -> np.ndarray:
    """Bicubic upscale of [B, h, w, C] values by ``scale``: float [B, h*scale, w*scale, C].

    Horizontal pass, clip to 0..255, vertical pass, clip (Pillow's order), in ``dtype``.
    """
    x = np.asarray(images).astype(dtype)
    if x.ndim != 4:
        raise ValueError(f"expected [B, h, w, C] images, got shape {x.shape}")
    _, h, w, _ = x.shape
    cols = pillow_bicubic_matrix(w, scale).astype(dtype)
    rows = pillow_bicubic_matrix(h, scale).astype(dtype)
    wide = np.clip(np.einsum("kl,bjlc->bjkc", cols, x), 0, 255)
    return np.clip(np.einsum("ij,bjkc->bikc", rows, wide), 0, 255)
