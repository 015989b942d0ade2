"""Atomic file writers shared by the pipeline.

Results (metrics JSON/CSV, PNGs) are often read while a job is still running, or by a job that
was interrupted; a reader must never see a half-written file. Every writer here writes a temporary
file in the destination folder (so the final rename stays on one filesystem) and then moves it into
place with ``os.replace``, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from allen_sr.errors import InvalidInputError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_output_folder", "folder_trouble", "pid_alive",
           "remove_orphans", "remove_stale_temp_files", "write_json_atomic"]


def folder_trouble(folder: str | os.PathLike[str]) -> str | None:
    """Why no file can be created in ``folder`` (or, if it is missing, in the nearest folder above it
    that exists), else None: tried with a hidden file, deleted at once, since permission bits do not
    tell for root (/sys), network file systems or read-only mounts."""
    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return "no folder above it exists"
    if not existing.is_dir():
        return f"{existing} is a file"
    probe = existing / f".allen-sr.{os.getpid()}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as exc:
        return f"{existing} is not writable: {exc.strerror or exc}"
    return None


def check_output_folder(path: str | os.PathLike[str], flag: str) -> None:
    """InvalidInputError naming ``flag`` and ``path`` unless the folder ``path`` exists or can be
    created (a file can be created in its nearest existing ancestor, :func:`folder_trouble`): checked
    before any work and without creating anything, so that a file of that name is named at once, not
    in a traceback after the work."""
    folder = Path(path).absolute()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"{flag} {path}: a file of that name exists; pass a folder (created if missing)")
    why = folder_trouble(folder)
    if why:
        raise InvalidInputError(f"{flag} {path}: cannot create or write the folder ({why}); choose another")


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str], durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders; returns the path.

    Either the old content or the complete new content is visible at ``path``, never a prefix.
    The temporary file lives next to ``path`` as ``.<name>.<pid>.<random>.tmp`` and is removed
    if anything fails; one left by a killed process is removed by :func:`remove_stale_temp_files`.
    ``durable=False`` skips the fsync: still atomic for a killed process, but after a crash of
    the machine the file may be empty (for caches whose loss costs only time).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the process umask decide the final permissions, as a plain
    # open() would; tempfile.mkstemp would leave every result readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Without fsync a crash soon after the rename can leave an empty file under the
            # final name on some filesystems (ext4 delayed allocation).
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a write names no file (a full disk): the file it was for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def atomic_write_text(text: str, path: str | os.PathLike[str], encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); returns the path.

    Newlines are written as given (no platform translation), so files are byte-identical
    across operating systems. A character the encoding cannot hold (a file name that is not UTF-8
    keeps its undecodable bytes as surrogates) is written as a backslash escape, ``\\udce9``, not
    refused: the file stays valid text, and JSON reads such an escape back as the same character.
    """
    return atomic_write_bytes(text.encode(encoding, "backslashreplace"), path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically; returns the path.

    ``allow_nan=False``: NaN/Infinity are not JSON, and other tools (jq, browsers) reject them, so a
    non-finite number is a ``ValueError`` here rather than a file nobody else can parse.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(text + "\n", path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a temporary file named after a dead one may be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str | os.PathLike[str], pattern: str) -> list[str]:
    """Delete what processes that no longer run left in ``folder``: each file or folder whose name
    matches the regular expression ``pattern`` in full and whose group ``pid`` names a process that
    has ended (killed: SIGKILL, a power cut); returns the names removed. A missing folder has none."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        found = re.fullmatch(pattern, name)
        if not found or pid_alive(int(found["pid"])):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(name)
    return removed


def remove_stale_temp_files(folder: str | os.PathLike[str], prefix: str) -> list[str]:
    """Delete the temporary files :func:`atomic_write_bytes` left in ``folder`` for names starting
    with ``prefix`` when the process that wrote them is gone; returns the names removed."""
    return remove_orphans(folder, rf"\.{re.escape(prefix)}.*\.(?P<pid>\d+)\.[^.]*\.tmp")
