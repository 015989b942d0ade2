"""TF_CONFIG -> tensor2tensor: what `allen-sr train` does inside each replica of a cluster.

:func:`prepare_cluster_task` turns TF_CONFIG (set by the Kubeflow training operator, or by hand)
into the t2t-trainer flags and process setup that tensor2tensor 1.15.7 on TensorFlow 2.15 needs
to train asynchronously with parameter servers; without TF_CONFIG it changes nothing. Why each
step is needed: docs/ARCHITECTURE.md, "Multi-host training".
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from allen_sr.errors import InvalidInputError

# t2t-trainer's own default for --schedule (tensor2tensor/bin/t2t_trainer.py).
T2T_DEFAULT_SCHEDULE = "continuous_train_and_eval"
# Task types the estimator knows; "evaluator" is the only one not listed in the cluster itself.
TRAINER_TASKS = ("chief", "master", "worker")
TASK_TYPES = TRAINER_TASKS + ("ps", "evaluator")

# Keeps the in-process gRPC server alive for as long as the training process runs.
_server: Any = None


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a TF_CONFIG cluster."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def single_node(self) -> bool:
        """True for a one-task cluster (e.g. a TFJob with only a Chief): the estimator then trains
        in a local session, as without TF_CONFIG."""
        return sum(len(v) for v in self.cluster.values()) == 1

    @property
    def worker_id(self) -> int:
        """Index among all training replicas: chief/master is 0, worker k is k+1 (t2t's --worker_id)."""
        if self.task_type in ("chief", "master"):
            return 0
        leaders = len(self.cluster.get("chief", [])) + len(self.cluster.get("master", []))
        return leaders + self.task_index


def parse_tf_config(env: Mapping[str, str]) -> ClusterTask | None:
    """The cluster task described by ``env["TF_CONFIG"]``, or None when there is no cluster.

    Raises ValueError naming TF_CONFIG and the bad part when it is malformed: a typo here would
    otherwise surface minutes later as a hang in session creation.
    """
    raw = (env.get("TF_CONFIG") or "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(config, dict):
        raise InvalidInputError(f"TF_CONFIG must be a JSON object, got {raw[:200]!r}")
    cluster = config.get("cluster") or {}
    if not cluster:
        # The estimator treats a TF_CONFIG without a cluster as local training; so do we.
        return None
    if not isinstance(cluster, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in cluster.values()):
        raise InvalidInputError(f'TF_CONFIG "cluster" must map job names to lists of "host:port", got {cluster!r}')
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise InvalidInputError(f"TF_CONFIG cluster has unknown job(s) {unknown}; expected some of {list(TASK_TYPES)}")
    task = config.get("task") or {}
    task_type = task.get("type")
    index = task.get("index", 0)
    if task_type not in TASK_TYPES:
        raise InvalidInputError(f'TF_CONFIG "task.type" is {task_type!r}; expected one of {list(TASK_TYPES)}')
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InvalidInputError(f'TF_CONFIG "task.index" must be a non-negative integer, got {index!r}')
    if task_type != "evaluator":
        addresses = cluster.get(task_type, [])
        if index >= len(addresses):
            raise InvalidInputError(
                f'TF_CONFIG task {task_type}:{index} is not in the cluster ({task_type} has '
                f"{len(addresses)} address(es): {addresses})")
    if task_type == "worker" and not (cluster.get("chief") or cluster.get("master")):
        raise InvalidInputError("TF_CONFIG cluster has workers but no chief: one replica must be the chief")
    return ClusterTask({k: list(v) for k, v in cluster.items()}, task_type, index)


def t2t_flags_from_tf_config(env: Mapping[str, str]) -> list[str]:
    """t2t-trainer flags that this TF_CONFIG task needs, appended after the user's flags.

    Parameter servers always run ``--schedule=run_std_server``; workers always ``--schedule=train``
    with their ``--worker_id``; the chief keeps the user's flags. No cluster: no flags. See the
    module docstring for why t2t's --ps_replicas / --worker_job / --master are left alone.
    """
    task = parse_tf_config(env)
    if task is None:
        return []
    if task.task_type == "ps":
        return ["--schedule=run_std_server"]
    if task.task_type == "worker":
        return ["--schedule=train", f"--worker_id={task.worker_id}"]
    return []


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given for --name (absl uses the last one), in --name=v or --name v form."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _start_server(task: ClusterTask) -> None:
    """Start this task's gRPC server in-process, as tf.estimator.train_and_evaluate would."""
    global _server
    import tensorflow as tf

    if _server is None:
        _server = tf.distribute.Server(
            tf.train.ClusterSpec(task.cluster), job_name=task.task_type,
            task_index=task.task_index, protocol="grpc", start=True)


def prepare_cluster_task(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The t2t-trainer argv for this process under ``env["TF_CONFIG"]``; unchanged without a cluster.

    Called by `allen-sr train` before t2t parses its flags. With a cluster it also patches two t2t
    functions for this process and, for chief/worker tasks whose schedule does not start a gRPC
    server itself, starts one (module docstring, points 1-4).
    """
    argv = list(argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        return argv
    task = parse_tf_config(env)
    if task is None:
        return argv
    argv += t2t_flags_from_tf_config(env)
    from allen_sr.t2t import compat as t2t_compat

    t2t_compat.apply_cluster(task.task_type, task.task_index, task.single_node)
    schedule = flag_value(argv, "schedule") or T2T_DEFAULT_SCHEDULE
    if task.task_type in TRAINER_TASKS and schedule != T2T_DEFAULT_SCHEDULE and not task.single_node:
        _start_server(task)
    print(f"allen-sr train: TF_CONFIG task {task.task_type}:{task.task_index} of "
          f"{ {k: len(v) for k, v in task.cluster.items()} }, schedule={schedule}", file=sys.stderr)
    return argv
