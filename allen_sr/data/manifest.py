"""The download folder on disk: ``<id>.jpg`` files, how each is verified, and ``manifest.json``.

``manifest.json`` records id, URL, bytes, sha256, width and height of every finished image and is
rewritten atomically after each one, so a run that is killed keeps what it finished and the next
run skips those images. Temporary files are ``.<name>.<hex>.allen-sr-part`` next to their target.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from allen_sr.data.errors import CorruptImageError, NotAnImageError, snippet
from allen_sr.data.images import MAX_IMAGE_PIXELS, configure_pillow

__all__ = [
    "MANIFEST_NAME", "MANIFEST_FORMAT", "TEMP_SUFFIX", "MIN_PLAUSIBLE_IMAGE_BYTES",
    "DRAFT_DECODE_ABOVE_PIXELS", "ImageCheck", "Manifest", "image_path", "sha256_file",
    "verify_image_file", "read_manifest", "create_temp_file", "fsync_directory",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "allen-sr-download-manifest/1"
TEMP_SUFFIX = ".allen-sr-part"

# A real section JPEG, even a small region at a high downsample, is kilobytes; anything smaller
# is an error stub or an empty answer, not an image.
MIN_PLAUSIBLE_IMAGE_BYTES = 100

# Above this many pixels, verification decodes at 1/8 scale (JPEG draft mode): every byte of the
# entropy-coded data is still read and checked, but memory stays ~2 MB instead of ~400 MB per
# full-resolution image, which matters with several workers.
DRAFT_DECODE_ABOVE_PIXELS = 16_000_000


@dataclass(frozen=True)
class ImageCheck:
    """What verification found out about a file."""

    width: int
    height: int
    format: str
    bytes: int
    sha256: str


def image_path(tmp_dir: str | os.PathLike[str], image_id: int) -> Path:
    """Where the image with this SectionImage id is stored: ``<tmp_dir>/<id>.jpg``."""
    return Path(tmp_dir) / f"{int(image_id)}.jpg"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_image_file(
    path: str | os.PathLike[str],
    *,
    expected_bytes: int | None = None,
    sha256: str | None = None,
    source: str | None = None,
) -> ImageCheck:
    """Check that ``path`` holds a complete, plausible JPEG; return its size, format and hash.

    Raises :class:`CorruptImageError` (truncated, undecodable, implausibly small, wrong length) or
    :class:`NotAnImageError` (Pillow cannot identify it at all; HTML is named as such).
    ``source`` (the URL) is only used in messages. Full-resolution sections open without a
    decompression-bomb warning (:func:`allen_sr.data.images.configure_pillow`).
    """
    path = Path(path)
    where = source or str(path)
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise CorruptImageError(f"{size} bytes instead of {expected_bytes} from {where}")
    if size < MIN_PLAUSIBLE_IMAGE_BYTES:
        raise CorruptImageError(f"only {size} bytes from {where}: too small to be a section image")
    configure_pillow()
    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format = image.format or "unknown"
            if image_format != "JPEG":
                raise NotAnImageError(f"{where} gave a {image_format} image, expected a JPEG")
            if width <= 0 or height <= 0:
                raise CorruptImageError(f"{where} gave an image of {width}x{height} pixels")
            if width * height > DRAFT_DECODE_ABOVE_PIXELS:
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            # load() is what actually decodes: open() only reads the header, so a body cut
            # short would pass unnoticed without it.
            image.load()
    except UnidentifiedImageError:
        with open(path, "rb") as handle:
            head = handle.read(200)
        kind = "an HTML page" if head.lstrip()[:1] == b"<" else "something that is not an image"
        raise NotAnImageError(f"{where} sent {kind} instead of a JPEG: "
                              f"{snippet(head, 120)}") from None
    except Image.DecompressionBombError as error:
        raise CorruptImageError(f"{where}: {error} (limit MAX_IMAGE_PIXELS="
                                f"{MAX_IMAGE_PIXELS})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"{where} gave an incomplete or corrupt JPEG ({error})") from None
    return ImageCheck(width=width, height=height, format=image_format, bytes=size,
                      sha256=sha256 or sha256_file(path))


def read_manifest(tmp_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The manifest's entries by image id (empty if there is no manifest yet)."""
    return Manifest.load_entries(Path(tmp_dir) / MANIFEST_NAME)


def create_temp_file(path: Path) -> BinaryIO:
    """Create ``path`` for writing; fails if it exists (never write into another's file)."""
    # 0o666 lets the umask decide, as a plain open() would; mkstemp would force 0o600.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def fsync_directory(folder: Path) -> None:
    """Make renames in ``folder`` durable; skipped where a folder cannot be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Manifest:
    """``manifest.json``: one entry per finished image, rewritten atomically after each one.

    Safe to share between threads. An unreadable manifest is moved aside (kept for inspection)
    and a new one started; files without an entry are then verified by downloading them again.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST_NAME
        self._lock = threading.Lock()
        self._entries = self.load_entries(self.path, keep_broken=True)

    @staticmethod
    def load_entries(path: Path, keep_broken: bool = False) -> dict[int, dict[str, Any]]:
        """Entries by id; {} when missing or unreadable (moved aside if ``keep_broken``)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {int(key): dict(value) for key, value in data["images"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Writes are atomic, so this is a hand-edited or foreign file.
            if keep_broken:
                aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
                os.replace(path, aside)
                log.warning("%s is not a valid manifest (%s); moved it to %s and starting a new "
                            "one", path, error, aside.name)
            return {}

    def get(self, image_id: int) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(image_id)
            return dict(entry) if entry else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[int(entry["id"])] = entry
            self._write()

    def remove(self, image_id: int) -> None:
        with self._lock:
            if self._entries.pop(image_id, None) is not None:
                self._write()

    def _write(self) -> None:
        document = {
            "format": MANIFEST_FORMAT,
            "images": {str(key): self._entries[key] for key in sorted(self._entries)},
        }
        data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            with create_temp_file(temp) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        fsync_directory(self.path.parent)
