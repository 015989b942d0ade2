"""Dataset statistics inside the model graph, for the hparam ``normalize_inputs``.

One function creates the per-channel mean/std as non-trainable variables
``<scope>/input_normalization/{mean,std}``, for every model: a checkpoint holds the statistics
its model was trained with, so decoding needs no data_dir. The variable names are part of the
checkpoint format; do not change them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow.compat.v1 as tf

from allen_sr.data.stats import normalization_stats
from allen_sr.models.variables import NORMALIZATION_SCOPE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["NORMALIZATION_SCOPE", "input_statistics"]


def input_statistics(hparams: "HParams", channels: int, model_name: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-channel (mean, std) variables, float32 [channels], in 0-255, in the current scope.

    In TRAIN mode they start from the dataset's statistics (`allen_sr.data.stats`; errors name
    ``model_name``); in EVAL/PREDICT mode they start from 0/1 and are meant to be restored from
    a checkpoint, so no data_dir is needed.
    """
    if hparams.mode == tf.estimator.ModeKeys.TRAIN:
        mean, std = normalization_stats(hparams, channels, model_name)
    else:
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    with tf.variable_scope(NORMALIZATION_SCOPE):
        mean_var = tf.get_variable("mean", initializer=tf.constant(mean), trainable=False)
        std_var = tf.get_variable("std", initializer=tf.constant(std), trainable=False)
    return mean_var, std_var
