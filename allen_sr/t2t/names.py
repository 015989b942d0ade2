"""Looking up registered tensor2tensor names, with short errors; loads TensorFlow only when called.

:func:`register_all` is the one way the package gets tensor2tensor ready: the compatibility shims,
then our problems, hparams sets and models, then the stock image models.
"""
from __future__ import annotations

import difflib
from typing import Any

from allen_sr.errors import InvalidInputError


def register_all() -> None:
    """Shims, our hparams sets, problems and models, and the t2t image models, registered."""
    import allen_sr.problems  # noqa: F401  (applies the shims, then registers; hparams and models with it)
    from tensor2tensor.models import image_transformer_2d  # noqa: F401


class UnknownNameError(InvalidInputError):
    """A problem, model or hparams set name that is not registered (names the closest ones)."""


def _unknown(kind: str, name: str, known: list[str], flag: str) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = (f"closest registered: {', '.join(close)}" if close
            else "the README's 'Models, problems and hparams sets' lists ours")
    return UnknownNameError(f"unknown {kind} {name!r} (--{flag}); {hint}")


def check_names(problem: str | None = None, hparams_set: str | None = None, model: str | None = None) -> None:
    """Raise :class:`UnknownNameError` for a name tensor2tensor does not know (its own KeyError
    lists every registered problem)."""
    register_all()
    from tensor2tensor.utils import registry

    if problem is not None and problem not in registry.list_problems():
        raise _unknown("problem", problem, registry.list_problems(), "problem")
    if hparams_set is not None and hparams_set not in registry.list_hparams():
        raise _unknown("hparams set", hparams_set, registry.list_hparams(), "hparams_set")
    if model is not None and model not in registry.list_models():
        raise _unknown("model", model, registry.list_models(), "model")


def unregistered(problem: str | None = None, hparams_set: str | None = None, model: str | None = None) -> list[str]:
    """``--flag=name`` of each given name that tensor2tensor does not know (after :func:`register_all`)."""
    register_all()
    from tensor2tensor.utils import registry

    known = {"problem": registry.list_problems, "hparams_set": registry.list_hparams, "model": registry.list_models}
    given = {"problem": problem, "hparams_set": hparams_set, "model": model}
    return [f"--{flag}={name}" for flag, name in given.items() if name is not None and name not in known[flag]()]


def problem_shape(problem_name: str) -> tuple[int, int, int]:
    """(input size, target size, channels) of a registered image problem."""
    check_names(problem=problem_name)
    from tensor2tensor.utils import registry

    p = registry.problem(problem_name)
    if not all(hasattr(p, size) for size in ("input_dim", "output_dim")):
        raise InvalidInputError(f"--problem={problem_name} is not an image problem of fixed sizes (input_dim, "
                                "output_dim): pass one of the README's 'Models, problems and hparams sets'")
    return int(p.input_dim), int(p.output_dim), int(getattr(p, "num_channels", 3))


def parse_overrides(hparams: Any, overrides: str | None, hparams_set: str) -> None:
    """Apply ``--hparams`` ``overrides`` ("k=v,...") to ``hparams``; InvalidInputError naming a
    malformed or unknown one (tensor2tensor's parser raises a bare ValueError)."""
    try:
        hparams.parse(overrides or "")
    except ValueError as exc:
        from allen_sr.data.degrade import TRAINING_KEYS

        # "degradation=blur=0:2,noise=0:10": t2t splits the overrides at each "," (noise: no hparam)
        items = [item.split("=", 1)[0].strip() for item in (overrides or "").split(",")]
        later = items[items.index("degradation") + 1:] if "degradation" in items else []
        joined = ("; join degradation items with ';' (quote the --hparams for the shell)"
                  if any(key in TRAINING_KEYS and not hasattr(hparams, key) for key in later) else "")
        raise InvalidInputError(
            f"--hparams {overrides}: {exc} (the hparams of {hparams_set}: allen_sr/models/conv_sr.py HPARAMS, "
            f"allen_sr/models/transformer_options.py, tensor2tensor's basic_params1){joined}") from None
