"""Is this input within what the model trained on? Its JPEG quality and noise, against the model's
recorded `degradation`.

A model trained on real inputs (`allen_sr.data.degrade`) does no harm within the ranges it saw and
can fall below bicubic beyond them: the shipped models, trained on noise up to 10 grey levels and
JPEG down to quality 50, are 0.16-0.55 dB below bicubic at noise 12 on the brain section (conv-fast)
and the stain they never saw, and up to 0.07 below at JPEG 30-40 (`benchmarks/bench_shipped.py`).
`allen-sr upscale` checks every input before predicting it and warns when it lies beyond; it never
refuses (the user may know better). Blur, which never harmed, is not checked.

* JPEG quality is read, not guessed: from the quantisation tables of a JPEG file or of a TIFF's
  JPEG-compressed tiles, as the quality whose IJG (libjpeg) scaling of the standard luminance table
  (ITU-T T.81, Annex K) comes nearest. Encoders with tables of their own get the nearest such quality.
* Noise is estimated, in grey levels of the input as given: a Laplacian-like high-pass (whose
  output has the noise's standard deviation when the noise is white), its RMS in 8x8 blocks, the
  5th percentile of the blocks (the flattest tissue: texture only adds to a block) divided by
  that percentile's value on pure noise. Blocks with more than 5% of their pixels clipped (at 0
  or 255: white glass, black ink) are left out: clipping hides noise. On the sample images it
  reads 0.3-7.9 grey levels on clean input and 1.1-1.3 times the added noise from 10 grey levels
  up (`benchmarks/bench_input_check.py`); JPEG smooths the noise it measures away.

No TensorFlow here: the TF-free install checks its inputs too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allen_sr.data.degrade import DegradationSpecError, parse_training
from allen_sr.inference import sources, tiling

__all__ = ["InputCheck", "check_input", "check_file", "jpeg_quality_of_table", "jpeg_tables", "file_jpeg_quality",
           "estimate_noise", "NOISE_FLOOR"]

# ITU-T T.81 Annex K, Table K.1: the luminance quantisation table the IJG qualities scale.
STANDARD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
BLOCK = 8  # px per side of the blocks the noise is measured in
PERCENTILE = 5.0
PURE_NOISE_PERCENTILE = 0.85  # the 5th-percentile block RMS over sigma, on white Gaussian noise
MIN_BLOCKS = 16  # fewer unsaturated blocks than this: no estimate
CLIPPED_SHARE = 0.05  # blocks with more of their pixels at 0 or 255 than this are left out
WINDOW, WINDOWS = 256, 4  # noise is measured in up to WINDOWS x WINDOWS windows of WINDOW px
# Clean tissue reads up to about this much (texture the high-pass cannot tell from noise), so a
# model whose training saw less noise is only warned about beyond it.
NOISE_FLOOR = 8.0
# A lower bound read through clipping is reported only above this: clearly noisier than any training.
HEAVY_NOISE = 20.0
# 3x3 high-pass with unit gain for white noise: sum of squared taps = 36, divided by 6.
HIGH_PASS = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64) / 6.0


@dataclass(frozen=True)
class InputCheck:
    """What was found about one input, and the warnings it gives for one model."""

    name: str
    jpeg_quality: int | None  # None: not JPEG-compressed
    noise: float | None  # estimated sd in grey levels; None: too little unsaturated tissue to tell
    trained: str | None  # the model's `degradation` ("none": clean); None: not recorded
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"jpeg_quality": self.jpeg_quality,
                "noise": None if self.noise is None else round(self.noise, 2),
                "trained_degradation": self.trained, "warnings": list(self.warnings)}


def jpeg_quality_of_table(table: Any) -> int:
    """The IJG quality (1-100) whose scaled standard luminance table is nearest to ``table``
    (64 values, in any order: the comparison is of sorted values, so zigzag and natural order agree)."""
    values = np.sort(np.asarray(table, np.float64).ravel())
    if values.size != 64:
        raise ValueError(f"a JPEG quantisation table has 64 values, got {values.size}")
    qualities = np.arange(1, 101)
    scale = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    scaled = np.clip((STANDARD_LUMA[None, :] * scale[:, None] + 50) // 100, 1, 255)
    errors = np.abs(np.sort(scaled, axis=1) - values[None, :]).sum(axis=1)
    return int(qualities[np.argmin(errors)])


def jpeg_tables(data: bytes) -> dict[int, list[int]]:
    """The quantisation tables (id -> 64 values, in stored order) of a JPEG stream's DQT segments,
    read marker by marker up to the first scan; a stream cut short gives the tables before the cut."""
    tables: dict[int, list[int]] = {}
    i = 2 if data[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no tables beyond
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDB:
            j, end = i + 4, min(i + 2 + length, len(data))
            while j < end:
                precision, table_id = data[j] >> 4, data[j] & 0x0F
                width = 2 if precision else 1
                raw = data[j + 1:j + 1 + 64 * width]
                if len(raw) < 64 * width:  # cut off: no table
                    break
                tables[table_id] = ([int.from_bytes(raw[k:k + 2], "big") for k in range(0, len(raw), 2)]
                                    if width == 2 else list(raw))
                j += 1 + 64 * width
        i += 2 + length
    return tables


def file_jpeg_quality(source: sources.ImageSource) -> int | None:
    """The JPEG quality of the file behind ``source`` (a JPEG file, or a TIFF whose tiles or strips
    are JPEG-compressed), from its luminance table; None when it is not JPEG."""
    while isinstance(source, (sources.CroppedSource, sources.OrientedSource)):
        source = source.base
    if isinstance(source, sources.TiffSource):
        page = source.page
        if int(page.compression) not in (6, 7):  # old-style and new-style JPEG
            return None
        data = bytes(page.jpegtables or b"")
        if not jpeg_tables(data):  # tables inside each segment: read the first
            fh = source.tif.filehandle
            fh.seek(int(page.dataoffsets[0]))
            data = fh.read(int(page.databytecounts[0]))
        tables = jpeg_tables(data)
    else:
        if not os.path.isfile(source.name):
            return None
        from PIL import Image

        try:
            with Image.open(source.name) as image:
                if image.format != "JPEG":
                    return None
                tables = dict(getattr(image, "quantization", None) or {})
        except OSError:
            return None
    if not tables:
        return None
    return jpeg_quality_of_table(tables[min(tables)])


def _block_rms(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMS of the high-pass in every 8x8 block of ``pixels`` (uint8 [h, w, c]), and per block the
    share of its pixels whose 3x3 neighbourhood (which the high-pass reads) holds a 0 or a 255, and
    the share of its pixels that are 0 or 255 themselves."""
    x = pixels.astype(np.float64)
    h, w = (x.shape[0] - 2) // BLOCK * BLOCK, (x.shape[1] - 2) // BLOCK * BLOCK
    if h <= 0 or w <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    at_limit = ((pixels == 0) | (pixels == 255)).any(axis=-1)
    clipped = np.zeros((h, w), bool)
    high = np.zeros((h, w, x.shape[-1]))
    for dy in range(3):  # the 3x3 neighbourhood of each pixel of the h x w interior
        for dx in range(3):
            clipped |= at_limit[dy:dy + h, dx:dx + w]
            high += HIGH_PASS[dy, dx] * x[dy:dy + h, dx:dx + w]
    shape = (h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    squares = (high ** 2).mean(axis=-1)
    return (np.sqrt(squares.reshape(shape).mean(axis=(1, 3))).ravel(), clipped.reshape(shape).mean(axis=(1, 3)).ravel(),
            at_limit[1:h + 1, 1:w + 1].reshape(shape).mean(axis=(1, 3)).ravel())


def estimate_noise(pixels: np.ndarray | list[np.ndarray]) -> float | None:
    """Estimated sd (grey levels) of white noise in uint8 [h, w, c] ``pixels`` (or in several
    windows of one image together), from the 8x8 blocks with at most 5% of their pixels clipped.
    When fewer than 16 such blocks are left, heavy noise may be what clips them (noise of 60 grey
    levels puts a fifth of the pixels at 0 or 255): the blocks with at most half their pixels at 0
    or 255 then give a lower bound, returned when it is above HEAVY_NOISE; otherwise None (unknown:
    too small, or saturated)."""
    windows = pixels if isinstance(pixels, list) else [pixels]
    rms, clipped, at_limit = (np.concatenate(parts) for parts in
                              zip(*(_block_rms(np.atleast_3d(np.asarray(p))) for p in windows)))
    kept = rms[clipped <= CLIPPED_SHARE]
    if kept.size >= MIN_BLOCKS:
        return float(np.percentile(kept, PERCENTILE) / PURE_NOISE_PERCENTILE)
    clipped_noise = rms[at_limit <= 0.5]
    if clipped_noise.size >= MIN_BLOCKS:
        bound = float(np.percentile(clipped_noise, PERCENTILE) / PURE_NOISE_PERCENTILE)
        return bound if bound > HEAVY_NOISE else None
    return None


def _windows(source: sources.ImageSource) -> list[np.ndarray]:
    """Up to 4 x 4 windows of 256 px spread evenly over ``source`` (all of it when smaller)."""
    h, w = min(WINDOW, source.height), min(WINDOW, source.width)
    tops = np.unique(np.linspace(0, source.height - h, WINDOWS).astype(int))
    lefts = np.unique(np.linspace(0, source.width - w, WINDOWS).astype(int))
    return [source.read(int(t), int(l), h, w) for t in tops for l in lefts]


def check_input(source: sources.ImageSource, trained: str | None, jpeg_quality: int | None = None) -> InputCheck:
    """Check ``source`` (its file for JPEG, its pixels for noise) against ``trained``, the model's
    recorded `degradation` spec ("none" for clean training; None, or a spec this version cannot
    read, when unknown: the numbers without warnings). ``jpeg_quality``: the quality known otherwise
    (a JPEG decoded in memory), else read from the file."""
    quality = file_jpeg_quality(source) if jpeg_quality is None else jpeg_quality
    noise = estimate_noise(_windows(source))
    if trained is None:
        return InputCheck(source.name, quality, noise, trained)
    try:
        spec = parse_training(trained, "the model's recorded degradation")
    except DegradationSpecError:  # recorded in a grammar this version does not read
        return InputCheck(source.name, quality, noise, trained)
    jpeg = spec.jpeg if spec is not None else None
    noise_range = spec.noise if spec is not None else None

    def unseen(kind: str) -> str:  # what the model trained on, where it saw no ``kind``
        return "clean inputs only" if spec is None else f"no {kind}"

    warnings: list[str] = []
    if quality is not None and jpeg is None:
        warnings.append(f"{source.name} is JPEG-compressed (quality {quality}) and this model trained on "
                        f"{unseen('JPEG')}: JPEG blocks may be sharpened into the picture; use a model "
                        "trained on real inputs (every allen-sr hparams set's default since 2026-12-04)")
    elif quality is not None and quality < jpeg.lo:
        warnings.append(f"{source.name} is JPEG-compressed at quality {quality}, below the {jpeg.lo:g}-"
                        f"{jpeg.hi:g} this model trained on: the result may be worse than bicubic; check it "
                        "against bicubic (the compare picture shows both) before using it")
    if noise is not None and noise > max(noise_range.hi if noise_range else 0.0, NOISE_FLOOR):
        trained_noise = (f"the 0-{noise_range.hi:g} grey levels this model trained on" if noise_range
                         else f"what this model trained on ({unseen('noise')})")
        warnings.append(f"{source.name}: its noise is about {noise:.0f} grey levels (estimated), above "
                        f"{trained_noise}: the result may be worse than bicubic; denoise the input first "
                        "or check it against bicubic (the compare picture shows both) before using it")
    return InputCheck(source.name, quality, noise, trained, tuple(warnings))


def check_file(path: str, trained: str | None, level: int = 0,
               region: tuple[int, int, int | None, int | None] = (0, 0, None, None),
               min_side: int = 1) -> InputCheck:
    """:func:`check_input` on the ``region`` (left, top, width, height; None: to the edge) of the
    image file ``path`` at pyramid ``level``; InvalidInputError, as `upscale` gives, for a region
    with a side below ``min_side`` px (the model's smallest input)."""
    source = sources.open_image(path, level)
    try:
        cut = sources.crop_source(source, *region)
        tiling.check_region_size(cut.height, cut.width, min_side, path)
        return check_input(cut, trained)
    finally:
        source.close()
