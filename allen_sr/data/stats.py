"""Per-channel statistics of a dataset's train tiles: computed by datagen, read for normalization.

datagen writes `<data_dir>/<prefix>-stats.json` ({"mean": [..], "std": [..], "pixels": n,
"scale": ...}, values in 0-255, RGB); models with `normalize_inputs` read it back.
"""
from __future__ import annotations

import numpy as np

from allen_sr.data.paths import read_json
from allen_sr.errors import InvalidInputError, MissingInputError

# ITU-R 601 luma, as tf.image.rgb_to_grayscale (what the greyscale problems train on).
LUMA = np.array([0.2989, 0.5870, 0.1140])


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 1] luma of uint8 RGB, as tf.image.rgb_to_grayscale computes it."""
    y = rgb.astype(np.float64) @ LUMA
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def channel_stats(histogram: np.ndarray) -> dict | None:
    """Mean and std per channel from a [channels, 256] histogram of pixel values; None if empty."""
    count = int(histogram[0].sum())
    if not count:
        return None
    values = np.arange(256, dtype=np.float64)
    mean = histogram @ values / count
    std = np.sqrt(np.maximum(histogram @ values ** 2 / count - mean ** 2, 0))
    return {"mean": mean.round(4).tolist(), "std": std.round(4).tolist(),
            "pixels": count, "scale": "0-255, RGB, train tiles"}


def read_stats(data_dir: str, prefix: str) -> dict:
    """The per-channel statistics written by datagen, or a clear error saying how to get them."""
    path = f"{data_dir.rstrip('/')}/{prefix}-stats.json"
    try:
        return read_json(path)
    except FileNotFoundError:
        raise MissingInputError(
            f"{path} not found: normalization needs the statistics written by datagen; "
            f"run `allen-sr datagen` for this data_dir first") from None


def normalization_stats(hparams, channels: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in 0-255 of a problem's training tiles, for `normalize_inputs`.

    Reads `<hparams.data_dir>/<dataset>-stats.json` (t2t-trainer sets hparams.problem and
    data_dir); errors name `model`, the missing piece and how to get it.
    """
    problem = getattr(hparams, "problem", None)
    data_dir = getattr(hparams, "data_dir", None)
    if problem is None or not data_dir:
        raise InvalidInputError(
            f"{model}: normalize_inputs=True reads the dataset statistics from "
            "<data_dir>/<dataset>-stats.json, but the hparams have no "
            f"{'problem' if problem is None else 'data_dir'} (t2t-trainer sets both from "
            "--problem and --data_dir); pass them, or train with --hparams=normalize_inputs=False")
    stats = read_stats(data_dir, problem.dataset_filename())
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    if channels == 1 and mean.shape == (3,):
        # Greyscale problems train on the luma of the RGB tiles the stats describe: the luma
        # mean is exact; the weighted std is an upper bound, good enough for scaling.
        mean, std = np.array([mean @ LUMA]), np.array([std @ LUMA])
    if mean.shape != (channels,) or std.shape != (channels,):
        raise InvalidInputError(f"{model}: the statistics in {data_dir} have {mean.shape[0]} "
                                f"channels, the problem has {channels}")
    return mean.astype(np.float32), np.maximum(std, 1.0).astype(np.float32)
