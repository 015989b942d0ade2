"""allen-sr: super-resolve brain microscopy with the tensor2tensor Image Transformer.

    from allen_sr import Upscaler
    big = Upscaler.open().predict(small)   # the default pretrained model, no TensorFlow needed
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Upscaler", "UserError", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import allen_sr` (and every `allen-sr` command) stays instant.
    if name == "Upscaler":
        from allen_sr.api import Upscaler

        return Upscaler
    if name == "UserError":
        from allen_sr.errors import UserError

        return UserError
    raise AttributeError(f"module 'allen_sr' has no attribute {name!r}")
