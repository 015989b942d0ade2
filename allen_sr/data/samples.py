"""Sample values to uint8 RGB: how images of any depth, greyscale or with alpha are read (no I/O).

Every reader (:mod:`allen_sr.data.images` for whole files, :mod:`allen_sr.data.czi`, the TIFF
reader of :mod:`allen_sr.inference.sources`) turns what a file stores into the uint8 RGB the
models know through these functions, so a file reads the same whichever way it is opened.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from allen_sr.data.errors import ImageSkipped

__all__ = ["SAMPLE_BITS", "FLOAT_OVERSHOOT", "depth_white", "white_level", "scale_to_uint8", "announced_white",
           "colour_samples", "sample_peak", "say_not_numbers", "samples_to_rgb"]

# Sample depths cameras and scanners write. An image of more than 8 bits per sample is read as the
# shallowest of these that holds its brightest sample: a 12-bit camera's 0-4095, stored in a 16-bit
# file, reads as 0-255 rather than as 0-16 (near black). Metadata that names the depth
# (OME-XML's SignificantBits) wins, unless the samples go beyond it.
SAMPLE_BITS = (8, 10, 12, 14, 16)

# Floating-point samples up to this are 0-1 data: deconvolution and interpolation overshoot 1 a little
# (what lies above 1 reads as white). Up to 255 they are on the 8-bit scale; above, on a camera's
# (a Fiji 32-bit image of 12-bit data holds 0-4095), read as integers are.
FLOAT_OVERSHOOT = 1.5


def depth_white(peak: float) -> float:
    """``2**depth - 1`` of the shallowest depth of :data:`SAMPLE_BITS` that holds ``peak``, else of
    the fewest whole bits that do (samples of 32-bit integers or floats beyond 16 bits)."""
    for depth in SAMPLE_BITS:
        if peak <= 2 ** depth - 1:
            return float(2 ** depth - 1)
    return float(2 ** int(math.ceil(peak)).bit_length() - 1)


def white_level(peak: float, dtype: np.dtype | type, significant_bits: int | None = None) -> float:
    """The sample value of an image of ``dtype`` that reads as 255 (white).

    uint8: 255. Deeper unsigned integers: ``2**significant_bits - 1`` when the file says how many
    bits are significant and ``peak``, the image's brightest sample, lies within them; else the
    shallowest depth that holds ``peak`` (:func:`depth_white`). Floating point: 1.0 when every
    sample lies within [0, :data:`FLOAT_OVERSHOOT`], 255 when within [0, 255], else as integers.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if peak <= FLOAT_OVERSHOOT:
            return 1.0
        return 255.0 if peak <= 255 else depth_white(peak)
    if dtype == np.uint8:
        return 255.0
    bits = dtype.itemsize * 8
    if significant_bits and 8 <= significant_bits <= bits and peak <= 2 ** significant_bits - 1:
        return float(2 ** significant_bits - 1)
    return min(depth_white(peak), float(2 ** bits - 1))


def scale_to_uint8(pixels: np.ndarray, white: float) -> np.ndarray:
    """``pixels`` with ``white`` read as 255, rounded and clipped to uint8; NaN (not a number) as 0."""
    if pixels.dtype == np.uint8 and white == 255:
        return pixels
    scaled = pixels.astype(np.float32) * np.float32(255.0 / white)
    if pixels.dtype.kind == "f":
        scaled = np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def announced_white(name: str, dtype: np.dtype | type, peak: float, significant_bits: int | None = None,
                    stated: str = "SignificantBits") -> float:
    """:func:`white_level` of an image of more than 8 bits per sample, with a warning naming the
    image that says how it is read (``peak``: its brightest colour sample; ``significant_bits``: an
    unsigned integer image's depth, as the file's ``stated`` field says, believed unless ``peak``
    goes beyond it, and the warning then says it was not)."""
    white = white_level(peak, dtype, significant_bits)
    kind = np.dtype(dtype).kind
    how, depth = f"samples up to {peak:.0f}" if float(peak).is_integer() else f"samples up to {peak:g}", ""
    if kind == "u" and significant_bits and white == 2 ** significant_bits - 1:  # the file's stated depth
        how = f"{stated}={significant_bits}"
    elif kind == "u" and significant_bits and 8 <= significant_bits <= np.dtype(dtype).itemsize * 8:
        how = f"{stated}={significant_bits} but {how} (beyond {significant_bits} bits: {stated} ignored)"
    if kind == "u" or white > 255:
        depth = f" ({int(white).bit_length()}-bit data)"
    elif kind == "f" and white == 1.0 and peak > 1.0:
        depth = " (samples above 1 as white)"
    warnings.warn(f"{name}: {np.dtype(dtype)} image, {how}: 0-{white:.10g} read as 0-255{depth}")
    return white


def colour_samples(samples: np.ndarray) -> np.ndarray:
    """The colour samples of [..., 1|2|3|4] (grey, grey + extra, RGB, RGB + extra): [..., :1] or [..., :3]."""
    return samples[..., :3] if samples.shape[-1] >= 3 else samples[..., :1]


def sample_peak(samples: np.ndarray) -> tuple[float, int]:
    """(brightest colour sample, pixels whose colour is not a number) of samples [..., 1|2|3|4]: NaN
    and infinite samples say nothing of the image's white level (NumPy's max of them is NaN)."""
    colour = colour_samples(samples)
    if colour.dtype.kind != "f":
        return float(colour.max(initial=0)), 0
    peak = float(colour.max(initial=0, where=np.isfinite(colour)))
    return peak, int(np.isnan(colour).any(axis=-1).sum())


def say_not_numbers(name: str, count: int, total: int, where: str = "") -> None:
    """Warn once for an image (``name``) of ``total`` pixels of which ``count`` are NaN (read as
    black); ImageSkipped when every one is. ``where``: which part of the image was counted."""
    if count and count >= total:
        raise ImageSkipped(f"{name}: every pixel{where} is NaN (not a number): there is no picture to read; "
                           "export the image again")
    if count:
        warnings.warn(f"{name}: {count} of {total} pixels{where} are NaN (not a number): read as black")


def samples_to_rgb(samples: np.ndarray, white: float, alpha: str | None = None,
                   name: str | None = None) -> np.ndarray:
    """uint8 [h, w, 3] from samples [h, w, 1|2|3|4]: the colour samples with ``white`` read as 255,
    greyscale repeated; an extra (last) sample of 2 or 4 is alpha composited on white (the
    brightfield background) when ``alpha`` is ``"straight"`` or ``"premultiplied"``, else ignored;
    an integer alpha is opaque at ``white`` (the depth of the colour samples), a float one at 1.
    Every reader of files and arrays composites this way; with a warning naming the image
    (``name``) when any pixel is not opaque."""
    rgb = scale_to_uint8(colour_samples(samples), white)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if alpha is None or samples.shape[-1] not in (2, 4):
        return rgb
    top = 1.0 if samples.dtype.kind == "f" else white  # opaque: a 12-bit image's 4095 (as its white), not 65535
    a = np.clip(np.nan_to_num(samples[..., -1:].astype(np.float32) / np.float32(top), nan=0.0), 0.0, 1.0)
    if name is not None and (a < 1.0).any():
        warnings.warn(f"{name}: transparent pixels put on white (the slide background)")
    covered = rgb if alpha == "premultiplied" else rgb * a
    return np.clip(np.rint(covered + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)
