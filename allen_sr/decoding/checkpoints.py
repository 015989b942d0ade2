"""Reading what `t2t-trainer` wrote: hparams as it built them, and checkpoint variables by name.

Variable names are matched without tensor2tensor's data-parallelism scopes
(:func:`canonical_variable_name`); one matcher (:func:`match_variables`) serves every decoder that
restores a graph, including restoring trainable weights from their moving averages.
"""
from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from allen_sr.models.variables import EMA_NAME
from allen_sr.t2t.names import parse_overrides, register_all
from allen_sr.errors import InvalidInputError, MissingInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

# Hparams a set turned on after runs had been trained without them, with the value that means "off":
# a run whose hparams.json does not name one was trained without it, whatever its set says now. The
# Image Transformer's bicubic prior and input_patch head came on 2026-12-01 (runs and exports made
# before have neither head); the options added since then only train (context_bicubic, ev_loss_weight,
# self_condition, degradation) or only act with the prior (prior_sigma, free_logit_scale).
ADDED_LATER = {"mean_correction": 0.0, "bicubic_prior": False, "input_patch": 0}


def run_folder(output_dir: str | os.PathLike[str]) -> str:
    """The run folder of ``output_dir``: itself, or the folder of a checkpoint prefix (RUN/model.ckpt-N)."""
    import tensorflow as tf

    path = os.fspath(output_dir)
    return path if tf.io.gfile.isdir(path) else os.path.dirname(path)


def load_hparams(
    hparams_set: str,
    problem: Any,
    overrides: str = "",
    output_dir: str | os.PathLike[str] | None = None,
) -> "HParams":
    """The model hparams exactly as `t2t-trainer` builds them.

    Starts from the registered ``hparams_set``, then applies the run's hparams.json (``output_dir``
    is its folder or a checkpoint prefix in it) if the trainer wrote one (so a checkpoint is read
    with the hparams it was trained with), then the ``overrides`` string ("k=v,..."), then the problem's
    hparams (``problem`` is a registered name or a Problem instance; it sets modalities, and for our
    problems `img_len`/`num_channels`).
    An hparam of :data:`ADDED_LATER` that hparams.json does not record is off.
    """
    register_all()
    import tensorflow as tf
    from tensor2tensor.utils import hparams_lib

    hparams_path = os.path.join(run_folder(output_dir), "hparams.json") if output_dir else None
    if hparams_path and not tf.io.gfile.exists(hparams_path):
        hparams_path = None
    hparams = hparams_lib.create_hparams(hparams_set, hparams_path=hparams_path)
    if hparams_path:
        with tf.io.gfile.GFile(hparams_path) as handle:
            recorded = json.loads(handle.read())
        for name, off in ADDED_LATER.items():
            if name in hparams.values() and name not in recorded:
                hparams.set_hparam(name, off)
    if overrides:
        parse_overrides(hparams, overrides, hparams_set)
    hparams_lib.add_problem_hparams(hparams, problem)
    return hparams


def find_checkpoint(path: str | os.PathLike[str]) -> str:
    """The newest checkpoint in an output dir, or ``path`` itself if it is a checkpoint prefix."""
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isdir(path):
        ckpt = tf.train.latest_checkpoint(path)
        if ckpt is None:
            state = tf.train.get_checkpoint_state(path)
            if state is not None and state.model_checkpoint_path:  # named, but its files are gone
                named = os.path.join(path, os.path.basename(state.model_checkpoint_path))
                there = checkpoint_prefixes(path)
                use = f": pass --output_dir {there[-1]} to use the newest one there" if there else ""
                raise MissingInputError(f"{path}: its 'checkpoint' file names {os.path.basename(named)}, whose "
                                        f"files are missing ({named}.index){use}")
            raise MissingInputError(
                f"no checkpoint in {path} (expected a 'checkpoint' file from t2t-trainer)")
        return ckpt
    if os.path.exists(path + ".index"):
        return path
    raise MissingInputError(f"{path} is neither an output dir with checkpoints nor a checkpoint prefix")


def checkpoint_prefixes(folder: str) -> list[str]:
    """The checkpoint prefixes in ``folder`` that have an index file, oldest step first."""
    import tensorflow as tf

    return sorted((p[:-len(".index")] for p in tf.io.gfile.glob(os.path.join(folder, "*.index"))), key=step_in_name)


def step_in_name(prefix: str) -> int:
    """The step in a checkpoint prefix's name (``model.ckpt-30`` -> 30; -1 without one)."""
    found = re.search(r"-(\d+)$", prefix)
    return int(found.group(1)) if found else -1


def canonical_variable_name(name: str) -> str:
    """A checkpoint variable's name without the data-parallelism name scope.

    In TF 2.15 graph mode, t2t's Keras-style dense layers take their variable names from the name
    scope, so `t2t-trainer` writes e.g.
    ``img2img_transformer/parallel_0_4/img2img_transformer/img2img_transformer/body/...``; the
    ``parallel_0_4`` counter depends on how many ops were built before the model. This returns
    ``img2img_transformer/body/...`` so that names match however the graph was built.
    """
    name = name.split(":")[0]
    return re.sub(r"^([^/]+)/parallel_\d+(?:_\d+)*/(?:\1/)+", r"\1/", name)


def checkpoint_name_map(names: Sequence[str], model_name: str) -> dict[str, str]:
    """{canonical name: checkpoint name} for the model's variables (optimizer slots excluded)."""
    mapping: dict[str, str] = {}
    for name in names:
        if not name.startswith(model_name + "/"):
            continue  # global_step, optimizer slots ("training/..."), loss averages
        key = canonical_variable_name(name)
        if key in mapping and mapping[key] != name:
            raise InvalidInputError(f"checkpoint variables {mapping[key]} and {name} both map to {key}")
        mapping[key] = name
    return mapping


def match_variables(
    variables: Sequence[Any],
    checkpoint: str,
    model_name: str,
    averaged: Sequence[Any] = (),
    hint: str = "--model/--hparams_set/--hparams",
) -> dict[str, Any]:
    """{checkpoint name: graph variable} for a graph's ``variables``, matched by canonical name.

    Variables in ``averaged`` are restored from their moving average (``<name>/EMA_NAME``).
    Raises ValueError naming the checkpoint and a few missing variables if any is absent;
    ``hint`` says which settings decide the variables.
    """
    in_ckpt = {canonical_variable_name(n): n for n in variable_shapes(checkpoint)}
    averaged_ids = {id(v) for v in averaged}
    found: dict[str, Any] = {}
    missing = []
    for var in variables:
        key = canonical_variable_name(var.op.name)
        if id(var) in averaged_ids:
            key = f"{key}/{EMA_NAME}"
        if key in in_ckpt:
            found[in_ckpt[key]] = var
        else:
            missing.append(key)
    if missing:
        raise InvalidInputError(
            f"checkpoint {checkpoint} lacks {len(missing)} variable(s) of {model_name}, e.g. "
            f"{missing[:3]}: was it trained with this {hint}?")
    return found


def read_model_weights(checkpoint: str | os.PathLike[str], model_name: str) -> dict[str, np.ndarray]:
    """{canonical name: array} of the model's variables in a checkpoint (prefix or output dir);
    InvalidInputError if its files are cut short or missing (:func:`damaged_error`)."""
    import tensorflow as tf

    prefix = find_checkpoint(checkpoint)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = checkpoint_name_map(list(reader.get_variable_to_shape_map()), model_name)
        return {key: reader.get_tensor(name) for key, name in names.items()}
    except (tf.errors.OpError, IndexError) as exc:  # IndexError: a data file cut short
        _raise_if_damaged(prefix, exc)
        raise


def variable_shapes(checkpoint: str) -> dict[str, list[int]]:
    """{name: shape} of a checkpoint prefix's variables (its index file); InvalidInputError if unreadable."""
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    except tf.errors.OpError as exc:
        _raise_if_damaged(checkpoint, exc)
        raise


def restore(saver: Any, session: Any, checkpoint: str) -> None:
    """``saver.restore(session, checkpoint)``, with :func:`damaged_error` for files cut short or missing."""
    import tensorflow as tf

    try:
        saver.restore(session, checkpoint)
    except (tf.errors.OpError, IndexError) as exc:
        _raise_if_damaged(checkpoint, exc)
        raise


def _raise_if_damaged(prefix: str, exc: BaseException) -> None:
    error = damaged_error(prefix)
    if error is not None:
        raise error from exc


def intact(prefix: str) -> bool:
    """True when every variable of the checkpoint ``prefix`` reads whole from its files."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError):
        return False
    return True


def damaged_error(prefix: str) -> InvalidInputError | None:
    """The one-line error for a checkpoint whose files do not read whole (a copy or a save cut short, a
    shard deleted), naming the newest older intact checkpoint in its folder; None if it reads whole
    (the failure was something else, and keeps its own error)."""
    import tensorflow as tf

    if intact(prefix):
        return None
    shards = tf.io.gfile.glob(f"{prefix}.data-*-of-*")
    of = re.search(r"-of-(\d+)$", shards[0]) if shards else None
    expected = [f"{prefix}.data-{i:05d}-of-{of.group(1)}" for i in range(int(of.group(1)))] if of else []
    gone = [os.path.basename(p) for p in expected if not tf.io.gfile.exists(p)]
    why = (f"{', '.join(gone)} missing" if gone else "its data files are missing" if not shards
           else "a file of it is cut short or unreadable")
    older = [p for p in checkpoint_prefixes(os.path.dirname(prefix) or ".") if step_in_name(p) < step_in_name(prefix)]
    good = next((p for p in reversed(older) if intact(p)), None)
    use = (f"pass --output_dir {good} to use the newest intact one there" if good
           else "copy the run again from where it was trained, or train it again")
    return InvalidInputError(f"checkpoint {prefix} is damaged ({why}): {use}")


def checkpoint_model(checkpoint: str | os.PathLike[str]) -> str:
    """The t2t model name a checkpoint was written by (its variables' top scope)."""
    scopes = {name.split("/")[0] for name in variable_shapes(os.fspath(checkpoint)) if "/" in name}
    scopes -= {"training", "losses_avg", "train_stats", "global_step", "train_clock"}
    if len(scopes) != 1:
        raise InvalidInputError(f"cannot tell which model wrote checkpoint {checkpoint} (variable scopes "
                                f"{sorted(scopes)}): pass --model")
    return scopes.pop()
