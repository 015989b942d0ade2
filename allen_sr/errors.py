"""The one exception class for a user's mistake.

A :class:`UserError` says what is wrong with an input (a file, a name, a value) and what to do,
in the library's words; the command line prints its message in one line and exits with code 2.
Any other exception is a bug (or the machine's trouble) and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An input the user can fix: the message names it and says what to do."""
