"""Writing a prediction that arrives as bands of rows: PNG/JPEG, or a tiled pyramidal BigTIFF.

Everything is written under a hidden partial name next to the output
(``.<name>.<pid>.partial``) and renamed into place only when complete, so an interrupted run
(Ctrl-C, SIGKILL, a full disk) never leaves anything under the final name. Partial files of runs
that are no longer alive are removed when the next run for the same output starts.

TIFF output (``.tif``, ``.tiff``, ``.ome.tif``): BigTIFF, OME-XML metadata, 256 x 256 tiles,
deflate compression (level 1, tiles compressed on all cores: on a 4096 x 4096 output 3.7x faster
than tifffile's default, level 6 on one thread, for a 3% larger file; or zstd at level 1, another
1.7x less CPU for the same size, which recent Bio-Formats, libtiff and tifffile read but older
readers do not), sub-resolution levels
(each half the previous, down to <= 1024 px) as SubIFDs, the layout QuPath, napari and
Fiji/Bio-Formats read as a pyramid; the physical pixel size (X and Y) in the OME-XML and the
resolution tags when known. Levels are built while the full-resolution rows stream through (2x2
means), spooled to raw files on disk, so memory stays bounded.

PNG and JPEG carry the pixel size too: a PNG's pHYs chunk, a JPEG's EXIF resolution (and JFIF
density where it fits); see :func:`write_flat`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from allen_sr.fileio import remove_orphans
from allen_sr.errors import DISK_FULL_ERRNOS, TOO_LARGE_ADVICE, InvalidInputError

__all__ = ["MAX_PNG_PIXELS", "TIFF_TILE", "TIFF_COMPRESSION", "PIXEL_SIZE_UM", "OutputError", "output_kind",
           "partial_path", "remove_stale_partials", "check_writable", "make_folder", "write_image", "pyramid_shapes",
           "write_float_tiff", "halve_float"]

MAX_PNG_PIXELS = 100_000_000  # PNG/JPEG are encoded whole: 100 MP RGB is 300 MB in memory
JPEG_MAX_SIDE = 65500
UM_PER_INCH = 25400.0
TIFF_TILE = 256
MIN_LEVEL_SIDE = 1024  # stop adding pyramid levels when the level fits in this many px
MAX_LEVELS = 8  # 256-row strips halve cleanly 7 times
DEFLATE_LEVEL = 1  # fast; levels 3-6 save ~3% of the file for 1.3-2x the time
# --compression: tifffile's codec and level for each (both level 1: the fastest).
TIFF_COMPRESSION = {"deflate": ("zlib", DEFLATE_LEVEL), "zstd": ("zstd", 1)}
COMPRESS_BUFFER = 32 << 20  # bytes of tiles compressed in parallel per pass (tifffile's default: 512 MB)
# Output pixel sizes (um) every format holds: a PNG's pHYs counts pixels per metre in 32 bits (>= 0.00023
# um) and at least 1 (<= 2e6 um); TIFF and EXIF resolutions are 32-bit rationals of pixels per cm.
PIXEL_SIZE_UM = (1e-3, 1e6)  # 1 nm to 1 m
# The longest name written beside an output: ``.<name>.<pid>.partial`` (a pid has up to 7 digits).
HIDDEN_NAME_EXTRA = len(".") + len(".1234567.partial")


class OutputError(InvalidInputError):
    """The output cannot be written; the message names the file and what to do."""


def output_kind(path: str | os.PathLike[str]) -> str:
    """"png", "jpeg" or "tiff" from the file name; ValueError for anything else."""
    name = str(path).lower()
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    raise OutputError(f"{path}: unknown output type; name it .png, .jpg, .tif or .ome.tif")


def partial_path(path: Path, suffix: str = "partial") -> Path:
    """The hidden name this process writes ``path`` under until it is complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.{suffix}")


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete the partial files of earlier runs for ``path`` whose process is gone."""
    names = remove_orphans(path.parent, rf"\.{re.escape(path.name)}\.(?P<pid>\d+)\..+")
    return [path.parent / name for name in names]


def check_writable(path: Path) -> None:
    """Raise OutputError naming the folder unless a file can be created next to ``path`` (and
    ``path`` is not a folder), naming the file when its name (with room for the hidden names
    written beside it) is too long for the file system, or when it exists and cannot be replaced."""
    check_name_length(path)
    try:
        if path.is_dir():
            raise OutputError(f"{path} is a folder: name the file to write (for example {path / 'out.png'})")
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = partial_path(path, "probe")
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise OutputError(f"cannot write {path}: the path is too long for the file system "
                              "(or a folder's name in it is); choose a shorter --out") from exc
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise OutputError(f"cannot write {path}: {blocker} is a file, not a folder; choose another --out") from exc
        raise OutputError(f"cannot write {path}: the folder {path.parent} is not writable "
                          f"({exc.strerror or exc}); choose another --out") from exc
    check_replaceable(path)


def check_replaceable(path: Path) -> None:
    """OutputError when ``path`` is a file that the finished output could not replace: immutable or
    append-only (EPERM; chattr +i, chflags uchg) or, on Windows, read-only or open in another program.
    A file that is only read-only by its mode is replaced on POSIX systems (the folder is writable)."""
    if not path.is_file():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0)))  # neither truncated nor changed
    except PermissionError as exc:
        if exc.errno == errno.EPERM or os.name == "nt":
            raise OutputError(cannot_replace(path, exc)) from exc


def cannot_replace(path: Path, exc: OSError) -> str:
    return (f"cannot replace {path} ({exc.strerror or exc}): the file is protected (read-only, immutable, or open "
            "in another program); close or remove it, or choose another --out")


def make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) or raise OutputError naming it as ``what``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {folder} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from exc


def check_name_length(path: Path) -> None:
    """OutputError when ``path``'s name, as the hidden partial name beside it, exceeds the file system's
    longest name (bytes)."""
    longest = 255
    for folder in (path.parent, *path.parent.parents):  # the nearest that exists: its file system
        with contextlib.suppress(OSError, ValueError):
            longest = os.pathconf(folder, "PC_NAME_MAX")
            break
    size = len(os.fsencode(path.name))
    allowed = longest - HIDDEN_NAME_EXTRA
    if size > allowed:
        raise OutputError(f"cannot write {path}: its name is {size} bytes, {size - allowed} too long (names here "
                          f"hold {longest}, {HIDDEN_NAME_EXTRA} of them for the hidden .NAME.PID.partial it is "
                          f"written under until complete); shorten it to {allowed} bytes or less")


@contextlib.contextmanager
def committed(path: Path, extra: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield the partial path; on success fsync and rename it to ``path``; on any failure delete
    it (and ``extra`` spool files) and turn disk errors into OutputError."""
    part = partial_path(path)
    spools = list(extra)
    try:
        yield part
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        try:
            os.replace(part, path)
        except PermissionError as exc:  # protected since check_writable, or locked by a viewer (Windows)
            raise OutputError(cannot_replace(path, exc) + " (nothing was written under that name)") from exc
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise OutputError(f"{path}: the disk is full ({exc.strerror}) while writing; free space "
                              "or write to another disk (nothing was written under that name)") from exc
        if exc.errno == errno.EFBIG:
            raise OutputError(f"{path}: {exc.strerror}: {TOO_LARGE_ADVICE} (a region: --left, --top, --width, "
                              "--height); nothing was written under that name") from exc
        if isinstance(exc, (PermissionError, FileNotFoundError)):  # perhaps the input's: said as it is
            raise
        raise OutputError(f"{path}: writing failed ({exc}); nothing was written under that name") from exc
    finally:
        for p in [part, *spools]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def rebanded(bands: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The same rows in strips of exactly ``rows`` (the last may be shorter); a strip inside one
    band is a view of it, only one that spans two bands is copied."""
    pending: list[np.ndarray] = []
    have = 0
    for band in bands:
        pending.append(band)
        have += band.shape[0]
        while have >= rows:
            need, parts = rows, []
            while need:
                piece = pending[0]
                parts.append(piece[:need])
                if piece.shape[0] > need:
                    pending[0] = piece[need:]
                    need = 0
                else:
                    pending.pop(0)
                    need -= piece.shape[0]
            have -= rows
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)
    if have:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def halve(strip: np.ndarray) -> np.ndarray:
    """2x2 means, rounded half up, uint8 [h, w, C] -> [ceil(h/2), ceil(w/2), C]; an odd last row or
    column is averaged with itself (Pillow's reduce: 3x faster than the same sums in NumPy)."""
    from PIL import Image

    if strip.shape[2] == 1:
        return np.asarray(Image.fromarray(strip[:, :, 0]).reduce(2))[:, :, None]
    return np.asarray(Image.fromarray(np.ascontiguousarray(strip)).reduce(2))


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of each level, full resolution first."""
    shapes = [(height, width)]
    while max(shapes[-1]) > MIN_LEVEL_SIDE and len(shapes) < MAX_LEVELS:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def halve_any(strip: np.ndarray) -> np.ndarray:
    """:func:`halve` of uint8 rows, :func:`halve_float` of float32 ones ([h, w, 1])."""
    return halve(strip) if strip.dtype == np.uint8 else halve_float(strip[:, :, 0])[:, :, None]


def tiles_of(strips: Iterable[np.ndarray], width: int, channels: int, spools: list[BinaryIO]) -> Iterator[np.ndarray]:
    """TIFF tiles, row-major, of the strips; each strip is also halved into ``spools`` in turn."""
    for strip in strips:
        level = strip
        for spool in spools:
            level = halve_any(level)
            spool.write(np.ascontiguousarray(level).tobytes())
        for x in range(0, width, TIFF_TILE):
            tile = strip[:, x:x + TIFF_TILE]
            if tile.shape[:2] != (TIFF_TILE, TIFF_TILE):  # at the image's edge: zeros beyond it
                edge = np.zeros((TIFF_TILE, TIFF_TILE, channels), strip.dtype)
                edge[:tile.shape[0], :tile.shape[1]] = tile
                tile = edge
            yield tile


def spooled_strips(spool: BinaryIO, height: int, width: int, channels: int,
                   dtype: type = np.uint8) -> Iterator[np.ndarray]:
    spool.seek(0)
    row = width * channels * np.dtype(dtype).itemsize
    for y in range(0, height, TIFF_TILE):
        n = min(TIFF_TILE, height - y)
        data = spool.read(n * row)
        yield np.frombuffer(data, dtype).reshape(n, width, channels)


def physical_size(size_um: tuple[float, float] | None) -> dict[str, object]:
    """OME-XML PhysicalSizeX/Y of (x, y) um per px, or nothing when not known."""
    if not size_um:
        return {}
    return dict(PhysicalSizeX=size_um[0], PhysicalSizeXUnit="µm", PhysicalSizeY=size_um[1], PhysicalSizeYUnit="µm")


def write_tiff(part: Path, bands: Iterable[np.ndarray], height: int, width: int, channels: int,
               size_um: tuple[float, float] | None, spool_paths: list[Path], compression: str = "deflate",
               dtype: type = np.uint8) -> None:
    """A tiled pyramidal OME BigTIFF of ``bands`` ([h, w, channels] rows of ``dtype``: uint8, or
    float32 for one channel), each level below the first spooled to disk as the rows pass."""
    import tifffile

    codec, level = TIFF_COMPRESSION[compression]

    shapes = pyramid_shapes(height, width)
    photometric = "rgb" if channels == 3 else "minisblack"
    metadata: dict[str, object] = {"axes": "YXS" if channels == 3 else "YX"}
    options: dict[str, object] = dict(photometric=photometric, tile=(TIFF_TILE, TIFF_TILE), dtype=dtype,
                                      compression=codec, compressionargs={"level": level},
                                      maxworkers=os.cpu_count() or 1, buffersize=COMPRESS_BUFFER)
    metadata.update(physical_size(size_um))

    def resolution(level: int) -> dict[str, object]:
        if not size_um:
            return {}
        return dict(resolution=(1e4 / (size_um[0] * 2 ** level), 1e4 / (size_um[1] * 2 ** level)),
                    resolutionunit="CENTIMETER")

    def shape(h: int, w: int) -> tuple[int, ...]:
        return (h, w, channels) if channels > 1 else (h, w)

    spools = [open(p, "w+b") for p in spool_paths[:len(shapes) - 1]]
    try:
        with tifffile.TiffWriter(part, bigtiff=True, ome=True) as tif:
            tiles = tiles_of(rebanded(bands, TIFF_TILE), width, channels, spools)
            if channels == 1:
                tiles = (t[:, :, 0] for t in tiles)
            tif.write(tiles, shape=shape(height, width), subifds=len(shapes) - 1, metadata=metadata,
                      software="allen-sr upscale", **resolution(0), **options)
            for level, (h, w) in enumerate(shapes[1:], start=1):
                sub = tiles_of(spooled_strips(spools[level - 1], h, w, channels, dtype), w, channels, [])
                if channels == 1:
                    sub = (t[:, :, 0] for t in sub)
                tif.write(sub, shape=shape(h, w), subfiletype=1, metadata=None, **resolution(level), **options)
    finally:
        for f in spools:
            f.close()


def write_flat(part: Path, kind: str, bands: Iterable[np.ndarray], height: int, width: int, channels: int,
               size_um: tuple[float, float] | None = None) -> None:
    """PNG or JPEG with the pixel size: a PNG's pHYs (pixels per metre); a JPEG's EXIF resolution
    (pixels per cm), and its JFIF density too when that holds it (whole dpi up to 65535: pixels of
    0.39 um or more; Pillow would wrap a larger one round)."""
    from PIL import Image

    image = np.empty((height, width, channels), np.uint8)
    y = 0
    for band in bands:
        image[y:y + band.shape[0]] = band
        y += band.shape[0]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    options: dict[str, object] = {"quality": 95} if kind == "jpeg" else {}
    if size_um:
        dpi = (UM_PER_INCH / size_um[0], UM_PER_INCH / size_um[1])
        if kind == "png" or max(dpi) < 65535.5:
            options["dpi"] = dpi
        if kind == "jpeg":
            exif = Image.Exif()  # ResolutionUnit 3 (cm), XResolution, YResolution
            exif.update({0x0128: 3, 0x011A: 1e4 / size_um[0], 0x011B: 1e4 / size_um[1]})
            options["exif"] = exif
    with open(part, "wb") as f:
        pil.save(f, format="PNG" if kind == "png" else "JPEG", **options)


def write_image(path: str | os.PathLike[str], bands: Iterable[np.ndarray], height: int, width: int,
                channels: int = 3, pixel_size_um: float | None = None, compression: str = "deflate", *,
                pixel_size_y_um: float | None = None) -> Path:
    """Consume ``bands`` (uint8 rows, top to bottom) and write them to ``path`` atomically;
    ``compression`` (a key of :data:`TIFF_COMPRESSION`) for TIFF output; ``pixel_size_um`` (and
    ``pixel_size_y_um`` when rows are not as tall as columns are wide) in every format."""
    out = Path(path)
    kind = output_kind(out)
    if compression not in TIFF_COMPRESSION:
        raise OutputError(f"TIFF compression {compression}: unknown; choose one of {', '.join(TIFF_COMPRESSION)}")
    if kind != "tiff" and height * width > MAX_PNG_PIXELS:
        raise OutputError(f"{out}: a {width}x{height} px output ({height * width / 1e6:.0f} MP) is "
                          f"above the {MAX_PNG_PIXELS // 1_000_000} MP a PNG/JPEG is written up to; "
                          "name it .tif or .ome.tif (tiled pyramidal BigTIFF)")
    if kind == "jpeg" and max(height, width) > JPEG_MAX_SIDE:
        raise OutputError(f"{out}: JPEG cannot hold {width}x{height} px; use .png or .tif")
    size_um = (pixel_size_um, pixel_size_y_um or pixel_size_um) if pixel_size_um else None
    check_writable(out)
    remove_stale_partials(out)
    spool_paths = [partial_path(out, f"level{k}") for k in range(1, MAX_LEVELS)]
    with committed(out, spool_paths) as part:
        if kind == "tiff":
            write_tiff(part, bands, height, width, channels, size_um, spool_paths, compression)
        else:
            write_flat(part, kind, bands, height, width, channels, size_um)
    return out


def halve_float(image: np.ndarray) -> np.ndarray:
    """2x2 means of a float32 [h, w] map -> [ceil(h/2), ceil(w/2)] (an odd edge with itself)."""
    h, w = image.shape
    padded = np.pad(image, ((0, h % 2), (0, w % 2)), mode="edge")
    return padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2).mean(axis=(1, 3), dtype=np.float32)


def write_float_tiff(path: str | os.PathLike[str], bands: Iterable[np.ndarray], height: int, width: int,
                     pixel_size_um: float | None = None, pixel_size_y_um: float | None = None,
                     compression: str = "deflate") -> Path:
    """Write float32 [h, w] rows, top to bottom, as a tiled OME-TIFF (``compression``: a key of
    :data:`TIFF_COMPRESSION`) with the same pyramid levels (and pixel size) as :func:`write_image`
    gives an output of that size, atomically; like it, rows pass through (the levels below are
    spooled to disk), so memory follows the rows."""
    out = Path(path)
    check_writable(out)
    remove_stale_partials(out)
    size_um = (pixel_size_um, pixel_size_y_um or pixel_size_um) if pixel_size_um else None
    spool_paths = [partial_path(out, f"level{k}") for k in range(1, MAX_LEVELS)]
    rows = (np.asarray(band, np.float32)[:, :, None] for band in bands)
    with committed(out, spool_paths) as part:
        write_tiff(part, rows, height, width, 1, size_um, spool_paths, compression, dtype=np.float32)
    return out
