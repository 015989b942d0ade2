"""Tiny real training runs for tests and benchmarks: synthetic images, a few t2t optimizer steps.

The checkpoints come from tensor2tensor's own estimator model_fn (t2t-trainer's code path), so
they have t2t-trainer's variable names and hparams.json, and every decoder can restore them.
"""
from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import numpy as np

from allen_sr.data.stats import channel_stats
from allen_sr.decoding.checkpoints import find_checkpoint
from allen_sr.fileio import write_json_atomic
from allen_sr.decoding.support import DEFAULT_MODEL
from allen_sr.t2t.names import register_all

if TYPE_CHECKING:
    from tensor2tensor.utils.hparam import HParams

__all__ = ["synthetic_examples", "train_checkpoint", "write_synthetic_stats"]


def synthetic_examples(
    num: int, target_size: int, scale: int, channels: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random uint8 images and their area-downsampled inputs (for tests and benchmarks).

    Targets are bilinear blends of random corner colours plus mild noise, so a model can learn
    something in a few steps; inputs are the mean of each ``scale`` x ``scale`` block, rounded.
    Returns inputs [num, size/scale, size/scale, C] and targets [num, size, size, C], uint8.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, target_size)
    corners = rng.uniform(0, 255, (num, 2, 2, channels))
    top = corners[:, 0, 0][:, None] * (1 - t)[None, :, None] + corners[:, 0, 1][:, None] * t[None, :, None]
    bottom = corners[:, 1, 0][:, None] * (1 - t)[None, :, None] + corners[:, 1, 1][:, None] * t[None, :, None]
    images = top[:, None] * (1 - t)[None, :, None, None] + bottom[:, None] * t[None, :, None, None]
    images = np.clip(np.rint(images + rng.normal(0, 6, images.shape)), 0, 255)
    side = target_size // scale
    small = images.reshape(num, side, scale, side, scale, channels).mean(axis=(2, 4))
    return np.rint(small).astype(np.uint8), images.astype(np.uint8)


def write_synthetic_stats(data_dir: str, hparams: "HParams", targets: np.ndarray) -> str:
    """Write the per-channel statistics of ``targets`` where `normalize_inputs` looks for a
    dataset's (``<data_dir>/<dataset>-stats.json``, as datagen writes them); returns data_dir."""
    os.makedirs(data_dir, exist_ok=True)
    flat = targets.reshape(-1, targets.shape[-1])
    histogram = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])
    path = os.path.join(data_dir, f"{hparams.problem.dataset_filename()}-stats.json")
    write_json_atomic(channel_stats(histogram), path)
    return data_dir


def train_checkpoint(
    output_dir: str | os.PathLike[str],
    hparams: "HParams",
    steps: int = 5,
    batch_size: int = 4,
    scale: int = 4,
    seed: int = 0,
    model_name: str = DEFAULT_MODEL,
    synthetic_stats: bool = True,
) -> str:
    """Run ``steps`` real training steps on synthetic images and save a checkpoint; returns it.

    With ``normalize_inputs`` and no ``data_dir`` in the hparams, the statistics normalization
    reads are those of the synthetic images (written as datagen would), unless
    ``synthetic_stats`` is False (then the model's own error for missing statistics shows).

    Uses tensor2tensor's estimator model_fn and `tf.estimator.Estimator` with t2t's run config,
    i.e. t2t-trainer's own code path (optimizer, learning-rate schedule, variable names), and
    writes ``hparams.json`` as t2t-trainer does, so `checkpoints.load_hparams` finds the same hparams.
    Meant for tests and benchmarks: the weights are the random initialisation moved by a few
    optimizer steps, not a useful model.
    """
    register_all()
    import tensorflow as tf
    from tensor2tensor.utils import hparams_lib, t2t_model, trainer_lib
    from tensorflow.python.autograph.core import ag_ctx

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    hparams = hparams_lib.copy_hparams(hparams)
    # Hparams t2t-trainer's create_experiment adds and the model_fn reads.
    for key, value in (("model_dir", output_dir), ("data_dir", ""), ("train_steps", steps),
                       ("eval_steps", 1), ("schedule", "train"), ("warm_start_from", None),
                       ("std_server_protocol", "grpc"), ("eval_freq_in_steps", steps),
                       ("eval_timeout_mins", 1)):
        if not hasattr(hparams, key):
            hparams.add_hparam(key, value)
    size = int(hparams.img_len)
    inputs, targets = synthetic_examples(4 * batch_size, size, scale, int(hparams.num_channels), seed)
    if (synthetic_stats and getattr(hparams, "normalize_inputs", False) and not hparams.data_dir
            and hasattr(hparams, "problem")):
        hparams.data_dir = write_synthetic_stats(os.path.join(output_dir, "data"), hparams, targets)
    run_config = trainer_lib.create_run_config(
        model_name, model_dir=output_dir, num_gpus=0, save_checkpoints_steps=max(steps, 1),
        keep_checkpoint_max=1, random_seed=seed)
    t2t_fn = t2t_model.T2TModel.make_estimator_model_fn(model_name, hparams)

    def model_fn(features, labels, mode, params=None, config=None):
        # Same graph without AutoGraph's 20-30 s rewrite of t2t's Python control flow.
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            return t2t_fn(features, labels, mode, params=params, config=config)

    def input_fn():
        data = {"inputs": inputs.astype(np.int64), "targets": targets.astype(np.int64)}
        return tf.data.Dataset.from_tensor_slices(data).repeat().batch(batch_size, drop_remainder=True)

    estimator = tf.estimator.Estimator(model_fn=model_fn, model_dir=output_dir, config=run_config)
    # The run config's seed only reaches TF's graph-level ops; the Keras layers inside t2t draw
    # their initializers' seeds from Python's `random` (as t2t-trainer's --random_seed seeds it),
    # so seed that too, for this call only, or every call starts from different weights.
    saved_random = random.getstate()
    random.seed(seed)
    try:
        estimator.train(input_fn, max_steps=steps)
    finally:
        random.setstate(saved_random)
    saved = hparams_lib.copy_hparams(hparams)
    for key in ("modality",):
        if hasattr(saved, key):
            saved.del_hparam(key)
    with open(os.path.join(output_dir, "hparams.json"), "w", encoding="utf-8") as handle:
        handle.write(saved.to_json(indent=0, sort_keys=True))
    return find_checkpoint(output_dir)
