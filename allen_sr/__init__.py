"""allen-sr: super-resolve brain microscopy with the tensor2tensor Image Transformer."""
import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU hosts, oneDNN notices) buries our own
# progress output; users can still set TF_CPP_MIN_LOG_LEVEL=0 to see it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
