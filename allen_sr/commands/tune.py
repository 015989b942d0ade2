"""`allen-sr launch --tune ALGORITHM`: a Kubeflow Katib ``kubeflow.org/v1beta1`` Experiment.

Each trial is the TFJob `allen-sr launch` writes (:func:`allen_sr.commands.tfjob.build_tfjob`, a
single Chief) whose `allen-sr train` gets the trial's hparams appended to ``--hparams`` as
``${trialParameters.NAME}`` placeholders, and ``--train_steps_increment`` (:mod:`allen_sr.t2t.tuning`):
a trial trains ``--trial_steps`` steps beyond the checkpoint it starts from.

* Objective: maximize the eval PSNR. `allen-sr train` writes it as a tensor summary tagged
  ``psnr`` next to t2t's scalar; Katib's ``TensorFlowEvent`` collector reads it from
  ``<output_dir>/eval_eval``, where the Chief's evaluations go (Katib takes the latest, the final one).
* Each trial sees its own folder at ``--output_dir``. Search algorithms: ``<output_dir>/<trial>``
  on --pvc, mounted there with a subPath. PBT: Katib's per-trial checkpoint folder
  (``suggestion_trial_dir``, on the claim ``<experiment>-pbt``, which is --pvc), into which the
  PBT suggestion copies the parent trial's folder; t2t resumes from the checkpoint it finds.
* Search space: the learning rate and its warm-up around the hparams set's own values, plus
  the dropout the Image Transformer applies or the conv model's pixel loss; ``--search``
  changes or adds ranges (with PBT only of hparams a checkpoint can be continued with).
"""
from __future__ import annotations

import argparse
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from allen_sr.commands.tfjob import (CONTAINER_NAME, VOLUME_NAME, build_tfjob, check_counts,
                                     check_kubernetes_names, check_mount_path, check_name, check_remote_paths,
                                     check_trainer_flags, flag_names, is_under, submit_custom_object,
                                     train_argv)
from allen_sr.data.paths import is_remote
from allen_sr.t2t.cluster import flag_value
from allen_sr.t2t.tools import RESUMABLE_HPARAMS, RESUMABLE_PREFIXES, VARIABLES_WHEN_ON
from allen_sr.t2t.tuning import (FINAL_EVAL_DIR, INCREMENT_FLAG, OBJECTIVE_METRIC, TRIAL_ENV, hparams_defaults,
                                 without_flag)

EXPERIMENT_API_VERSION = "kubeflow.org/v1beta1"
EXPERIMENT_VERSION, EXPERIMENT_PLURAL = "v1beta1", "experiments"
PBT = "pbt"
# Katib algorithms for these search spaces (cmaes takes no lists, grid no stepless doubles;
# bayesianoptimization needs doubles above 0, checked in search_space).
ALGORITHMS = ("random", "tpe", "multivariate-tpe", "bayesianoptimization", PBT)
MIN_POPULATION = 5  # Katib's PBT suggestion refuses smaller populations
# Katib names a trial <experiment>-<8 characters>, a PBT trial <experiment>-<uuid4>; the TFJob's
# Chief service <trial>-chief-0 must fit in 63 characters. Katib itself allows 40.
MAX_NAME, MAX_PBT_NAME = 40, 63 - len("-chief-0") - 37
TRIAL_NAME = "trialName"  # the trial parameter carrying the trial's name (a subPath, and TRIAL_ENV)
SUCCEEDED = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
# Options of the tuning group: (flag, PBT only).
TUNE_OPTIONS = (("trial_steps", False), ("max_trials", False), ("parallel_trials", False),
                ("max_failed_trials", False), ("search", False), ("population", True),
                ("truncation", True))


@dataclass(frozen=True)
class SearchParam:
    """One tuned hparam: its range (or values), and how Katib samples it."""

    hparam: str
    kind: str  # "double", "int" or "categorical"
    low: float = 0.0
    high: float = 0.0
    values: tuple[str, ...] = ()
    log: bool = False
    description: str = ""

    def feasible_space(self, pbt: bool) -> dict[str, Any]:
        """Katib's feasibleSpace. PBT samples from min..max in steps, so it needs a step."""
        if self.kind == "categorical":
            return {"list": list(self.values)}
        space: dict[str, Any] = {"min": _number(self.low), "max": _number(self.high)}
        if pbt:
            space["step"] = "1" if self.kind == "int" else _number((self.high - self.low) / 100)
        elif self.log:
            space["distribution"] = "logUniform"
        return space

    def katib_parameter(self, pbt: bool) -> dict[str, Any]:
        return {"name": self.hparam, "parameterType": self.kind, "feasibleSpace": self.feasible_space(pbt)}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--tune` option group of `allen-sr launch`."""
    g = parser.add_argument_group(
        "hyperparameter tuning (Kubeflow Katib)",
        "With --tune the job becomes the trial of a Katib Experiment (kubeflow.org/v1beta1)\n"
        "that maximizes the eval PSNR. Each trial sees its own folder at --output_dir.")
    g.add_argument("--tune", metavar="ALGORITHM",
                   help=f"Katib algorithm: {', '.join(ALGORITHMS)}")
    g.add_argument("--trial_steps", type=int, metavar="N", help="training steps of each trial, counted from the "
                   "checkpoint it starts from (default 1000)")
    g.add_argument("--max_trials", type=int, metavar="N", help="trials in all (default 12; pbt: 4 x --population)")
    g.add_argument("--parallel_trials", type=int, metavar="N", help="trials at once (default 3; pbt: --population)")
    g.add_argument("--max_failed_trials", type=int, metavar="N",
                   help="failed trials before the Experiment fails (default 3)")
    g.add_argument("--search", action="append", metavar="HPARAM=LOW:HIGH|A,B,...",
                   help="search HPARAM over a range or a list, replacing its default range (repeatable)")
    g.add_argument("--population", type=int, metavar="N",
                   help=f"pbt: trials per generation (default and minimum {MIN_POPULATION})")
    g.add_argument("--truncation", type=float, metavar="F", help="pbt: fraction of a generation replaced by copies "
                   "of the best fraction (default 0.2)")


def refuse_tune_options(args: argparse.Namespace) -> None:
    """ValueError for a tuning option given without --tune (or a PBT one without --tune pbt)."""
    for option, pbt_only in TUNE_OPTIONS:
        if getattr(args, option) is not None and (args.tune is None or (pbt_only and args.tune != PBT)):
            needs = "--tune pbt" if pbt_only else "--tune ALGORITHM"
            raise ValueError(f"--{option} is a tuning option: it needs {needs}")


def _fill_defaults(args: argparse.Namespace) -> None:
    pbt = args.tune == PBT
    if args.population is None and pbt:
        args.population = MIN_POPULATION
    if args.truncation is None and pbt:
        args.truncation = 0.2
    args.trial_steps = 1000 if args.trial_steps is None else args.trial_steps
    args.max_trials = (4 * args.population if pbt else 12) if args.max_trials is None else args.max_trials
    if args.parallel_trials is None:
        args.parallel_trials = min(args.population if pbt else 3, args.max_trials)
    if args.max_failed_trials is None:
        args.max_failed_trials = min(3, args.max_trials)


def check_budget(args: argparse.Namespace) -> None:
    """ValueError for a budget or PBT setting Katib would refuse (or that could not work)."""
    if args.tune not in ALGORITHMS:
        raise ValueError(f"--tune {args.tune}: unknown algorithm; use one of {', '.join(ALGORITHMS)}")
    refuse_tune_options(args)
    _fill_defaults(args)
    if args.tune == PBT:
        if args.population < MIN_POPULATION:
            raise ValueError(f"--population {args.population}: Katib's PBT needs at least "
                             f"{MIN_POPULATION} trials per generation")
        if not 0.0 < args.truncation <= 0.5:
            raise ValueError(f"--truncation {args.truncation}: give a fraction in (0, 0.5]: the worst "
                             "and the best fractions of a generation must not overlap")
    for option in ("trial_steps", "max_trials", "parallel_trials"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option} must be >= 1, got {getattr(args, option)}")
    if args.parallel_trials > args.max_trials:
        raise ValueError(f"--parallel_trials {args.parallel_trials} exceeds --max_trials {args.max_trials}")
    if not 0 <= args.max_failed_trials <= args.max_trials:
        raise ValueError(f"--max_failed_trials {args.max_failed_trials}: give 0..--max_trials "
                         f"({args.max_trials})")


def pbt_claim(name: str) -> str:
    """The PersistentVolumeClaim Katib's PBT keeps the checkpoints on (``<experiment>-pbt``)."""
    return f"{name}-{PBT}"


def check_tune_volumes(args: argparse.Namespace) -> None:
    """ValueError unless every trial can see its data and its own local output folder."""
    output = posixpath.normpath(args.output_dir) if posixpath.isabs(args.output_dir) else None
    if is_remote(args.output_dir) or output is None or output == "/":
        raise ValueError(f"--output_dir {args.output_dir}: with --tune give an absolute local folder "
                         "other than /: Katib's TensorFlowEvent collector reads the trial's event "
                         "files from the pod's file system")
    pbt = args.tune == PBT
    if pbt and args.pvc != pbt_claim(args.name):
        raise ValueError(f"--tune pbt needs --pvc {pbt_claim(args.name)}: Katib's PBT keeps each trial's "
                         f"checkpoint folder on the claim <experiment>-pbt and copies a parent's folder "
                         "for its children; create it (ReadWriteMany) so the population outlives the "
                         "Experiment")
    if not pbt and (args.pvc is None or args.mount_path is None):
        raise ValueError(f"--tune {args.tune} needs --pvc NAME --mount_path DIR with --output_dir under "
                         "it: each trial keeps its checkpoints in <output_dir>/<trial name> there")
    mount = check_mount_path(args) if args.mount_path is not None else None
    if not pbt and (not is_under(output, mount) or output == mount):
        raise ValueError(f"--output_dir {args.output_dir} must be a folder below --mount_path {args.mount_path}")
    if pbt and output == mount:
        raise ValueError(f"--output_dir {args.output_dir} is --mount_path: give the trials' folder its own path")
    if not is_remote(args.data_dir):
        if mount is None or not is_under(args.data_dir, mount):
            raise ValueError(f"--data_dir {args.data_dir} is a local path: put it under --mount_path "
                             "of --pvc, or use a gs:// path")
        if is_under(args.data_dir, output):
            raise ValueError(f"--data_dir {args.data_dir} is inside --output_dir {args.output_dir}, "
                             "which each trial sees as its own folder: move one of them")


def check_tune_flags(args: argparse.Namespace, trainer_flags: Sequence[str]) -> None:
    """ValueError for a topology or trainer flag that a tuning trial cannot use."""
    if args.workers or args.ps:
        raise ValueError("--workers/--ps: a tuning trial is one Chief (Katib attaches the metrics "
                         "collector and the PBT checkpoint folder to the Chief's pod only); "
                         "run trials side by side with --parallel_trials")
    check_trainer_flags(trainer_flags)
    names = flag_names(trainer_flags)
    for owned, use in (("train_steps", "--trial_steps"), (INCREMENT_FLAG, "--trial_steps")):
        if owned in names:
            raise ValueError(f"--{owned}: a trial's training length is set by {use}, counted from "
                             "the checkpoint it starts from")
    schedule = flag_value(trainer_flags, "schedule")
    if schedule not in (None, "continuous_train_and_eval"):
        raise ValueError(f"--schedule={schedule}: trials need t2t's default continuous_train_and_eval, "
                         "whose final evaluation writes the PSNR Katib reads")


def hparam_names(overrides: str) -> list[str]:
    """The names a t2t ``--hparams`` string sets (``a=1,b=[1,2]`` -> ``["a", "b"]``)."""
    return re.findall(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", overrides or "")


def default_search(model: str, defaults: Mapping[str, Any]) -> list[SearchParam]:
    """The learning rate and its warm-up around the set's values, and what else matters per model.

    The rate is searched from a third to three times the set's (log-uniform; sets differ by
    100x, so fixed ranges fit none), the warm-up from a quarter to four times. The Image
    Transformer applies ``layer_prepostprocess_dropout``; the conv network has no dropout, and
    its pixel loss is what the PSNR depends on most.
    """
    rate = float(defaults.get("learning_rate_constant") or 0.0)
    warmup = int(defaults.get("learning_rate_warmup_steps") or 0)
    params = [] if rate <= 0 else [  # a set without a rate: only --search can give its range
        SearchParam("learning_rate_constant", "double", rate / 3, rate * 3, log=True,
                    description="learning_rate_constant of the t2t learning-rate schedule")]
    params.append(SearchParam("learning_rate_warmup_steps", "int", max(0, warmup // 4),
                              max(4 * warmup, warmup // 4 + 10),
                              description="steps of the linear learning-rate warm-up"))
    if model.startswith("img2img_transformer"):
        params.append(SearchParam("layer_prepostprocess_dropout", "double", 0.0, 0.3,
                                  description="dropout around each attention and feed-forward layer"))
    elif "pixel_loss" in defaults:
        params.append(SearchParam("pixel_loss", "categorical", values=("l1", "l2", "charbonnier", "psnr"),
                                  description="pixel loss of the conv model"))
    return params


def parse_search(spec: str, defaults: Mapping[str, Any], hparams_set: str) -> SearchParam:
    """``HPARAM=LOW:HIGH`` (int or double, as the set's value) or ``HPARAM=A,B,...`` (a list)."""
    name, sep, space = spec.partition("=")
    if not sep or not name or not space:
        raise ValueError(f"--search {spec!r}: write HPARAM=LOW:HIGH for a range, or a list of at "
                         "least two values HPARAM=A,B,...")
    if name not in defaults:
        raise ValueError(f"--search {spec!r}: hparams set {hparams_set} has no hparam {name!r}")
    default = defaults[name]
    if ":" not in space:
        values = tuple(v for v in space.split(",") if v)
        if len(values) < 2:
            raise ValueError(f"--search {spec!r}: write HPARAM=LOW:HIGH for a range, or a list of at "
                             "least two values HPARAM=A,B,...")
        return SearchParam(name, "categorical", values=values, description=f"{name} (--search)")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ValueError(f"--search {spec!r}: {name} is not a number ({default!r}); give a list A,B,...")
    kind = "int" if isinstance(default, int) else "double"
    try:
        low, high = (int(v) if kind == "int" else float(v) for v in space.split(":", 1))
    except ValueError:
        raise ValueError(f"--search {spec!r}: LOW and HIGH must be {'whole ' if kind == 'int' else ''}"
                         "numbers") from None
    if not low < high:
        raise ValueError(f"--search {spec!r}: LOW must be below HIGH")
    log = kind == "double" and low > 0 and high / low >= 10
    return SearchParam(name, kind, low, high, log=log, description=f"{name} (--search)")


def _above_zero(value: Any) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False


def check_pbt_search(param: SearchParam, defaults: Mapping[str, Any]) -> None:
    """ValueError for an hparam that a PBT child, which continues its parent's checkpoint, could not
    change: one that changes the model's variables (`allen-sr train` refuses such a continuation)."""
    name = param.hparam
    if name in RESUMABLE_HPARAMS or name.startswith(RESUMABLE_PREFIXES):
        return
    if name in VARIABLES_WHEN_ON:  # may change, but a child may not turn it on: that adds variables
        if all(map(_above_zero, param.values if param.kind == "categorical" else (param.low,))):
            return
        raise ValueError(f"--search {name}: with --tune pbt give values above 0 only: a child that turns it on "
                         "cannot continue its parent's checkpoint (it adds variables)")
    searchable = [n for n in defaults if n in RESUMABLE_HPARAMS or n.startswith(RESUMABLE_PREFIXES)]
    searchable += [f"{n} (above 0)" for n in VARIABLES_WHEN_ON if n in defaults and n != "train_budget_seconds"]
    raise ValueError(f"--search {name}: --tune pbt cannot search it: it changes the model, and each child continues "
                     f"its parent's checkpoint; PBT can search {', '.join(searchable)}")


def search_space(args: argparse.Namespace, trainer_flags: Sequence[str],
                 defaults: Mapping[str, Any]) -> list[SearchParam]:
    """The tuned hparams; ValueError when they clash with --hparams or a time budget."""
    params = {p.hparam: p for p in default_search(flag_value(trainer_flags, "model") or "", defaults)}
    hparams_set = flag_value(trainer_flags, "hparams_set") or ""
    for spec in args.search or ():
        param = parse_search(spec, defaults, hparams_set)
        if args.tune == PBT:
            check_pbt_search(param, defaults)
        params[param.hparam] = param
    if args.tune == "bayesianoptimization":
        unbounded = [p.hparam for p in params.values() if p.kind == "double" and p.low <= 0]
        if unbounded:
            raise ValueError(f"--tune bayesianoptimization samples every double log-uniformly, so "
                             f"{', '.join(unbounded)} needs a range above 0: --search "
                             f"{unbounded[0]}=LOW:HIGH with LOW > 0, or use --tune tpe")
    user = flag_value(trainer_flags, "hparams") or ""
    clash = [n for n in hparam_names(user) if n in params]
    if clash:
        raise ValueError(f"--hparams sets {', '.join(clash)}, which the search sets per trial: "
                         "leave it out of --hparams")
    budget = re.search(r"(?:^|,)\s*train_budget_seconds\s*=\s*([^,]+)", user)
    if float(budget.group(1) if budget else defaults.get("train_budget_seconds", 0) or 0) > 0:
        raise ValueError("train_budget_seconds > 0: it is a total over resumed runs, so a trial that "
                         "starts from another's checkpoint would not train; use --trial_steps "
                         "(add train_budget_seconds=0 to --hparams if the set has one)")
    return list(params.values())


def search_values(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(hparam, value) for every value a trial of ``manifest`` (an Experiment; none for a TFJob)
    can draw at the edges of its space: each listed value, each range's two ends."""
    if manifest.get("kind") != "Experiment":
        return []
    values = []
    for param in manifest["spec"]["parameters"]:
        space = param["feasibleSpace"]
        values += [(param["name"], str(v)) for v in space.get("list") or (space["min"], space["max"])]
    return values


def with_hparam(trainer_flags: Sequence[str], name: str, value: str) -> list[str]:
    """``trainer_flags`` whose --hparams also sets ``name=value``."""
    user = flag_value(trainer_flags, "hparams") or ""
    return without_flag(trainer_flags, "hparams") + [f"--hparams={user + ',' if user else ''}{name}={value}"]


def trial_trainer_flags(args: argparse.Namespace, trainer_flags: Sequence[str],
                        params: Sequence[SearchParam]) -> list[str]:
    """The trainer flags of a trial: the user's, ``--hparams`` with the trial's values appended."""
    user = flag_value(trainer_flags, "hparams") or ""
    tuned = ",".join(f"{p.hparam}=${{trialParameters.{p.hparam}}}" for p in params)
    merged = f"{user.rstrip(',')},{tuned}" if user.strip() else tuned
    return without_flag(trainer_flags, "hparams") + [f"--hparams={merged}",
                                                     f"--{INCREMENT_FLAG}={args.trial_steps}"]


def trial_mounts(args: argparse.Namespace) -> list[dict[str, str]]:
    """Search algorithms: ``<output_dir>/<trial name>`` of --pvc, mounted at --output_dir.

    PBT: none; Katib's webhook mounts the trial's checkpoint folder at ``suggestion_trial_dir``.
    """
    if args.tune == PBT:
        return []
    folder = posixpath.relpath(posixpath.normpath(args.output_dir), posixpath.normpath(args.mount_path))
    return [{"name": VOLUME_NAME, "mountPath": posixpath.normpath(args.output_dir),
             "subPath": f"{folder}/${{trialParameters.{TRIAL_NAME}}}"}]


def trial_tfjob(args: argparse.Namespace, trainer_flags: Sequence[str],
                params: Sequence[SearchParam]) -> dict[str, Any]:
    """The trial: launch's TFJob for the trial's flags, without the name Katib gives each trial, which
    its `allen-sr train` finds in TRIAL_ENV (a restarted trial keeps its --train_steps_increment's target)."""
    command = train_argv(args, trial_trainer_flags(args, trainer_flags, params))
    job = build_tfjob(args, command, trial_mounts(args))
    del job["metadata"]["name"], job["metadata"]["namespace"]  # Katib's webhook requires this
    for replica in job["spec"]["tfReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            container["env"] = [{"name": TRIAL_ENV, "value": f"${{trialParameters.{TRIAL_NAME}}}"}]
    return job


def trial_parameters(args: argparse.Namespace, params: Sequence[SearchParam]) -> list[dict[str, str]]:
    """Katib's trialParameters: one per tuned hparam, and the trial's name (TRIAL_ENV; for a search
    algorithm also the subPath of its folder)."""
    out = [{"name": p.hparam, "description": p.description, "reference": p.hparam} for p in params]
    where = "" if args.tune == PBT else ", and its folder under --output_dir"
    out.append({"name": TRIAL_NAME, "description": f"the trial's name, which allen-sr train reads{where}",
                "reference": "${trialSpec.Name}"})
    return out


def algorithm(args: argparse.Namespace) -> dict[str, Any]:
    """Katib's algorithm spec; PBT's checkpoint folder is the trial's --output_dir.

    Not set: PBT's ``resample_probability`` (Katib's validation compares it as a string, which
    fails), so explored trials perturb each value by 0.8 or 1.2.
    """
    spec: dict[str, Any] = {"algorithmName": args.tune}
    if args.tune == PBT:
        spec["algorithmSettings"] = [
            {"name": "suggestion_trial_dir", "value": posixpath.normpath(args.output_dir)},
            {"name": "n_population", "value": str(args.population)},
            {"name": "truncation_threshold", "value": _number(args.truncation)},
        ]
    return spec


def build_experiment(args: argparse.Namespace, trainer_flags: Sequence[str],
                     params: Sequence[SearchParam]) -> dict[str, Any]:
    """The Experiment for validated arguments and a search space."""
    pbt = args.tune == PBT
    return {
        "apiVersion": EXPERIMENT_API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": args.name, "namespace": args.namespace,
                     "labels": {"app.kubernetes.io/name": "allen-sr",
                                "app.kubernetes.io/component": "tuning"}},
        "spec": {
            # "latest": the final evaluation of the trial's own checkpoint (what PBT passes on).
            "objective": {"type": "maximize", "objectiveMetricName": OBJECTIVE_METRIC,
                          "metricStrategies": [{"name": OBJECTIVE_METRIC, "value": "latest"}]},
            "algorithm": algorithm(args),
            "parallelTrialCount": args.parallel_trials,
            "maxTrialCount": args.max_trials,
            "maxFailedTrialCount": args.max_failed_trials,
            # FromVolume: the PBT suggestion keeps its checkpoint folders on the claim <name>-pbt.
            "resumePolicy": "FromVolume" if pbt else "Never",
            "metricsCollectorSpec": {
                "source": {"fileSystemPath": {"path": posixpath.join(posixpath.normpath(args.output_dir),
                                                                     FINAL_EVAL_DIR),
                                              "kind": "Directory"}},
                "collector": {"kind": "TensorFlowEvent"},
            },
            "parameters": [p.katib_parameter(pbt) for p in params],
            "trialTemplate": {
                "primaryContainerName": CONTAINER_NAME,
                "primaryPodLabels": {"training.kubeflow.org/replica-type": "chief"},
                "successCondition": SUCCEEDED,
                "failureCondition": FAILED,
                "trialParameters": trial_parameters(args, params),
                "trialSpec": trial_tfjob(args, trainer_flags, params),
            },
        },
    }


def experiment_manifest(args: argparse.Namespace, trainer_flags: Sequence[str]) -> dict[str, Any]:
    """The Katib Experiment for `allen-sr launch --tune ...` (validated first; cheap checks before
    the hparams set is loaded, which loads tensor2tensor)."""
    check_budget(args)
    check_name(args.name, MAX_PBT_NAME if args.tune == PBT else MAX_NAME)
    if not args.image.strip():
        raise ValueError("--image is empty")
    check_kubernetes_names(args)
    check_counts(args)
    check_tune_flags(args, trainer_flags)
    check_remote_paths(args)
    check_tune_volumes(args)
    args.output_dir = posixpath.normpath(args.output_dir)  # one spelling in the command and the paths
    defaults = hparams_defaults(flag_value(trainer_flags, "hparams_set") or "")
    params = search_space(args, trainer_flags, defaults)
    return build_experiment(args, trainer_flags, params)


def submit_experiment(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Experiment with the Kubernetes Python client (kubeconfig, or in-cluster config)."""
    name = manifest["metadata"]["name"]
    return submit_custom_object(manifest, EXPERIMENT_VERSION, EXPERIMENT_PLURAL, {
        404: "is Katib with the Experiment CRD installed?",
        409: f"an Experiment named {name} exists: delete it or pick another --name"})


def watch_hints(manifest: Mapping[str, Any]) -> str:
    """kubectl commands to follow the Experiment, its trials and the trials' TFJobs."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    ns = f" -n {namespace}"
    return "\n".join([
        f"  kubectl get experiment {name}{ns} -w",
        f"  kubectl get trials{ns} -l katib.kubeflow.org/experiment={name}",
        f"  kubectl logs -f <trial name>-chief-0 -c {CONTAINER_NAME}{ns}",
        "  kubectl port-forward svc/katib-ui -n kubeflow 8080:80   # Katib UI: http://localhost:8080/katib/",
        f"  kubectl delete experiment {name}{ns}",
    ])

