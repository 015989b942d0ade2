"""The decoders' refusal: an hparams setting a decoder does not implement."""
from __future__ import annotations

from allen_sr.errors import InvalidInputError

__all__ = ["UnsupportedHParamsError"]


class UnsupportedHParamsError(InvalidInputError):
    """A decoder does not implement this hparams setting (names the hparam and what works)."""
