"""The errors of the data side (Allen API, downloads) and how they quote what a server sent.

Every message names the input it is about (URL, image id, file) and, where it helps, what to do.
"""
from __future__ import annotations

from allen_sr.errors import UserError

__all__ = [
    "ImageSkipped",
    "AllenApiError", "RmaQueryError", "TransientError", "GaveUpError", "Cancelled",
    "DownloadError", "ImageNotFoundError", "DiskFullError", "DirectoryBusyError",
    "NotAnImageError", "CorruptImageError", "snippet",
]


class ImageSkipped(UserError):
    """An input file that cannot be used; the message names the file and the reason."""


class AllenApiError(RuntimeError):
    """Something went wrong talking to the Allen API; the message says what and for which input."""


class RmaQueryError(AllenApiError):
    """An RMA query answered ``success: false`` (or something that is not an RMA answer)."""


class TransientError(AllenApiError):
    """A failure worth retrying (connection error, 5xx, 429, a truncated body, ...).

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUpError(AllenApiError):
    """Every attempt failed with a :class:`TransientError`; ``last_error`` is the final one."""

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_error}")
        self.attempts = attempts
        self.last_error = last_error


class Cancelled(AllenApiError):
    """The caller asked everything to stop (Ctrl-C, disk full) while we were waiting."""


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


def snippet(content: bytes, limit: int = 200) -> str:
    """The first ``limit`` bytes of a server's answer as one quoted line, for error messages."""
    text = " ".join(content[:limit].decode("utf-8", errors="replace").split())
    return repr(text + ("..." if len(content) > limit else ""))
