"""Sample tissue images shipped with the package (licences in LICENSES.md beside them).

`allen-sr demo` tiles them by default, so the demo runs from any install, not only a checkout.
"""
from __future__ import annotations

import os


def sample_folder() -> str:
    """The folder holding the sample images."""
    return os.path.dirname(os.path.abspath(__file__))
