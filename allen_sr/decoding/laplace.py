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

from typing import Any, Sequence

import numpy as np

from allen_sr.decoding.batching import dihedral_views, predict_in_chunks
from allen_sr.decoding.uncertainty import Recorder
from allen_sr.errors import InvalidInputError

__all__ = ["cdf", "mixture_moments", "views_mean", "pit_interval", "record", "LaplaceViews"]

# Examples per run when a recorder takes each sub-pixel's distribution (views x examples in memory).
RECORD_CHUNK = 32


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


def views_mean(views: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """The prediction of several views (each a sequence whose first array is its prediction): their
    mean in the views' own precision and order. Every path that averages views calls this, so a
    prediction rounded to grey levels is the same whichever path made it (a float64 mean can round
    the other way at a half level)."""
    return sum(view[0] for view in views) / len(views)


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


class LaplaceViews:
    """What a decoder of the probabilistic conv model does with its distributions, given one
    method, :meth:`_mean_scale` (a batch of inputs -> its prediction and Laplace scale [N, H, W, C]
    each, grey levels). `allen_sr.decoding.one_pass.OnePassDecoder` (TensorFlow) and
    `allen_sr.export.runtime.OnnxDecoder` (an export's ``distribution.onnx``) share it.
    The class using it sets ``tta``, ``factor``, ``channels``, ``model_name`` and
    ``no_distribution`` (what to do to get a distribution when there is none), and defines
    ``reports_distributions`` and ``_checked`` (inputs -> an array of the model's input shape)."""

    tta: bool
    factor: int
    channels: int
    model_name: str
    no_distribution: str
    reports_distributions: bool

    def _mean_scale(self, x: np.ndarray) -> Sequence[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def _checked(self, inputs: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def _distribution_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """``inputs`` checked; InvalidInputError when the model predicts no distribution."""
        if not self.reports_distributions:
            raise InvalidInputError(f"{self.model_name} predicts one value per sub-pixel, not a "
                                    f"distribution: {self.no_distribution}")
        return self._checked(inputs)

    def predict_uncertain(self, inputs: np.ndarray, temperature: float = 1.0,
                          batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, sd) float32 [N, H, W, C] each: the mean and standard deviation of each
        sub-pixel's distribution (the mixture of the views' with ``tta``), every scale times
        ``temperature``."""
        return self._laplace_uncertain(self._distribution_inputs(inputs), temperature, batch_size)

    def _desc(self) -> str:
        return f"{self.model_name} distribution" + (" (8-fold TTA)" if self.tta else "")

    def _views(self, x: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        return dihedral_views(self._mean_scale, x, self.tta)

    def _laplace_uncertain(self, x: np.ndarray, temperature: float,
                           batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, sd) float32 [N, H, W, C] each: the mean and standard deviation of each
        sub-pixel's distribution (the mixture of the views' with ``tta``), every scale times
        ``temperature``."""
        def chunk(part: np.ndarray) -> np.ndarray:
            views = self._views(part)
            _, sd = mixture_moments([mu for mu, _ in views], [b for _, b in views], float(temperature))
            return np.concatenate([views_mean(views), sd], axis=-1).astype(np.float32)

        both = predict_in_chunks(x, chunk, self.factor, self.channels, batch_size, False, self._desc(),
                                 out_channels=2 * self.channels)
        return both[..., :self.channels], both[..., self.channels:]

    def _laplace_decode(self, x: np.ndarray, recorder: Any, batch_size: int | None,
                        progress: bool) -> np.ndarray:
        """uint8 predictions of ``x`` (the views' mean, rounded), each sub-pixel's distribution
        put into ``recorder`` (an `allen_sr.decoding.uncertainty.Recorder`), chunk by chunk."""
        from tqdm import tqdm

        n = x.shape[0]
        rows, cols = x.shape[1] * self.factor, x.shape[2] * self.factor
        recorder.start(n, rows, cols, self.channels)
        out = np.empty((n, rows, cols, self.channels), np.uint8)
        step = max(1, int(batch_size or RECORD_CHUNK))
        for start in tqdm(range(0, n, step), desc=self._desc(), unit="chunk", disable=not progress):
            stop = min(n, start + step)
            views = self._views(x[start:stop])
            record(recorder, start, stop, np.stack([mu for mu, _ in views]), np.stack([b for _, b in views]))
            out[start:stop] = np.clip(np.rint(views_mean(views)), 0, 255).astype(np.uint8)
        return out
