"""Decorators that register our problems, hparams sets and models with tensor2tensor.

tensor2tensor's own duplicate-name check stays on for our names: registering one of them twice
raises. Only the stock names in :data:`REPLACED_STOCK_PROBLEMS` are replaced (the stock
`img2img_allen_brain_*` problems cut 63 px tiles, keep background, re-encode tiles as JPEG and
split train/dev by an unsorted glob).
"""
from __future__ import annotations

from typing import Callable, TypeVar

from tensor2tensor.utils import registry

T = TypeVar("T")

# tensor2tensor.data_generators.allen_brain's problems that problems/allen_brain.py replaces.
REPLACED_STOCK_PROBLEMS = frozenset({
    "img2img_allen_brain_dim8to32",
    "img2img_allen_brain_dim16to64",
    "img2img_allen_brain_dim48to64",
    "img2img_allen_brain_dim8to32_grey",
    "img2img_allen_brain_dim16to16_paint1",
})


def problem(cls: T) -> T:
    """Class decorator: register `cls` as a t2t problem under its default (snake_case) name."""
    name = registry.default_name(cls)
    if name in REPLACED_STOCK_PROBLEMS:
        # The stock module must be registered first, or its later import (t2t-trainer imports
        # every stock problem) would fail on the duplicate name.
        import tensor2tensor.data_generators.allen_brain  # noqa: F401

        registry.Registries.problems._registry.pop(name, None)
    return registry.register_problem(cls)


def hparams(fn: Callable[[], T]) -> Callable[[], T]:
    """Function decorator: register an hparams set under the function's name."""
    return registry.register_hparams(fn)


def model(cls: T) -> T:
    """Class decorator: register a t2t model under its default (snake_case) name."""
    return registry.register_model(cls)
