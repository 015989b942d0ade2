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

__all__ = ["MODELS_DIR", "INDEX_NAME", "REINSTALL", "Pretrained", "UnknownModelError", "DamagedInstallError",
           "available", "default_name", "find"]


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


REINSTALL = "reinstall allen-sr"


class DamagedInstallError(UserError):
    """The shipped models' package data is damaged: models.json unreadable, a listed model's folder incomplete."""


def _index() -> dict[str, Any]:
    """models.json's entries by name ({} for an install that ships no models); DamagedInstallError
    naming the file when it cannot be read (cut short, not JSON, not a list of models)."""
    path = MODELS_DIR / INDEX_NAME
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedInstallError(f"{path}: the list of shipped models is damaged ({exc}); {REINSTALL}") from None
    models = index.get("models", {}) if isinstance(index, dict) else None
    if not isinstance(models, dict) or not all(isinstance(info, dict) for info in models.values()):
        raise DamagedInstallError(f"{path}: the list of shipped models is damaged (its \"models\" are not "
                                  f"entries by name); {REINSTALL}")
    return dict(models)


def available() -> list[Pretrained]:
    """The shipped models, the default first; DamagedInstallError naming the file when models.json
    lists a model whose folder lacks its config.json (the default is never silently another)."""
    models = [Pretrained(name, MODELS_DIR / name, info) for name, info in _index().items()]
    for m in models:
        if not (m.folder / "config.json").is_file():
            raise DamagedInstallError(f"{m.folder / 'config.json'}: the shipped model {m.name} listed in "
                                      f"{INDEX_NAME} is incomplete (no such file); {REINSTALL}")
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
