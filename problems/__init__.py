"""tensor2tensor registrations of our problems (and, with them, our hparams sets and models).

This folder is the `--t2t_usr_dir` for the stock tools (t2t-datagen, t2t-trainer), which import
it as `problems`; installed, it is also the package `allen_sr.problems`. Either way the
registering modules are imported once, under their `allen_sr.` names, so tensor2tensor's
duplicate-name check stays on.

It is also the one place the compatibility shims are applied (`allen_sr.t2t.compat.apply`):
tensor2tensor's tools reach our code only through this import, and our own commands through
`allen_sr.t2t.names.register_all`, which imports it first. The shims patch TensorFlow at run time
(none is needed to import tensorflow or tensor2tensor), so applying them here, before any graph
is built, covers both; tests/test_t2t_compat.py checks that no other module applies them.
"""
from allen_sr.t2t import compat as _compat

_compat.apply()

import allen_sr.hparams  # noqa: E402,F401  (our hparams sets and models)
import allen_sr.problems.allen_brain  # noqa: E402,F401
import allen_sr.problems.local_images  # noqa: E402,F401
