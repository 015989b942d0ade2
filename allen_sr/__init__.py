"""allen-sr: super-resolve brain microscopy with the tensor2tensor Image Transformer."""

__version__ = "0.1.0"
