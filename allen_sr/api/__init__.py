"""allen-sr from Python: :class:`Upscaler` (models opened by name or folder, images and files
enlarged as `allen-sr upscale` does), :func:`read_image` (a file's pixels as the command reads them)
and folder runs. Imports neither TensorFlow nor tensor2tensor until a training checkpoint (not a
pretrained or exported model) is opened.

Errors a caller can fix are :class:`UserError` (also ``allen_sr.UserError``), raised as one of its
kinds, each also a built-in exception: :class:`InvalidInputError` (ValueError: a value, an image, a
combination of settings, a closed Upscaler), :class:`InputImageError` (an InvalidInputError: an
image predict cannot read), :class:`MissingInputError` (FileNotFoundError) and its
:class:`ModelNotFoundError` (no model of that name or folder), :class:`UnknownModelError` (KeyError:
no shipped model of that name), :class:`UnsupportedInputError` (NotImplementedError: something
this install does not do) and :class:`ImageSkipped` (an image file that cannot be read). All are
importable from here and from ``allen_sr``.
"""
from allen_sr.api.arrays import InputImageError, Region, read_image
from allen_sr.api.models import ModelNotFoundError
from allen_sr.api.upscaler import Options, Upscaler
from allen_sr.data.errors import ImageSkipped
from allen_sr.errors import InvalidInputError, MissingInputError, UnsupportedInputError, UserError
from allen_sr.pretrained import UnknownModelError

__all__ = ["Upscaler", "Region", "Options", "read_image", "UserError", "InvalidInputError", "InputImageError",
           "MissingInputError", "ModelNotFoundError", "UnknownModelError", "UnsupportedInputError", "ImageSkipped"]
