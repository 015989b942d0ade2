"""Registered hparams sets (thin: each module registers functions with tensor2tensor)."""
from allen_sr import t2t_compat

t2t_compat.apply()

from . import image_transformer  # noqa: E402,F401
from . import conv_sr  # noqa: E402,F401
