"""The options of `img2img_transformer_sr`, declared once: name, default, what it does.

The hparams sets (hparams/image_transformer.py) start from these defaults; the model and its
decoders read every option through :func:`add_transformer_hparams` / :func:`option`, so a set that
lacks one (any tensor2tensor stock set run with ``--model=img2img_transformer_sr``) gets the
default documented here, the same in training and in decoding. What each option does in the
network: `allen_sr.models.image_transformer`. No TensorFlow here: the NumPy decoders read it too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allen_sr.data.degrade import REAL_INPUTS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["TRANSFORMER_HPARAMS", "add_transformer_hparams", "option"]

# (name, default, what it does), one line each. The network's options first, then training-only
# ones (they do not change what the decoders run), then the decoders' defaults.
TRANSFORMER_HPARAMS: tuple[tuple[str, Any, str], ...] = (
    ("normalize_inputs", True, "add each input value scaled by the dataset's mean/std (kept in the checkpoint)"),
    ("input_skip", True, "add each sub-pixel's input pixel embedding to its decoder input"),
    ("bicubic_prior", True, "add a Gaussian around bicubic + a learned offset, with a learned width, to the logits"),
    ("prior_sigma", 8.0, "the prior's initial width (and offset unit), grey levels"),
    ("input_patch", 2, "r > 0: linear maps of each input pixel's (2r+1)^2 neighbourhood"),
    ("upscale_factor", 4, "output / input side (static weight shapes); our problems set it"),
    ("free_logit_scale", 0.0, "with the prior: weight of the free 256-way logits (0: Gaussian only)"),
    ("train_budget_seconds", 0.0, "> 0: stop after this much training time; the cosine decay follows it"),
    ("cosine_decay_steps", 0, "without a budget: clamped half cosine over this many steps (0: none)"),
    ("cosine_decay_min", 0.1, "the cosine's final factor of the learning rate"),
    ("embedding_init", "default", "'smooth': value embeddings start smooth in the value"),
    ("embedding_smoothness", 0.0, "weight of the neighbouring-value embedding penalty"),
    ("context_bicubic", 1.0, "probability a conditioning sub-pixel is its bicubic value (training)"),
    ("target_noise", 4, "+-grey levels of noise on the decoder's conditioning (training)"),
    ("ev_loss_weight", 4.0, "weight of the L1 of each sub-pixel's expected value (prior_sigma units)"),
    ("self_condition", 0.0, "fraction of the context replaced by the model's own mean values (training)"),
    # Read by the problem's input pipeline from the set itself (a stock set has neither: clean tiles).
    ("color_augment", "", "problem-side colour augmentation of training tiles (allen_sr.t2t.problems)"),
    ("degradation", REAL_INPUTS, "realistic training inputs (allen_sr.t2t.degradation); none: clean"),
    ("decode_mode", "mean", "the mode allen-sr decode/evaluate/upscale use when --mode is not given"),
    ("decode_tta", False, "average the decodes of the 8 flips/rotations (measured: +0.006 dB, 10x time)"),
)
DEFAULTS = {name: value for name, value, _ in TRANSFORMER_HPARAMS}


def add_transformer_hparams(hp: "HParams") -> "HParams":
    """Add each of :data:`TRANSFORMER_HPARAMS` that ``hp`` lacks, with its default; returns ``hp``."""
    for name, value, _ in TRANSFORMER_HPARAMS:
        if not hasattr(hp, name):
            hp.add_hparam(name, value)
    return hp


def option(hparams: "HParams", name: str) -> Any:
    """``hparams``' value of the declared option ``name``, or its documented default."""
    return getattr(hparams, name) if hasattr(hparams, name) else DEFAULTS[name]
