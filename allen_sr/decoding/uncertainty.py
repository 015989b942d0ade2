"""What a model's distributions on the 256 levels say about its own errors: the Image
Transformer's softmax, or the conv model's probabilistic head (`allen_sr.decoding.laplace`).

While a decoder fills a tile sub-pixel by sub-pixel, :class:`Recorder` keeps, for each sub-pixel,
the mean and standard deviation of the distribution the decoder chose its value from (given the
model's own previous outputs, exactly as decoded), at one or several softmax temperatures, and,
when the true values are known, the probability-integral-transform interval of the true value
(``cdf(v - 1)`` to ``cdf(v)``). Nothing here changes the decoded values: the decoder keeps
choosing from softmax(logits); the temperatures only rescale the reported distributions.

Coverage on 256 discrete levels. A central interval on discrete values is either too narrow or
too wide: counting a true value inside when it lies in an inclusive interval inflates coverage
(a sure distribution on one level "covers" the truth 100% at every nominal level). Here the
observed coverage of the central ``c`` interval counts, per sub-pixel, the share of its PIT
interval ``[cdf(v - 1), cdf(v)]`` that lies within ``[(1 - c) / 2, (1 + c) / 2]``: the expected
value of the randomised PIT (Czado, Gneiting and Held 2009), equal to ``c`` on average for a
calibrated discrete forecast and free of the inclusive-interval inflation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from allen_sr.decoding.modes import VOCAB

__all__ = ["softmax", "Recorder", "LEVELS", "TEMPERATURE_GRID", "coverage", "reliability", "pixel_uncertainty",
           "rmse_ratio_surest_half", "fit_temperature", "Calibration", "summarize", "COUNTING"]

LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10)) + (0.95,)  # nominal coverages of the diagram
TEMPERATURE_GRID = tuple(round(float(t), 3) for t in np.exp(np.linspace(np.log(0.4), np.log(1.6), 25)))
_VALUES = np.arange(VOCAB, dtype=np.float64)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


class Recorder:
    """Per-sub-pixel mean, sd and (given ``targets``) PIT interval of the decoded distributions.

    ``temperatures``: the softmax temperatures to report at (1.0: the model's own). ``targets``:
    uint8 [N, H, W, C] true values, or None. Arrays are [len(temperatures), N, H * W * C], in the
    flat order of the decoded canvas; :meth:`shaped` gives [T, N, H, W, C].
    """

    def __init__(self, temperatures: Sequence[float] = (1.0,), targets: np.ndarray | None = None) -> None:
        self.temperatures = tuple(float(t) for t in temperatures)
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be > 0, got {self.temperatures}")
        self.targets = None if targets is None else np.asarray(targets)
        self.shape: tuple[int, ...] | None = None
        self.mean = self.std = self.pit_lo = self.pit_hi = None

    def start(self, n: int, rows: int, cols: int, channels: int) -> None:
        """Allocate for ``n`` decodes of [rows, cols, channels]."""
        size = (len(self.temperatures), n, rows * cols * channels)
        self.shape = (rows, cols, channels)
        self.mean, self.std = np.zeros(size, np.float32), np.zeros(size, np.float32)
        if self.targets is not None:
            if self.targets.shape != (n, rows, cols, channels):
                raise ValueError(f"targets {self.targets.shape} do not match the decoded {(n, rows, cols, channels)}")
            self._flat_targets = self.targets.reshape(n, -1).astype(np.int64)
            self.pit_lo, self.pit_hi = np.zeros(size, np.float32), np.zeros(size, np.float32)

    def observe(self, start: int, stop: int, position: int, logits: np.ndarray) -> None:
        """Record the distributions of examples ``start:stop`` at flat ``position``."""
        for i, temperature in enumerate(self.temperatures):
            p = softmax(logits, temperature)
            mean = p @ _VALUES
            var = np.maximum(p @ _VALUES ** 2 - mean ** 2, 0.0)
            self.mean[i, start:stop, position] = mean
            self.std[i, start:stop, position] = np.sqrt(var)
            if self.pit_lo is not None:
                truth = self._flat_targets[start:stop, position]
                below = np.where(_VALUES[None, :] < truth[:, None], p, 0.0).sum(axis=-1)
                self.pit_lo[i, start:stop, position] = below
                self.pit_hi[i, start:stop, position] = below + p[np.arange(len(truth)), truth]

    def put(self, index: int, start: int, stop: int, mean: np.ndarray, std: np.ndarray,
            pit_lo: np.ndarray | None = None, pit_hi: np.ndarray | None = None) -> None:
        """Record whole examples ``start:stop`` at the ``index``-th temperature, from arrays
        [n, H, W, C] (a model whose distributions have a closed form: `allen_sr.decoding.laplace`)."""
        n = stop - start
        self.mean[index, start:stop] = np.reshape(mean, (n, -1))
        self.std[index, start:stop] = np.reshape(std, (n, -1))
        if self.pit_lo is not None:
            self.pit_lo[index, start:stop] = np.reshape(pit_lo, (n, -1))
            self.pit_hi[index, start:stop] = np.reshape(pit_hi, (n, -1))

    def shaped(self, name: str) -> np.ndarray:
        """``mean``, ``std``, ``pit_lo`` or ``pit_hi`` as [T, N, H, W, C]."""
        values = getattr(self, name)
        return values.reshape(values.shape[:2] + self.shape)


@dataclass(frozen=True)
class Calibration:
    """The softmax temperature the reported distributions use, and where it came from."""

    temperature: float = 1.0
    fitted_on: str = "not fitted: the model's own distributions"
    tiles: int = 0
    mode: str = ""  # the decoding mode it was fitted in (the distributions differ by mode)

    def as_dict(self) -> dict[str, object]:
        fitted = {"temperature": self.temperature, "fitted_on": self.fitted_on, "tiles": self.tiles}
        return {**fitted, "mode": self.mode} if self.mode else fitted


def coverage(pit_lo: np.ndarray, pit_hi: np.ndarray, level: float) -> float:
    """Observed coverage of the central ``level`` interval: the mean share of each PIT interval
    inside [(1 - level) / 2, (1 + level) / 2] (see the module docstring)."""
    lo, hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    a, b = np.asarray(pit_lo, np.float64), np.asarray(pit_hi, np.float64)
    width = b - a
    inside = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0.0, None)
    point = width <= 1e-12  # a zero-probability truth: its PIT is a point
    share = np.where(point, ((a >= lo) & (a <= hi)).astype(np.float64), inside / np.where(point, 1.0, width))
    return float(share.mean())


def reliability(pit_lo: np.ndarray, pit_hi: np.ndarray, levels: Sequence[float] = LEVELS) -> list[tuple[float, float]]:
    """(nominal, observed) coverage at each level: the reliability diagram's points."""
    return [(float(c), coverage(pit_lo, pit_hi, c)) for c in levels]


def pixel_uncertainty(std: np.ndarray) -> np.ndarray:
    """One value per output pixel, in grey levels: the RMS of its sub-pixels' sd ([..., C] -> [...])."""
    return np.sqrt(np.mean(np.square(np.asarray(std, np.float64)), axis=-1)).astype(np.float32)


def rmse_ratio_surest_half(uncertainty: np.ndarray, pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(RMSE over the half of the pixels with the lowest uncertainty / RMSE over all pixels, the
    same ratio for the oracle ordering by the true error). 1.0: the map says nothing."""
    err = np.mean(np.square(np.asarray(pred, np.float64) - np.asarray(target, np.float64)), axis=-1).ravel()
    order = np.argsort(np.asarray(uncertainty, np.float64).ravel(), kind="stable")
    half = len(err) // 2
    overall = np.sqrt(err.mean())
    if overall == 0:
        return 1.0, 1.0
    surest = np.sqrt(err[order[:half]].mean())
    oracle = np.sqrt(np.sort(err)[:half].mean())
    return float(surest / overall), float(oracle / overall)


def fit_temperature(recorder: Recorder, levels: Sequence[float] = LEVELS) -> tuple[float, list[float]]:
    """The temperature of ``recorder`` whose reliability diagram lies closest to the diagonal
    (least squares over ``levels``); (temperature, the squared error at each temperature)."""
    if recorder.pit_lo is None:
        raise ValueError("fitting a temperature needs the true values (Recorder(targets=...))")
    errors = []
    for i in range(len(recorder.temperatures)):
        points = reliability(recorder.pit_lo[i], recorder.pit_hi[i], levels)
        errors.append(float(sum((obs - nom) ** 2 for nom, obs in points)))
    return recorder.temperatures[int(np.argmin(errors))], errors


COUNTING = ("coverage counts, per sub-pixel, the share of its randomised-PIT interval "
            "[cdf(v-1), cdf(v)] inside the central interval (no inflation from inclusive "
            "intervals on 256 levels)")


def summarize(recorder: Recorder, pred: np.ndarray, target: np.ndarray, calibration: Calibration,
              index: int = 0) -> dict:
    """The ``uncertainty`` section of metrics.json at the recorder's ``index``-th temperature."""
    lo, hi = recorder.pit_lo[index], recorder.pit_hi[index]
    pixel = pixel_uncertainty(recorder.shaped("std")[index])
    surest, oracle = rmse_ratio_surest_half(pixel, pred, target)
    rmse = float(np.sqrt(np.mean(np.square(np.asarray(pred, np.float64) - np.asarray(target, np.float64)))))
    return {"coverage_50": round(coverage(lo, hi, 0.5), 4), "coverage_90": round(coverage(lo, hi, 0.9), 4),
            "rmse_ratio_surest_half": round(surest, 4), "rmse_ratio_surest_half_oracle": round(oracle, 4),
            "mean_sd": round(float(recorder.std[index].mean()), 3), "rmse": round(rmse, 3),
            "reliability": [[c, round(o, 4)] for c, o in reliability(lo, hi)],
            "calibration": calibration.as_dict(), "counting": COUNTING,
            "pixel_uncertainty": "RMS of the sd of each output pixel's sub-pixels (grey levels)"}
