"""Decoding modes: how one value per sub-pixel is chosen from the model's 256-way logits.

``greedy`` (argmax), ``sample`` (softmax with a temperature, seeded, reproducible and independent
of the batch size) and ``mean`` (the expected value of each distribution, rounded, fed back as
the conditioning value). Every decoder turns the same logits and uniforms into the same values.

``mean_bicubic`` outputs the same expected values but feeds nothing back: every sub-pixel is
conditioned on the rounded bicubic values of the sub-pixels before it, the context allen-sr's
Image Transformer sets train with (``context_bicubic=1``), so each output is the model's answer
in exactly the situation it learned (`allen_sr.decoding.batching.BatchedDecoder`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from allen_sr.errors import InvalidInputError

MODES: tuple[str, ...] = ("greedy", "sample", "mean", "mean_bicubic")
VOCAB = 256  # values per sub-pixel (uint8)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def choose_values(
    logits: np.ndarray,
    mode: str,
    temperature: float = 1.0,
    uniforms: np.ndarray | None = None,
) -> np.ndarray:
    """Pick one value in 0..255 per row of ``logits`` [B, 256]; returns int64 [B].

    ``greedy``: argmax (first index on exact ties, like ``np.argmax``). ``mean`` and
    ``mean_bicubic``: the expected value sum_v v * softmax(logits)_v, rounded to the nearest
    integer. ``sample``: a draw from softmax(logits / temperature) by inverse CDF with the given
    ``uniforms`` [B] in [0, 1), so both decoders turn the same uniforms into the same samples.
    """
    if mode == "greedy":
        return np.argmax(logits, axis=-1).astype(np.int64)
    if mode in ("mean", "mean_bicubic"):
        probs = _softmax(logits)
        expected = probs @ np.arange(VOCAB, dtype=np.float64)
        return np.clip(np.rint(expected), 0, VOCAB - 1).astype(np.int64)
    if mode == "sample":
        if uniforms is None:
            raise InvalidInputError("mode 'sample' needs uniforms (one per row)")
        if not temperature > 0:
            raise InvalidInputError(f"temperature must be > 0 for sampling, got {temperature}")
        probs = _softmax(np.asarray(logits, np.float64) / float(temperature))
        cdf = np.cumsum(probs, axis=-1)
        index = (cdf < np.asarray(uniforms)[:, None] * cdf[:, -1:]).sum(axis=-1)
        return np.minimum(index, VOCAB - 1).astype(np.int64)
    raise InvalidInputError(f"unknown mode {mode!r}; expected one of {MODES}")


def check_mode(mode: str, temperature: float) -> None:
    if mode not in MODES:
        raise InvalidInputError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "sample" and not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0 for sampling, got {temperature}")


def check_sampling_options(mode: str, temperature: float) -> None:
    """Refuse a temperature for a mode that does not sample (it was silently ignored). (A seed also
    chooses `evaluate`'s tiles and degradations; `upscale` checks its own.)"""
    if mode != "sample" and temperature != 1.0:
        raise InvalidInputError(f"--temperature is for --mode sample (temperature= is for mode='sample'); this "
                                f"run decodes with mode {mode}, which would ignore it: leave it out, or add --mode "
                                "sample (a model that predicts a distribution: the Image Transformer)")


ONE_VALUE_MODES: tuple[str, ...] = ("greedy", "mean")  # a model with one value per sub-pixel: its prediction


def check_one_value_mode(mode: str, model_name: str, distribution: bool = False) -> None:
    """Refuse the modes a conv model does not have: ``sample`` and ``mean_bicubic`` (Image
    Transformer modes: draws from its 256-way distributions, conditioning on bicubic values before
    each sub-pixel) and anything not in MODES; its modes are :data:`ONE_VALUE_MODES`, both its
    prediction. ``distribution``: the model has the probabilistic head (a Laplace scale per sub-pixel,
    for uncertainty maps; nothing is drawn from it)."""
    if mode in ONE_VALUE_MODES:
        return
    if mode in MODES:
        use = "use --mode greedy (or mean, the same here; mode='greedy' from Python)"
        if distribution:
            raise InvalidInputError(
                f"--mode {mode} is not available for {model_name}: sample and mean_bicubic are Image Transformer "
                "modes; this model predicts one value per sub-pixel with a Laplace scale around it, which gives "
                f"uncertainty maps (--uncertainty) but is not drawn from or conditioned on; {use}")
        what = "draws from a distribution" if mode == "sample" else "conditions on bicubic values before each sub-pixel"
        raise InvalidInputError(
            f"--mode {mode} is not available for {model_name}: it predicts one value per sub-pixel and {mode} "
            f"{what}; {use}")
    raise InvalidInputError(f"unknown mode {mode!r}; expected one of {MODES}")


def check_seed(seed: int | None) -> None:
    """InvalidInputError for a negative seed (the random streams take 0 and up)."""
    if seed is not None and int(seed) < 0:
        raise InvalidInputError(f"--seed {seed} (seed={seed} from Python): give 0 or a positive whole number")


def example_uniforms(seed: int | None, keys: Sequence[int | Sequence[int]], steps: int) -> np.ndarray:
    """[len(keys), steps] uniforms, one stream per example key.

    A key is the example's index in the dataset, or a tuple (e.g. a tile's top and left input px
    in the whole image). Seeding each example separately (SeedSequence of (seed, *key)) makes a
    sample depend only on the seed and the key, not on the batch size or the decoder.
    """
    check_seed(seed)
    base = 0 if seed is None else int(seed)
    streams = [np.random.default_rng([base, *((int(key),) if np.ndim(key) == 0 else map(int, key))]).random(steps)
               for key in keys]
    return np.stack(streams) if streams else np.zeros((0, steps))
