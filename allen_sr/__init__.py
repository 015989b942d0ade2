"""allen-sr: super-resolve brain microscopy with the tensor2tensor Image Transformer.

    from allen_sr import Upscaler
    big = Upscaler.open().predict(small)   # the default pretrained model, no TensorFlow needed
    big = Upscaler.open().predict("section.png")  # a file, read as `allen-sr upscale` reads it
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
# The public API, imported on first use (`import allen_sr`, and every `allen-sr` command, stays instant):
# the Upscaler, read_image and the errors a caller may catch (allen_sr.api's docstring says which is which).
PUBLIC = ("Upscaler", "read_image", "UserError", "InvalidInputError", "InputImageError", "MissingInputError",
          "ModelNotFoundError", "UnknownModelError", "UnsupportedInputError", "ImageSkipped")
__all__ = [*PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        import allen_sr.api

        return getattr(allen_sr.api, name)
    raise AttributeError(f"module 'allen_sr' has no attribute {name!r}")
