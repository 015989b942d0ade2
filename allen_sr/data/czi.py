"""Zeiss CZI slides (Axioscan and other Zeiss scanners), read region by region with pylibCZIrw.

A CZI holds one or several scenes (often one per tissue section) on one plane of stage
coordinates; allen-sr reads the rectangle around all of them, the glass between scenes as white,
one pyramid level at a time (level k: every side halved k times, read through libCZI's own
pyramid). Colour (Bgr24, Bgr48) and greyscale planes of one channel are read; samples of more
than 8 bits are read by their white level as every other file is
(:func:`allen_sr.data.samples.white_level`).
pylibCZIrw (LGPL-3, Zeiss's own libCZI) is optional: without it a CZI is refused with the command
that installs it.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from allen_sr.data.errors import ImageSkipped
from allen_sr.data.samples import announced_white, sample_peak, samples_to_rgb
from allen_sr.errors import InvalidInputError

__all__ = ["PYLIBCZIRW", "CziImage", "czi_size"]

PYLIBCZIRW = "pylibCZIrw==6.1.0"
# The longest side of the overview in which the brightest sample of a deep CZI is sought.
OVERVIEW_SIDE = 2048
DEPTH_OF = {"Gray8": 8, "Bgr24": 8, "Gray16": 16, "Bgr48": 16}


def _metadata_value(metadata: Any, *keys: str) -> Any:
    """``metadata[k1][k2]...`` of the CZI's XML as a dict, or None where a key is missing."""
    for key in keys:
        if not isinstance(metadata, dict) or key not in metadata:
            return None
        metadata = metadata[key]
    return metadata


def pixel_size_um(metadata: Any, scale: int, axis: str = "X") -> float | None:
    """um per px along ``axis`` (X or Y) of a level ``scale`` times smaller than the CZI's own
    (Scaling/Distance, in metres, of its metadata), or None where the metadata does not give it."""
    distance = _metadata_value(metadata, "ImageDocument", "Metadata", "Scaling", "Items", "Distance") or []
    for item in distance if isinstance(distance, list) else [distance]:
        if isinstance(item, dict) and item.get("@Id") == axis:
            try:
                metres = float(item.get("Value"))
            except (TypeError, ValueError):
                return None
            return metres * 1e6 * scale if metres > 0 else None
    return None


def _open_czi(path: str) -> Any:
    """pylibCZIrw's ``open_czi(path)`` context, or ImageSkipped saying how to install it."""
    try:
        from pylibCZIrw import czi as pyczi
    except ImportError as exc:
        raise ImageSkipped(f"{path}: reading Zeiss CZI files needs pylibCZIrw; install it "
                           f"(pip install {PYLIBCZIRW}) or save the slide as OME-TIFF") from exc
    return pyczi.open_czi(path)


def czi_size(path: str) -> tuple[int, int]:
    """(width, height) of a CZI's rectangle around all its scenes, from its subblock directory: no
    pixel is read (datagen sizes its shards by it). ImageSkipped when pylibCZIrw cannot open it."""
    try:
        with _open_czi(path) as doc:
            box = doc.total_bounding_rectangle
    except ImageSkipped:
        raise
    except Exception as exc:  # noqa: BLE001 - libCZI raises RuntimeError and others for bad files
        raise ImageSkipped(f"{path}: not a readable CZI ({exc}); replace the file") from exc
    return box.w, box.h


class CziImage:
    """One pyramid level of a CZI: ``width`` x ``height`` px, :meth:`read` gives uint8 RGB regions.

    Raises ImageSkipped (no pylibCZIrw, not a readable CZI, several channels) or InvalidInputError
    (a level the image does not have), each naming the file and what to do.
    """

    def __init__(self, path: str, level: int = 0) -> None:
        opened = _open_czi(path)
        self.path = path
        self._files = contextlib.ExitStack()
        try:
            self.doc = self._files.enter_context(opened)
            box = self.doc.total_bounding_rectangle
            channels = self.doc.pixel_types
            metadata = self.doc.metadata
        except Exception as exc:  # noqa: BLE001 - libCZI raises RuntimeError and others for bad files
            self._files.close()
            raise ImageSkipped(f"{path}: not a readable CZI ({exc}); replace the file") from exc
        try:
            self._check(channels, box, level)
            self.pixel_type = channels[0]
            self.box, self.scale = box, 2 ** level
            self.width, self.height = box.w // self.scale, box.h // self.scale
            self.pixel_size_um = pixel_size_um(metadata, self.scale)
            height_um = pixel_size_um(metadata, self.scale, "Y")  # None: square pixels, or not stated
            self.pixel_size_y_um = height_um if self.pixel_size_um and height_um != self.pixel_size_um else None
            self.white = self._white() if DEPTH_OF.get(self.pixel_type, 32) > 8 else 255.0
        except BaseException:
            self._files.close()
            raise

    def _check(self, channels: dict[int, str], box: Any, level: int) -> None:
        if len(channels) != 1:
            raise ImageSkipped(f"{self.path}: {len(channels)} channels (fluorescence?); allen-sr enlarges one "
                               "brightfield plane: export the channel to enlarge as OME-TIFF")
        if channels[0] not in (*DEPTH_OF, "Gray32Float", "Bgr96Float"):
            raise ImageSkipped(f"{self.path}: pixel type {channels[0]} is not supported; export the slide as OME-TIFF")
        if level < 0 or min(box.w, box.h) >> level < 1:
            top = max(min(box.w, box.h).bit_length() - 1, 0)
            raise InvalidInputError(f"{self.path} is {box.w}x{box.h} px: its levels are 0-{top} "
                                    f"(each halves the sides); level {level} does not exist")

    def _white(self) -> float:
        """The white level of a deep CZI, from the brightest colour sample of an overview of at most
        :data:`OVERVIEW_SIDE` px a side (glass, the brightest, covers far more than a pixel of it)."""
        zoom = min(1.0, OVERVIEW_SIDE / max(self.box.w, self.box.h))
        peak = sample_peak(self._samples(tuple(self.box), zoom, black=True))[0]  # NaN: no brightness
        return announced_white(self.path, np.float32 if self.pixel_type.endswith("Float") else np.uint16, peak)

    def _samples(self, roi: tuple[int, int, int, int], zoom: float, black: bool = False) -> np.ndarray:
        """libCZI's samples of ``roi`` (stage px) at ``zoom``, in RGB order; no data reads as white
        (black where the brightest sample is sought)."""
        try:
            samples = self.doc.read(roi=roi, zoom=zoom, background_pixel=(0.0,) * 3 if black else (1.0,) * 3)
        except Exception as exc:  # noqa: BLE001 - libCZI raises RuntimeError for broken sub-blocks
            raise ImageSkipped(f"{self.path}: truncated or corrupt CZI data ({exc}); replace the file") from exc
        return samples[..., ::-1] if samples.shape[-1] == 3 else samples

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 [height, width, 3] from ``top``, ``left`` of this level."""
        s = self.scale
        roi = (self.box.x + left * s, self.box.y + top * s, width * s, height * s)
        samples = self._samples(roi, 1.0 / s)
        if samples.shape[:2] != (height, width):  # libCZI rounds a zoomed size its own way
            samples = np.pad(samples[:height, :width], ((0, max(height - samples.shape[0], 0)),
                                                        (0, max(width - samples.shape[1], 0)), (0, 0)), mode="edge")
        return samples_to_rgb(samples, self.white)

    def close(self) -> None:
        self._files.close()
