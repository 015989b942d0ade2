"""What `allen-sr train` does for hyperparameter tuning trials (Kubeflow Katib, `allen-sr launch --tune`).

Three things, each small and useful outside Katib too:

1. **The objective as a tensor summary.** t2t's evaluation writes its metrics as ``simple_value``
   scalars tagged ``metrics-<problem>/targets/psnr``. Katib's ``TensorFlowEvent`` metrics collector
   reads *tensor* summaries (tf.summary v2; its newest releases read scalars too) and takes an
   event for metric ``m`` when the tag starts with the part of ``m`` after its last "/", so the
   t2t tag can never match. :func:`install_objective_summaries` makes every evaluation also
   write the PSNR as a scalar-plugin tensor tagged :data:`OBJECTIVE_METRIC` ("psnr") into the
   same event file, which TensorBoard shows as an ordinary scalar chart.
2. **Training budgets that are increments.** t2t's ``--train_steps`` is a total; a trial that
   starts from another trial's checkpoint (population based training) must train a number of
   steps *beyond* that checkpoint. ``--train_steps_increment=N`` (:func:`resolve_train_increment`)
   becomes ``--train_steps=G+N`` with G the global step of the newest checkpoint in
   ``--output_dir``. A record in the folder (:data:`INCREMENT_RECORD`) keeps the target when the
   same run restarts, so a restart does not add another N. A Katib trial's record carries the
   trial's name (:data:`TRIAL_ENV`, set by the trial template): its restart keeps the target even
   when it was reached (killed during the final evaluation, it evaluates again), and only a record
   of another trial (a PBT parent's, copied with its folder) starts a new increment. Without the
   name (a plain run) a record counts as the same run's only while its target is not reached.
3. **Integer hparams given as integral floats.** Katib's PBT perturbs an int parameter by 0.8 or
   1.2 and hands it over as e.g. "120.0", which t2t's hparams parser refuses for an int hparam;
   :func:`integral_int_hparams` turns such values into "120".

Nothing here imports TensorFlow at import time (`allen_sr.commands.tune` reads the constants).
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Callable, Mapping, Sequence

from allen_sr.t2t.cluster import flag_value, parse_tf_config

__all__ = ["FINAL_EVAL_DIR", "INCREMENT_FLAG", "INCREMENT_RECORD", "OBJECTIVE_METRIC", "TRIAL_ENV",
           "checkpoint_step", "hparams_defaults", "increment_target", "install_objective_summaries",
           "integral_int_hparams", "objective_values", "prepare_train_flags",
           "resolve_train_increment", "without_flag", "write_objective_summaries"]

# The tag of the tensor summary, and the metric name Katib's objective uses.
OBJECTIVE_METRIC = "psnr"
# t2t-trainer's evaluations (estimator name "eval") write here, the last at the end of training. A
# trial's TFJob has one Chief and so no TF_CONFIG (the training operator sets it only for more than
# one replica): it also evaluates while it trains; Katib's metricStrategies take the latest value.
# Under TF_CONFIG the final one is the only one (distributed train_and_evaluate leaves the others to
# an "evaluator" task).
FINAL_EVAL_DIR = "eval_eval"
INCREMENT_FLAG = "train_steps_increment"
INCREMENT_RECORD = "train_increment.json"
# The Katib trial's name, which `allen-sr launch --tune` puts in each trial's environment.
TRIAL_ENV = "ALLEN_SR_TRIAL"
_INTEGRAL_FLOAT = r"[+-]?\d+\.0*"


# --- 1. the objective as a tensor summary -------------------------------------------------------

def objective_values(results: Mapping[str, Any]) -> dict[str, float]:
    """{OBJECTIVE_METRIC: value} from an evaluation's results, or {} when they hold no PSNR.

    t2t names each metric ``metrics-<problem>/<feature>/<metric>``; only a single
    ``.../targets/psnr`` entry is taken (with several problems it would be ambiguous).
    """
    found = [v for k, v in results.items()
             if k.startswith("metrics-") and k.endswith(f"/targets/{OBJECTIVE_METRIC}")]
    return {OBJECTIVE_METRIC: float(found[0])} if len(found) == 1 else {}


def write_objective_summaries(output_dir: str, results: Mapping[str, Any], step: int) -> None:
    """Append :func:`objective_values` to ``output_dir``'s event file as scalar-plugin tensors.

    The same protos `tf.summary.scalar` (TF 2) writes: a float32 scalar tensor with the
    "scalars" plugin's metadata, so TensorBoard draws it and Katib's collector finds it.
    """
    values = objective_values(results)
    if not values:
        return
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, metadata=metadata,
                                  tensor=tf.make_tensor_proto(np.float32(value)))
        for tag, value in values.items()])
    writer = tf.compat.v1.summary.FileWriterCache.get(output_dir)
    writer.add_summary(summary, int(step))
    writer.flush()


def install_objective_summaries() -> bool:
    """Make every estimator evaluation of this process also write :func:`write_objective_summaries`
    (the shim `allen_sr.t2t.compat.apply_evaluation_writer`); False if it could not be installed."""
    from allen_sr.t2t import compat

    installed = compat.apply_evaluation_writer(write_objective_summaries)
    if not installed:
        print(f"allen-sr train: the estimator has no _write_dict_to_summary; the {OBJECTIVE_METRIC!r} "
              "tensor summary for Katib is not written", file=sys.stderr)
    return installed


# --- 2. training budgets that are increments ----------------------------------------------------

def checkpoint_step(output_dir: str) -> int:
    """Global step of the newest checkpoint in ``output_dir``; 0 when it holds none."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(output_dir):
        return 0
    path = tf.train.latest_checkpoint(output_dir)
    return 0 if path is None else int(tf.train.load_variable(path, "global_step"))


def _read_record(path: str) -> dict[str, Any] | None:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as handle:
            record = json.load(handle)
        out: dict[str, Any] = {k: int(record[k]) for k in ("increment", "start_step", "train_steps")}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable: start a new increment
    if isinstance(record.get("trial"), str):
        out["trial"] = record["trial"]
    return out


def _write_record(path: str, record: Mapping[str, Any]) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(dict(record)) + "\n")


def increment_target(increment: int, current: int, record: Mapping[str, Any] | None,
                     trial: str | None = None) -> int:
    """The --train_steps for ``increment`` more steps from global step ``current``.

    With a ``trial`` name: a record of that trial means it restarted, reached its target or not
    (its last checkpoint may precede the final evaluation): keep the target; a record of another
    trial (a PBT parent's) or of none starts a new increment here. Without one: a record of an
    unfinished run of the same increment (start <= current < target) is that run restarted; a
    reached target (e.g. a parent run's) starts a new increment.
    """
    if record is None or record["increment"] != increment or not record["start_step"] <= current:
        return current + increment
    if trial:
        return record["train_steps"] if record.get("trial") == trial else current + increment
    return record["train_steps"] if current < record["train_steps"] else current + increment


def without_flag(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without any ``--name=value`` / ``--name value`` (absl's two forms)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith(f"--{name}="):
            continue
        elif arg == f"--{name}":
            skip = i + 1 < len(argv)
        else:
            out.append(arg)
    return out


def resolve_train_increment(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``--train_steps_increment=N`` -> ``--train_steps=G+N`` (module docstring, point 2).

    Only the chief (or a run without TF_CONFIG) writes the record; workers read it, parameter
    servers ignore training steps. ValueError for a bad value or for --train_steps beside it.
    """
    raw = flag_value(argv, INCREMENT_FLAG)
    if raw is None:
        return list(argv)
    try:
        increment = int(raw)
    except ValueError:
        increment = 0
    if increment < 1:
        raise ValueError(f"--{INCREMENT_FLAG}={raw}: give a whole number of steps >= 1")
    if flag_value(argv, "train_steps") is not None:
        raise ValueError(f"--{INCREMENT_FLAG} and --train_steps both set the end of training: "
                         "give one (--train_steps counts from step 0)")
    output_dir = flag_value(argv, "output_dir")
    if not output_dir:
        raise ValueError(f"--{INCREMENT_FLAG} needs --output_dir: the steps count from its newest checkpoint")
    argv = without_flag(argv, INCREMENT_FLAG)
    task = parse_tf_config(env)
    role = task.task_type if task is not None else "chief"
    if role == "ps":
        return argv
    current = checkpoint_step(output_dir)
    path = f"{output_dir.rstrip('/')}/{INCREMENT_RECORD}"
    record = _read_record(path)
    trial = env.get(TRIAL_ENV) or None
    target = increment_target(increment, current, record, trial)
    entry: dict[str, Any] = {"increment": increment, "start_step": current, "train_steps": target}
    if trial:
        entry["trial"] = trial
    if role in ("chief", "master") and (record is None or record["train_steps"] != target
                                        or record.get("trial") != entry.get("trial")):
        _write_record(path, entry)
    plan = (f"training to step {target}" if target > current else
            f"trial {trial} reached its step {target} before it restarted: no more training, the final evaluation")
    print(f"allen-sr train: --{INCREMENT_FLAG}={increment}: newest checkpoint in {output_dir} is "
          f"at step {current}; {plan}", file=sys.stderr)
    return argv + [f"--train_steps={target}"]


# --- 3. integer hparams given as integral floats ------------------------------------------------

def hparams_defaults(hparams_set: str) -> dict[str, Any]:
    """{name: default value} of a registered hparams set (tensor2tensor is loaded here).

    UnknownNameError (a ValueError naming the closest registered sets) for an unknown name.
    """
    from allen_sr.t2t.names import check_names

    check_names(hparams_set=hparams_set)
    from tensor2tensor.utils import registry

    return dict(registry.hparams(hparams_set).values())


def _rewrite_overrides(overrides: str, ints: set[str]) -> str:
    pattern = re.compile(rf"(^|,)([A-Za-z_][A-Za-z0-9_]*)=({_INTEGRAL_FLOAT})(?=,|$)")

    def fix(match: re.Match[str]) -> str:
        lead, name, value = match.groups()
        return f"{lead}{name}={int(float(value))}" if name in ints else match.group(0)

    return pattern.sub(fix, overrides)


def integral_int_hparams(argv: Sequence[str],
                         defaults: Callable[[str], Mapping[str, Any]] = hparams_defaults) -> list[str]:
    """``--hparams`` with integral floats ("120.0") written as ints ("120") for int hparams.

    Floats, strings and lists are left as they are; the types come from the ``--hparams_set``
    (looked up only when some value looks like an integral float).
    """
    argv = list(argv)
    overrides, hparams_set = flag_value(argv, "hparams"), flag_value(argv, "hparams_set")
    if not overrides or not hparams_set or not re.search(rf"=({_INTEGRAL_FLOAT})(,|$)", overrides):
        return argv
    try:
        values = defaults(hparams_set)
    except ValueError:
        return argv  # an unknown set: `allen-sr train` reports it with the closest names
    ints = {k for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--hparams="):
            arg = "--hparams=" + _rewrite_overrides(arg.split("=", 1)[1], ints)
        elif i > 0 and argv[i - 1] == "--hparams":
            arg = _rewrite_overrides(arg, ints)
        out.append(arg)
    return out


def prepare_train_flags(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Everything above for one `allen-sr train` process, before t2t parses its flags.

    ValueError (a user's mistake, one line) for a bad --train_steps_increment.
    """
    argv = list(argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        return argv
    argv = resolve_train_increment(integral_int_hparams(argv), env)
    install_objective_summaries()
    return argv
