"""Which decoders each model has, looked up by name: one table, no import side effects.

A factory is named as ``"module:attribute"`` and imported only when that decoder is built, so
listing decoders never loads TensorFlow. The first kind listed for a model is its default; when
no kind is asked for and the default refuses the hparams (:class:`UnsupportedHParamsError`), the
next kind that accepts them is used, with a warning (for the Image Transformer: the fast decoder
when it implements the hparams, else the naive one). Another model plugs in its own decoder with
:func:`register_decoder`.
"""
from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any, Callable

from allen_sr.decoding.checkpoints import find_checkpoint
from allen_sr.decoding.support import DEFAULT_MODEL, SKIP_MODEL, UnsupportedHParamsError
from allen_sr.errors import InvalidInputError, UnsupportedInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

    from allen_sr.decoding.batching import Decoder

DecoderFactory = Callable[..., "Decoder"]

_TRANSFORMER = {"fast": "allen_sr.decoding.fast:FastDecoder.from_checkpoint",
                "naive": "allen_sr.decoding.reference:NaiveDecoder"}

# model name -> {decoder kind: factory(hparams, checkpoint, model_name=..., target_shape=...)}.
DECODERS: dict[str, dict[str, str | DecoderFactory]] = {
    DEFAULT_MODEL: dict(_TRANSFORMER),
    SKIP_MODEL: dict(_TRANSFORMER),
    "img2img_conv_sr": {"one_pass": "allen_sr.decoding.one_pass:OnePassDecoder"},
}
KINDS = ("fast", "naive", "one_pass")  # every kind a --decoder flag may name


def register_decoder(model_name: str, kind: str, factory: str | DecoderFactory, replace: bool = False) -> None:
    """Make ``factory`` (a callable or "module:attribute") the ``kind`` decoder of ``model_name``.

    A name that is taken is refused (ValueError) unless ``replace`` is true: two plug-ins picking
    the same name would otherwise decide silently, by import order, which one decodes.
    """
    taken = DECODERS.get(model_name, {}).get(kind)
    if taken is not None and not replace:
        raise InvalidInputError(f"a {kind!r} decoder of model {model_name!r} is registered already ({taken!r}); "
                                "pass replace=True to replace it")
    DECODERS.setdefault(model_name, {})[kind] = factory


def decoder_kinds(model_name: str) -> list[str]:
    """The decoder kinds of ``model_name``, its default first (NotImplementedError if none)."""
    if model_name not in DECODERS:
        raise UnsupportedInputError(
            f"decoding --model={model_name} is not supported (models with decoders: "
            f"{', '.join(sorted(DECODERS))})")
    return list(DECODERS[model_name])


def _resolve(factory: str | DecoderFactory) -> DecoderFactory:
    if callable(factory):
        return factory
    module, _, attribute = factory.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def make_decoder(
    model_name: str,
    kind: str | None,
    hparams: "HParams",
    checkpoint: str,
    target_shape: tuple[int, int] | None = None,
) -> "Decoder":
    """Build the ``kind`` decoder of ``model_name``, clear errors otherwise.

    ``kind=None``: the model's first decoder that accepts the hparams (its default first); if
    none does, the default's error is raised.
    """
    kinds = decoder_kinds(model_name)
    if kind is not None and kind not in kinds:
        raise UnsupportedInputError(
            f"--decoder={kind} is not available for --model={model_name} "
            f"(available: {', '.join(kinds)})")
    checkpoint = find_checkpoint(checkpoint)
    first_error: UnsupportedHParamsError | None = None
    for candidate in [kind] if kind is not None else kinds:
        factory = _resolve(DECODERS[model_name][candidate])
        try:
            decoder = factory(hparams, checkpoint, model_name=model_name, target_shape=target_shape)
        except UnsupportedHParamsError as exc:
            if kind is not None:
                raise
            first_error = first_error or exc
            continue
        if first_error is not None:
            warnings.warn(f"{first_error}; decoding with --decoder {candidate}", stacklevel=2)
        return decoder
    assert first_error is not None
    raise first_error
