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
   we turn it off (allen_sr.t2t_compat.apply_cluster, with point 3).
2. ``--master`` is ignored on TF2 (t2t deletes it; the estimator's RunConfig reads TF_CONFIG), and
   the estimator already wraps the model in a ``replica_device_setter`` built from TF_CONFIG:
   variables go to /job:ps, compute stays on this task. t2t's ``--ps_replicas`` / ``--worker_job``
   / ``--worker_replicas`` would stack t2t's own device setter on top of that (t2t's default
   worker job is /job:localhost, wrong in any cluster), so we leave them at their defaults and
   t2t's "single machine" data parallelism runs inside the estimator's placement: with
   ``--worker_gpu=N`` each replica computes N shards on its own GPUs (checked on 127.0.0.1 with
   N=2, soft-placed on CPUs there, as the variables t2t asks for on the ps's GPU land on its
   CPU). ``--sync`` (compute on parameter server GPUs with one master) is a different topology
   we do not use. Consequence: t2t's async-training habit of dividing the learning rate by
   sqrt(replicas) is not applied.
3. t2t hands the estimator its own session config, which breaks between-graph training twice:
   the estimator then adds none of its default device filters, so every session waits for
   *every* task in the cluster (a worker that starts after the chief finished hangs forever:
   "CreateSession still waiting for response from worker: /job:chief"); and t2t sets
   ``isolate_session_state``, so a worker never sees the variables the chief initialised on the
   parameter server ("Waiting for model to be ready ... Variables not initialized", forever). We
   add the estimator's filters (chief/worker see only /job:ps and themselves) and share state.
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
    from allen_sr import t2t_compat

    t2t_compat.apply_cluster(task.task_type, task.task_index, task.single_node)
    schedule = _flag_value(argv, "schedule") or T2T_DEFAULT_SCHEDULE
    if task.task_type in TRAINER_TASKS and schedule != T2T_DEFAULT_SCHEDULE and not task.single_node:
        _start_server(task)
    print(f"allen-sr train: TF_CONFIG task {task.task_type}:{task.task_index} of "
          f"{ {k: len(v) for k, v in task.cluster.items()} }, schedule={schedule}", file=sys.stderr)
    return argv


# --- Kubeflow TFJob ------------------------------------------------------------------------------

TFJOB_API_VERSION = "kubeflow.org/v1"
TFJOB_GROUP, TFJOB_VERSION, TFJOB_PLURAL = "kubeflow.org", "v1", "tfjobs"
# The training operator finds the TensorFlow container of each replica by this name.
CONTAINER_NAME = "tensorflow"
GPU_RESOURCE = "nvidia.com/gpu"
VOLUME_NAME = "allen-sr-data"
REQUIRED_TRAINER_FLAGS = ("problem", "model", "hparams_set")
# Set per replica by prepare_cluster_task from the TF_CONFIG the operator injects; given by hand
# they would fight it (see the module docstring).
CLUSTER_FLAGS = ("master", "ps_replicas", "ps_job", "ps_gpu", "worker_replicas", "worker_job",
                 "worker_id", "sync")


def build_parser() -> argparse.ArgumentParser:
    """The `allen-sr launch` argument parser; unknown --flags are t2t-trainer flags."""
    parser = argparse.ArgumentParser(
        prog="allen-sr launch", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build a Kubeflow TFJob (kubeflow.org/v1) in which a Chief, N Workers and N parameter\n"
            "servers all run the same `allen-sr train ...` you would run locally, and submit it\n"
            "(or print it with --dry_run). The training operator sets TF_CONFIG in every replica;\n"
            "`allen-sr train` turns it into each replica's role. Any flag not listed below is a\n"
            "t2t-trainer flag and is passed through, e.g. --problem=... --model=img2img_transformer\n"
            "--hparams_set=img2img_allen_multigpu --train_steps=100000."),
        epilog=(
            "Data and output must be visible to every replica: gs:// paths (read and written\n"
            "through tf.io.gfile; give the pods credentials, e.g. Workload Identity), or local\n"
            "paths under --mount_path of a --pvc (ReadWriteMany when there are workers)."))
    parser.add_argument("--name", required=True, help="TFJob name (lowercase letters, digits, '-')")
    parser.add_argument("--image", required=True, help="training image, built from this repo's Dockerfile")
    parser.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    parser.add_argument("--workers", type=int, default=0, help="Worker replicas besides the Chief (default 0)")
    parser.add_argument("--ps", type=int, default=0, help="parameter-server replicas (default 0; >= 1 with workers)")
    parser.add_argument("--gpus_per_worker", type=int, default=0,
                        help="GPUs of the Chief and of each Worker; also their --worker_gpu (default 0)")
    parser.add_argument("--data_dir", required=True, help="dataset folder as the pods see it (gs://... or under --mount_path)")
    parser.add_argument("--output_dir", required=True, help="checkpoint folder as the pods see it (gs://... or under --mount_path)")
    parser.add_argument("--pvc", help="PersistentVolumeClaim holding local --data_dir/--output_dir")
    parser.add_argument("--mount_path", help="where every replica mounts --pvc, e.g. /data")
    parser.add_argument("--backoff_limit", type=int, default=3,
                        help="restarts of failed replicas before the job fails (default 3)")
    parser.add_argument("--dry_run", action="store_true", help="print the TFJob as YAML; contact no cluster")
    return parser


def _is_remote(path: str) -> bool:
    return "://" in path


def _flag_names(flags: Sequence[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in flags if a.startswith("--")]


def validate_launch(args: argparse.Namespace, trainer_flags: Sequence[str]) -> None:
    """Raise ValueError naming the bad option when the job could not work as asked.

    Everything here would otherwise surface only after pods were scheduled (or never: a worker
    without a parameter server trains a private copy of the model).
    """
    import posixpath
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,43}[a-z0-9])?", args.name):
        # Pods and services are named <name>-worker-<i>; they must stay valid 63-character DNS labels.
        raise ValueError(f"--name {args.name!r}: use 1-45 lowercase letters, digits or '-', "
                         "starting and ending with a letter or digit")
    if not args.image.strip():
        raise ValueError("--image is empty")
    for option in ("workers", "ps", "gpus_per_worker", "backoff_limit"):
        if getattr(args, option) < 0:
            raise ValueError(f"--{option} must be >= 0, got {getattr(args, option)}")
    if args.workers > 0 and args.ps == 0:
        raise ValueError(f"--workers {args.workers} needs --ps >= 1: the replicas share variables "
                         "through parameter servers")
    # A bare word is fine only as the value of the flag before it (absl accepts "--flag value").
    stray = [a for i, a in enumerate(trainer_flags) if not a.startswith("--") and not (
        i > 0 and trainer_flags[i - 1].startswith("--") and "=" not in trainer_flags[i - 1])]
    if stray:
        raise ValueError(f"unexpected argument(s) {stray}: trainer flags look like --name=value")
    names = _flag_names(trainer_flags)
    missing = [f"--{n}" for n in REQUIRED_TRAINER_FLAGS if n not in names]
    if missing:
        raise ValueError(f"missing trainer flag(s) {' '.join(missing)}: every replica needs them")
    owned = [f"--{n}" for n in names if n in CLUSTER_FLAGS]
    if owned:
        raise ValueError(f"{' '.join(owned)}: set per replica from TF_CONFIG by allen-sr train; "
                         "use --workers/--ps instead")
    if "worker_gpu" in names:
        raise ValueError("--worker_gpu: use --gpus_per_worker, which also requests the GPUs")
    local = [(o, p) for o, p in (("--data_dir", args.data_dir), ("--output_dir", args.output_dir))
             if not _is_remote(p)]
    if (args.pvc is None) != (args.mount_path is None):
        raise ValueError("--pvc and --mount_path go together")
    if local and args.pvc is None:
        option, path = local[0]
        raise ValueError(f"{option} {path} is a local path: give --pvc NAME --mount_path DIR so "
                         "every replica sees it, or use a gs:// path")
    if args.pvc is not None:
        if not local:
            raise ValueError("--pvc is only for local --data_dir/--output_dir paths; both are remote")
        mount = posixpath.normpath(args.mount_path)
        if not posixpath.isabs(mount) or mount == "/":
            raise ValueError(f"--mount_path {args.mount_path!r} must be an absolute folder other than /")
        for option, path in local:
            if not (posixpath.isabs(path) and (posixpath.normpath(path) + "/").startswith(mount + "/")):
                raise ValueError(f"{option} {path} is not under --mount_path {args.mount_path}")


def train_argv(args: argparse.Namespace, trainer_flags: Sequence[str]) -> list[str]:
    """The `allen-sr train ...` command every replica runs: what you would run locally.

    Paths are passed exactly as given. The Chief and Workers get --worker_gpu from
    --gpus_per_worker (their data shards); parameter servers run the same command, which they
    ignore apart from TF_CONFIG (they only serve variables).
    """
    argv = ["allen-sr", "train", f"--data_dir={args.data_dir}", f"--output_dir={args.output_dir}",
            *trainer_flags]
    if args.gpus_per_worker > 0:
        argv.append(f"--worker_gpu={args.gpus_per_worker}")
    return argv


def _replica_spec(args: argparse.Namespace, command: list[str], replicas: int, gpus: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(command),  # a copy per replica: shared lists become YAML anchors
        # No TF_CONFIG here: the training operator writes it for each replica.
    }
    if gpus > 0:
        container["resources"] = {"limits": {GPU_RESOURCE: gpus}}
    pod: dict[str, Any] = {"containers": [container]}
    if args.pvc is not None:
        container["volumeMounts"] = [{"name": VOLUME_NAME, "mountPath": args.mount_path}]
        pod["volumes"] = [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": args.pvc}}]
    return {
        "replicas": replicas,
        # Restart a crashed replica in place (the estimator resumes from the last checkpoint, and
        # a restarted parameter server is refilled from it by the chief); a replica that exits 0
        # is done. Parameter servers never exit by themselves, so Always would add nothing.
        "restartPolicy": "OnFailure",
        "template": {"spec": pod},
    }


def tfjob_manifest(args: argparse.Namespace, trainer_flags: Sequence[str]) -> dict[str, Any]:
    """The kubeflow.org/v1 TFJob for these launch arguments (validated first)."""
    validate_launch(args, trainer_flags)
    command = train_argv(args, trainer_flags)
    specs = {"Chief": _replica_spec(args, command, 1, args.gpus_per_worker)}
    if args.workers > 0:
        specs["Worker"] = _replica_spec(args, command, args.workers, args.gpus_per_worker)
    if args.ps > 0:
        specs["PS"] = _replica_spec(args, command, args.ps, 0)
    return {
        "apiVersion": TFJOB_API_VERSION,
        "kind": "TFJob",
        "metadata": {"name": args.name, "namespace": args.namespace,
                     "labels": {"app.kubernetes.io/name": "allen-sr",
                                "app.kubernetes.io/component": "training"}},
        "spec": {
            "runPolicy": {
                # When the Chief succeeds the job is done: delete the pods still running (the
                # parameter servers, which never exit) and keep finished ones for their logs.
                "cleanPodPolicy": "Running",
                "backoffLimit": args.backoff_limit,
            },
            "tfReplicaSpecs": specs,
        },
    }


def manifest_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML for kubectl, keys in the order Kubernetes users expect."""
    import yaml

    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


class LaunchError(RuntimeError):
    """Submitting the TFJob failed; the message says why and what to do."""


def submit_tfjob(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the TFJob with the Kubernetes Python client (kubeconfig, or in-cluster config)."""
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise LaunchError(f"the Kubernetes Python client is not installed ({exc}): install "
                          "`kubernetes` from requirements/lock.txt, or use --dry_run and kubectl") from None
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (ConfigException, OSError) as exc:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise LaunchError(f"no usable Kubernetes configuration ({where}): {exc}. Point KUBECONFIG "
                          "at your cluster, or use --dry_run and `kubectl apply -f -`") from None
    metadata = manifest["metadata"]
    api = client.CustomObjectsApi()
    try:
        return api.create_namespaced_custom_object(
            group=TFJOB_GROUP, version=TFJOB_VERSION, namespace=metadata["namespace"],
            plural=TFJOB_PLURAL, body=dict(manifest))
    except ApiException as exc:
        hint = {404: " (is the Kubeflow training operator with the TFJob CRD installed?)",
                409: f" (a TFJob named {metadata['name']} exists: delete it or pick another --name)"}
        raise LaunchError(f"the API server refused the TFJob: HTTP {exc.status} {exc.reason}"
                          f"{hint.get(exc.status, '')}\n{exc.body or ''}".rstrip()) from None
    except Exception as exc:  # urllib3 connection errors and the like: say where we tried to go
        host = client.Configuration.get_default_copy().host
        raise LaunchError(f"could not reach the Kubernetes API server at {host}: {exc}") from None


def watch_hints(manifest: Mapping[str, Any]) -> str:
    """kubectl commands to follow the job (pods are named <job>-<replica type>-<index>)."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    ns = f" -n {namespace}"
    return "\n".join([
        f"  kubectl get tfjob {name}{ns} -w",
        f"  kubectl get pods{ns} -l training.kubeflow.org/job-name={name}",
        f"  kubectl logs -f {name}-chief-0{ns}",
        f"  kubectl delete tfjob {name}{ns}",
    ])


def launch_main(argv: list[str]) -> int:
    """allen-sr launch --name NAME --image IMAGE [--workers N --ps N ...] [trainer flags] [--dry_run]"""
    parser = build_parser()
    args, trainer_flags = parser.parse_known_args(argv)
    try:
        manifest = tfjob_manifest(args, trainer_flags)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dry_run:
        sys.stdout.write(manifest_yaml(manifest))
        print(f"# dry run: nothing submitted. Submit with `kubectl apply -f <file>`, then:\n"
              f"{watch_hints(manifest)}", file=sys.stderr)
        return 0
    try:
        submit_tfjob(manifest)
    except LaunchError as exc:
        print(f"allen-sr launch: {exc}", file=sys.stderr)
        return 1
    print(f"submitted TFJob {args.name} in namespace {args.namespace}; every replica runs:\n"
          f"  {shlex.join(train_argv(args, trainer_flags))}\nfollow it with:\n{watch_hints(manifest)}")
    return 0
