"""Every shim tensor2tensor 1.15.7 needs on Python 3.11 + TensorFlow 2.15.1, in one place.

tensor2tensor's last release (2020) and tf-slim 1.1.0 reach into TensorFlow internals that moved
in later releases. Each shim below says what breaks without it; tests/test_t2t_compat.py shows
each failure in a fresh interpreter and that the shim fixes it. `apply()` is idempotent and is
called in one place, `problems/__init__.py` (`allen_sr.problems`), which tensor2tensor's tools
import as their `--t2t_usr_dir` and `allen_sr.t2t.names.register_all` imports for our commands.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Mapping

from allen_sr.errors import InvalidInputError

_applied = False
log = logging.getLogger(__name__)


def _restore_control_flow_ops() -> None:
    """tf-slim's image decoder calls `control_flow_ops.case` / `cond`.

    TF 2.13+ no longer exposes them in `tensorflow.python.ops.control_flow_ops`, so reading any
    image record through `tfexample_decoder.Image` (every image problem) raises AttributeError.
    """
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_ops

    for name, fn in (("case", tf.compat.v1.case), ("cond", tf.compat.v1.cond)):
        if not hasattr(control_flow_ops, name):
            setattr(control_flow_ops, name, fn)


def _restore_ops_tensor_types() -> None:
    """tf-slim's `optimize_loss` (t2t's optimizer path) checks `ops.Tensor` / `ops.IndexedSlices`.

    TF 2.15 moved both out of `tensorflow.python.framework.ops`, so the first training step fails
    with AttributeError.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    if not hasattr(ops, "IndexedSlices"):
        ops.IndexedSlices = tf.IndexedSlices


def _skip_invalid_image_summaries() -> None:
    """`Img2imgTransformer.body` writes image summaries of already-embedded 4-D tensors.

    Their last dimension is the hidden size, not 1/3/4 channels; TF 2.15's summary op raises
    InvalidArgumentError on them at run time, which kills training at the first summary step.
    We skip only summaries whose static channel count cannot be an image.
    """
    import tensorflow as tf

    summary = tf.compat.v1.summary
    original = summary.image
    if getattr(original, "_allen_sr_shim", False):
        return

    def image(name, tensor, *args, **kwargs):
        channels = tensor.shape[-1] if tensor.shape.rank is not None else None
        if channels is not None and channels not in (1, 3, 4):
            log.debug("skipping image summary %s: %s channels", name, channels)
            return None
        return original(name, tensor, *args, **kwargs)

    image._allen_sr_shim = True
    summary.image = image


def _share_layers_through_variable_scopes() -> None:
    """t2t's layers (`common_layers.layers()`: every dense of attention, feed-forward and output).

    With TF 2 behaviour on, t2t picks Keras layers, whose variables are named by the *name* scope
    and ignore `variable_scope(reuse=True)`. So each data shard of `--worker_gpu=N` (t2t's
    `parallel_i` scopes) trains its own copy of every dense weight, and any second pass of a model
    over its own variables (scheduled sampling, our ``self_condition``) makes new ones. t2t 1.15
    was written for `tf.compat.v1.layers`, which name and share variables by variable scope: we
    give it those. Checkpoints written before this fix (``.../parallel_0_4/...`` names) still
    decode: `decoding.checkpoints.canonical_variable_name` maps both namings to one.
    """
    import tensorflow as tf
    from tensor2tensor.layers import common_layers

    common_layers._cached_layers = tf.compat.v1.layers


class WarmStartError(InvalidInputError):
    """A `--warm_start_from` checkpoint that does not fit the model (the message says which)."""


# Set by `allen-sr train --init_from` (allen_sr.commands.train): every trainable variable must come
# from the checkpoint, as it holds the whole model being fine-tuned.
warm_start_strict = False


def _warm_start_from_checkpoints() -> None:
    """t2t-trainer's `--warm_start_from` (`t2t_model.initialize_from_ckpt`).

    It reads the checkpoint through `contrib.framework().load_checkpoint`, which t2t's TF 2
    stand-in for `tf.contrib` lacks: warm starting raises AttributeError before the first step.
    The same logic with TensorFlow's own functions: each trainable variable found in the checkpoint
    under its name starts from it, the others keep their initialisation (named in the log), and a
    run with a checkpoint of its own continues from that. A variable of another shape there, or a
    checkpoint with none of the model's variables, is refused naming it (t2t would have failed
    later, or silently started from scratch). With ``warm_start_strict`` (`allen-sr train
    --init_from`: the checkpoint is the whole model) a missing variable is refused too, and the
    model's non-trainable variables found there (its input statistics) are restored as well, so
    that training starts from exactly that model.
    """
    import tensorflow as tf
    from tensor2tensor.utils import t2t_model

    if getattr(t2t_model.initialize_from_ckpt, "_allen_sr_shim", False):
        return

    def initialize_from_ckpt(ckpt_dir: str, hparams: Any) -> None:
        model_dir = hparams.get("model_dir", None)
        if model_dir and tf.train.latest_checkpoint(model_dir) is not None:
            return  # resuming: the run's own checkpoint wins
        shapes = tf.train.load_checkpoint(ckpt_dir).get_variable_to_shape_map()
        found, missing, wrong = {}, [], []
        for var in tf.compat.v1.trainable_variables():
            name = var.name.split(":")[0]
            if name not in shapes:
                missing.append(name)
            elif list(shapes[name]) != var.shape.as_list():
                wrong.append(f"{name} is {list(shapes[name])} there, {var.shape.as_list()} here")
            else:
                found[name] = var
        if wrong:
            raise WarmStartError(f"warm start from {ckpt_dir}: {len(wrong)} variable(s) of another shape "
                                 f"({'; '.join(wrong[:3])}): train with the hparams it was trained with")
        if warm_start_strict:  # the model's other variables too (input statistics), not optimizer slots
            trainable = list(found) + missing
            scopes = {name.split("/")[0] for name in trainable}
            for var in tf.compat.v1.global_variables():
                name = var.name.split(":")[0]
                if (name not in found and name in shapes and name.split("/")[0] in scopes
                        and list(shapes[name]) == var.shape.as_list()
                        and not any(name.startswith(t + "/") for t in trainable)):
                    found[name] = var
        if not found or (missing and warm_start_strict):
            raise WarmStartError(f"warm start from {ckpt_dir}: {len(missing)} of this model's variables are "
                                 f"not there ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): "
                                 "start from a model of the same kind and hparams set (an export that folded "
                                 "them into other constants cannot be fine-tuned: start from its run folder)")
        for name in missing:
            tf.compat.v1.logging.warning("warm start: %s is not in %s; it keeps its initialisation", name, ckpt_dir)
        tf.compat.v1.logging.info("warm start: %d variables from %s", len(found), ckpt_dir)
        tf.compat.v1.train.init_from_checkpoint(ckpt_dir, found)

    initialize_from_ckpt._allen_sr_shim = True  # type: ignore[attr-defined]
    t2t_model.initialize_from_ckpt = initialize_from_ckpt


SHIMS = (
    _restore_control_flow_ops,
    _restore_ops_tensor_types,
    _skip_invalid_image_summaries,
    _share_layers_through_variable_scopes,
    _warm_start_from_checkpoints,
)


def apply() -> None:
    """Apply every shim once. Safe to call many times."""
    global _applied
    if _applied:
        return
    # Import-time notices from end-of-life dependencies that say nothing actionable to our users.
    warnings.filterwarnings("ignore", message=r"(?s).*TensorFlow Addons", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*google.api_core", category=FutureWarning)
    # tensor2tensor's layers are tf.compat.v1.layers on purpose (_share_layers_through_variable_scopes).
    warnings.filterwarnings("ignore", message=r"`tf\.layers\.\w+` is deprecated", category=UserWarning)
    for shim in SHIMS:
        shim()
    _applied = True


def apply_cluster(task_type: str, task_index: int, single_node: bool) -> None:
    """Shims for multi-host training through TF_CONFIG (allen_sr.t2t.cluster.prepare_cluster_task).

    Only applied when TF_CONFIG defines a cluster; tests/test_training.py trains a real chief,
    ps and worker on 127.0.0.1 with them.
    1. t2t's `create_run_config` raises KeyError 'evaluation_master' on any cluster with a chief
       (`is_cloud_async_distributed` treats TF2 like TF1 Cloud ML): it is switched off on TF2,
       where it adds nothing.
    2. t2t sets no device filters, so a worker waits forever for a chief that has finished, and
       sets `isolate_session_state=True`, so a worker never sees the variables on the ps: we add
       the estimator's default filters and share session state, for multi-task clusters only.
    """
    apply()
    from tensor2tensor.utils import contrib, trainer_lib

    if contrib.is_tf2 and not getattr(trainer_lib.is_cloud_async_distributed, "_allen_sr_shim", False):
        def is_cloud_async_distributed() -> bool:
            return False

        is_cloud_async_distributed._allen_sr_shim = True  # type: ignore[attr-defined]
        trainer_lib.is_cloud_async_distributed = is_cloud_async_distributed

    original = trainer_lib.create_run_config
    if getattr(original, "_allen_sr_shim", False):
        return
    # The estimator's own defaults (RunConfig._get_default_session_config_distributed). A
    # one-task cluster trains in a local session, where there is nothing to filter.
    filters = {"chief": ["/job:ps", "/job:chief"], "master": ["/job:ps", "/job:master"],
               "worker": ["/job:ps", f"/job:worker/task:{task_index}"]}.get(task_type)
    if single_node:
        filters = None

    def create_run_config(*args, **kwargs):
        config = original(*args, **kwargs)
        session_config = config.session_config
        if filters and session_config is not None:
            if not session_config.device_filters:
                session_config.device_filters.extend(filters)
            session_config.isolate_session_state = False
        return config

    create_run_config._allen_sr_shim = True  # type: ignore[attr-defined]
    trainer_lib.create_run_config = create_run_config


def apply_evaluation_writer(also_write: Callable[[str, Mapping[str, Any], int], None]) -> bool:
    """Make every estimator evaluation also call ``also_write(output_dir, results, step)``.

    For Katib's metrics collector (allen_sr.t2t.tuning): the estimator writes evaluation results
    only through its private ``_write_dict_to_summary`` (no public hook), as ``simple_value``
    scalars; the collector reads tensor summaries. Wraps that function once (idempotent) and
    returns True, or returns False, changing nothing, if the installed tensorflow_estimator has
    no such function. tests/test_launch_tune.py reads the events of a real trial run.
    """
    import importlib

    module = importlib.import_module("tensorflow_estimator.python.estimator.estimator")
    original = getattr(module, "_write_dict_to_summary", None)
    if original is None:
        return False
    if getattr(original, "_allen_sr_shim", False):
        return True

    def write_dict_to_summary(output_dir: str, dictionary: Mapping[str, Any], current_global_step: int) -> None:
        original(output_dir, dictionary, current_global_step)
        also_write(output_dir, dictionary, current_global_step)

    write_dict_to_summary._allen_sr_shim = True  # type: ignore[attr-defined]
    module._write_dict_to_summary = write_dict_to_summary
    return True
