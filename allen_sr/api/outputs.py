"""The files a prediction writes besides its output, and the rows it keeps while it runs: their
names (``OUT.compare.png``, ``OUT.uncertainty.tif``/``.png``), the check of those names before any
work, the window of the compare picture, and the uncertainty's four bytes per pixel in stored rows.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from allen_sr.inference import sources, tiling, writers

__all__ = ["HEAT_MAP_PIXELS", "SD_BYTES", "PreviewTap", "preview_box", "compare_path", "uncertainty_paths",
           "check_output_names", "encode_uncertain", "decode_uncertain", "pixel_size_text", "split_uncertain",
           "strided_rows", "shared_extras"]


# The uncertainty heat map PNG is for people and made whole: at most this many pixels, every
# n-th row and column of a larger map (the float32 TIFF beside it keeps every pixel).
HEAT_MAP_PIXELS = 4096 * 4096


OUTPUT_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg")  # dropped from the stem


def compare_path(out: Path) -> Path:
    """Where the compare picture of output ``out`` goes: ``OUT-stem.compare.png`` beside it."""
    name = out.name
    for suffix in OUTPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    return out.with_name(f"{name}.compare.png")


SD_BYTES = 4  # the sd in stored rows: a float32 (little-endian), as the decoder gave it


def encode_uncertain(band: np.ndarray, channels: int) -> np.ndarray:
    """float32 [h, w, C + 1] (values, sd) -> uint8 [h, w, C + SD_BYTES]: the values rounded, the sd's
    float32 bytes (what the resume store keeps: every sd as predicted, none capped or rounded)."""
    values = tiling.as_uint8(band[..., :channels])
    sd = np.ascontiguousarray(band[..., channels], dtype="<f4")
    return np.concatenate([values, sd.view(np.uint8).reshape(*sd.shape, SD_BYTES)], axis=-1)


def decode_uncertain(band: np.ndarray, channels: int) -> np.ndarray:
    """The float32 sd map [h, w] of an :func:`encode_uncertain` band."""
    return np.ascontiguousarray(band[..., channels:channels + SD_BYTES]).view("<f4")[..., 0].astype(np.float32)


def split_uncertain(bands: Iterable[np.ndarray], channels: int) -> Iterator[np.ndarray]:
    """The image part of encoded bands (their sd maps are read back from the stored rows)."""
    for band in bands:
        yield band[..., :channels]


def strided_rows(bands: Iterable[np.ndarray], stride: int, parts: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass ``bands`` through, keeping every ``stride``-th row and column of the image in ``parts``."""
    y = 0
    for band in bands:
        parts.append(band[(-y) % stride::stride, ::stride].copy())
        y += band.shape[0]
        yield band


def pixel_size_text(x_um: float, y_um: float | None) -> str:
    """"0.125 um/px", or "0.125 x 0.25 um/px" (width x height) for rectangular pixels."""
    return f"{x_um:.4g} um/px" if y_um is None or y_um == x_um else f"{x_um:.4g} x {y_um:.4g} um/px"


def check_output_names(src: str | os.PathLike[str], outputs: Iterable[Path]) -> None:
    """OutputError, before any work, if one of the files a run writes is its input ``src`` (the run
    would replace it) or a folder (the run would fail at its end)."""
    source = Path(src).resolve()
    for path in outputs:
        if path.resolve() == source:
            raise writers.OutputError(f"{path} is the input image {src}: writing it would replace the input; "
                                      "give the output another name")
        if path.is_dir():
            raise writers.OutputError(f"{path} is a folder: the output cannot be written there; "
                                      "give the output another name")


def uncertainty_paths(out: Path) -> tuple[Path, Path]:
    """``OUT.uncertainty.tif`` and ``OUT.uncertainty.png`` beside output ``out`` (its type suffix dropped)."""
    stem = compare_path(out).name[:-len(".compare.png")]
    return out.with_name(f"{stem}.uncertainty.tif"), out.with_name(f"{stem}.uncertainty.png")


def shared_extras(out: Path, files: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(other outputs, existing ``files``): the outputs beside ``out`` of the same stem and another
    image type (a_x4.png for a_x4.ome.tif), whose compare picture and uncertainty maps have the
    names ``out``'s get, and which of ``files`` (those names) exist; ([], []) when none does."""
    stem = compare_path(out).name[:-len(".compare.png")]
    others = [p for suffix in OUTPUT_SUFFIXES if (p := out.with_name(stem + suffix)) != out and p.is_file()]
    existing = [p for p in files if p.is_file()]
    return (others, existing) if others and existing else ([], [])


class PreviewTap:
    """Passes bands through and keeps the rows and columns of a preview window."""

    def __init__(self, box: tuple[int, int, int, int] | None) -> None:
        self.box, self.parts, self.y = box, [], 0  # box: top, left, height, width (output px)

    def __call__(self, bands: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for band in bands:
            if self.box is not None:
                top, left, h, w = self.box
                a, b = max(top, self.y), min(top + h, self.y + band.shape[0])
                if a < b:
                    self.parts.append(band[a - self.y:b - self.y, left:left + w].copy())
            self.y += band.shape[0]
            yield band


def preview_box(region: sources.ImageSource, size: int) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) input px of a centred square of ``size`` px, or None."""
    if size <= 0:
        return None
    h, w = min(size, region.height), min(size, region.width)
    return (region.height - h) // 2, (region.width - w) // 2, h, w
