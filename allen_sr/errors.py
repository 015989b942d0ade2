"""The one exception class for a user's mistake, and its kinds.

A :class:`UserError` says what is wrong with an input (a file, a name, a value, a flag) and what
to do, in the library's words; the command line prints its message in one line and exits with
code 2 (`allen_sr.commands.args.run_command`). Any other exception is a bug, or the machine's
trouble, and keeps its traceback; `allen-sr --debug ...` shows the traceback of a UserError too.
The kinds also derive from the built-in exception a caller would expect, so ``except
ValueError`` keeps working.
"""
from __future__ import annotations

import errno

__all__ = ["UserError", "InvalidInputError", "MissingInputError", "UnsupportedInputError", "first_line",
           "machine_trouble", "DISK_FULL_ERRNOS", "TOO_LARGE_ADVICE", "count"]


class UserError(Exception):
    """An input the user can fix: the message names it and says what to do."""


class InvalidInputError(UserError, ValueError):
    """A value, name, file content or combination of settings that cannot be used."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that is not there (or not what it should be)."""


class UnsupportedInputError(UserError, NotImplementedError):
    """Something valid that allen-sr does not do (a model it cannot decode or export)."""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n noun`` in a message, the noun in the plural unless ``n`` is 1 ("1 tile", "2 tiles")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def first_line(exc: BaseException) -> str:
    """An exception's message in one line, or its type's name when it has none."""
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


# What the machine, not the program, can be out of: the disk (or quota), a file size the file system (FAT32:
# 4 GB) or a ulimit -f allows (EFBIG: with free space left, so not said as a full disk), a writable folder.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MACHINE_ERRNOS = DISK_FULL_ERRNOS | {errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
TOO_LARGE_ADVICE = ("the file system cannot hold a file this large (FAT32: 4 GB at most; or a ulimit -f); write to "
                    "another disk or file system (exFAT, NTFS, ext4), or a smaller output")


def machine_trouble(exc: BaseException) -> str | None:
    """One line for an OSError that a full disk, a quota, a file size limit or a read-only or forbidden folder caused
    (what to do included), else None: anything else is a bug and keeps its traceback."""
    if not isinstance(exc, OSError) or exc.errno not in MACHINE_ERRNOS:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or first_line(exc)
    if "again" in what:  # a message of ours that already says what to do
        return f"{where}{what}"
    fix = ("make room (or choose a folder on another disk)" if exc.errno in DISK_FULL_ERRNOS
           else TOO_LARGE_ADVICE if exc.errno == errno.EFBIG else "choose a folder you can write to")
    return f"{where}{what}; {fix}, then run the same command again"
