"""The conv model's probabilistic head, read as distributions on the 256 grey levels (NumPy only).

With hparam ``probabilistic`` the conv model predicts, besides each sub-pixel's value mu, the
scale b of a Laplace distribution around it (`allen_sr.models.conv_net.laplace_log_scale`). Its
distribution on the levels 0-255 is that Laplace discretized: level v holds the mass between
v - 0.5 and v + 0.5, the levels 0 and 255 also the tails beyond them. With 8-fold test-time
averaging it is the mixture of the 8 views' distributions. A temperature T (the calibration,
`allen_sr.decoding.calibration`) scales every b by T: for a Laplace, tempering its log-density is
exactly that. This module fills an `allen_sr.decoding.uncertainty.Recorder` in closed form: the
mean, the standard deviation (of the continuous mixture: sqrt(mean(2 b^2 + mu^2) - mean(mu)^2))
and the randomised-PIT interval [cdf(v - 0.5), cdf(v + 0.5)] of each true value v.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from allen_sr.decoding.uncertainty import Recorder

__all__ = ["cdf", "mixture_moments", "pit_interval", "record"]


def cdf(x: np.ndarray, mu: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Laplace(mu, b) distribution function at ``x`` (arrays broadcast)."""
    z = (np.asarray(x, np.float64) - mu) / b
    half = 0.5 * np.exp(-np.abs(z))
    return np.where(z < 0, half, 1.0 - half)


def mixture_moments(mus: Sequence[np.ndarray], scales: Sequence[np.ndarray],
                    temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) of the equal mixture of Laplace(mus[k], scales[k] * temperature) over k (the
    first axis, or a list of views: one view at a time in float64, as large tiles need)."""
    total = second = None
    for mu, b in zip(mus, scales):
        mu = np.asarray(mu, np.float64)
        b = np.asarray(b, np.float64) * temperature
        total = mu if total is None else total + mu
        second = 2.0 * b * b + mu * mu if second is None else second + 2.0 * b * b + mu * mu
    mean = total / len(mus)
    return mean, np.sqrt(np.maximum(second / len(mus) - mean * mean, 0.0))


def pit_interval(mus: np.ndarray, scales: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cdf(v - 0.5), cdf(v + 0.5)) of the true levels ``truth`` under the discretized mixture:
    0 below level 0 and 1 above level 255 (the end levels hold the tails)."""
    v = np.asarray(truth, np.float64)[None]
    lo = np.where(v <= 0, 0.0, cdf(v - 0.5, mus, scales)).mean(axis=0)
    hi = np.where(v >= 255, 1.0, cdf(v + 0.5, mus, scales)).mean(axis=0)
    return lo, hi


def record(recorder: Recorder, start: int, stop: int, mus: np.ndarray, scales: np.ndarray) -> None:
    """Record examples ``start:stop``: ``mus`` and ``scales`` [views, n, H, W, C] (grey levels,
    the model's own scales), at each of the recorder's temperatures."""
    targets = None if recorder.targets is None else recorder.targets[start:stop]
    for i, temperature in enumerate(recorder.temperatures):
        b = np.asarray(scales, np.float64) * temperature
        mean, sd = mixture_moments(mus, b)
        lo = hi = None
        if targets is not None:
            lo, hi = pit_interval(mus, b, targets)
        recorder.put(i, start, stop, mean, sd, lo, hi)
