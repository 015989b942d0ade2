"""Download Allen section images robustly and resumably (the engine of ``allen-sr download``).

Each image goes to ``<tmp_dir>/<SectionImage id>.jpg`` (named by id, not by list position, so a
different list never overwrites the wrong file). A download streams into a hidden temporary file
in the same folder, is verified (Content-Length, a complete Pillow decode, plausible size), is
fsynced, and only then is renamed onto its final name with ``os.replace``; a half-written image is
never visible under ``<id>.jpg``. The folder's layout and ``manifest.json`` are
:mod:`allen_sr.data.manifest`; the command line is :mod:`allen_sr.commands.download`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
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

from allen_sr.data.allen_api import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, AllenClient
from allen_sr.data.allen_urls import DEFAULT_API_BASE, STOCK_IMAGE_IDS, Region, image_download_url
from allen_sr.data.errors import (
    AllenApiError,
    Cancelled,
    DirectoryBusyError,
    DiskFullError,
    DownloadError,
    GaveUpError,
    ImageNotFoundError,
    NotAnImageError,
    TransientError,
    snippet,
)
from allen_sr.data.manifest import (
    MANIFEST_NAME,
    TEMP_SUFFIX,
    ImageCheck,
    Manifest,
    create_temp_file,
    fsync_directory,
    image_path,
    sha256_file,
    verify_image_file,
)
from allen_sr.data.retry import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RATE,
    DEFAULT_RETRIES,
    RetryPolicy,
    is_retryable_status,
    parse_retry_after,
    retry_call,
)
from allen_sr.errors import InvalidInputError

__all__ = ["DEFAULT_WORKERS", "LOCK_NAME", "DownloadReport", "default_image_ids", "unique_ids",
           "directory_lock", "download_images"]

log = logging.getLogger(__name__)

LOCK_NAME = ".allen-sr-download.lock"
CHUNK_SIZE = 1 << 16
DEFAULT_WORKERS = 4
SNIPPET_BYTES = 120  # of a server's answer quoted in an error message
PROGRESS_LOG_SECONDS = 30.0  # without a progress bar and a terminal: a line of counts at most this often

# Temp files of images (.<id>.jpg.<hex>.allen-sr-part) and of the manifest
# (.manifest.json.<hex>.allen-sr-part): one pattern, so one cleanup covers what a kill leaves.
_TEMP_NAME = re.compile(r"^\.(\d+\.jpg|" + re.escape(MANIFEST_NAME) + r")\.[0-9a-f]+"
                        + re.escape(TEMP_SUFFIX) + r"$")


def default_image_ids() -> list[int]:
    """The 100 SectionImage ids of the stock tensor2tensor Allen problem (the default list)."""
    return list(STOCK_IMAGE_IDS)


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
    disk_full: str = ""  # the message of the full disk that stopped the run, "" if none did

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
            lines.append("Run the same command again to retry the failed images; finished images are skipped.")
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
    max_backoff: float = DEFAULT_MAX_BACKOFF,
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
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise InvalidInputError(f"retries must be >= 0, got {retries}")
    ids = unique_ids(int(image_id) for image_id in image_ids)
    # Validate the parameters once, before any thread starts.
    image_download_url(api_base, 0, downsample=downsample, quality=quality, region=region)
    folder = Path(tmp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _warn_if_plain_http(api_base)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    with directory_lock(folder):
        _remove_stale_temp_files(folder)
        manifest = Manifest(folder)
        policy = RetryPolicy(attempts=retries + 1, backoff=backoff, max_backoff=max_backoff)
        with AllenClient(api_base, timeout=timeout, retry=policy, rate=rate, pool_size=workers,
                         stop_event=stop) as client:
            run = _DownloadRun(client, folder, manifest, downsample=downsample, quality=quality,
                               region=region)
            report = run.run(ids, workers=workers, progress=progress)
    report.seconds = time.monotonic() - started
    return report


def unique_ids(ids: Iterable[int]) -> list[int]:
    """``ids`` without repeats, in first-seen order (two workers on one id would race)."""
    seen: set[int] = set()
    return [image_id for image_id in ids if not (image_id in seen or seen.add(image_id))]


def _warn_if_plain_http(api_base: str) -> None:
    host = api_base.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if api_base.startswith("http://") and host not in {"127.0.0.1", "localhost", "[::1]"}:
        log.warning("%s is plain HTTP: downloads are not authenticated; prefer https://", api_base)


@contextlib.contextmanager
def directory_lock(folder: Path) -> Iterator[None]:
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


class _DownloadRun:
    """The state one :func:`download_images` call shares between its worker threads."""

    def __init__(self, client: AllenClient, folder: Path, manifest: Manifest, *,
                 downsample: int | None, quality: int | None, region: Region | None) -> None:
        self.client = client
        self.folder = folder
        self.manifest = manifest
        downsample = downsample or None  # 0 halves nothing: full resolution, as without it (same manifest entries)
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

        report = DownloadReport(tmp_dir=self.folder, api_base=self.client.api_base, requested=list(ids))
        bar = tqdm(total=len(ids), unit="img", desc="allen-sr download", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="allen-download")
        logged = time.monotonic()
        try:
            futures = {pool.submit(self.process, image_id): image_id for image_id in ids}
            for future in as_completed(futures):
                self._collect(futures[future], future, report)
                counts = dict(new=len(report.downloaded), kept=len(report.skipped), failed=len(report.failed))
                bar.set_postfix(**counts, refresh=False)  # drawn by update
                bar.update(1)
                if not progress and not sys.stderr.isatty() and time.monotonic() - logged >= PROGRESS_LOG_SECONDS:
                    logged = time.monotonic()  # a log file or pipe sees the download move, not only its summary
                    log.info("allen-sr download: %d of %d images done (%d new, %d kept, %d failed)",
                             sum(counts.values()), len(ids), *counts.values())
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
            report.disk_full = report.disk_full or str(error)
        except GaveUpError as error:
            report.failed[image_id] = f"image {image_id}: {error}"
        except AllenApiError as error:
            message = str(error)
            if not message.startswith(f"image {image_id}"):
                message = f"image {image_id}: {message}"
            report.failed[image_id] = message
        except Exception as error:  # one bad image must never stop the others
            log.exception("image %d: unexpected error", image_id)
            report.failed[image_id] = f"image {image_id}: unexpected {type(error).__name__}: {error}"
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
        if final.is_dir():
            raise DownloadError(f"image {image_id}: {final} is a folder, not an image: move or rename it, then run "
                                "the same command again")
        problem = self._existing_problem(image_id, final)
        if problem is None:
            return "skipped"
        entry = self.manifest.get(image_id)
        if final.exists() and entry is not None and entry.get("params") == self.params:
            # Not what its manifest entry says (damaged): never leave it for the tiler to read.
            log.info("image %d: %s; downloading it again", image_id, problem)
            try:
                final.unlink()
            except OSError as error:
                raise DownloadError(f"image {image_id}: cannot remove the unverified {final} "
                                    f"({error.strerror}); remove it by hand") from error
        elif final.exists():
            # Whole (written under a temporary name, then renamed) but of other settings, or from
            # elsewhere: kept, and replaced in one step only once its successor is verified.
            log.info("image %d: %s; downloading it again (kept until the new one is verified)", image_id, problem)
        if not final.exists():
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
            return f"{final.name} was downloaded with {entry.get('params')}, this run asks {self.params}"
        if entry.get("bytes") != size:
            return f"{final.name} has {size} bytes, the manifest says {entry.get('bytes')}"
        if entry.get("sha256") != sha256_file(final):
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
                                    f"{url}: {snippet(_read_head(response), SNIPPET_BYTES)}")
            content_type = response.headers.get("Content-Type", "")
            if _is_textual(content_type):
                head = _read_head(response)
                kind = ("an HTML page" if "html" in content_type.lower()
                        or head.lstrip()[:1] == b"<" else "text")
                raise NotAnImageError(f"{url} answered 200 with {kind} (Content-Type: "
                                      f"{content_type}) instead of an image: {snippet(head, SNIPPET_BYTES)}")
            return self._stream_to_final(image_id, url, response, final)

    def _stream_to_final(self, image_id: int, url: str, response: requests.Response,
                         final: Path) -> ImageCheck:
        expected = _content_length(response)
        temp = self.folder / f".{image_id}.jpg.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            try:
                out = create_temp_file(temp)
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
                raise TransientError(f"truncated answer: {size} of {expected} bytes (Content-Length) from {url}")
            check = verify_image_file(temp, sha256=sha256, source=url)
            os.replace(temp, final)
            fsync_directory(self.folder)
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
            raise TransientError(f"connection lost after {size}{of} bytes from {url} ({_short(error)})") from error
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


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."

