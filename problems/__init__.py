"""tensor2tensor registrations: our problems, and our hparams sets with them.

This folder is the `--t2t_usr_dir` for the stock tools (t2t-datagen, t2t-trainer): importing it
applies allen_sr.t2t_compat's shims and registers every problem, hparams set and model of ours.
Installed, it is also importable as `allen_sr.problems`.
"""
from allen_sr import t2t_compat

t2t_compat.apply()

import allen_sr.hparams  # noqa: E402,F401  (registers our hparams sets too)

from . import allen_brain, local_images  # noqa: E402,F401
