"""A shipped model or an `allen-sr export` folder as a checkpoint to start training from.

`allen-sr train --init_from NAME|DIR` fine-tunes a model instead of training one from random
weights. tensor2tensor starts from a checkpoint (`--warm_start_from`, made to work on TF 2.15 by
`allen_sr.t2t.compat`); an export keeps its weights otherwise: an Image Transformer's
``weights.npz`` under the checkpoint's own names, a conv model's ONNX graph with each variable as
an initializer named after the op that read it (``.../body/res_block_0/conv_a/Conv2D/ReadVariableOp:0``,
kernels in ONNX's [out, in, h, w] order; a probabilistic model's ``distribution.onnx`` also holds
its scale head). :func:`init_checkpoint` writes them back as a TensorFlow checkpoint. An export
that folded a layer into other constants (a conv model's ``upsample=input_res``, as `conv-fast`)
is refused up front by :func:`check_fine_tunable`; any other variable missing there is named by
training's strict warm start.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr.errors import InvalidInputError
from allen_sr.export.runtime import ONNX_NAME, read_config

__all__ = ["export_weights", "init_checkpoint", "write_checkpoint", "check_fine_tunable", "WARM_START_DIR"]

WARM_START_DIR = "warm_start"  # where `allen-sr train` puts it, inside the run's --output_dir
_READ = re.compile(r"/body/(?P<layer>.+)/(?P<op>Conv2D|add|BiasAdd)/ReadVariableOp:0$")


def _onnx_weights(path: Path, model: str) -> dict[str, np.ndarray]:
    """Every conv kernel and bias of an exported conv graph, under its checkpoint name."""
    import onnx
    from onnx import numpy_helper

    weights: dict[str, np.ndarray] = {}
    for init in onnx.load(str(path)).graph.initializer:
        found = _READ.search(init.name)
        if found is None:
            continue
        value = numpy_helper.to_array(init)
        if found["op"] == "Conv2D":
            name, value = f"{model}/body/{found['layer']}/kernel", value.transpose(2, 3, 1, 0)
        else:
            name = f"{model}/body/{found['layer']}/bias"
        if name in weights and not np.array_equal(weights[name], value):  # the 8 views share weights
            raise InvalidInputError(f"{path}: two different values for {name}; export the model again")
        weights[name] = np.ascontiguousarray(value)
    return weights


def export_weights(folder: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(variables by checkpoint name, the export's config) of an `allen-sr export` folder."""
    folder = Path(folder)
    config = read_config(folder)
    if config.get("weights"):
        with np.load(folder / config["weights"]) as stored:
            weights = {name: stored[name] for name in stored.files}
    else:
        graph = config.get("distribution") or config.get("onnx") or ONNX_NAME  # the first has every head
        weights = _onnx_weights(folder / graph, config["model"])
    if not weights:
        raise InvalidInputError(f"export folder {folder}: no weights found in it; export the model again")
    return weights, config


def check_fine_tunable(source: str, weights: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """InvalidInputError naming ``source`` when its export folded a conv model's upsampling layer
    into other constants (``upsample=input_res``, as `conv-fast`): its weights are not there to
    start from, which training would only find after building the model."""
    if config.get("weights") or any("/body/upsample_" in name for name in weights):
        return
    raise InvalidInputError(f"--init_from {source} cannot be fine-tuned: its export ({config['model']}, "
                            f"{config['hparams_set']}) folded its upsampling layer into other constants; start "
                            "from another model (allen-sr models) or from the run folder it was exported from")


def write_checkpoint(weights: dict[str, np.ndarray], folder: str | os.PathLike[str]) -> str:
    """Save ``weights`` as a TensorFlow checkpoint ``folder/model.ckpt``; returns its prefix."""
    import tensorflow.compat.v1 as tf

    tf.io.gfile.makedirs(os.fspath(folder))
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(weights.items())}
        saver = tf.train.Saver(variables)
        with tf.Session(graph=graph) as session:
            session.run(tf.variables_initializer(list(variables.values())))
            return saver.save(session, os.path.join(os.fspath(folder), "model.ckpt"), write_meta_graph=False)


def init_checkpoint(folder: str | os.PathLike[str], destination: str) -> str:
    """The export in ``folder`` as a checkpoint in the folder ``destination``; returns its prefix."""
    return write_checkpoint(export_weights(folder)[0], destination)
