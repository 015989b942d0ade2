"""The Kubeflow ``kubeflow.org/v1`` TFJob that `allen-sr launch` writes, and submitting custom objects.

Its Chief, Worker and PS replicas all run the same `allen-sr train ...` command you would run
locally (each replica's role comes from TF_CONFIG: :mod:`allen_sr.t2t.cluster`). Paths are passed
through untouched: t2t reads and writes through ``tf.io.gfile``, so ``gs://`` folders work as they
are. :func:`build_tfjob` is the one place a TFJob is made: `allen-sr launch` submits it as it is,
`allen-sr launch --tune` (:mod:`allen_sr.commands.tune`) makes it the trial of a Katib Experiment.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
from typing import Any, Mapping, Sequence

from allen_sr.data.paths import is_remote

TFJOB_API_VERSION = "kubeflow.org/v1"
KUBEFLOW_GROUP, TFJOB_VERSION, TFJOB_PLURAL = "kubeflow.org", "v1", "tfjobs"
# The training operator finds the TensorFlow container of each replica by this name.
CONTAINER_NAME = "tensorflow"
GPU_RESOURCE = "nvidia.com/gpu"
VOLUME_NAME = "allen-sr-data"
REQUIRED_TRAINER_FLAGS = ("problem", "model", "hparams_set")
# Set per replica by prepare_cluster_task from the TF_CONFIG the operator injects; given by hand
# they would fight it (see the module docstring).
CLUSTER_FLAGS = ("master", "ps_replicas", "ps_job", "ps_gpu", "worker_replicas", "worker_job",
                 "worker_id", "sync")


def flag_names(flags: Sequence[str]) -> list[str]:
    """The names of the --flags in ``flags`` (``--a=1 --b 2`` -> ``["a", "b"]``)."""
    return [a[2:].split("=", 1)[0] for a in flags if a.startswith("--")]


def check_name(name: str, max_length: int = 45) -> None:
    """ValueError unless ``name`` is a lowercase DNS-1035 label of at most ``max_length`` characters.

    Pods and services are named <name>-<replica>-<i>; they must stay valid 63-character labels,
    and a service's name starts with a letter.
    """
    if len(name) > max_length or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"--name {name!r}: use 1-{max_length} lowercase letters, digits or '-', "
                         "starting with a letter and ending with a letter or digit")


def check_kubernetes_names(args: argparse.Namespace) -> None:
    """ValueError unless --namespace is a DNS-1123 label and --pvc (if given) a DNS-1123 subdomain,
    as Kubernetes names them (the API would refuse the object, or its pods would wait forever)."""
    if len(args.namespace) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", args.namespace):
        raise ValueError(f"--namespace {args.namespace!r}: a namespace is 1-63 lowercase letters, digits or '-', "
                         "starting and ending with a letter or digit")
    part = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    if args.pvc is not None and (len(args.pvc) > 253 or not re.fullmatch(rf"{part}(\.{part})*", args.pvc)):
        raise ValueError(f"--pvc {args.pvc!r}: a claim's name is lowercase letters, digits, '-' and '.', "
                         "starting and ending with a letter or digit")


def check_remote_paths(args: argparse.Namespace) -> None:
    """ValueError for a URL --data_dir/--output_dir the pods cannot share: TensorFlow in the training
    image reads and writes gs:// only (no s3:// or http:// filesystem; ram:// is each pod's own)."""
    for option, path in (("--data_dir", args.data_dir), ("--output_dir", args.output_dir)):
        if is_remote(path) and not path.startswith("gs://"):
            raise ValueError(f"{option} {path}: the replicas share gs:// folders or local paths under "
                             "--mount_path of a --pvc; TensorFlow in the training image has no other "
                             "filesystem every pod sees")


def check_counts(args: argparse.Namespace) -> None:
    """ValueError for negative replica, GPU or restart counts, or workers without a parameter server."""
    for option in ("workers", "ps", "gpus_per_worker", "backoff_limit"):
        if getattr(args, option) < 0:
            raise ValueError(f"--{option} must be >= 0, got {getattr(args, option)}")
    if args.workers > 0 and args.ps == 0:
        raise ValueError(f"--workers {args.workers} needs --ps >= 1: the replicas share variables "
                         "through parameter servers")


def check_trainer_flags(trainer_flags: Sequence[str]) -> None:
    """ValueError for trainer flags every replica needs but lacks, or that TF_CONFIG owns."""
    # A bare word is fine only as the value of the flag before it (absl accepts "--flag value").
    stray = [a for i, a in enumerate(trainer_flags) if not a.startswith("--") and not (
        i > 0 and trainer_flags[i - 1].startswith("--") and "=" not in trainer_flags[i - 1])]
    if stray:
        raise ValueError(f"unexpected argument(s) {stray}: trainer flags look like --name=value")
    names = flag_names(trainer_flags)
    missing = [f"--{n}" for n in REQUIRED_TRAINER_FLAGS if n not in names]
    if missing:
        raise ValueError(f"missing trainer flag(s) {' '.join(missing)}: every replica needs them")
    owned = [f"--{n}" for n in names if n in CLUSTER_FLAGS]
    if owned:
        raise ValueError(f"{' '.join(owned)}: set per replica from TF_CONFIG by allen-sr train; "
                         "use --workers/--ps instead")
    if "worker_gpu" in names:
        raise ValueError("--worker_gpu: use --gpus_per_worker, which also requests the GPUs")


def is_under(path: str, folder: str) -> bool:
    """True when the absolute POSIX ``path`` is ``folder`` or inside it."""
    return posixpath.isabs(path) and (posixpath.normpath(path) + "/").startswith(
        posixpath.normpath(folder).rstrip("/") + "/")


def check_mount_path(args: argparse.Namespace) -> str:
    """The normalized --mount_path; ValueError unless it is an absolute folder other than /."""
    mount = posixpath.normpath(args.mount_path)
    if not posixpath.isabs(mount) or mount == "/":
        raise ValueError(f"--mount_path {args.mount_path!r} must be an absolute folder other than /")
    return mount


def check_volumes(args: argparse.Namespace) -> None:
    """ValueError unless every local --data_dir/--output_dir is under --mount_path of --pvc."""
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
        mount = check_mount_path(args)
        for option, path in local:
            if not is_under(path, mount):
                raise ValueError(f"{option} {path} is not under --mount_path {args.mount_path}")


def validate_launch(args: argparse.Namespace, trainer_flags: Sequence[str]) -> None:
    """Raise ValueError naming the bad option when the job could not work as asked.

    Everything here would otherwise surface only after pods were scheduled (or never: a worker
    without a parameter server trains a private copy of the model).
    """
    check_name(args.name)
    if not args.image.strip():
        raise ValueError("--image is empty")
    check_kubernetes_names(args)
    check_counts(args)
    check_trainer_flags(trainer_flags)
    check_remote_paths(args)
    check_volumes(args)


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


def _replica_spec(args: argparse.Namespace, command: list[str], replicas: int, gpus: int,
                  extra_mounts: Sequence[Mapping[str, str]]) -> dict[str, Any]:
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
    mounts = ([{"name": VOLUME_NAME, "mountPath": args.mount_path}] if args.mount_path else [])
    mounts += [dict(m) for m in extra_mounts]
    if mounts:
        container["volumeMounts"] = mounts
        pod["volumes"] = [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": args.pvc}}]
    return {
        "replicas": replicas,
        # Restart a crashed replica in place (the estimator resumes from the last checkpoint, and
        # a restarted parameter server is refilled from it by the chief); a replica that exits 0
        # is done. Parameter servers never exit by themselves, so Always would add nothing.
        "restartPolicy": "OnFailure",
        "template": {"spec": pod},
    }


def build_tfjob(args: argparse.Namespace, command: list[str],
                extra_mounts: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """The kubeflow.org/v1 TFJob whose replicas run ``command`` (no validation here).

    ``extra_mounts`` are more volumeMounts of --pvc (``subPath`` allowed) in every replica.
    """
    specs = {"Chief": _replica_spec(args, command, 1, args.gpus_per_worker, extra_mounts)}
    if args.workers > 0:
        specs["Worker"] = _replica_spec(args, command, args.workers, args.gpus_per_worker, extra_mounts)
    if args.ps > 0:
        specs["PS"] = _replica_spec(args, command, args.ps, 0, extra_mounts)
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


def tfjob_manifest(args: argparse.Namespace, trainer_flags: Sequence[str]) -> dict[str, Any]:
    """The kubeflow.org/v1 TFJob for these launch arguments (validated first)."""
    validate_launch(args, trainer_flags)
    return build_tfjob(args, train_argv(args, trainer_flags))


def manifest_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML for kubectl, keys in the order Kubernetes users expect."""
    import yaml

    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


class LaunchError(RuntimeError):
    """Submitting a manifest failed; the message says why and what to do."""


def _load_kube_config() -> Any:
    """The kubernetes client module, configured from the kubeconfig or the in-cluster account."""
    try:
        from kubernetes import client, config
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
    return client


def _api_message(body: Any) -> str:
    """The one-line ``message`` of a Kubernetes Status body, else the body on one line."""
    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return " ".join(str(body or "").split())


def submit_custom_object(manifest: Mapping[str, Any], version: str, plural: str,
                         hints: Mapping[int, str]) -> dict[str, Any]:
    """Create a kubeflow.org custom object with the Kubernetes Python client.

    ``hints`` maps an HTTP status to what the user should do about it. LaunchError, one line.
    """
    client = _load_kube_config()
    from kubernetes.client.rest import ApiException

    metadata, kind = manifest["metadata"], manifest["kind"]
    api = client.CustomObjectsApi()
    try:
        return api.create_namespaced_custom_object(
            group=KUBEFLOW_GROUP, version=version, namespace=metadata["namespace"],
            plural=plural, body=dict(manifest))
    except ApiException as exc:
        hint = f" ({hints[exc.status]})" if exc.status in hints else ""
        detail = _api_message(exc.body)
        raise LaunchError(f"the API server refused the {kind}: HTTP {exc.status} {exc.reason}{hint}"
                          + (f": {detail}" if detail else "")) from None
    except Exception as exc:  # urllib3 connection errors and the like: say where we tried to go
        host = client.Configuration.get_default_copy().host
        raise LaunchError(f"could not reach the Kubernetes API server at {host}: {exc}") from None


def submit_tfjob(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the TFJob with the Kubernetes Python client (kubeconfig, or in-cluster config)."""
    name = manifest["metadata"]["name"]
    return submit_custom_object(manifest, TFJOB_VERSION, TFJOB_PLURAL, {
        404: "is the Kubeflow training operator with the TFJob CRD installed?",
        409: f"a TFJob named {name} exists: delete it or pick another --name"})


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
