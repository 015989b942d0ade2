"""`allen-sr launch`: a Kubeflow ``kubeflow.org/v1`` TFJob for multi-host training.

Its Chief, Worker and PS replicas all run the same `allen-sr train ...` command you would run
locally (each replica's role comes from TF_CONFIG: :mod:`allen_sr.t2t.cluster`). Printed as YAML
with ``--dry_run``, or submitted with the Kubernetes Python client. Paths are passed through
untouched: t2t reads and writes through ``tf.io.gfile``, so ``gs://`` folders work as they are.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Mapping, Sequence

from allen_sr.data.paths import is_remote

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
             if not is_remote(p)]
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
