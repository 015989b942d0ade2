"""The one way tests reach files outside the repository: `../shared/` next to the clone.

Those files (real dev slides, reference lists) exist on the development machines only. A test
that needs one asks `shared_path`, which skips the test, naming the file, when it is absent.
"""
from __future__ import annotations

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> pathlib.Path:
    """`<repo>/../shared/<parts>`, or skip the calling test when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available in this clone (files from ../shared are optional)")
    return path
