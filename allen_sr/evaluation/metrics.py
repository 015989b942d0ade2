"""Image-quality metrics, interpolation baselines and the results table (numpy + Pillow only).

Nothing here imports TensorFlow: the metrics must be computable on a laptop from saved PNGs, and
the evaluation code should not pay TensorFlow's import time. :func:`ssim` is nevertheless a
re-implementation of ``tf.image.ssim`` with its defaults (tests check agreement to 1e-4) so that
numbers are comparable with the tensor2tensor/TF literature.

The computation is done in float64. ``tf.image.ssim`` always works in float32, and its
covariance terms (E[xy] - E[x]E[y], of the order of the small constant c2) then lose digits to
cancellation on flat, bright areas: there TF is off by ~1e-4 (near-flat tiles at 200-250) up to
~1e-3 (a flat 250 vs 255 tile gives TF an SSIM above 1). This module returns the exact value of
TF's formula; on textured tiles the two agree to ~1e-6.

Protocol (also in :data:`PROTOCOL`, which is written into every summary):

* images are RGB (or greyscale) uint8 in 0..255, compared whole - no border crop;
* PSNR is computed per tile over all HxWxC values with MAX=255 and then averaged over tiles
  (the mean of per-tile dB, not the dB of the mean MSE); identical tiles score
  :data:`PSNR_CAP_DB` instead of infinity;
* SSIM is ``tf.image.ssim`` with its defaults, averaged over tiles;
* baselines (nearest, bilinear, bicubic) are Pillow resizes of the low-resolution input;
* beside them, as published x4 tables score: the same on the luma with a border crop
  (:data:`LUMA_PROTOCOL`, :func:`luma_scores`).

Per-example CSV layout (long form, one row per tile and method, chosen because adding a method
then adds rows rather than columns, and pandas/sqlite read it without reshaping)::

    example,method,psnr,ssim
    0,bicubic,26.301234,0.812345
    0,model,27.100000,0.845600
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from allen_sr.fileio import atomic_write_text, write_json_atomic

__all__ = [
    "METHODS",
    "PROTOCOL",
    "protocol",
    "LUMA_PROTOCOL",
    "PSNR_CAP_DB",
    "SSIM_FILTER_SIGMA",
    "SSIM_FILTER_SIZE",
    "SSIM_K1",
    "SSIM_K2",
    "MetricTable",
    "baselines",
    "gaussian_kernel_1d",
    "luma",
    "luma_scores",
    "luma_summary",
    "psnr",
    "psnr_batch",
    "resize",
    "ssim",
    "ssim_batch",
    "summary_to_markdown",
    "summary_to_text",
    "upscale",
    "write_json_atomic",
]

METHODS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")

# Identical images have infinite PSNR, which JSON cannot hold and which would make any mean over
# tiles infinite. 100 dB is above every value a real difference can reach here: the smallest
# non-zero MSE of uint8 images is 1/(H*W*C), i.e. 83.1 dB for a 32x32x3 tile, and 100 dB is only
# reached by a one-level difference in images of more than ~150,000 values (e.g. 226x226x3).
# Values above the cap are clipped too, so the cap is a true maximum.
PSNR_CAP_DB: float = 100.0

def protocol(unit: str = "tile") -> str:
    """The protocol text of scores per ``unit`` (a tile, or a whole image), averaged over them."""
    return (f"RGB uint8 0-255, no border crop; PSNR (MAX=255, MSE over HxWxC, capped at 100 dB) per {unit}, "
            f"averaged over {unit}s; SSIM as tf.image.ssim defaults (Gaussian 11x11 sigma 1.5, k1=0.01, "
            f"k2=0.03, VALID, mean over map and channels), averaged over {unit}s; baselines are Pillow "
            "resizes (nearest/bilinear/bicubic) of the low-resolution input")


PROTOCOL: str = protocol()

# Published x4 tables (Set5, Set14, BSD100) score the luma of BT.601 as MATLAB's rgb2ycbcr gives it
# (16-235, unrounded) with `scale` px cropped from every border: BasicSR's calculate_psnr and
# calculate_ssim with test_y_channel=True. The same output can score 2 dB more on Y than on RGB.
LUMA_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
LUMA_PROTOCOL: str = (
    "psnr_y/ssim_y as published x4 tables: the luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 "
    "(MATLAB's rgb2ycbcr, BasicSR's test_y_channel; greyscale: the grey values), unrounded, {crop} px "
    "cropped from every border of each tile (or whole image), then PSNR and SSIM as above"
)

# tf.image.ssim defaults (allen_sr.t2t_metrics, the in-graph version, uses these too).
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# Digits kept in the JSON summary: well below any difference worth reporting, yet stable to diff.
_PSNR_DIGITS = 3
_SSIM_DIGITS = 5


def _as_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (..., H, W, C) arrays of the same shape."""
    a = np.asarray(pred)
    b = np.asarray(target)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: prediction {a.shape} vs target {b.shape}")
    if a.ndim < 2:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def _check_single(image: Any) -> None:
    if np.ndim(image) > 3:
        raise ValueError(
            f"expected one HxW or HxWxC image, got shape {np.shape(image)}; use the *_batch form"
        )


def psnr_batch(preds: Any, targets: Any, max_val: float = 255.0) -> np.ndarray:
    """PSNR in dB of each image in a (..., H, W, C) batch; returns an array of the leading shape.

    Same definition as ``tf.image.psnr`` (MSE over H, W and C together), except that the result
    is capped at :data:`PSNR_CAP_DB` so identical images give a finite number.
    """
    a, b = _as_pair(preds, targets)
    mse = np.mean(np.square(a - b), axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        values = 20.0 * math.log10(max_val) - 10.0 * np.log10(mse)
    return np.minimum(values, PSNR_CAP_DB)


def psnr(pred: Any, target: Any, max_val: float = 255.0) -> float:
    """PSNR in dB between two HxWxC (or HxW) images, capped at :data:`PSNR_CAP_DB` (100 dB).

    Works on uint8 or float arrays; ``max_val`` is the dynamic range (255 for uint8, 1.0 for
    images in [0, 1]).
    """
    _check_single(pred)
    return float(psnr_batch(pred, target, max_val))


def gaussian_kernel_1d(size: int = SSIM_FILTER_SIZE, sigma: float = SSIM_FILTER_SIGMA) -> np.ndarray:
    # tf.image.ssim builds a 2-D kernel as softmax(-(x^2 + y^2) / (2 sigma^2)); that is exactly the
    # outer product of this normalised 1-D kernel with itself, so two 1-D passes reproduce it.
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * np.square(coords) / sigma**2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'VALID' filtering of a (..., H, W, C) array over H and W."""
    k = kernel.shape[0]
    h = x.shape[-3] - k + 1
    rows = sum(kernel[i] * x[..., i : i + h, :, :] for i in range(k))
    w = x.shape[-2] - k + 1
    return sum(kernel[i] * rows[..., :, i : i + w, :] for i in range(k))


def ssim_batch(preds: Any, targets: Any, max_val: float = 255.0) -> np.ndarray:
    """SSIM of each image in a (..., H, W, C) batch, as ``tf.image.ssim`` computes it.

    Defaults of ``tf.image.ssim``: 11x11 Gaussian window with sigma 1.5, k1=0.01, k2=0.03, VALID
    filtering (no padding), the SSIM map averaged over positions and then over channels,
    computed in float64 (see the module docstring for TF's float32 error on flat tiles). Like
    TensorFlow it refuses images smaller than the 11x11 window, because a padded or shrunken window
    would give numbers nobody else can reproduce.
    """
    x, y = _as_pair(preds, targets)
    size = SSIM_FILTER_SIZE
    if x.shape[-3] < size or x.shape[-2] < size:
        raise ValueError(
            f"SSIM needs images of at least {size}x{size} (the tf.image.ssim window); "
            f"got {x.shape[-3]}x{x.shape[-2]}"
        )
    kernel = gaussian_kernel_1d(size, SSIM_FILTER_SIGMA)
    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    mu_x = _filter_valid(x, kernel)
    mu_y = _filter_valid(y, kernel)
    # Same algebra as TF's _ssim_helper (covariances via E[xy] - E[x]E[y], compensation 1.0),
    # so the two agree up to float32 rounding on TF's side.
    num0 = 2.0 * mu_x * mu_y
    den0 = np.square(mu_x) + np.square(mu_y)
    luminance = (num0 + c1) / (den0 + c1)
    num1 = 2.0 * _filter_valid(x * y, kernel)
    den1 = _filter_valid(np.square(x) + np.square(y), kernel)
    cs = (num1 - num0 + c2) / (den1 - den0 + c2)
    per_channel = np.mean(luminance * cs, axis=(-3, -2))
    return np.mean(per_channel, axis=-1)


def ssim(pred: Any, target: Any, max_val: float = 255.0) -> float:
    """SSIM between two HxWxC (or HxW) images, matching ``tf.image.ssim`` with its defaults.

    Images must be at least 11x11. uint8 or float input; ``max_val`` is the dynamic range.
    """
    _check_single(pred)
    return float(ssim_batch(pred, target, max_val))


def luma(images: Any) -> np.ndarray:
    """float64 (..., H, W, 1): the BT.601 luma of uint8 RGB images as published x4 tables use it
    (:data:`LUMA_WEIGHTS`, 16-235); greyscale images (..., H, W, 1) as they are."""
    x = np.asarray(images, dtype=np.float64)
    if x.shape[-1] == 1:
        return x
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB or greyscale images (..., H, W, 3|1), got shape {x.shape}")
    return (x @ LUMA_WEIGHTS + 16.0)[..., None]


def luma_summary(scores: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray] | None]]) -> dict[str, dict[str, float]]:
    """``{method: {"psnr_y", "ssim_y"}}``: the means over examples of each method's
    :func:`luma_scores` (one per example); empty when the crop left too little of some example."""
    if not scores or any(s is None for per_method in scores.values() for s in per_method):
        return {}
    return {method: {"psnr_y": _round(np.mean([s[0] for s in per_method]), _PSNR_DIGITS),
                     "ssim_y": _round(np.mean([s[1] for s in per_method]), _SSIM_DIGITS)}
            for method, per_method in scores.items()}


def luma_scores(preds: Any, targets: Any, crop: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(PSNR, SSIM) per image of a (N, H, W, C) batch on the luma with ``crop`` px cut from each
    border (:data:`LUMA_PROTOCOL`); None when too little is left for SSIM's 11x11 window."""
    a, b = luma(preds), luma(targets)
    if crop:
        a, b = a[..., crop:-crop, crop:-crop, :], b[..., crop:-crop, crop:-crop, :]
    if min(a.shape[-3:-1]) < SSIM_FILTER_SIZE:
        return None
    return psnr_batch(a, b), ssim_batch(a, b)


def upscale(image: Any, scale: int, method: str = "bicubic") -> np.ndarray:
    """Enlarge a uint8 HxWxC (C = 1 or 3) or HxW image by an integer ``scale`` with Pillow.

    ``method`` is one of :data:`METHODS`. Returns uint8 of shape (H*scale, W*scale[, C]), keeping
    the input's layout (a trailing channel axis of 1 stays).
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    height, width = np.shape(image)[:2]
    return resize(image, (height * int(scale), width * int(scale)), method)


def resize(image: Any, shape: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """A uint8 HxWxC (C = 1 or 3) or HxW image resized to ``shape`` (height, width) by Pillow's
    ``method`` (:data:`METHODS`): :func:`upscale` for any ratio (48 -> 64 px), the layout kept."""
    from PIL import Image

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        # Silently casting floats would hide a 0..1 vs 0..255 mix-up; make the caller decide.
        raise TypeError(f"upscale expects uint8 images, got {arr.dtype}")
    squeeze_back = False
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr, squeeze_back = arr[..., 0], True
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"expected HxW, HxWx1 or HxWx3, got shape {np.asarray(image).shape}")
    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[method]
    out = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((int(shape[1]), int(shape[0])), resample))
    return out[..., None] if squeeze_back else out


def baselines(
    image: Any, scale: int, methods: Iterable[str] = METHODS, shape: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """``{method: upscale(image, scale, method)}`` for each interpolation baseline; with ``shape``
    (height, width) each resized to it instead (a non-integer ratio such as 48 -> 64 px)."""
    if shape is not None:
        return {method: resize(image, shape, method) for method in methods}
    return {method: upscale(image, scale, method) for method in methods}


def _round(value: float, digits: int) -> float:
    return float(round(float(value), digits))


class MetricTable:
    """Per-tile PSNR/SSIM scores for several methods, and their summary.

    Example ids are stored as strings (so a table read back from CSV is equal to the one written).
    Each (example, method) pair may be added once: a repeat almost always means a tile was
    evaluated twice and would silently bias the means.
    """

    def __init__(self) -> None:
        self._scores: dict[str, dict[str, tuple[float, float]]] = {}
        self._methods: list[str] = []

    def add(self, example: Any, method: str, psnr_db: float, ssim_value: float) -> None:
        """Record already-computed scores of ``method`` on tile ``example``."""
        key = str(example)
        per_example = self._scores.setdefault(key, {})
        if method in per_example:
            raise ValueError(f"scores for example {key!r}, method {method!r} were already added")
        per_example[method] = (float(psnr_db), float(ssim_value))
        if method not in self._methods:
            self._methods.append(method)

    def add_images(
        self,
        example: Any,
        target: Any,
        predictions: Mapping[str, Any],
        max_val: float = 255.0,
    ) -> dict[str, tuple[float, float]]:
        """Score each ``{method: predicted image}`` against ``target``; returns ``{method: (psnr, ssim)}``."""
        scores: dict[str, tuple[float, float]] = {}
        for method, pred in predictions.items():
            scores[method] = (psnr(pred, target, max_val), ssim(pred, target, max_val))
        # Score first, then record, so a failure (e.g. a shape mismatch) leaves no half example.
        for method, (p, s) in scores.items():
            self.add(example, method, p, s)
        return scores

    @property
    def methods(self) -> list[str]:
        """Methods in the order they were first added."""
        return list(self._methods)

    @property
    def examples(self) -> list[str]:
        """Example ids in the order they were first added."""
        return list(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def rows(self) -> list[tuple[str, str, float, float]]:
        """Long-form rows ``(example, method, psnr, ssim)`` in insertion order."""
        return [
            (example, method, p, s)
            for example, per_method in self._scores.items()
            for method, (p, s) in per_method.items()
        ]

    def summary(self, protocol: str = PROTOCOL) -> dict[str, Any]:
        """``{"protocol", "tiles", "methods": {method: {"psnr", "ssim"}}}`` with mean scores.

        Raises ``ValueError`` if some method lacks some tile: means over different tile sets are
        not comparable, so an incomplete table must not produce a summary.
        """
        missing = [
            (example, method)
            for example, per_method in self._scores.items()
            for method in self._methods
            if method not in per_method
        ]
        if missing:
            shown = ", ".join(f"{e}/{m}" for e, m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(f"incomplete table: no score for (example/method) {shown}{more}")
        methods: dict[str, dict[str, float]] = {}
        for method in self._methods:
            values = np.array([self._scores[e][method] for e in self._scores], dtype=np.float64)
            methods[method] = {
                "psnr": _round(values[:, 0].mean(), _PSNR_DIGITS),
                "ssim": _round(values[:, 1].mean(), _SSIM_DIGITS),
            }
        return {"protocol": protocol, "tiles": len(self._scores), "methods": methods}

    def to_markdown(self) -> str:
        """The summary as a markdown table (see :func:`summary_to_markdown`)."""
        return summary_to_markdown(self.summary())

    def to_text(self) -> str:
        """The summary as an aligned plain-text table (see :func:`summary_to_text`)."""
        return summary_to_text(self.summary())

    def to_csv(self) -> str:
        """Per-example scores as long-form CSV text: ``example,method,psnr,ssim``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["example", "method", "psnr", "ssim"])
        for example, method, p, s in self.rows():
            writer.writerow([example, method, f"{p:.6f}", f"{s:.6f}"])
        return buffer.getvalue()

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-example CSV (:meth:`to_csv`) atomically; returns the path."""
        return atomic_write_text(self.to_csv(), path)

    def write_json(self, path: str | os.PathLike[str], protocol: str = PROTOCOL) -> Path:
        """Write :meth:`summary` as JSON atomically; returns the path."""
        return write_json_atomic(self.summary(protocol), path)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> "MetricTable":
        """Read a CSV written by :meth:`write_csv` (e.g. to resume or merge an evaluation)."""
        table = cls()
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                table.add(row["example"], row["method"], float(row["psnr"]), float(row["ssim"]))
        return table


# Summary columns: (key in a method's scores, heading, digits); the luma ones where a summary has them.
_COLUMNS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("psnr_y", "PSNR Y (dB)", 2), ("ssim_y", "SSIM Y", 4))


def _summary_rows(summary: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(header, rows) of the summary's table: the method, then each of :data:`_COLUMNS` it has."""
    first = next(iter(summary["methods"].values()), {})
    columns = [c for c in _COLUMNS if c[0] in first]
    header = ("method", *(heading for _, heading, _ in columns))
    rows = [(method, *(f"{scores[key]:.{digits}f}" for key, _, digits in columns))
            for method, scores in summary["methods"].items()]
    return header, rows


def _examples(summary: Mapping[str, Any]) -> str:
    """"5 tiles", "1 image": the count of a summary's examples (whole-image summaries count "images")."""
    unit = "image" if "images" in summary else "tile"
    return f"{summary[unit + 's']} {unit}" + ("" if summary[unit + "s"] == 1 else "s")


def summary_to_markdown(summary: Mapping[str, Any]) -> str:
    """Render a summary dict (from :meth:`MetricTable.summary` or its JSON) as a markdown table.

    PSNR is shown with 2 decimals and SSIM with 4; the tile count is in the header.
    """
    header, rows = _summary_rows(summary)
    lines = [
        f"| {header[0]} ({_examples(summary)}) | " + " | ".join(header[1:]) + " |",
        "|:---|" + "---:|" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_to_text(summary: Mapping[str, Any]) -> str:
    """Render a summary dict as an aligned plain-text table for terminals and logs."""
    header, rows = _summary_rows(summary)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join([f"{row[0]:<{widths[0]}}", *(f"{v:>{w}}" for v, w in zip(row[1:], widths[1:]))])

    lines = [fmt(header), *(fmt(r) for r in rows), f"({_examples(summary)})"]
    return "\n".join(lines) + "\n"
