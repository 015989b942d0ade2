"""Multi-host training: what `allen-sr train` does with TF_CONFIG, and `allen-sr launch` (Kubeflow).

Two halves that meet in the TF_CONFIG environment variable:

* Inside each replica, :func:`prepare_cluster_task` turns TF_CONFIG (set by the Kubeflow training
  operator, or by hand) into what tensor2tensor 1.15.7 on TensorFlow 2.15 needs to train
  asynchronously with parameter servers. `allen-sr train` calls it before t2t-trainer parses its
  flags; without TF_CONFIG it changes nothing.
* On your machine, `allen-sr launch` builds a ``kubeflow.org/v1`` TFJob whose Chief, Worker and PS
  replicas all run the same `allen-sr train ...` command you would run locally, and prints it as
  YAML (``--dry_run``) or submits it with the Kubernetes Python client.

What t2t 1.15.7 does with TF_CONFIG on TF 2.15, and so what we have to do (found by running a
chief, a worker and a parameter server on 127.0.0.1; tests/test_training.py does it again):

1. ``trainer_lib.create_run_config`` crashes with ``KeyError: 'evaluation_master'`` as soon as the
   cluster has a "chief": its ``is_cloud_async_distributed()`` branch deletes the master keys and
   its TF2 branch deletes them again. On TF2 the first branch does nothing the second does not, so
   we turn it off.
2. ``--master`` is ignored on TF2 (t2t deletes it; the estimator's RunConfig reads TF_CONFIG), and
   the estimator already wraps the model in a ``replica_device_setter`` built from TF_CONFIG:
   variables go to /job:ps, compute stays on this task. t2t's ``--ps_replicas`` / ``--worker_job``
   / ``--worker_replicas`` would stack t2t's own device setter on top of that (t2t's default
   worker job is /job:localhost, wrong in any cluster), so we leave them at their defaults and
   t2t's "single machine" data parallelism runs inside the estimator's placement, which also
   keeps ``--worker_gpu=N`` data shards working per replica. ``--sync`` (compute on parameter
   server GPUs with one master) is a different topology we do not use. Consequence: t2t's
   async-training habit of dividing the learning rate by sqrt(replicas) is not applied.
3. t2t hands the estimator its own session config, so the estimator does not add its default
   device filters, and every session then waits for *every* task in the cluster: a worker that
   starts after the chief finished hangs forever ("CreateSession still waiting for response from
   worker: /job:chief"). We add the estimator's filters (chief/worker see only /job:ps and
   themselves).
4. ``--schedule=train`` calls ``Estimator.train`` directly, which connects to this task's gRPC
   address but never starts a server there, so it waits forever. Only
   ``tf.estimator.train_and_evaluate`` (t2t's default ``continuous_train_and_eval``) starts one.
   For chief/worker tasks with any other schedule we start the in-process server ourselves.
5. Roles: a parameter server only serves variables, so it always runs t2t's
   ``--schedule=run_std_server`` (t2t's own ``t2t-make-tf-configs`` does the same). Workers only
   train (``--schedule=train``): evaluation is the chief's job, and t2t's
   ``continuous_train_and_eval`` would make every worker evaluate at the end too. Workers get a
   ``--worker_id`` > 0 so only the chief writes flags.txt / hparams.json.
6. Parameter servers never exit on their own (``server.join()``). On Kubeflow the operator deletes
   them when the chief succeeds (``runPolicy.cleanPodPolicy: Running``); by hand, stop them with
   SIGTERM once the chief and the workers have exited.

Every path is passed through untouched (no ``os.path.abspath``): t2t reads and writes through
``tf.io.gfile``, so ``gs://`` data and output directories work as they are.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw[:200]!r}")
    cluster = config.get("cluster") or {}
    if not cluster:
        # The estimator treats a TF_CONFIG without a cluster as local training; so do we.
        return None
    if not isinstance(cluster, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in cluster.values()):
        raise ValueError(f'TF_CONFIG "cluster" must map job names to lists of "host:port", got {cluster!r}')
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise ValueError(f"TF_CONFIG cluster has unknown job(s) {unknown}; expected some of {list(TASK_TYPES)}")
    task = config.get("task") or {}
    task_type = task.get("type")
    index = task.get("index", 0)
    if task_type not in TASK_TYPES:
        raise ValueError(f'TF_CONFIG "task.type" is {task_type!r}; expected one of {list(TASK_TYPES)}')
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f'TF_CONFIG "task.index" must be a non-negative integer, got {index!r}')
    if task_type != "evaluator":
        addresses = cluster.get(task_type, [])
        if index >= len(addresses):
            raise ValueError(
                f'TF_CONFIG task {task_type}:{index} is not in the cluster ({task_type} has '
                f"{len(addresses)} address(es): {addresses})")
    if task_type == "worker" and not (cluster.get("chief") or cluster.get("master")):
        raise ValueError("TF_CONFIG cluster has workers but no chief: one replica must be the chief")
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


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given for --name (absl uses the last one), in --name=v or --name v form."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _fix_t2t_for_cluster(task: ClusterTask) -> None:
    """Points 1 and 3 of the module docstring; only called when TF_CONFIG defines a cluster."""
    from tensor2tensor.utils import contrib, trainer_lib

    if contrib.is_tf2 and not getattr(trainer_lib.is_cloud_async_distributed, "_allen_sr", False):
        def is_cloud_async_distributed() -> bool:
            return False

        is_cloud_async_distributed._allen_sr = True  # type: ignore[attr-defined]
        trainer_lib.is_cloud_async_distributed = is_cloud_async_distributed

    original = trainer_lib.create_run_config
    if getattr(original, "_allen_sr", False):
        return
    # The estimator's own defaults (RunConfig._get_default_session_config_distributed).
    filters = {"chief": ["/job:ps", "/job:chief"], "master": ["/job:ps", "/job:master"],
               "worker": ["/job:ps", f"/job:worker/task:{task.task_index}"]}.get(task.task_type)

    def create_run_config(*args: Any, **kwargs: Any) -> Any:
        config = original(*args, **kwargs)
        if filters and config.session_config is not None and not config.session_config.device_filters:
            config.session_config.device_filters.extend(filters)
        return config

    create_run_config._allen_sr = True  # type: ignore[attr-defined]
    trainer_lib.create_run_config = create_run_config


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
    _fix_t2t_for_cluster(task)
    schedule = _flag_value(argv, "schedule") or T2T_DEFAULT_SCHEDULE
    if task.task_type in TRAINER_TASKS and schedule != T2T_DEFAULT_SCHEDULE:
        _start_server(task)
    print(f"allen-sr train: TF_CONFIG task {task.task_type}:{task.task_index} of "
          f"{ {k: len(v) for k, v in task.cluster.items()} }, schedule={schedule}", file=sys.stderr)
    return argv
