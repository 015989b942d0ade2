"""Register our problems and hparams with tensor2tensor, replacing entries of the same name.

tensor2tensor raises KeyError when a name is registered twice. We need to replace the stock
`img2img_allen_brain_*` problems (they are buggy: see README), and our modules may be imported
twice in one process (once as `problems` through `--t2t_usr_dir`, once as `allen_sr.problems`),
so registration here always replaces.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from allen_sr import t2t_compat

t2t_compat.apply()

from tensor2tensor.utils import registry  # noqa: E402  (after the shims)

T = TypeVar("T")


def problem(cls: T) -> T:
    """Class decorator: register `cls` as a t2t problem under its default (snake_case) name."""
    name = registry.default_name(cls)
    registry.Registries.problems._registry.pop(name, None)
    return registry.register_problem(cls)


def hparams(fn: Callable[[], T]) -> Callable[[], T]:
    """Function decorator: register an hparams set under the function's name."""
    registry.Registries.hparams._registry.pop(fn.__name__, None)
    return registry.register_hparams(fn)


def model(cls: T) -> T:
    """Class decorator: register a t2t model under its default (snake_case) name."""
    name = registry.default_name(cls)
    registry.Registries.models._registry.pop(name, None)
    return registry.register_model(cls)
