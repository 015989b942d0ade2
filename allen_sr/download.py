"""Download Allen section images robustly and resumably: ``allen-sr download``.

Each image goes to ``<tmp_dir>/<SectionImage id>.jpg`` (named by id, not by list position, so a
different list never overwrites the wrong file). A download streams into a hidden temporary file
in the same folder, is verified (Content-Length, a complete Pillow decode, plausible size), is
fsynced, and only then is renamed onto its final name with ``os.replace``; a half-written image is
never visible under ``<id>.jpg``. ``manifest.json`` records id, URL, bytes, sha256, width and
height of every finished image and is rewritten atomically after each one, so a run that is killed
keeps what it finished and the next run skips those images without any HTTP request.

Python callers use :func:`download_images`; the command line uses :func:`download_main`.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

import requests
import urllib3
from PIL import Image, UnidentifiedImageError

from allen_sr.allen_api import (
    DEFAULT_API_BASE,
    DEFAULT_BACKOFF,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RATE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    STOCK_IMAGE_IDS,
    AllenApiError,
    AllenClient,
    Cancelled,
    GaveUpError,
    Region,
    RetryPolicy,
    TransientError,
    image_download_url,
    is_retryable_status,
    parse_retry_after,
    retry_call,
)

__all__ = [
    "ALLEN_MAX_IMAGE_PIXELS",
    "MIN_PLAUSIBLE_IMAGE_BYTES",
    "MANIFEST_NAME",
    "DEFAULT_WORKERS",
    "DownloadError",
    "ImageNotFoundError",
    "NotAnImageError",
    "CorruptImageError",
    "DiskFullError",
    "DirectoryBusyError",
    "ImageCheck",
    "DownloadReport",
    "configure_pillow",
    "default_image_ids",
    "image_path",
    "read_manifest",
    "verify_image_file",
    "download_images",
    "build_parser",
    "download_main",
]

log = logging.getLogger(__name__)

# Pillow refuses to open images above 2 x MAX_IMAGE_PIXELS (a "decompression bomb") and warns above
# MAX_IMAGE_PIXELS; its default (~89 MP) is below a full-resolution Allen section (~15000 x 8500 px
# = ~130 MP). 250 MP, about twice a full section, opens every real section without a warning,
# while a header claiming more than 500 MP (the error threshold) is far more likely corrupt than a
# section. It is the same value allen_sr/tiles.py sets, so whichever module sets Pillow's
# process-wide limit last, the limit is the same. configure_pillow() applies it.
ALLEN_MAX_IMAGE_PIXELS = 250_000_000

# A real section JPEG, even a small region at a high downsample, is kilobytes; anything smaller
# is an error stub or an empty answer, not an image.
MIN_PLAUSIBLE_IMAGE_BYTES = 100

# Above this many pixels, verification decodes at 1/8 scale (JPEG draft mode): every byte of the
# entropy-coded data is still read and checked, but memory stays ~2 MB instead of ~400 MB per
# full-resolution image, which matters with several workers.
DRAFT_DECODE_ABOVE_PIXELS = 16_000_000

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "allen-sr-download-manifest/1"
LOCK_NAME = ".allen-sr-download.lock"
TEMP_SUFFIX = ".allen-sr-part"
CHUNK_SIZE = 1 << 16
DEFAULT_WORKERS = 4

# Temp files of images (.<id>.jpg.<hex>.allen-sr-part) and of the manifest
# (.manifest.json.<hex>.allen-sr-part): one pattern, so one cleanup covers what a kill leaves.
_TEMP_NAME = re.compile(r"^\.(\d+\.jpg|" + re.escape(MANIFEST_NAME) + r")\.[0-9a-f]+"
                        + re.escape(TEMP_SUFFIX) + r"$")


# --------------------------------------------------------------------------------------------
# Errors


class DownloadError(AllenApiError):
    """One image could not be downloaded; the message names the image and what to do."""


class ImageNotFoundError(DownloadError):
    """The API answered 404 for an image id."""


class DiskFullError(DownloadError):
    """Writing failed with ENOSPC/EDQUOT; the run stops starting new downloads."""


class DirectoryBusyError(DownloadError):
    """Another download is already writing into the same folder."""


class NotAnImageError(TransientError):
    """The answer was not an image (e.g. an HTML page with status 200). Retried: it is often a
    maintenance or proxy page that goes away."""


class CorruptImageError(TransientError):
    """The bytes arrived but do not form a complete, plausible image. Retried."""


# --------------------------------------------------------------------------------------------
# Verification and the manifest


@dataclass(frozen=True)
class ImageCheck:
    """What verification found out about a file."""

    width: int
    height: int
    format: str
    bytes: int
    sha256: str


def configure_pillow() -> None:
    """Set Pillow's decompression-bomb limit to :data:`ALLEN_MAX_IMAGE_PIXELS` (process-wide)."""
    Image.MAX_IMAGE_PIXELS = ALLEN_MAX_IMAGE_PIXELS


def default_image_ids() -> list[int]:
    """The 100 SectionImage ids of the stock tensor2tensor Allen problem (the default list)."""
    return list(STOCK_IMAGE_IDS)


def image_path(tmp_dir: str | os.PathLike[str], image_id: int) -> Path:
    """Where the image with this SectionImage id is stored: ``<tmp_dir>/<id>.jpg``."""
    return Path(tmp_dir) / f"{int(image_id)}.jpg"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    ``source`` (the URL) is only used in messages.
    """
    path = Path(path)
    where = source or str(path)
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise CorruptImageError(f"{size} bytes instead of {expected_bytes} from {where}")
    if size < MIN_PLAUSIBLE_IMAGE_BYTES:
        raise CorruptImageError(f"only {size} bytes from {where}: too small to be a section image")
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
                              f"{_snippet(head)}") from None
    except Image.DecompressionBombError as error:
        raise CorruptImageError(f"{where}: {error} (limit ALLEN_MAX_IMAGE_PIXELS="
                                f"{ALLEN_MAX_IMAGE_PIXELS})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"{where} gave an incomplete or corrupt JPEG ({error})") from None
    return ImageCheck(width=width, height=height, format=image_format, bytes=size,
                      sha256=sha256 or _sha256_file(path))


def read_manifest(tmp_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The manifest's entries by image id (empty if there is no manifest yet)."""
    return _Manifest.load_entries(Path(tmp_dir) / MANIFEST_NAME)


class _Manifest:
    """``manifest.json``: one entry per finished image, rewritten atomically after each one."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST_NAME
        self._lock = threading.Lock()
        self._entries = self.load_entries(self.path, keep_broken=True)

    @staticmethod
    def load_entries(path: Path, keep_broken: bool = False) -> dict[int, dict[str, Any]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {int(key): dict(value) for key, value in data["images"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Writes are atomic, so this is a hand-edited or foreign file. Keep it for inspection
            # and start over: files without an entry are verified by downloading them again.
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
            with _create_temp_file(temp) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        _fsync_directory(self.path.parent)


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class DownloadReport:
    """What a :func:`download_images` run did. ``ok`` is true when every image is present."""

    tmp_dir: Path
    api_base: str
    requested: list[int]
    downloaded: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    bytes_downloaded: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every requested image is on disk and verified."""
        return not self.failed and len(self.downloaded) + len(self.skipped) == len(self.requested)

    @property
    def present(self) -> list[int]:
        """Ids now on disk (downloaded or skipped), in the requested order."""
        done = set(self.downloaded) | set(self.skipped)
        return [image_id for image_id in self.requested if image_id in done]

    @property
    def missing(self) -> list[int]:
        """Ids that are not on disk after the run, in the requested order."""
        done = set(self.downloaded) | set(self.skipped)
        return [image_id for image_id in self.requested if image_id not in done]

    def paths(self) -> list[Path]:
        """Paths of the images on disk, in the requested order."""
        return [image_path(self.tmp_dir, image_id) for image_id in self.present]

    def summary(self) -> str:
        """A few lines for people: counts, then one line per failure with its reason."""
        lines = [
            f"{len(self.present)} of {len(self.requested)} images present in {self.tmp_dir}: "
            f"{len(self.downloaded)} downloaded ({_human_size(self.bytes_downloaded)} in "
            f"{self.seconds:.1f} s), "
            f"{len(self.skipped)} skipped as already present, {len(self.failed)} failed."
        ]
        order = {image_id: index for index, image_id in enumerate(self.requested)}
        for image_id in sorted(self.failed, key=lambda key: order.get(key, 0)):
            lines.append(f"  failed: {self.failed[image_id]}")
        if self.failed:
            lines.append("Run the same command again to retry the failed images; finished images "
                         "are skipped.")
        return "\n".join(lines)


def _human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------------------------
# Downloading


def download_images(
    image_ids: Iterable[int],
    tmp_dir: str | os.PathLike[str],
    *,
    api_base: str = DEFAULT_API_BASE,
    downsample: int | None = None,
    quality: int | None = None,
    region: Region | None = None,
    workers: int = DEFAULT_WORKERS,
    rate: float | None = DEFAULT_RATE,
    timeout: float | tuple[float, float] = (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT),
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = 60.0,
    progress: bool = False,
    stop_event: threading.Event | None = None,
) -> DownloadReport:
    """Download section images into ``tmp_dir`` as ``<id>.jpg``; never raises for one bad image.

    Images already there with a matching manifest entry (same size, sha256 and download
    parameters) are skipped without any HTTP request; anything else under ``<id>.jpg`` is fetched
    again. ``workers`` threads share one session and one ``rate`` limit (requests/s, ``None`` for
    none). Each image gets ``retries`` retries after its first attempt, with exponential backoff
    from ``backoff`` seconds. ``timeout`` is seconds or ``(connect, read)``. Returns a
    :class:`DownloadReport`; check ``report.ok``. Raises :class:`DirectoryBusyError` if another
    download is writing into ``tmp_dir``, and ``KeyboardInterrupt`` after cleaning up.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    ids = _unique(int(image_id) for image_id in image_ids)
    # Validate the parameters once, before any thread starts.
    image_download_url(api_base, 0, downsample=downsample, quality=quality, region=region)
    folder = Path(tmp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    configure_pillow()
    _warn_if_plain_http(api_base)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    with _directory_lock(folder):
        _remove_stale_temp_files(folder)
        manifest = _Manifest(folder)
        policy = RetryPolicy(attempts=retries + 1, backoff=backoff, max_backoff=max_backoff)
        with AllenClient(api_base, timeout=timeout, retry=policy, rate=rate, pool_size=workers,
                         stop_event=stop) as client:
            run = _DownloadRun(client, folder, manifest, downsample=downsample, quality=quality,
                               region=region)
            report = run.run(ids, workers=workers, progress=progress)
    report.seconds = time.monotonic() - started
    return report


def _unique(ids: Iterable[int]) -> list[int]:
    # Two workers on the same id would race for the same final file.
    seen: set[int] = set()
    return [image_id for image_id in ids if not (image_id in seen or seen.add(image_id))]


def _warn_if_plain_http(api_base: str) -> None:
    host = api_base.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if api_base.startswith("http://") and host not in {"127.0.0.1", "localhost", "[::1]"}:
        log.warning("%s is plain HTTP: downloads are not authenticated; prefer https://", api_base)


@contextlib.contextmanager
def _directory_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` so two runs never share a manifest or temp files.

    flock is released by the kernel when the process dies, so a killed run never leaves a stale
    lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent runs are the user's responsibility.
        yield
        return
    handle = open(folder / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusyError(f"another allen-sr download is writing into {folder}; wait "
                                     f"for it to finish or use another --tmp_dir") from None
        yield
    finally:
        handle.close()


def _remove_stale_temp_files(folder: Path) -> None:
    # Only a killed run leaves these (failures clean up after themselves); the directory lock
    # guarantees no live run owns them.
    for path in folder.iterdir():
        if _TEMP_NAME.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("removed %s left over by an interrupted run", path.name)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip there.
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


class _DownloadRun:
    """The state one :func:`download_images` call shares between its worker threads."""

    def __init__(self, client: AllenClient, folder: Path, manifest: _Manifest, *,
                 downsample: int | None, quality: int | None, region: Region | None) -> None:
        self.client = client
        self.folder = folder
        self.manifest = manifest
        self.params: dict[str, Any] = {"downsample": downsample, "quality": quality,
                                       "region": None if region is None else asdict(region)}
        self.downsample, self.quality, self.region = downsample, quality, region
        self.stop = client.stop_event
        self.stop_reason = "the run was stopped"
        self._bytes_lock = threading.Lock()
        self.bytes_downloaded = 0

    # ---- the whole run --------------------------------------------------------------------

    def run(self, ids: Sequence[int], *, workers: int, progress: bool) -> DownloadReport:
        from tqdm import tqdm

        report = DownloadReport(tmp_dir=self.folder, api_base=self.client.api_base,
                                requested=list(ids))
        bar = tqdm(total=len(ids), unit="img", desc="allen-sr download", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="allen-download")
        try:
            futures = {pool.submit(self.process, image_id): image_id for image_id in ids}
            for future in as_completed(futures):
                self._collect(futures[future], future, report)
                bar.update(1)
                bar.set_postfix(new=len(report.downloaded), kept=len(report.skipped),
                                failed=len(report.failed), refresh=False)
        except KeyboardInterrupt:
            self.halt("interrupted")
            raise
        finally:
            # On Ctrl-C the workers see the stop event, delete their temp files and return.
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            report.bytes_downloaded = self.bytes_downloaded
        return report

    def _collect(self, image_id: int, future: Any, report: DownloadReport) -> None:
        try:
            outcome = future.result()
        except Cancelled:
            report.failed[image_id] = f"image {image_id}: not downloaded: {self.stop_reason}"
        except DiskFullError as error:
            report.failed[image_id] = str(error)
        except GaveUpError as error:
            report.failed[image_id] = f"image {image_id}: {error}"
        except AllenApiError as error:
            message = str(error)
            if not message.startswith(f"image {image_id}"):
                message = f"image {image_id}: {message}"
            report.failed[image_id] = message
        except Exception as error:  # one bad image must never stop the others
            log.exception("image %d: unexpected error", image_id)
            report.failed[image_id] = (f"image {image_id}: unexpected "
                                       f"{type(error).__name__}: {error}")
        else:
            (report.skipped if outcome == "skipped" else report.downloaded).append(image_id)

    def halt(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    # ---- one image ------------------------------------------------------------------------

    def process(self, image_id: int) -> str:
        """Make ``<id>.jpg`` present and verified; return ``"skipped"`` or ``"downloaded"``."""
        try:
            return self._process(image_id)
        except DiskFullError:
            # Stop here, in the worker, so no other worker starts filling the disk again first.
            self.halt(f"stopped after a full disk (image {image_id})")
            raise

    def _process(self, image_id: int) -> str:
        if self.stop.is_set():
            raise Cancelled(self.stop_reason)
        final = image_path(self.folder, image_id)
        problem = self._existing_problem(image_id, final)
        if problem is None:
            return "skipped"
        if final.exists():
            # Whatever is there is not known to be good; never leave it for the tiler to read.
            log.info("image %d: %s; downloading it again", image_id, problem)
            try:
                final.unlink()
            except OSError as error:
                raise DownloadError(f"image {image_id}: cannot remove the unverified {final} "
                                    f"({error.strerror}); remove it by hand") from error
        self.manifest.remove(image_id)
        url = image_download_url(self.client.api_base, image_id, downsample=self.downsample,
                                 quality=self.quality, region=self.region)
        check = retry_call(lambda _: self._attempt(image_id, url, final), self.client.retry,
                           stop_event=self.stop, describe=f"image {image_id}")
        entry = {
            "id": image_id, "url": url, "bytes": check.bytes, "sha256": check.sha256,
            "width": check.width, "height": check.height, "format": check.format,
            "params": self.params,
            "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            self.manifest.record(entry)
        except OSError as error:
            raise self._write_error(image_id, self.manifest.path, error) from error
        return "downloaded"

    def _existing_problem(self, image_id: int, final: Path) -> str | None:
        """``None`` if ``final`` is verified by the manifest, else why it must be fetched."""
        entry = self.manifest.get(image_id)
        try:
            size = final.stat().st_size
        except FileNotFoundError:
            return "not downloaded yet"
        if entry is None:
            return f"{final.name} has no manifest entry"
        if entry.get("params") != self.params:
            return (f"{final.name} was downloaded with {entry.get('params')}, this run asks "
                    f"{self.params}")
        if entry.get("bytes") != size:
            return f"{final.name} has {size} bytes, the manifest says {entry.get('bytes')}"
        if entry.get("sha256") != _sha256_file(final):
            return f"{final.name} does not match its sha256 in the manifest"
        return None

    def _attempt(self, image_id: int, url: str, final: Path) -> ImageCheck:
        response = self.client.send(url, stream=True)
        with response:
            status = response.status_code
            if status == 404:
                raise ImageNotFoundError(
                    f"image {image_id} not found on {self.client.api_base} (404): check the id")
            if is_retryable_status(status):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise TransientError(f"HTTP {status} {response.reason} from {url}",
                                     retry_after=retry_after)
            if status != 200:
                raise DownloadError(f"image {image_id}: HTTP {status} {response.reason} from "
                                    f"{url}: {_snippet(_read_head(response))}")
            content_type = response.headers.get("Content-Type", "")
            if _is_textual(content_type):
                head = _read_head(response)
                kind = ("an HTML page" if "html" in content_type.lower()
                        or head.lstrip()[:1] == b"<" else "text")
                raise NotAnImageError(f"{url} answered 200 with {kind} (Content-Type: "
                                      f"{content_type}) instead of an image: {_snippet(head)}")
            return self._stream_to_final(image_id, url, response, final)

    def _stream_to_final(self, image_id: int, url: str, response: requests.Response,
                         final: Path) -> ImageCheck:
        expected = _content_length(response)
        temp = self.folder / f".{image_id}.jpg.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            try:
                out = _create_temp_file(temp)
            except OSError as error:
                raise self._write_error(image_id, temp, error) from error
            try:
                size, sha256 = self._receive(image_id, url, response, out, temp, expected)
            except BaseException:
                # close() flushes again; on a full disk that fails too and would hide the
                # DiskFullError that explains what happened.
                with contextlib.suppress(OSError):
                    out.close()
                raise
            try:
                out.close()
            except OSError as error:
                raise self._write_error(image_id, temp, error, size) from error
            if expected is not None and size != expected:
                raise TransientError(f"truncated answer: {size} of {expected} bytes "
                                     f"(Content-Length) from {url}")
            check = verify_image_file(temp, sha256=sha256, source=url)
            os.replace(temp, final)
            _fsync_directory(self.folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        with self._bytes_lock:
            self.bytes_downloaded += size
        return check

    def _receive(self, image_id: int, url: str, response: requests.Response, out: BinaryIO,
                 temp: Path, expected: int | None) -> tuple[int, str]:
        """Copy the body into ``out`` and make it durable; return its size and sha256."""
        size = 0
        digest = hashlib.sha256()
        try:
            for chunk in response.iter_content(CHUNK_SIZE):
                if self.stop.is_set():
                    raise Cancelled(self.stop_reason)
                try:
                    out.write(chunk)
                except OSError as error:
                    raise self._write_error(image_id, temp, error, size) from error
                digest.update(chunk)
                size += len(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            of = f" of {expected}" if expected is not None else ""
            raise TransientError(f"connection lost after {size}{of} bytes from {url} "
                                 f"({_short(error)})") from error
        try:
            out.flush()
            # Without fsync a crash right after the rename can leave an empty or partial file
            # under the final name (ext4 delayed allocation).
            os.fsync(out.fileno())
        except OSError as error:
            raise self._write_error(image_id, temp, error, size) from error
        return size, digest.hexdigest()

    def _write_error(self, image_id: int, path: Path, error: OSError,
                     written: int = 0) -> DownloadError:
        if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return DiskFullError(
                f"image {image_id}: no space left on the device holding {self.folder} "
                f"({error.strerror}, after {written} bytes of this image): free some disk space "
                f"or choose another --tmp_dir, then run the same command again; finished images "
                f"are kept and will be skipped")
        return DownloadError(f"image {image_id}: cannot write {path}: {error}")


def _create_temp_file(path: Path) -> BinaryIO:
    # O_EXCL: never write into a file some other process owns. 0o666 lets the umask decide, as
    # a plain open() would; mkstemp would force 0o600.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def _content_length(response: requests.Response) -> int | None:
    # With a Content-Encoding the header counts encoded bytes, but iter_content yields decoded
    # ones, so the two cannot be compared (urllib3 still checks the encoded length itself).
    if response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None
    try:
        value = int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


def _is_textual(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or kind in {"application/json", "application/xml",
                                                "application/xhtml+xml"}


def _read_head(response: requests.Response, limit: int = 300) -> bytes:
    try:
        return next(response.iter_content(limit), b"")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        return b""


def _snippet(content: bytes, limit: int = 120) -> str:
    text = " ".join(content[:limit].decode("utf-8", errors="replace").split())
    return repr(text + ("..." if len(content) > limit else ""))


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


# --------------------------------------------------------------------------------------------
# Command line


def _parse_id_list(text: str, what: str) -> list[int]:
    ids = []
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        if not re.fullmatch(r"[0-9]+", token):
            raise ValueError(f"{what}: {token!r} is not a numeric id")
        ids.append(int(token))
    return ids


def _read_id_file(path: str) -> list[int]:
    ids: list[int] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"--image_ids_file: cannot read {path}: {error.strerror}") from None
    for number, line in enumerate(lines, start=1):
        ids += _parse_id_list(line.split("#", 1)[0], f"{path} line {number}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    """The ``allen-sr download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="allen-sr download",
        description="Download Allen Brain Atlas section images as <id>.jpg into --tmp_dir, "
                    "resumably (a manifest.json records what is finished and verified).",
        epilog="Without an image selection the 100 section images of the stock tensor2tensor "
               "Allen problem are downloaded. Images (c) Allen Institute; cite the image URLs "
               "recorded in manifest.json.",
    )
    parser.add_argument("--tmp_dir", required=True,
                        help="folder for <id>.jpg files and manifest.json")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image_ids", help="comma-separated SectionImage ids, e.g. 1,2,3")
    source.add_argument("--image_ids_file",
                        help="file of SectionImage ids (comma/whitespace separated, '#' comments)")
    source.add_argument("--data_set_ids", help="comma-separated SectionDataSet ids: download all "
                                               "their section images")
    filters = parser.add_argument_group("listing by filters (instead of ids)")
    filters.add_argument("--product", help="SectionDataSet product abbreviation, e.g. Mouse "
                                           "(default Mouse when --plane is given)")
    filters.add_argument("--plane", help="plane of section name, e.g. coronal or sagittal")
    filters.add_argument("--max_data_sets", type=int,
                         help="use at most this many matching data sets (there are thousands)")
    parser.add_argument("--max_images", type=int, help="download at most this many images")
    parser.add_argument("--list_only", action="store_true",
                        help="print the selected image ids, one per line, and exit")
    image = parser.add_argument_group("what to fetch per image")
    image.add_argument("--downsample", type=int,
                       help="halve width and height this many times (default: full resolution)")
    image.add_argument("--quality", type=int, help="JPEG quality 0-100 asked of the server")
    for name, meaning in (("left", "full-resolution x of the region"),
                          ("top", "full-resolution y of the region"),
                          ("width", "region width at the downsampled level"),
                          ("height", "region height at the downsampled level")):
        image.add_argument(f"--{name}", type=int, help=f"{meaning} (region download)")
    net = parser.add_argument_group("network")
    net.add_argument("--api_base", default=DEFAULT_API_BASE,
                     help=f"API root (default {DEFAULT_API_BASE}; certificates are verified)")
    net.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                     help=f"parallel downloads (default {DEFAULT_WORKERS})")
    net.add_argument("--rate", type=float, default=DEFAULT_RATE,
                     help=f"at most this many requests per second over all workers "
                          f"(default {DEFAULT_RATE:g}; 0 = no limit)")
    net.add_argument("--timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                     help=f"read timeout in seconds: longest silence from the server "
                          f"(default {DEFAULT_READ_TIMEOUT:g})")
    net.add_argument("--connect_timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                     help=f"connect timeout in seconds (default {DEFAULT_CONNECT_TIMEOUT:g})")
    net.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                     help=f"retries per image after the first attempt (default {DEFAULT_RETRIES})")
    net.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF,
                     help=f"first retry delay in seconds, doubling each time, with jitter "
                          f"(default {DEFAULT_BACKOFF:g})")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and the summary (no retry notices)")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Region | None:
    by_id = args.image_ids or args.image_ids_file or args.data_set_ids
    if (args.product or args.plane) and by_id:
        parser.error("--product/--plane select images by filter; do not combine them with "
                     "--image_ids, --image_ids_file or --data_set_ids")
    if args.max_data_sets is not None and not (args.product or args.plane):
        parser.error("--max_data_sets only applies to --product/--plane listing")
    minimums = {"workers": 1, "max_images": 1, "max_data_sets": 1, "retries": 0, "downsample": 0}
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")
    if args.quality is not None and not 0 <= args.quality <= 100:
        parser.error(f"--quality must be within 0-100, got {args.quality}")
    for name in ("timeout", "connect_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if args.rate < 0 or args.backoff < 0:
        parser.error("--rate and --backoff must be >= 0")
    if not re.match(r"^https?://[^/\s]+", args.api_base):
        parser.error(f"--api_base must look like https://host[:port], got {args.api_base!r}")
    corners = [args.left, args.top, args.width, args.height]
    if any(value is not None for value in corners):
        if args.width is None or args.height is None:
            parser.error("a region needs at least --width and --height (--left/--top default 0)")
        try:
            return Region(args.left or 0, args.top or 0, args.width, args.height)
        except ValueError as error:
            parser.error(str(error))
    return None


def _select_ids(args: argparse.Namespace, client: AllenClient) -> list[int]:
    if args.image_ids:
        ids = _parse_id_list(args.image_ids, "--image_ids")
    elif args.image_ids_file:
        ids = _read_id_file(args.image_ids_file)
    elif args.data_set_ids:
        data_sets = _parse_id_list(args.data_set_ids, "--data_set_ids")
        ids = [int(row["id"]) for row in client.list_section_images(data_sets)]
        if not ids:
            raise AllenApiError(f"no section images found for data sets {args.data_set_ids} on "
                                f"{client.api_base}")
    elif args.product or args.plane:
        ids = client.list_image_ids_by_filter(product=args.product or "Mouse", plane=args.plane,
                                              max_data_sets=args.max_data_sets,
                                              max_images=args.max_images)
        if not ids:
            raise AllenApiError(f"no section images match product={args.product or 'Mouse'!r} "
                                f"plane={args.plane!r} on {client.api_base}")
    else:
        ids = default_image_ids()
    ids = _unique(ids)
    return ids if args.max_images is None else ids[: args.max_images]


def download_main(argv: list[str] | None = None) -> int:
    """``allen-sr download``: returns 0 when every image is present, 1 otherwise, 2 on bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        region = _validate(parser, args)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    _configure_logging(args.quiet)
    timeout = (args.connect_timeout, args.timeout)
    rate = args.rate or None
    policy = RetryPolicy(attempts=args.retries + 1, backoff=args.backoff)
    try:
        with AllenClient(args.api_base, timeout=timeout, retry=policy, rate=rate) as client:
            ids = _select_ids(args, client)
    except ValueError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 2
    except AllenApiError as error:
        print(f"allen-sr download: error: listing images failed: {error}", file=sys.stderr)
        return 1
    if args.list_only:
        print("\n".join(str(image_id) for image_id in ids))
        return 0
    # A bar drawn into a log file is just noise; draw it only for a person at a terminal.
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        with _tqdm_logging(progress):
            report = download_images(
                ids, args.tmp_dir, api_base=args.api_base, downsample=args.downsample,
                quality=args.quality, region=region, workers=args.workers, rate=rate,
                timeout=timeout, retries=args.retries, backoff=args.backoff, progress=progress)
    except DirectoryBusyError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("allen-sr download: interrupted; run the same command again to resume (finished "
              "images are kept)", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("allen_sr")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # Leave logging alone if the application (e.g. the allen-sr CLI) already set it up.
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


@contextlib.contextmanager
def _tqdm_logging(enabled: bool) -> Iterator[None]:
    # Log lines written while a bar is drawn would tear it; route them through tqdm.write.
    if not enabled:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("allen_sr"), logging.getLogger()]):
        yield


if __name__ == "__main__":
    sys.exit(download_main())
