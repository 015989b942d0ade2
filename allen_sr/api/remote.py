"""Output folders given as URLs (``gs://bucket/out``, ``s3://...``, ``file:///...``), through fsspec.

A folder run (`allen-sr upscale --images ... --out_dir URL`, in-process or on a Dask cluster)
writes each output into a local temporary folder of the machine that enlarges it, uploads it
under a temporary name beside its final one and renames it: an output appears under its name
only when complete (on object stores, where a rename is a copy, the final object is created in
one step). Finished outputs are skipped on a rerun as in a local folder; an image interrupted
half-way starts over, as its saved rows stayed on the machine that ran it. Which URLs work
depends on the fsspec backends installed (gcsfs for gs://, s3fs for s3://): a missing one is
named. fsspec is imported only when a URL is used.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from allen_sr.errors import UserError, first_line
from allen_sr.fileio import atomic_write_bytes, remove_orphans
from allen_sr.inference.writers import make_folder

if TYPE_CHECKING:  # pragma: no cover - typing only
    from allen_sr.api.upscaler import Upscaler

__all__ = ["RemoteFile", "is_url", "filesystem", "make_parent", "write_whole", "predict_to", "upload_folder",
           "remove_stale_uploads"]

BACKENDS = "gcsfs for gs://, s3fs for s3://, adlfs for az://"
UPLOADS = "allen-sr-upload-"  # + host-pid-random: a local folder of files on their way to a URL


def remove_stale_uploads() -> None:
    """Remove the upload folders of processes of this machine that no longer run (a Dask worker
    ended by Ctrl-C or killed mid-image cannot remove its own)."""
    remove_orphans(tempfile.gettempdir(), rf"{re.escape(UPLOADS + socket.gethostname())}-(?P<pid>\d+)-.*")


@contextlib.contextmanager
def upload_folder() -> Iterator[Path]:
    """A new local folder for files on their way to a URL, removed on exit (those that processes
    which no longer run left are removed first)."""
    remove_stale_uploads()
    tmp = tempfile.mkdtemp(prefix=f"{UPLOADS}{socket.gethostname()}-{os.getpid()}-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (a folder that fsspec opens), False for a local path."""
    return "://" in os.fspath(path)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of ``url``; UserError naming what to install."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise UserError(f"{url}: writing to a URL needs fsspec (pip install fsspec) and the "
                        f"backend of its scheme ({BACKENDS})") from exc
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UserError(f"{url}: no filesystem for this URL here ({first_line(exc)}); install the fsspec "
                        f"backend of its scheme ({BACKENDS}) where allen-sr runs (with --dask: on "
                        "every worker too)") from exc


@dataclass(frozen=True)
class RemoteFile:
    """One output at a URL; the part of pathlib.Path's interface a folder run uses."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def parent_url(self) -> str:
        return self.url[:-len(self.name)].rstrip("/")

    @property
    def parent(self) -> str:
        """The folder's URL (where Path gives its folder)."""
        return self.parent_url

    def with_name(self, name: str) -> "RemoteFile":
        """The file ``name`` in the same folder."""
        return in_folder(self.parent_url, name)

    @property
    def local_path(self) -> Path | None:
        """The file a ``file://`` (or ``local://``) URL names on this machine, as fsspec resolves it
        when writing (``file://out`` is ``./out``, not a host named out); None for other filesystems."""
        fs, path = filesystem(self.url)  # a UserError naming what to install comes first
        from fsspec.implementations.local import LocalFileSystem

        return Path(path) if isinstance(fs, LocalFileSystem) else None

    def finished(self) -> bool:
        """A non-empty file at this URL (an upload is whole or absent, never empty)."""
        fs, path = filesystem(self.url)
        try:
            info = fs.info(path)  # one request for both: is it a file, and its size
        except FileNotFoundError:
            return False
        return info.get("type") == "file" and int(info.get("size") or 0) > 0

    def read_bytes(self) -> bytes:
        """The file's content; FileNotFoundError where there is none (as Path's)."""
        fs, path = filesystem(self.url)
        return bytes(fs.cat_file(path))

    def write_whole(self, data: bytes) -> None:
        """Put ``data`` at this URL whole (through a local file and :meth:`upload`)."""
        with upload_folder() as tmp:
            local = tmp / self.name
            local.write_bytes(data)
            self.upload(local)

    def unlink(self, missing_ok: bool = False) -> None:
        """Remove the file at this URL (as Path's)."""
        fs, path = filesystem(self.url)
        try:
            fs.rm(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def upload(self, local: Path) -> None:
        """Put the finished file ``local`` at this URL, under a temporary name first."""
        fs, path = filesystem(self.url)
        part = f"{path}.part-{uuid.uuid4().hex[:12]}"
        try:
            fs.put_file(os.fspath(local), part)
            fs.mv(part, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(part)
            raise


def in_folder(out_dir: str, name: str) -> RemoteFile:
    """The output ``name`` in the folder at URL ``out_dir``."""
    return RemoteFile(out_dir.rstrip("/") + "/" + name)


def make_parent(dst: Path | RemoteFile) -> None:
    """Create the folder ``dst`` goes into (on object stores there is nothing to create); OutputError
    naming it when it cannot be created."""
    if isinstance(dst, RemoteFile):
        fs, path = filesystem(dst.parent_url)
        fs.makedirs(path, exist_ok=True)
    else:
        make_folder(dst.parent, "the output folder")


def write_whole(data: bytes, dst: Path | RemoteFile) -> None:
    """Write ``data`` to ``dst`` so that it appears under its name only when complete."""
    if isinstance(dst, RemoteFile):
        dst.write_whole(data)
    else:
        atomic_write_bytes(data, dst)


def predict_to(upscaler: "Upscaler", src: str, dst: Path | RemoteFile, **kwargs: Any) -> dict[str, Any]:
    """``upscaler.predict_file(src, dst, **kwargs)``, through a local file when ``dst`` is a URL;
    its summary. Its log lines name the URLs; those naming the output come once it is uploaded."""
    if not isinstance(dst, RemoteFile):
        return upscaler.predict_file(src, dst, **kwargs)
    from allen_sr.api.outputs import uncertainty_paths

    log, held = kwargs.pop("log", None), []
    with upload_folder() as tmp:
        local = tmp / dst.name

        def relay(text: str) -> None:
            if log is not None:
                text = text.replace(f"{tmp}{os.sep}", f"{dst.parent_url}/")
                if dst.url in text:
                    held.append(text)
                else:
                    log(text)

        summary = upscaler.predict_file(src, local, log=relay, **kwargs)
        dst.upload(local)
        for extra in uncertainty_paths(local):  # written beside it with uncertainty=True
            if extra.exists():
                dst.with_name(extra.name).upload(extra)
    for text in held:
        log(text)  # type: ignore[misc]  # held only with a log
    summary["output"] = dst.url
    if "uncertainty" in summary:
        summary["uncertainty"] = [dst.with_name(Path(p).name).url for p in summary["uncertainty"]]
    return summary
