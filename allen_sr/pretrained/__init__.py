"""The pretrained models shipped with allen-sr (package data), found by name.

Each model is an export folder (`allen_sr.export.runtime`: ``config.json`` and ``model.onnx``, a
probabilistic conv model also ``distribution.onnx``, the Image Transformer ``weights.npz``
instead) with its ``MODEL_CARD.md``; ``models.json`` lists them with what they are for, how they
were trained and the quality `scripts/make_pretrained.py` measured on images they never saw.
Nothing here imports TensorFlow: the models run with onnxruntime or allen-sr's NumPy decoder in
both installs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allen_sr.errors import UserError

MODELS_DIR = Path(__file__).resolve().parent
INDEX_NAME = "models.json"

__all__ = ["MODELS_DIR", "INDEX_NAME", "Pretrained", "UnknownModelError", "available", "default_name",
           "find"]


class UnknownModelError(UserError, KeyError):
    """A pretrained model name that is not shipped (the message lists the shipped ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Pretrained:
    """One shipped model: its folder (an export folder) and its entry in models.json."""

    name: str
    folder: Path
    info: dict[str, Any]

    @property
    def default(self) -> bool:
        return bool(self.info.get("default"))

    @property
    def purpose(self) -> str:
        return str(self.info.get("purpose", ""))

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())

    @property
    def card(self) -> Path:
        return self.folder / "MODEL_CARD.md"

    def gain_db(self, image: str, kind: str) -> float | None:
        """The measured gain over bicubic on held-out ``image`` (e.g. "brain") with input ``kind``."""
        q = self.info.get("quality", {}).get(image, {}).get(kind)
        return None if q is None else float(q["gain_db"])


def _index() -> dict[str, Any]:
    path = MODELS_DIR / INDEX_NAME
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("models", {}))


def available() -> list[Pretrained]:
    """The shipped models, the default first."""
    models = [Pretrained(name, MODELS_DIR / name, info) for name, info in _index().items()
              if (MODELS_DIR / name / "config.json").is_file()]
    return sorted(models, key=lambda m: (not m.default, m.name))


def default_name() -> str:
    """The name of the default model; UnknownModelError if this install ships none."""
    models = available()
    if not models:
        raise UnknownModelError(f"this install ships no pretrained models ({MODELS_DIR} has no "
                                f"{INDEX_NAME}); name a model folder, or run `make pretrained`")
    return models[0].name


def find(name: str) -> Pretrained:
    """The shipped model ``name``; UnknownModelError listing the shipped ones."""
    models = {m.name: m for m in available()}
    if name not in models:
        raise UnknownModelError(f"no pretrained model {name!r} (shipped: {', '.join(models) or 'none'}; "
                                "`allen-sr models` lists them)")
    return models[name]
