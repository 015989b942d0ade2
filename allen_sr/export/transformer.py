"""The Image Transformers exported for the NumPy fast decoder: ``weights.npz`` + ``config.json``.

``weights.npz`` holds the model's variables under their canonical names
(`allen_sr.decoding.checkpoints.read_model_weights`, the names `ImageTransformerNetwork` reads,
so every head the network has, such as the bicubic prior, comes along); ``config.json`` holds
the hparams as plain JSON values, which `allen_sr.export.runtime` hands to the same network
without tensor2tensor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from allen_sr.decoding.checkpoints import read_model_weights
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.support import SKIP_MODEL
from allen_sr.models.transformer_options import option

# The options `allen_sr.decoding.network` reads (the network's shape and heads).
NETWORK_OPTIONS = ("normalize_inputs", "input_skip", "bicubic_prior", "prior_sigma", "input_patch", "free_logit_scale")

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["plain_hparams", "write_weights"]


def plain_hparams(hparams: "HParams") -> dict[str, Any]:
    """Every hparam whose value JSON can hold (numbers, strings, lists of them, None).

    Functions (modality bottoms/tops) and nested objects are left out: the fast decoder's
    support check reads them, and it runs here, at export time, with tensor2tensor.
    """
    plain: dict[str, Any] = {}
    for key, value in sorted(hparams.values().items()):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        plain[key] = value
    return plain


def write_weights(hparams: "HParams", checkpoint: str, model_name: str,
                  folder: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Check the fast decoder takes the model, write ``folder/name``; returns config entries."""
    weights = read_model_weights(checkpoint, model_name)
    # Refuses unsupported hparams and weights they do not describe.
    FastDecoder.matching(hparams, weights, model_name, f"checkpoint {checkpoint}")
    path = Path(folder) / name
    with open(path, "wb") as handle:
        np.savez(handle, **weights)
    plain = plain_hparams(hparams)
    if model_name == SKIP_MODEL:  # the options as the network read them: a later default changes nothing
        plain.update({key: option(hparams, key) for key in NETWORK_OPTIONS})
    return {"weights": name, "hparams": plain, "parameters": int(sum(v.size for v in weights.values()))}
