"""Degraded low-resolution inputs: the spec grammar, and the fixed degradations `evaluate` applies.

Real inputs are not the exact area average of a clean image: the optics blur, the sensor adds
noise, files are JPEG and stains vary. One grammar describes such inputs, items ``key=value``
joined by ``,`` or ``;`` (``;`` inside tensor2tensor's ``--hparams``, which splits on commas):

* in training (the hparam ``degradation``, applied in graph by :mod:`allen_sr.t2t.degradation`)
  a value is a range ``LO:HI`` drawn uniformly per example, optionally ``@P``, applied to a
  share P of the degraded examples; ``clean=P`` leaves a share P of all examples as they were;
  ``none`` turns it all off;
* in evaluation (``allen-sr evaluate --degrade``, applied here with NumPy and Pillow to a whole
  image) each value is fixed, and the steps run in the order given.

Keys (units are the ones the value is in):

========  ==========================================================================
``blur``  Gaussian blur of the full-resolution image before it is downsampled, sigma in
          full-resolution (target) px
``kernel``  the downsampling kernel: ``area`` (the exact mean, what the problems use),
          ``bicubic`` or ``bilinear`` (antialiased); in training ``area|bicubic`` picks one
``noise`` Gaussian sensor noise of constant standard deviation, grey levels (0-255)
``shot``  signal-dependent (shot) noise: standard deviation S * sqrt(value / 255), grey levels
          at white
``jpeg``  a JPEG round trip at this quality (1-100), 4:2:0 chroma subsampling; in training the
          8x8 block grid falls at a random offset relative to the model's input
``hed``   (training) stain variation: each haematoxylin/eosin/DAB density (Ruifrok-Johnston
          deconvolution) scaled by U(1-A, 1+A) and shifted by U(-A, A)
``permute`` (training) share of examples whose colour channels are put in a random order (every
          stain colour in every channel, for stains never seen in training)
``clean`` (training) share of examples whose input is left exactly as without degradation
========  ==========================================================================

No TensorFlow here: the TF-free install evaluates with it too.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from allen_sr.errors import InvalidInputError

__all__ = [
    "REAL_INPUTS", "DegradationSpecError", "Range", "TrainingDegradation",
    "FixedStep", "KERNELS", "parse_training", "parse_fixed", "format_fixed", "gaussian_taps", "blur", "downsample",
    "add_noise", "jpeg_roundtrip", "degrade_image", "HED_FROM_RGB_STAINS",
]

KERNELS = ("area", "bicubic", "bilinear")
# Allowed values per key: (low, high) inclusive.
LIMITS = {
    "blur": (0.0, 8.0),
    "noise": (0.0, 64.0),
    "shot": (0.0, 64.0),
    "jpeg": (1.0, 100.0),
    "hed": (0.0, 0.5),
    "permute": (0.0, 1.0),
    "clean": (0.0, 1.0),
}
TRAINING_KEYS = ("clean", "hed", "permute", "blur", "kernel", "noise", "shot", "jpeg")
FIXED_KEYS = ("blur", "kernel", "noise", "shot", "jpeg")
FULL_RESOLUTION_KEYS = ("blur", "kernel")  # act on the full-resolution image: first in a fixed spec
# The `degradation` every allen-sr hparams set trains with: half the examples stay clean (the conv
# sets kept 0.3 until 2026-12-05), noise up to 10 grey levels (5 until 2026-12-06; measurements:
# docs/decisions/real_inputs.md).
REAL_INPUTS = "clean=0.5;hed=0.5;permute=0.5;blur=0:2@0.5;noise=0:10@0.5;shot=0:5@0.3;jpeg=50:95@0.8"
# Ruifrok & Johnston's stain vectors (optical density per RGB channel): haematoxylin, eosin, DAB.
HED_FROM_RGB_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


class DegradationSpecError(InvalidInputError):
    """A degradation spec that cannot be used; the message names the item and what is allowed."""


@dataclass(frozen=True)
class Range:
    """A value drawn uniformly from [lo, hi] per example, for a share ``p`` of the examples."""

    lo: float
    hi: float
    p: float = 1.0

    def __str__(self) -> str:
        text = f"{_num(self.lo)}" if self.lo == self.hi else f"{_num(self.lo)}:{_num(self.hi)}"
        return text + (f"@{_num(self.p)}" if self.p != 1.0 else "")


@dataclass(frozen=True)
class TrainingDegradation:
    """The parsed ``degradation`` hparam (see the module docstring)."""

    clean: float = 0.0
    hed: float = 0.0
    permute: float = 0.0
    blur: Range | None = None
    kernels: tuple[str, ...] = ("area",)
    noise: Range | None = None
    shot: Range | None = None
    jpeg: Range | None = None

    def __str__(self) -> str:
        parts = [f"clean={_num(self.clean)}"] if self.clean else []
        parts += [f"hed={_num(self.hed)}"] if self.hed else []
        parts += [f"permute={_num(self.permute)}"] if self.permute else []
        parts += [f"blur={self.blur}"] if self.blur else []
        parts += [f"kernel={'|'.join(self.kernels)}"] if self.kernels != ("area",) else []
        parts += [f"{key}={value}" for key, value in
                  (("noise", self.noise), ("shot", self.shot), ("jpeg", self.jpeg)) if value]
        return ";".join(parts) or "none"


@dataclass(frozen=True)
class FixedStep:
    """One step of a fixed degradation: ``key`` with its value (a kernel name or a number)."""

    key: str
    value: float | str

    def __str__(self) -> str:
        return f"{self.key}={self.value if isinstance(self.value, str) else _num(self.value)}"


def _num(value: float) -> str:
    return f"{value:g}"


def _items(spec: str, context: str, empty: str = "give items such as jpeg=75 (or none)") -> list[tuple[str, str]]:
    items = []
    for raw in spec.replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DegradationSpecError(f"{context}: {item!r} is not key=value (for example jpeg=75)")
        items.append((key.strip(), value.strip()))
    if not items:
        raise DegradationSpecError(f"{context}: empty spec; {empty}")
    keys = [key for key, _ in items]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise DegradationSpecError(f"{context}: {', '.join(repeated)} given more than once")
    return items


def _number(key: str, text: str, context: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DegradationSpecError(f"{context}: {key}={text!r} is not a number") from None
    lo, hi = LIMITS[key]
    if not (lo <= value <= hi) or math.isnan(value):
        raise DegradationSpecError(f"{context}: {key}={text} is out of range; allowed {_num(lo)} to {_num(hi)}")
    if key == "jpeg" and value != int(value):
        raise DegradationSpecError(f"{context}: jpeg={text}: the quality is a whole number from 1 to 100")
    return value


def _kernels(text: str, context: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split("|"))
    unknown = [name for name in names if name not in KERNELS]
    if unknown:
        raise DegradationSpecError(f"{context}: kernel={text!r}: unknown kernel {unknown[0]!r}; "
                                   f"known: {', '.join(KERNELS)} (in training joined by |)")
    return names


def _unknown(key: str, known: tuple[str, ...], context: str) -> DegradationSpecError:
    return DegradationSpecError(f"{context}: unknown key {key!r}; known: {', '.join(known)}")


def parse_training(spec: str | None, context: str = "degradation") -> TrainingDegradation | None:
    """The training spec ``spec`` parsed; None for ``none`` or an empty spec (clean training)."""
    text = (spec or "").strip()
    if text.lower() in ("", "none"):
        return None
    fields: dict = {}
    for key, value in _items(text, context):
        if key not in TRAINING_KEYS:
            raise _unknown(key, TRAINING_KEYS, context)
        if key == "kernel":
            fields["kernels"] = _kernels(value, context)
        elif key in ("clean", "hed", "permute"):
            fields[key] = _number(key, value, context)
        else:
            fields[key] = _range(key, value, context)
    return TrainingDegradation(**fields)


def _range(key: str, text: str, context: str) -> Range:
    body, at, share = text.partition("@")
    lo_text, colon, hi_text = body.partition(":")
    lo = _number(key, lo_text, context)
    hi = _number(key, hi_text, context) if colon else lo
    if hi < lo:
        raise DegradationSpecError(f"{context}: {key}={text}: the range's low end is above its high end")
    try:
        p = float(share) if at else 1.0
    except ValueError:
        p = math.nan
    if not 0.0 <= p <= 1.0:
        raise DegradationSpecError(f"{context}: {key}={text}: the share after @ must be from 0 to 1")
    return Range(lo, hi, p)


def parse_fixed(spec: str, context: str = "--degrade") -> list[FixedStep]:
    """The fixed spec ``spec`` (for example ``blur=1.5,noise=3,jpeg=85``) as steps in order."""
    steps = []
    for key, value in _items(spec.strip(), context, "give items such as jpeg=75, or leave it out for clean inputs"):
        if key not in FIXED_KEYS:
            raise _unknown(key, FIXED_KEYS, context)
        if key == "kernel":
            names = _kernels(value, context)
            if len(names) > 1:
                raise DegradationSpecError(f"{context}: kernel={value!r}: give one kernel, not a choice")
            steps.append(FixedStep(key, names[0]))
        else:
            if ":" in value or "@" in value:
                raise DegradationSpecError(f"{context}: {key}={value!r}: give one value, not a range")
            steps.append(FixedStep(key, _number(key, value, context)))
    seen_low = False
    for step in steps:
        if step.key in FULL_RESOLUTION_KEYS and seen_low:
            raise DegradationSpecError(
                f"{context}: {step} acts on the full-resolution image before it is downsampled; "
                "put it before noise, shot and jpeg")
        seen_low = seen_low or step.key not in FULL_RESOLUTION_KEYS
    return steps


def format_fixed(steps: list[FixedStep]) -> str:
    """The canonical text of fixed ``steps`` (what metrics.json records)."""
    return ",".join(str(step) for step in steps)


# --- the fixed degradations, NumPy ------------------------------------------------------------

def gaussian_taps(sigma: float, radius: int | None = None) -> np.ndarray:
    """Normalized 1-D Gaussian taps of ``sigma`` px over [-radius, radius] (default ceil(3 sigma))."""
    radius = max(1, math.ceil(3.0 * sigma)) if radius is None else radius
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return taps / taps.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] with mirrored edges (float64 out); sigma 0 copies."""
    x = image.astype(np.float64)
    if sigma <= 0:
        return x
    taps = gaussian_taps(sigma)
    radius = len(taps) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="symmetric" if radius <= x.shape[axis] else "reflect")
        out = np.zeros_like(x)
        for i, tap in enumerate(taps):
            out += tap * np.take(padded, np.arange(i, i + x.shape[axis]), axis=axis)
        x = out
    return x


def downsample(image: np.ndarray, factor: int, kernel: str = "area") -> np.ndarray:
    """[H, W, C] (H, W multiples of ``factor``) reduced ``factor`` times per side, float64 out."""
    h, w, c = image.shape
    if kernel == "area":
        return image.astype(np.float64).reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    from PIL import Image

    method = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[kernel]
    planes = [np.asarray(Image.fromarray(image[..., k].astype(np.float32), mode="F")
                         .resize((w // factor, h // factor), method)) for k in range(c)]
    return np.stack(planes, axis=-1).astype(np.float64)


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.0, shot: float = 0.0) -> np.ndarray:
    """``image`` plus Gaussian noise of sd sqrt(sigma^2 + shot^2 * value / 255), float64 out."""
    x = image.astype(np.float64)
    sd = np.sqrt(sigma ** 2 + shot ** 2 * np.clip(x, 0, 255) / 255.0)
    return x + sd * rng.standard_normal(x.shape)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rounded and clipped to 0-255."""
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (uint8 [H, W, C]) saved as JPEG at ``quality`` by Pillow (4:2:0 for RGB) and read back."""
    from PIL import Image

    pixels = to_uint8(image)
    grey = pixels.shape[-1] == 1
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if grey else pixels).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    out = np.asarray(Image.open(buffer).convert("L" if grey else "RGB"))
    return out[..., None] if grey else out


def degrade_image(image: np.ndarray, factor: int, steps: list[FixedStep], seed: int = 0) -> np.ndarray:
    """The low-resolution input of a whole uint8 image [H, W, C] under the fixed ``steps``.

    ``H`` and ``W`` must be multiples of ``factor``. With no steps this is the rounded area
    average, what the problems feed the model. Noise is seeded by ``seed``.
    """
    rng = np.random.default_rng(seed)
    x = image
    kernel = "area"
    for step in steps:
        if step.key == "blur":
            x = blur(x, float(step.value))
        elif step.key == "kernel":
            kernel = str(step.value)
    x = downsample(np.asarray(x), factor, kernel)
    for step in steps:
        if step.key == "noise":
            x = add_noise(x, rng, sigma=float(step.value))
        elif step.key == "shot":
            x = add_noise(x, rng, shot=float(step.value))
        elif step.key == "jpeg":
            x = jpeg_roundtrip(x, int(step.value))
    return to_uint8(x)
