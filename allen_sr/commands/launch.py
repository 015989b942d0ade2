"""`allen-sr launch`: a Kubeflow ``kubeflow.org/v1`` TFJob for multi-host training, or with
``--tune ALGORITHM`` a Katib ``kubeflow.org/v1beta1`` Experiment whose trials are that TFJob.

Its Chief, Worker and PS replicas all run the same `allen-sr train ...` command you would run
locally (each replica's role comes from TF_CONFIG: :mod:`allen_sr.t2t.cluster`). Printed as YAML
with ``--dry_run``, or submitted with the Kubernetes Python client. The TFJob is built in
:mod:`allen_sr.commands.tfjob`, the Experiment in :mod:`allen_sr.commands.tune`.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Mapping, Sequence

from allen_sr.commands import tune
# The TFJob side, under the names `allen-sr launch` has always had.
from allen_sr.commands.tfjob import (LaunchError, manifest_yaml, submit_tfjob, tfjob_manifest,
                                     train_argv, validate_launch, watch_hints)
from allen_sr.t2t.cluster import flag_value

__all__ = ["LaunchError", "build_manifest", "build_parser", "launch_main", "manifest_yaml",
           "submit_tfjob", "tfjob_manifest", "train_argv", "validate_launch", "watch_hints"]

USAGE_ERROR = 2  # a user's mistake: one line on stderr, as argparse's own exit code


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
            "--hparams_set=img2img_allen_multigpu --train_steps=100000.\n"
            "With --tune ALGORITHM the TFJob (one Chief) becomes the trial of a Katib Experiment\n"
            "(kubeflow.org/v1beta1) that maximizes the eval PSNR."),
        epilog=(
            "Data and output must be visible to every replica: gs:// paths (read and written\n"
            "through tf.io.gfile; give the pods credentials, e.g. Workload Identity), or local\n"
            "paths under --mount_path of a --pvc (ReadWriteMany when there are workers).\n"
            "With --tune, --output_dir is the folder each trial sees as its own: <output_dir>/<trial>\n"
            "on --pvc, or with --tune pbt Katib's checkpoint folder on the claim <name>-pbt."))
    parser.add_argument("--name", required=True,
                        help="TFJob (or Experiment) name (lowercase letters, digits, '-'; a letter first)")
    parser.add_argument("--image", required=True, help="training image, built from this repo's Dockerfile")
    parser.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    parser.add_argument("--workers", type=int, default=0, help="Worker replicas besides the Chief (default 0)")
    parser.add_argument("--ps", type=int, default=0, help="parameter-server replicas (default 0; >= 1 with workers)")
    parser.add_argument("--gpus_per_worker", type=int, default=0,
                        help="GPUs of the Chief and of each Worker; also their --worker_gpu (default 0)")
    parser.add_argument("--data_dir", required=True,
                        help="dataset folder as the pods see it (gs://... or under --mount_path)")
    parser.add_argument("--output_dir", required=True,
                        help="checkpoint folder as the pods see it (gs://... or under --mount_path)")
    parser.add_argument("--pvc", help="PersistentVolumeClaim holding local --data_dir/--output_dir")
    parser.add_argument("--mount_path", help="where every replica mounts --pvc, e.g. /data")
    parser.add_argument("--backoff_limit", type=int, default=3,
                        help="restarts of failed replicas before the job fails (default 3)")
    parser.add_argument("--dry_run", action="store_true", help="print the manifest as YAML; contact no cluster")
    tune.add_tune_arguments(parser)
    return parser


def usr_dir_names(trainer_flags: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether the --t2t_usr_dir was imported here, ``--flag=name`` of the problem, model and hparams
    set that are not registered here). The folder is the image's: imported only when this machine
    has it too, so the names it registers, and the flags it defines, may be unknown here."""
    from allen_sr.t2t import tools
    from allen_sr.t2t.names import unregistered

    if flag_value(trainer_flags, "t2t_usr_dir") is None:
        return True, []
    try:
        tools.import_usr_dir(list(trainer_flags))
        imported = True
    except Exception:  # noqa: BLE001 - the image's folder: missing here, or another one
        imported = False
    names = {name: flag_value(trainer_flags, name) for name in ("problem", "hparams_set", "model")}
    return imported, unregistered(**names)


def build_manifest(args: argparse.Namespace, trainer_flags: Sequence[str]) -> dict[str, Any]:
    """The TFJob, or with --tune the Experiment, for parsed arguments (ValueError if it cannot work)."""
    from allen_sr.t2t.cli_flags import check_flag_names
    from allen_sr.t2t.tools import check_trainer_command

    if args.tune is None:
        tune.refuse_tune_options(args)
        manifest = tfjob_manifest(args, trainer_flags)
        imported, unknown = usr_dir_names(trainer_flags)
    else:
        imported, unknown = usr_dir_names(trainer_flags)  # before the search space reads the hparams set
        hparams_set = f"--hparams_set={flag_value(trainer_flags, 'hparams_set')}"
        if hparams_set in unknown:
            raise ValueError(f"{hparams_set} is not registered here, and --tune reads its values for the search "
                             "space: give a --t2t_usr_dir that this machine has too (the image's path)")
        manifest = tune.experiment_manifest(args, trainer_flags)
    usr_dir = flag_value(trainer_flags, "t2t_usr_dir")
    if not imported or unknown:  # names registered in the image cannot be checked here
        unchecked = ", ".join(unknown + ([] if imported else ["the flags it defines"]))
        print(f"note: --t2t_usr_dir={usr_dir} {'was imported' if imported else 'cannot be imported'} here; not "
              f"checked here, but by each replica's allen-sr train as it starts: {unchecked}", file=sys.stderr)
    if imported:
        check_flag_names(list(trainer_flags))  # absl in every replica stops at an unknown flag
    if unknown:
        return manifest
    check_trainer_command(list(trainer_flags))  # what every replica's `allen-sr train` would refuse
    for name, value in tune.search_values(manifest):  # and what a trial drawing a value would refuse
        try:
            check_trainer_command(tune.with_hparam(trainer_flags, name, value))
        except ValueError as exc:
            raise ValueError(f"--search {name}: a trial with {name}={value} would fail: {exc}") from None
    return manifest


def misplaced_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """ValueError for an option of `allen-sr launch` after "--", where only trainer flags go (it
    would reach every replica's command instead of launch: --dry_run would submit)."""
    if "--" not in argv:
        return
    own = {option for action in parser._actions for option in action.option_strings}
    after = [a.split("=", 1)[0] for a in argv[list(argv).index("--") + 1:] if a.startswith("-")]
    misplaced = list(dict.fromkeys(a for a in after if a in own))
    if misplaced:
        raise ValueError(f"{' '.join(misplaced)} after '--', where only t2t-trainer flags go: "
                         "put allen-sr launch's own options before '--'")


def _report(args: argparse.Namespace, trainer_flags: Sequence[str], manifest: Mapping[str, Any]) -> None:
    """What was submitted and how to follow it."""
    if args.tune is None:
        print(f"submitted TFJob {args.name} in namespace {args.namespace}; every replica runs:\n"
              f"  {shlex.join(train_argv(args, trainer_flags))}\nfollow it with:\n{watch_hints(manifest)}")
        return
    trial = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["tfReplicaSpecs"]["Chief"]
    command = trial["template"]["spec"]["containers"][0]["command"]
    print(f"submitted Katib Experiment {args.name} ({args.tune}, up to {args.max_trials} trials, "
          f"{args.parallel_trials} at once) in namespace {args.namespace}; each trial runs:\n"
          f"  {shlex.join(command)}\nfollow it with:\n{tune.watch_hints(manifest)}")


def launch_main(argv: list[str]) -> int:
    """allen-sr launch --name NAME --image IMAGE [--workers N --ps N | --tune ALGORITHM ...] [trainer flags]
    [--dry_run]"""
    parser = build_parser()
    try:
        misplaced_options(parser, argv)
    except ValueError as exc:
        print(f"allen-sr launch: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    args, trainer_flags = parser.parse_known_args(argv)
    # "--" before the trainer flags separates them for argparse; in a replica's command absl would
    # stop reading flags there (its t2t would run without --problem, --model, ...)
    trainer_flags = [flag for flag in trainer_flags if flag != "--"]
    try:
        manifest = build_manifest(args, trainer_flags)
    except ValueError as exc:
        print(f"allen-sr launch: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    hints = watch_hints(manifest) if args.tune is None else tune.watch_hints(manifest)
    if args.dry_run:
        sys.stdout.write(manifest_yaml(manifest))
        print(f"# dry run: nothing submitted. Submit with `kubectl apply -f <file>`, then:\n{hints}",
              file=sys.stderr)
        return 0
    try:
        if args.tune is None:
            submit_tfjob(manifest)
        else:
            tune.submit_experiment(manifest)
    except LaunchError as exc:
        print(f"allen-sr launch: {exc}", file=sys.stderr)
        return 1
    _report(args, trainer_flags, manifest)
    return 0
