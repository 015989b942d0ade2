"""Registered hparams sets (thin: each module registers functions with tensor2tensor)."""
from allen_sr.t2t import compat as _compat

_compat.apply()

import allen_sr.hparams.conv_sr  # noqa: E402,F401
import allen_sr.hparams.image_transformer  # noqa: E402,F401
