"""What :meth:`allen_sr.Upscaler.predict` and :meth:`~allen_sr.Upscaler.check` take as an image, read
as `allen-sr upscale` reads files: NumPy arrays, Pillow images and image files (:func:`read_image`),
and the :class:`Region` of a file that :meth:`~allen_sr.Upscaler.predict_file` enlarges.

Arrays are read as the file readers read the samples a file stores: uint8 as they are; uint16 (any
byte order) by its white level (:func:`allen_sr.data.samples.white_level`: the smallest usual depth
that holds the brightest sample, or ``bits=`` when no sample goes beyond it); floats as 0-1 when every
sample is up to 1.5, as 0-255 up to 255, else by depth as integers are; 2 samples a pixel as grey + alpha
and 4 as RGBA, alpha put on white with a warning.
"""
from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from allen_sr.errors import InvalidInputError
from allen_sr.inference import sources

__all__ = ["InputImageError", "Region", "as_region", "array_source", "read_image", "image_jpeg_quality"]

IMAGE = "image"  # how warnings name an image given as an array


class InputImageError(InvalidInputError):
    """An image given to :meth:`Upscaler.predict` that is not a greyscale or RGB(A) image."""


@dataclass(frozen=True)
class Region:
    """A rectangle of an image in pixels; ``width``/``height`` None reach the right/bottom edge."""

    left: int = 0
    top: int = 0
    width: int | None = None
    height: int | None = None


def as_region(region: Region | tuple[int | None, ...] | None) -> Region:
    """A :class:`Region` from one, from (left, top[, width, height]) or from None (everything);
    InvalidInputError for anything else, a negative edge or an empty side."""
    if region is None:
        return Region()
    if isinstance(region, (str, bytes)):
        raise InvalidInputError(f"region {region!r} is text: give numbers, (left, top, width, height) in px, "
                                "e.g. region=(0, 0, 512, 512), or a Region")
    values = tuple(vars(region).values()) if isinstance(region, Region) else tuple(region)
    if len(values) not in (2, 4):
        raise InvalidInputError(f"region {values}: give (left, top) or (left, top, width, height) in px")
    try:  # NumPy integers too; never 12.5 px; None: to the edge (width and height only)
        left, top, *size = (v if v is None and i >= 2 else operator.index(v) for i, v in enumerate(values))
    except TypeError:
        raise InvalidInputError(f"region {values}: give whole numbers of px (width, height: None for "
                                "to the edge)") from None
    for name, value in (("left", left), ("top", top)):
        if value < 0:
            raise InvalidInputError(f"region {values}: {name} must be >= 0, got {value}")
    for name, value in zip(("width", "height"), size):
        if value is not None and value < 1:
            raise InvalidInputError(f"region {values}: {name} must be >= 1 px (None: to the edge), got {value}")
    return Region(left, top, *size)


def read_image(path: str | os.PathLike[str], level: int = 0) -> np.ndarray:
    """The image file ``path`` (``~`` expanded) as `allen-sr upscale` reads it: uint8 [h, w, 3],
    16-bit scaled by its white level, alpha put on white, turned as its Orientation tag says,
    ``level`` of a pyramidal TIFF or CZI. :meth:`Upscaler.predict` of it gives the command's pixels."""
    source = sources.open_image(os.path.expanduser(os.fspath(path)), level)
    try:
        return np.ascontiguousarray(source.read(0, 0, source.height, source.width))
    finally:
        source.close()


def image_jpeg_quality(image: Any) -> int | None:
    """The JPEG quality of a Pillow image decoded from a JPEG (from its quantisation tables), else None."""
    from allen_sr.inference.input_check import jpeg_quality_of_table

    tables = dict(getattr(image, "quantization", None) or {}) if getattr(image, "format", None) == "JPEG" else {}
    return jpeg_quality_of_table(tables[min(tables)]) if tables else None


def pillow_pixels(image: Any, bits: int | None) -> np.ndarray:
    """uint8 [h, w, 3] of a Pillow image, as a file of it is read (`allen_sr.data.images.load_image`):
    every mode converted to RGB (palette, CMYK, YCbCr, HSV, LAB), 16-bit and float greyscale by their
    white level (or ``bits``), alpha put on white, and the EXIF Orientation the image carries applied
    (16-bit colour, which Pillow holds cut to 8 bits, from its file when it has one)."""
    from allen_sr.data import images

    if getattr(image, "format", None) == "TIFF":
        image.load()  # Pillow turns a TIFF upright as it loads it (and then drops its Orientation tag)
    orientation = images.exif_orientation(image)
    filename = getattr(image, "filename", "")
    if hasattr(image, "tile") and images.deep_colour(image) and filename and os.path.isfile(filename):
        pixels = images.deep_to_rgb(images.read_samples(filename), IMAGE, (bits, "bits"))
    else:
        pixels = images.to_rgb_uint8(image, IMAGE, (bits, "bits"))
    return images.upright(pixels, orientation)


def check_bits(bits: int | None, dtype: np.dtype) -> None:
    """InvalidInputError unless ``bits`` is None or a depth an image of ``dtype`` can have."""
    if bits is None:
        return
    top = dtype.itemsize * 8 if dtype.kind == "u" else 16
    if top == 8 and isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits > 8:
        raise InvalidInputError(f"bits={bits}: a uint8 array holds 8 bits per sample; bits= is for the deeper "
                                "samples of a uint16 array (e.g. bits=12 for a 12-bit camera's 0-4095): leave it out")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 8 <= bits <= top:
        raise InvalidInputError(f"bits={bits!r}: give the significant bits per sample, a whole number from 8 to "
                                f"{top} (e.g. 12 for a 12-bit camera's 0-4095), or leave it out")


def array_samples(image: Any) -> np.ndarray:
    """``image`` as an array of samples [h, w] or [h, w, 1-4] in native byte order; InputImageError
    saying how to convert anything else."""
    if isinstance(image, (list, tuple)):
        raise InputImageError("the image is a Python list: pass a NumPy array, e.g. np.asarray(pixels, "
                              "dtype=np.uint8), a Pillow image or a file path")
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise InputImageError(f"image of shape {array.shape}: expected [h, w] (grey) or [h, w, 1|2|3|4] (grey, "
                              "grey + alpha, RGB, RGBA); one image at a time (take image[0] of a batch), "
                              "channels last (np.moveaxis(image, 0, -1) for [c, h, w])")
    if array.dtype.kind not in "uf" or array.dtype.itemsize > 8:
        raise InputImageError(f"image of dtype {array.dtype}: expected unsigned integers (uint8, uint16) or "
                              "floats (0-1 or 0-255); convert it, e.g. np.clip(image, 0, 255).astype(np.uint8)")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array if array.ndim == 3 else array[..., None]


def array_source(image: Any, bits: int | None = None) -> sources.ArraySource:
    """An image given as an array or a Pillow image, as a source: read as the same samples in a file
    are (the module docstring); ``bits``: the significant bits of integer samples (their white level
    ``2**bits - 1``) instead of the guess from the brightest sample. InputImageError otherwise."""
    from PIL import Image

    if isinstance(image, Image.Image):
        check_bits(bits, np.dtype(np.uint16))
        return sources.ArraySource(IMAGE, pillow_pixels(image, bits))
    samples = array_samples(image)
    if samples.dtype.kind == "f" and bits is not None:
        raise InvalidInputError(f"bits={bits}: float samples are read as 0-1 or 0-255, not by bits; "
                                "leave bits out, or pass the integer samples")
    check_bits(bits, samples.dtype)
    from allen_sr.data.images import deep_to_rgb

    # as a file's samples (alpha as Pillow and PNG store it: straight, not premultiplied)
    return sources.ArraySource(IMAGE, deep_to_rgb(samples, IMAGE, (bits, "bits")))
