"""The decoders' refusal: an hparams setting a decoder does not implement."""
from __future__ import annotations

__all__ = ["UnsupportedHParamsError"]


class UnsupportedHParamsError(ValueError):
    """A decoder does not implement this hparams setting (names the hparam and what works)."""
