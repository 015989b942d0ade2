"""Images to predict, read region by region as uint8 RGB.

TIFF files (classic, BigTIFF, OME-TIFF, pyramidal whole-slide TIFFs with SubIFDs or one page per
level) are read with tifffile, one level, only the tiles or strips a region touches: a slide is
never decoded whole; Zeiss CZI slides likewise, with pylibCZIrw (:mod:`allen_sr.data.czi`).
Anything else (PNG, JPEG, ...) is read whole by :func:`allen_sr.data.images.load_image`
(Pillow's pixel limit applies). Every image is read as viewers show it: a TIFF's Orientation tag is
applied region by region (:class:`OrientedSource`), a JPEG's EXIF one by ``load_image``; regions
(``crop_source``) are of the image as shown.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from allen_sr.data.images import (MINISWHITE, ORIENTATION_TAG, ORIENTATIONS, PALETTE, SEPARATED, YCBCR, ImageSkipped,
                                  check_image_file, configure_pillow, exif_orientation, is_tiff, load_image, tiff_depth,
                                  tiff_orientation, tiff_problem, upright)
from allen_sr.data.samples import announced_white, sample_peak, samples_to_rgb, say_not_numbers
from allen_sr.errors import InvalidInputError, MissingInputError

__all__ = ["ImageSource", "ArraySource", "TiffSource", "OrientedSource", "CziSource", "open_image", "crop_source",
           "with_margin"]

JPEG_COMPRESSIONS = (7, 33007, 34892)  # TIFF Compression values tifffile decodes from YCbCr to RGB
FAX_COMPRESSIONS = (2, 3, 4)  # CCITT (bilevel): Pillow (libtiff) decodes them, tifffile does not
UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimetre
UNCALIBRATED_DPI = (72.0, 96.0)  # programs' default resolution: no pixel size
OME_UNITS = {"µm": 1.0, "um": 1.0, "\u00b5m": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass
class ImageSource:
    """An image of ``height`` x ``width`` px; :meth:`read` returns uint8 [h, w, 3]."""

    name: str
    width: int
    height: int
    pixel_size_um: float | None = None  # physical size of one pixel, when known
    pixel_size_y_um: float | None = None  # its height when not pixel_size_um (rectangular pixels)

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


class ArraySource(ImageSource):
    """An image held in memory (what Pillow decodes)."""

    def __init__(self, name: str, pixels: np.ndarray, pixel_size_um: float | None = None) -> None:
        super().__init__(name, int(pixels.shape[1]), int(pixels.shape[0]), pixel_size_um)
        self.pixels = pixels

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.pixels[top:top + height, left:left + width]


class CroppedSource(ImageSource):
    """A rectangle of another source."""

    def __init__(self, base: ImageSource, top: int, left: int, height: int, width: int) -> None:
        super().__init__(base.name, width, height, base.pixel_size_um, base.pixel_size_y_um)
        self.base, self.top, self.left = base, top, left

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.base.read(self.top + top, self.left + left, height, width)

    def close(self) -> None:
        self.base.close()


class OrientedSource(ImageSource):
    """Another source shown as its file's Orientation tag says (turned or mirrored,
    :data:`~allen_sr.data.images.ORIENTATIONS`): every region shown is one region of the stored
    image, read and turned, so a slide is still read only where a region falls."""

    def __init__(self, base: ImageSource, orientation: int) -> None:
        self.transposed, self.rows, self.columns = ORIENTATIONS[orientation]
        width, height = (base.height, base.width) if self.transposed else (base.width, base.height)
        size_x, size_y = base.pixel_size_um, base.pixel_size_y_um
        if self.transposed and size_y is not None:  # a rectangular pixel turns too
            size_x, size_y = size_y, size_x
        super().__init__(base.name, width, height, size_x, size_y)
        self.base, self.orientation = base, orientation

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        if self.rows:
            top = self.height - top - height
        if self.columns:
            left = self.width - left - width
        if self.transposed:  # the stored region has rows and columns swapped
            top, left, height, width = left, top, width, height
        return upright(self.base.read(top, left, height, width), self.orientation)

    def close(self) -> None:
        self.base.close()


def crop_source(base: ImageSource, left: int, top: int, width: int | None, height: int | None) -> ImageSource:
    """The region of ``base`` (None: to the right/bottom edge); ValueError when outside it."""
    width = base.width - left if width is None else width
    height = base.height - top if height is None else height
    if left < 0 or top < 0 or width <= 0 or height <= 0 or left + width > base.width or top + height > base.height:
        raise InvalidInputError(f"region left={left} top={top} width={width} height={height} is outside the "
                                f"{base.width}x{base.height} image {base.name}; choose one inside it")
    if (left, top, width, height) == (0, 0, base.width, base.height):
        return base
    return CroppedSource(base, top, left, height, width)


def to_rgb(block: np.ndarray, name: str, white: float = 255.0, alpha: str | None = None) -> np.ndarray:
    """uint8 [h, w, 3] from a block [h, w] or [h, w, samples] of unsigned integers or floats (the
    callers check the type): :func:`~allen_sr.data.samples.samples_to_rgb` of the image's ``white``
    level and ``alpha`` (a warning naming the image when some pixels are transparent); a clear error
    for other numbers of samples."""
    if block.ndim == 2:
        block = block[:, :, None]
    if block.shape[2] not in (1, 2, 3, 4):
        raise InvalidInputError(f"{name}: {block.shape[2]} samples per pixel; expected greyscale or RGB(A)")
    return samples_to_rgb(block, white, alpha, name)


class TiffSource(ImageSource):
    """One level of a TIFF, read tile by tile (or strip by strip) with tifffile."""

    def __init__(self, path: str, level: int = 0) -> None:
        import tifffile

        try:
            self.tif = tifffile.TiffFile(path)
            series = self.tif.series[0]
            levels = series.levels
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for corrupt files
            raise ImageSkipped(f"{path}: not a readable TIFF ({exc}); replace the file") from exc
        if not 0 <= level < len(levels):
            self.tif.close()
            raise InvalidInputError(f"{path} has {len(levels)} resolution level(s) (0-{len(levels) - 1}); "
                                    f"level {level} does not exist")
        page = levels[level].keyframe
        self.page = page
        if page.planarconfig == 2 and page.samplesperpixel > 1:
            self.tif.close()
            raise InvalidInputError(f"{path}: planar (separate-plane) colour TIFFs are not supported; "
                                    "save it with interleaved (contiguous) samples")
        # YCbCr that is not JPEG (tifffile gives JPEG's RGB) is converted here, as Pillow does
        self.ycbcr = page.photometric == YCBCR and page.compression not in JPEG_COMPRESSIONS
        problem = tiff_problem(path, self.tif) or (self.ycbcr and ycbcr_problem(page))
        if problem:
            self.tif.close()
            raise InvalidInputError(f"{path}: {problem}")
        height, width = int(page.imagelength), int(page.imagewidth)
        size = tiff_pixel_size(self.tif, page, levels)
        super().__init__(path, width, height, *(size or (None, None)))
        # how the image is shown: this level's Orientation tag, else the full-resolution level's
        self.orientation = tiff_orientation(page if ORIENTATION_TAG in page.tags else levels[0].keyframe)
        self.block = block_of(page)
        self.grid = (math.ceil(height / self.block[0]), math.ceil(width / self.block[1]))
        # ExtraSamples: 1 associated (premultiplied) alpha, 2 unassociated; 0 (unspecified): ignored
        extra = tuple(page.extrasamples or ())[-1:]
        self.alpha = {(1,): "premultiplied", (2,): "straight"}.get(extra) if page.samplesperpixel in (2, 4) else None
        self.palette = None
        if page.photometric == PALETTE:  # 16-bit colour map entries; 8-bit ones in some files (as libtiff)
            colormap = np.asarray(page.colormap)
            self.palette = (colormap >> 8 if colormap.max() > 255 else colormap).T.astype(np.uint8)
        # a palette's colours are 8-bit; bilevel (bool) samples are read as 0 and 255
        deep = page.dtype not in (np.uint8, np.bool_) and self.palette is None
        self.nan_unsaid = False  # NaN samples met while reading are still to be reported
        try:
            self.white = self.level_white(levels[-1].keyframe) if deep else 255.0
        except BaseException:
            self.tif.close()
            raise

    def level_white(self, overview: Any) -> float:
        """The white level of an image deeper than 8 bits: from the bits per sample the file states
        (:func:`~allen_sr.data.images.tiff_depth`) unless samples go beyond them, else from
        the brightest colour sample of ``overview``, its smallest level (every segment read once:
        the level itself where there is no pyramid), with a warning saying how it is read, and one
        saying how many pixels there are NaN (read as black)."""
        page = self.page
        if page.dtype.kind not in "uf":
            raise InvalidInputError(f"{self.name}: {page.dtype} pixels are not supported; "
                                    "convert the image to unsigned 8 or 16 bit")
        significant_bits, stated = tiff_depth(self.tif, page)
        peak, not_numbers = 0.0, 0
        for index in range(len(overview.dataoffsets)):  # also where the depth is stated: samples may exceed it
            rows, columns = segment_extent(overview, index)
            found = sample_peak(self.segment(index, overview)[:rows, :columns])
            peak, not_numbers = max(peak, found[0]), not_numbers + found[1]
        if page.dtype.kind == "f":
            size = (int(overview.imagewidth), int(overview.imagelength))
            where = "" if overview is page else f" of its {size[0]}x{size[1]} px overview level"
            say_not_numbers(self.name, not_numbers, size[0] * size[1], where)
            self.nan_unsaid = not not_numbers and overview is not page
        return announced_white(self.name, page.dtype, peak, significant_bits, stated)

    def displayed(self, segment: np.ndarray) -> np.ndarray:
        """A segment's samples as the picture shows them, as Pillow reads them: a palette looked
        up, white-is-zero grey inverted, CMYK inks turned into RGB (white x (1 - ink) x (1 - black)),
        YCbCr turned into RGB (by Pillow's conversion: the same pixels)."""
        photometric = self.page.photometric
        if self.palette is not None:
            return self.palette[segment[..., 0]]
        if self.page.dtype == np.bool_:  # bilevel, as 0 and 1: black and white
            segment = segment * np.uint8(255)
        if photometric == MINISWHITE:
            grey = (self.white - segment[..., :1].astype(np.float64)).astype(segment.dtype)
            return np.concatenate([grey, segment[..., 1:]], axis=-1)
        if photometric == SEPARATED:
            inks = segment.astype(np.float64)
            rgb = (self.white - inks[..., :3]) * (self.white - inks[..., 3:]) / self.white
            return np.rint(rgb).astype(segment.dtype)
        if self.ycbcr:
            rgb = np.asarray(Image.fromarray(np.ascontiguousarray(segment[..., :3]), "YCbCr").convert("RGB"))
            return np.concatenate([rgb, segment[..., 3:]], axis=-1)
        return segment

    def segment(self, index: int, page: Any = None) -> np.ndarray:
        """Tile or strip ``index`` of this level (or of ``page``) as stored, [h, w, samples];
        ImageSkipped when it cannot be read."""
        page = page or self.page
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        try:
            fh = self.tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
            if len(data) < count or (count == 0 and page.compression != 1):
                raise InvalidInputError(f"segment {index} is cut off ({len(data)} of {count} bytes)")
            segment = page.decode(data, index, jpegtables=page.jpegtables)[0]
            if segment is None:
                raise InvalidInputError(f"segment {index} is empty")
        except Exception as exc:  # noqa: BLE001 - codecs raise many kinds
            raise ImageSkipped(f"{self.name}: truncated or corrupt TIFF data ({exc}); "
                               "replace the file (download or export it again)") from exc
        segment = np.asarray(segment).reshape(segment.shape[-3:])
        return segment.view(np.uint8) if segment.dtype == np.bool_ else segment  # bilevel: 0 and 1

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        bh, bw = self.block
        out = np.empty((height, width, 3), np.uint8)
        for by in range(top // bh, (top + height - 1) // bh + 1):
            for bx in range(left // bw, (left + width - 1) // bw + 1):
                y0, x0 = by * bh, bx * bw
                ys, ye = max(top, y0), min(top + height, y0 + bh, self.height)
                xs, xe = max(left, x0), min(left + width, x0 + bw, self.width)
                # the part of the segment the region covers (not an edge tile's padding)
                seg = self.displayed(self.segment(by * self.grid[1] + bx))[ys - y0:ye - y0, xs - x0:xe - x0]
                if self.nan_unsaid and np.isnan(seg).any():  # none in the overview level
                    self.nan_unsaid = False
                    warnings.warn(f"{self.name}: some pixels are NaN (not a number): read as black")
                out[ys - top:ye - top, xs - left:xe - left] = to_rgb(seg, self.name, self.white, self.alpha)
        return out

    def close(self) -> None:
        self.tif.close()


def ycbcr_problem(page: Any) -> str | None:
    """Why the YCbCr samples of a TIFF page that is not JPEG are not read, or None."""
    if page.dtype != np.uint8 or int(page.samplesperpixel) < 3:
        return f"YCbCr of {page.dtype} x {page.samplesperpixel} samples is not supported; save it as RGB"
    if tuple(page.subsampling or (1, 1)) != (1, 1):
        return "chroma-subsampled YCbCr without JPEG compression is not supported; save it as RGB"
    return None


def block_of(page: Any) -> tuple[int, int]:
    """(rows, columns) of each tile of a tifffile ``page``, or of each of its strips."""
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    return int(page.rowsperstrip or page.imagelength), int(page.imagewidth)


def segment_extent(page: Any, index: int) -> tuple[int, int]:
    """(rows, columns) of the image that tile or strip ``index`` of a tifffile ``page`` holds (an
    edge tile's padding left out)."""
    height, width = int(page.imagelength), int(page.imagewidth)
    rows, columns = block_of(page)
    across = math.ceil(width / columns)
    top, left = index // across * rows, index % across * columns
    return min(rows, height - top), min(columns, width - left)


def tiff_pixel_size(tif: Any, page: Any, levels: list[Any]) -> tuple[float, float] | None:
    """(x, y) um per px of ``page`` from OME-XML (PhysicalSizeX/Y) or the resolution tags (in the
    unit of ImageJ's description when they have none), else None. A level of a pyramid without a
    calibration of its own has the full-resolution level's, scaled by its size, as OME-XML's is.

    Tags of 72 or 96 dots per inch (or of no unit) are what programs write when they know no
    size, and say nothing: Fiji takes 72 dpi so too."""
    base_width = int(levels[0].keyframe.imagewidth)
    scale = base_width / max(int(page.imagewidth), 1)
    ome = tif.ome_metadata or ""
    sizes = [ome_size(ome, axis) for axis in "XY"]
    if sizes[0]:
        return sizes[0] * scale, (sizes[1] or sizes[0]) * scale
    own = tag_pixel_size(tif, page)
    if own is not None or page is levels[0].keyframe:
        return own
    base = tag_pixel_size(tif, levels[0].keyframe)  # a level without a calibration of its own
    return None if base is None else (base[0] * scale, base[1] * scale)


def tag_pixel_size(tif: Any, page: Any) -> tuple[float, float] | None:
    """(x, y) um per px of ``page`` from its resolution tags, else None (:func:`tiff_pixel_size`)."""
    unit_tag = page.tags.get("ResolutionUnit")
    dots = [resolution(page.tags.get(name)) for name in ("XResolution", "YResolution")]
    unit = UM_PER_UNIT.get(int(unit_tag.value)) if unit_tag is not None else None
    if unit is None and unit_tag is not None and int(unit_tag.value) == 1:  # no unit: ImageJ names it
        unit = imagej_unit(tif)
    if unit is None or not dots[0]:
        return None
    if unit == UM_PER_UNIT[2] and uncalibrated(dots):
        return None
    return unit / dots[0], unit / (dots[1] or dots[0])


def uncalibrated(dpi: list[float | None]) -> bool:
    """True for 72 or 96 dots per inch, what programs write when they know no size (a PNG's pHYs,
    in dots per metre, holds them to within 0.02)."""
    return all(any(abs(d - default) < 0.05 for default in UNCALIBRATED_DPI) for d in dpi if d)


def header_pixel_size(path: str) -> tuple[float, float] | None:
    """(x, y) um per px of the image as shown, from the resolution Pillow reads in a file's header
    (a PNG's pHYs, a JPEG's JFIF density or EXIF resolution, as allen-sr writes its outputs), else
    None: none, no unit, or 72 or 96 dpi."""
    configure_pillow()
    try:
        with Image.open(path) as img:
            dpi, orientation = img.info.get("dpi"), exif_orientation(img)
            if img.format == "JPEG" and img.info.get("jfif_unit") not in (1, 2):  # not JFIF's: EXIF's, or none
                dpi = exif_dpi(img)
        x, y = (float(d) for d in dpi)
    except Exception:  # noqa: BLE001 - no resolution (or an odd one) is no pixel size
        return None
    if not (x > 0 and y > 0) or uncalibrated([x, y]):
        return None
    size = (UM_PER_UNIT[2] / x, UM_PER_UNIT[2] / y)
    return size[::-1] if ORIENTATIONS[orientation][0] else size  # turned: the pixel's sides swap


def exif_dpi(img: Image.Image) -> tuple[float, float] | None:
    """(x, y) dots per inch of the EXIF XResolution, YResolution and ResolutionUnit (inch when not
    given) of the image Pillow opened as ``img``, or None: none, or no unit. (Pillow's info["dpi"]
    gives a JPEG's EXIF XResolution for both: a rectangular pixel read as square.)"""
    exif = img.getexif()
    per_inch = {2: 1.0, 3: 2.54}.get(int(exif.get(296, 2)))
    dots = [resolution_value(exif.get(tag)) for tag in (282, 283)]
    if per_inch is None or not dots[0]:
        return None
    return dots[0] * per_inch, (dots[1] or dots[0]) * per_inch


def resolution_value(value: Any) -> float | None:
    """An EXIF resolution (a rational, as Pillow reads it) as a positive float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if number > 0 and math.isfinite(number) else None


def imagej_unit(tif: Any) -> float | None:
    """um per unit of length that an ImageJ (Fiji) TIFF's description names (``unit=um``), or None."""
    try:
        name = str((tif.imagej_metadata or {}).get("unit", ""))
    except Exception:  # noqa: BLE001 - a damaged description says nothing
        return None
    name = name.strip().replace("\\u00B5", "\u00b5").replace("\\u00b5", "\u00b5").replace("\u03bc", "\u00b5")
    return {**OME_UNITS, "micron": 1.0, "microns": 1.0}.get(name)


def ome_size(ome: str, axis: str) -> float | None:
    """um per px along ``axis`` ("X" or "Y") that OME-XML's PhysicalSize gives, or None."""
    found = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', ome)
    if not found:
        return None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', ome)
    factor = OME_UNITS.get(unit.group(1) if unit else "µm")
    size = float(found.group(1))
    return size * factor if factor is not None and size > 0 else None


def resolution(tag: Any) -> float | None:
    """Pixels per resolution unit of an X/YResolution tag, or None."""
    if tag is None:
        return None
    num, den = tag.value
    return num / den if num > 0 and den > 0 else None


class CziSource(ImageSource):
    """One level of a Zeiss CZI, read region by region (:class:`allen_sr.data.czi.CziImage`)."""

    def __init__(self, path: str, level: int = 0) -> None:
        from allen_sr.data.czi import CziImage

        self.image = CziImage(path, level)
        super().__init__(path, self.image.width, self.image.height, self.image.pixel_size_um,
                         self.image.pixel_size_y_um)

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image.read(top, left, height, width)

    def close(self) -> None:
        self.image.close()


def open_image(path: str, level: int = 0, pixel_size_um: float | None = None) -> ImageSource:
    """An :class:`ImageSource` for ``path``: TIFFs region by region, anything else whole; either
    as viewers show it (its Orientation tag applied).

    ImageSkipped (unreadable, truncated, empty) and ValueError (unsupported layout, a level that
    does not exist) name the file and what to do.
    """
    check_image_file(path, missing=MissingInputError)
    if is_tiff(path):
        source: ImageSource = TiffSource(path, level)
        if source.page.compression in FAX_COMPRESSIONS:
            source = whole_tiff(source, level)
        elif source.orientation != 1:
            source = OrientedSource(source, source.orientation)
    elif path.lower().endswith(".czi"):
        source = CziSource(path, level)
    else:
        if level:
            raise InvalidInputError(f"{path} is not a TIFF: it has one resolution level, its level must be 0")
        source = ArraySource(path, load_image(path, min_size=1))
        source.pixel_size_um, source.pixel_size_y_um = header_pixel_size(path) or (None, None)
    if pixel_size_um is not None:
        source.pixel_size_um, source.pixel_size_y_um = pixel_size_um, None
    return source


def whole_tiff(tiff: TiffSource, level: int) -> ImageSource:
    """The TIFF that ``tiff`` opened, read whole by Pillow (:func:`~allen_sr.data.images.load_image`),
    with its pixel size: for what tifffile cannot decode (CCITT fax bilevel images)."""
    tiff.close()
    if level:
        raise InvalidInputError(f"{tiff.name}: levels of a CCITT (fax) compressed TIFF other than 0 are not read; "
                                "save the level you want as its own file")
    source = ArraySource(tiff.name, load_image(tiff.name, min_size=1))
    size = (tiff.pixel_size_um, tiff.pixel_size_y_um)
    source.pixel_size_um, source.pixel_size_y_um = size[::-1] if ORIENTATIONS[tiff.orientation][0] else size
    return source


def with_margin(base: ImageSource, region: ImageSource, margin: int) -> tuple[ImageSource, int, int]:
    """``region`` (a :func:`crop_source` of ``base``) grown by ``margin`` px on each side, clipped
    to ``base``: what a model reads to predict the region with the context it has inside the image.
    Returns it and the region's top and left within it (px of input)."""
    if region is base or not isinstance(region, CroppedSource):
        return region, 0, 0
    top, left = max(0, region.top - margin), max(0, region.left - margin)
    bottom = min(base.height, region.top + region.height + margin)
    right = min(base.width, region.left + region.width + margin)
    return crop_source(base, left, top, right - left, bottom - top), region.top - top, region.left - left
