"""`allen-sr launch --tune`: the Katib Experiment's rules, its trial TFJob against the real Kubeflow
CRD, the trial's `allen-sr train` run for real (the objective read as Katib's TensorFlowEvent
collector reads it; a PBT child resuming from its parent's checkpoint), and refused flags."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from allen_sr.commands import launch, tune
from allen_sr.t2t import tuning
from conftest import REPO
from test_launch import (StandInApiServer, kubeconfig, run_launch, schema_errors, tfjob_schema,  # noqa: F401
                         undeclared_fields)

BIN = os.path.dirname(sys.executable)
ALLEN_SR = os.path.join(BIN, "allen-sr")
PROBLEM = "img2img_local_dim8to32"
CONV = ["--problem=" + PROBLEM, "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
        "--hparams=hidden_size=8,num_res_blocks=1,batch_size=2,decode_tta=False", "--eval_steps=2"]
TRANSFORMER = ["--problem=img2img_allen_brain_dim8to32", "--model=img2img_transformer",
               "--hparams_set=img2img_allen_base"]

# name -> launch options (the trainer flags follow them)
CONFIGS = {
    "pbt_conv_data_on_the_claim": ["--tune", "pbt", "--name", "srpbt", "--pvc", "srpbt-pbt", "--mount_path",
                                   "/data", "--data_dir", "/data/allen", "--output_dir", "/ckpt",
                                   "--trial_steps", "3", *CONV],
    "pbt_transformer_gcs_data": ["--tune", "pbt", "--name", "it-pbt", "--pvc", "it-pbt-pbt", "--population", "8",
                                 "--truncation", "0.25", "--gpus_per_worker", "1", "--data_dir", "gs://b/data",
                                 "--output_dir", "/ckpt", *TRANSFORMER],
    "tpe_transformer_pvc": ["--tune", "tpe", "--name", "it-tpe", "--pvc", "allen-data", "--mount_path", "/data",
                            "--data_dir", "/data/allen", "--output_dir", "/data/tune", "--max_trials", "20",
                            *TRANSFORMER],
    "random_conv_gcs_data": ["--tune", "random", "--name", "conv-random", "--pvc", "runs", "--mount_path", "/runs",
                             "--data_dir", "gs://b/data", "--output_dir", "/runs/tune/conv", "--search",
                             "optimizer_adam_beta2=0.99,0.999", *CONV],
    "bayesianoptimization_conv": ["--tune", "bayesianoptimization", "--name", "conv-bo", "--pvc", "runs",
                                  "--mount_path", "/runs", "--data_dir", "/runs/data", "--output_dir", "/runs/bo",
                                  "--search", "learning_rate_constant=0.0001:0.01", *CONV],
}
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]+)\}")
META = re.compile(r"\$\{trialSpec\.(.+?)\}")


def parse(options):
    base = ["--image", "registry.example/allen-sr:1.0"] + (["--name", "sr-tune"] if "--name" not in options else [])
    return launch.build_parser().parse_known_args(base + list(options))


def experiment_for(options):
    args, flags = parse(options)
    return launch.build_manifest(args, flags)


def example_values(experiment):
    """One value per Experiment parameter, as Katib's suggestion would assign them (strings)."""
    values = {}
    for p in experiment["spec"]["parameters"]:
        space = p["feasibleSpace"]
        values[p["name"]] = space["list"][-1] if "list" in space else space["max"]
    return values


def trial_of(experiment, values, trial_name="trial-0001"):
    """The TFJob Katib creates for a trial: placeholders replaced in the template text, named."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for param in template["trialParameters"]:
        meta = META.fullmatch(param["reference"])
        value = {"Name": trial_name, "Namespace": "default"}[meta.group(1)] if meta else values[param["reference"]]
        text = text.replace("${trialParameters.%s}" % param["name"], value)
    job = json.loads(text)
    job["metadata"].update(name=trial_name, namespace="default")
    return job


def chief_command(job):
    return job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["command"]


def flags_of(command):
    return dict(a[2:].split("=", 1) for a in command[2:])


# --- Katib's admission rules, as its Experiment webhook and suggestion services apply them --------

KATIB_ALGORITHMS = {"random", "grid", "hyperband", "bayesianoptimization", "tpe", "multivariate-tpe", "cmaes",
                    "sobol", "enas", "darts", "pbt"}


def _parameter_errors(parameters):
    errors = []
    for p in parameters:
        space = p.get("feasibleSpace", {})
        if p.get("parameterType") not in ("int", "double", "categorical", "discrete"):
            errors.append(f"parameter {p.get('name')}: parameterType")
        elif p["parameterType"] in ("categorical", "discrete"):
            if not space.get("list"):
                errors.append(f"parameter {p['name']}: list")
        elif not ("min" in space and "max" in space and float(space["min"]) < float(space["max"])):
            errors.append(f"parameter {p['name']}: min < max")
    return errors


def _template_errors(spec):
    template, errors = spec.get("trialTemplate") or {}, []
    for key in ("primaryContainerName", "successCondition", "failureCondition", "trialParameters", "trialSpec"):
        if not template.get(key):
            errors.append(f"trialTemplate.{key} missing")
    if errors:
        return errors
    text = json.dumps(template["trialSpec"])
    names = [p.get("name", "") for p in template["trialParameters"]]
    refs = [p.get("reference", "") for p in template["trialParameters"]]
    parameters = {p["name"] for p in spec["parameters"]}
    if len(set(names)) != len(names) or len(set(refs)) != len(refs) or any("{" in n or "}" in n for n in names):
        errors.append("trialParameters names/references must be unique and free of braces")
    for name, ref in zip(names, refs):
        if not META.fullmatch(ref) and ref not in parameters:
            errors.append(f"trialParameter {name}: reference {ref} is not a parameter")
        if "${trialParameters.%s}" % name not in text:
            errors.append(f"trialParameter {name} is not used in the trialSpec")
        text = text.replace("${trialParameters.%s}" % name, "test-value")
    if PLACEHOLDER.search(text):
        errors.append(f"placeholders without a trialParameter: {PLACEHOLDER.findall(text)}")
    if sum(not META.fullmatch(r) for r in refs) != len(parameters):
        errors.append("every parameter assignment needs exactly one trialParameter")
    job = template["trialSpec"]
    if job.get("metadata", {}).get("name") or job.get("metadata", {}).get("namespace"):
        errors.append("trialSpec metadata.name/namespace must be omitted")
    if not (job.get("apiVersion") and job.get("kind")):
        errors.append("trialSpec apiVersion/kind")
    containers = [c["name"] for c in job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"]]
    if template["primaryContainerName"] not in containers:
        errors.append("primaryContainerName is not the Chief's container")
    return errors


def _pbt_errors(spec):
    settings = {s["name"]: s["value"] for s in spec["algorithm"].get("algorithmSettings", [])}
    errors = [f"pbt setting {k} missing" for k in ("suggestion_trial_dir", "n_population", "truncation_threshold")
              if k not in settings]
    if errors:
        return errors
    if int(settings["n_population"]) < 5:
        errors.append("n_population < 5")
    if not 0 <= float(settings["truncation_threshold"]) <= 1:
        errors.append("truncation_threshold outside [0, 1]")
    if spec.get("resumePolicy") != "FromVolume":
        errors.append("pbt needs resumePolicy FromVolume (the suggestion's checkpoint volume)")
    # The PBT suggestion samples numbers from numpy.arange(min, max, step).
    errors += [f"pbt parameter {p['name']} has no step" for p in spec["parameters"]
               if p["parameterType"] == "double" and not p["feasibleSpace"].get("step")]
    return errors


def katib_rule_errors(experiment):
    """What Katib would refuse in this Experiment (its CRD has no schema: the webhook validates)."""
    errors, spec, name = [], experiment["spec"], experiment["metadata"]["name"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 40:
        errors.append("metadata.name")
    counts = [spec.get(k) for k in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")]
    if not (counts[0] > 0 and 0 < counts[1] <= counts[0] and 0 <= counts[2] <= counts[0]):
        errors.append(f"trial counts {counts}")
    objective = spec.get("objective", {})
    if objective.get("type") not in ("maximize", "minimize") or not objective.get("objectiveMetricName"):
        errors.append("objective")
    if spec.get("algorithm", {}).get("algorithmName") not in KATIB_ALGORITHMS:
        errors.append("algorithm")
    if spec.get("resumePolicy") not in ("Never", "LongRunning", "FromVolume"):
        errors.append("resumePolicy")
    collector = spec["metricsCollectorSpec"]
    path = collector["source"]["fileSystemPath"]
    if collector["collector"]["kind"] != "TensorFlowEvent" or path.get("kind") != "Directory" \
            or not os.path.isabs(path.get("path", "")) or path.get("format"):
        errors.append("metricsCollectorSpec")
    errors += _parameter_errors(spec.get("parameters") or [{}])
    errors += _template_errors(spec)
    if spec["algorithm"]["algorithmName"] == "pbt":
        errors += _pbt_errors(spec)
    return errors


# --- the Experiment -----------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_experiment_passes_katibs_rules(config):
    experiment = experiment_for(CONFIGS[config])
    assert experiment["apiVersion"] == "kubeflow.org/v1beta1" and experiment["kind"] == "Experiment"
    assert katib_rule_errors(experiment) == []
    template = experiment["spec"]["trialTemplate"]
    assert template["successCondition"] == 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
    assert template["failureCondition"] == 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    assert experiment["spec"]["objective"]["objectiveMetricName"] == tuning.OBJECTIVE_METRIC


def test_katibs_rules_can_fail():
    experiment = experiment_for(CONFIGS["pbt_conv_data_on_the_claim"])
    spec = experiment["spec"]
    spec["parameters"][0]["feasibleSpace"].pop("step")
    spec["trialTemplate"]["trialParameters"].pop()  # a placeholder left without its trialParameter
    spec["trialTemplate"]["trialSpec"]["metadata"]["name"] = "x"
    spec["algorithm"]["algorithmSettings"][1]["value"] = "4"
    errors = katib_rule_errors(experiment)
    assert "pbt parameter learning_rate_constant has no step" in errors, errors
    assert any("placeholders without a trialParameter" in e for e in errors), errors
    assert "trialSpec metadata.name/namespace must be omitted" in errors and "n_population < 5" in errors


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_trial_is_a_valid_tfjob(config, tfjob_schema):
    experiment = experiment_for(CONFIGS[config])
    job = trial_of(experiment, example_values(experiment))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert schema_errors(job, tfjob_schema) == []
    assert undeclared_fields(job, tfjob_schema) == []
    assert list(job["spec"]["tfReplicaSpecs"]) == ["Chief"]


def test_every_trial_parameter_is_used_and_every_placeholder_is_a_parameter():
    for config, options in CONFIGS.items():
        experiment = experiment_for(options)
        template = experiment["spec"]["trialTemplate"]
        declared = {p["name"] for p in template["trialParameters"]}
        used = set(PLACEHOLDER.findall(json.dumps(template["trialSpec"])))
        assert used == declared, config
        tuned = {p["name"] for p in experiment["spec"]["parameters"]}
        assert {p["reference"] for p in template["trialParameters"] if not META.fullmatch(p["reference"])} == tuned
        hparams = flags_of(chief_command(template["trialSpec"]))["hparams"]
        for name in tuned:  # each reaches t2t through --hparams
            assert f"{name}=${{trialParameters.{name}}}" in hparams.split(","), (config, hparams)


def test_each_trial_trains_in_its_own_folder_which_the_collector_reads():
    """PBT: --output_dir is Katib's checkpoint folder of the trial (suggestion_trial_dir, where the
    suggestion copies the parent's folder). Search algorithms: <output_dir>/<trial> of --pvc is
    mounted at --output_dir. Either way the collector reads the final evaluation inside it."""
    for config, options in CONFIGS.items():
        spec = experiment_for(options)["spec"]
        job = trial_of({"spec": spec}, example_values({"spec": spec}), "trial-7")
        output_dir = flags_of(chief_command(job))["output_dir"]
        path = spec["metricsCollectorSpec"]["source"]["fileSystemPath"]["path"]
        assert path == f"{output_dir}/{tuning.FINAL_EVAL_DIR}", config
        container = job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
        assert container["env"] == [{"name": tuning.TRIAL_ENV, "value": "trial-7"}], config
        if spec["algorithm"]["algorithmName"] == "pbt":
            settings = {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]}
            assert settings["suggestion_trial_dir"] == output_dir and spec["resumePolicy"] == "FromVolume"
            assert all(m["mountPath"] != output_dir for m in container.get("volumeMounts", []))
        else:
            mount = {m["mountPath"]: m for m in container["volumeMounts"]}[output_dir]
            base = dict(zip(options, options[1:]))["--mount_path"]
            assert os.path.join(base, mount["subPath"]) == f"{output_dir}/trial-7", config


def test_search_space_follows_the_hparams_set_and_model():
    conv = {p["name"]: p for p in experiment_for(CONFIGS["bayesianoptimization_conv"])["spec"]["parameters"]}
    assert set(conv) == {"learning_rate_constant", "learning_rate_warmup_steps", "pixel_loss"}
    assert conv["learning_rate_constant"]["feasibleSpace"] == {"min": "0.0001", "max": "0.01",
                                                               "distribution": "logUniform"}
    assert conv["learning_rate_warmup_steps"]["feasibleSpace"] == {"min": "25", "max": "400"}  # set: 100
    it = {p["name"]: p for p in experiment_for(CONFIGS["pbt_transformer_gcs_data"])["spec"]["parameters"]}
    assert set(it) == {"learning_rate_constant", "learning_rate_warmup_steps", "layer_prepostprocess_dropout"}
    space = it["learning_rate_constant"]["feasibleSpace"]  # img2img_allen_base: 1.0; PBT needs a step
    assert float(space["min"]) == pytest.approx(1 / 3, rel=1e-5) and space["max"] == "3" and "step" in space
    defaults = tuning.hparams_defaults("img2img_allen_base")
    for name, param in it.items():  # each is a real hparam of the set, of the type Katib assigns
        kind = {bool: None, int: "int", float: "double", str: "categorical"}[type(defaults[name])]
        assert param["parameterType"] == kind, name


def test_trial_is_the_tfjob_launch_writes_for_the_same_flags():
    """One code path: the trial equals `allen-sr launch` (no --tune) given the trial's own trainer
    flags, apart from the name Katib gives each trial, the mount of the trial's folder and the trial's
    name in its environment."""
    experiment = experiment_for(CONFIGS["tpe_transformer_pvc"])
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]
    command = chief_command(trial)
    args, _ = parse(["--name", "it-tpe", "--pvc", "allen-data", "--mount_path", "/data", "--data_dir",
                     "/data/allen", "--output_dir", "/data/tune"])
    job = launch.tfjob_manifest(args, command[4:])
    assert command[:4] == ["allen-sr", "train", "--data_dir=/data/allen", "--output_dir=/data/tune"]
    del job["metadata"]["name"], job["metadata"]["namespace"]
    container = trial["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    mounts = container["volumeMounts"]
    assert mounts[1] == {"name": "allen-sr-data", "mountPath": "/data/tune",
                         "subPath": "tune/${trialParameters.trialName}"}
    del mounts[1]
    assert container.pop("env") == [{"name": tuning.TRIAL_ENV, "value": "${trialParameters.trialName}"}]
    assert trial == job


# --- refused flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"--pvc": None}, "--tune pbt needs --pvc srpbt-pbt: Katib's PBT keeps each trial's checkpoint folder"),
    ({"--pvc": "other"}, "--tune pbt needs --pvc srpbt-pbt"),
    ({"--population": "4"}, "--population 4: Katib's PBT needs at least 5"),
    ({"--truncation": "0.7"}, "--truncation 0.7: give a fraction in (0, 0.5]"),
    ({"--tune": "hyperopt"}, "--tune hyperopt: unknown algorithm; use one of random, tpe"),
    ({"--name": "srpbt-with-a-long-name"}, "--name 'srpbt-with-a-long-name': use 1-18"),
    ({"--output_dir": "gs://b/out"}, "--output_dir gs://b/out: with --tune give an absolute local folder"),
    ({"--workers": "2", "--ps": "1"}, "--workers/--ps: a tuning trial is one Chief"),
    ({"--trial_steps": "0"}, "--trial_steps must be >= 1"),
    ({"--parallel_trials": "30"}, "--parallel_trials 30 exceeds --max_trials 20"),
    ({"--data_dir": "/ckpt/data"}, "--data_dir /ckpt/data is a local path: put it under --mount_path"),
])
def test_bad_tune_options_are_refused(change, message):
    options = list(CONFIGS["pbt_conv_data_on_the_claim"])
    for flag, value in change.items():
        if flag in options:
            i = options.index(flag)
            options[i:i + 2] = [] if value is None else [flag, value]
        else:
            options += [flag, value]
    with pytest.raises(ValueError, match=re.escape(message)):
        experiment_for(options)


@pytest.mark.parametrize("extra, message", [
    (["--train_steps=100"], "--train_steps: a trial's training length is set by --trial_steps"),
    (["--schedule=train"], "--schedule=train: trials need t2t's default continuous_train_and_eval"),
    (["--hparams=learning_rate_constant=0.1"], "--hparams sets learning_rate_constant, which the search sets"),
    (["--hparams=train_budget_seconds=900"], "train_budget_seconds > 0: it is a total over resumed runs"),
    (["--search", "learning_rate_constant=0.1"], "write HPARAM=LOW:HIGH for a range, or a list of"),
    (["--search", "no_such=1:2"], "hparams set img2img_conv_sr_cpu has no hparam 'no_such'"),
    (["--search", "learning_rate_warmup_steps=10:5"], "LOW must be below HIGH"),
    # values every trial drawing them would refuse (accepted before, failing those trials)
    (["--search", "pixel_loss=l1,bogus"], "--search pixel_loss: a trial with pixel_loss=bogus would fail"),
    (["--search", "learning_rate_constant=-1:1"], "a trial with learning_rate_constant=-1 would fail: "
                                                  "learning_rate_constant must be >= 0"),
    (["--search", "learning_rate_warmup_steps=-10:5"], "learning_rate_warmup_steps must be >= 0, got -10"),
])
def test_trainer_flags_a_trial_cannot_use_are_refused(extra, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        experiment_for(CONFIGS["random_conv_gcs_data"] + extra)


def test_pbt_searches_only_hparams_a_child_can_continue_its_parents_checkpoint_with():
    """Each PBT child trains on from a copy of its parent's folder: `allen-sr train` refuses one whose
    hparams change the model (num_hidden_layers), or turn on one that adds variables (weight_ema_decay
    from 0), and Katib queued it again and again."""
    from allen_sr.t2t.tools import RESUMABLE_HPARAMS, RESUMABLE_PREFIXES

    with pytest.raises(ValueError, match=re.escape(
            "--search num_hidden_layers: --tune pbt cannot search it: it changes the model, and each child "
            "continues its parent's checkpoint; PBT can search ")) as refused:
        experiment_for(CONFIGS["pbt_transformer_gcs_data"] + ["--search", "num_hidden_layers=2:4"])
    listed = str(refused.value).rpartition("PBT can search ")[2].split(", ")
    assert {"batch_size", "learning_rate_constant", "layer_prepostprocess_dropout"} <= set(listed)
    assert all(n in RESUMABLE_HPARAMS or n.startswith(RESUMABLE_PREFIXES) for n in listed)
    experiment_for(CONFIGS["tpe_transformer_pvc"] + ["--search", "num_hidden_layers=2:4"])  # trials start anew
    pbt_conv = CONFIGS["pbt_conv_data_on_the_claim"]
    with pytest.raises(ValueError, match=re.escape("--search weight_ema_decay: with --tune pbt give values above 0")):
        experiment_for(pbt_conv + ["--search", "weight_ema_decay=0:0.999"])
    experiment = experiment_for(pbt_conv + ["--search", "weight_ema_decay=0.9:0.999",
                                            "--search", "optimizer_adam_beta1=0.8:0.95"])
    assert {"optimizer_adam_beta1", "weight_ema_decay"} <= {p["name"] for p in experiment["spec"]["parameters"]}


def test_bayesianoptimization_needs_positive_double_ranges():
    """Katib's scikit-optimize service samples every double log-uniformly (min must be > 0)."""
    options = CONFIGS["tpe_transformer_pvc"][2:] + ["--tune", "bayesianoptimization"]
    with pytest.raises(ValueError, match=re.escape("layer_prepostprocess_dropout needs a range above 0")):
        experiment_for(options)
    experiment = experiment_for(options + ["--search", "layer_prepostprocess_dropout=0.01:0.3"])
    assert all(float(p["feasibleSpace"]["min"]) > 0 for p in experiment["spec"]["parameters"]
               if p["parameterType"] == "double")


def test_tuning_options_without_tune_are_refused():
    args, flags = launch.build_parser().parse_known_args(
        ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--population", "5",
         *TRANSFORMER])
    with pytest.raises(ValueError, match=re.escape("--population is a tuning option: it needs --tune pbt")):
        launch.build_manifest(args, flags)


@pytest.mark.parametrize("change, message", [
    ({"--pvc": None}, "allen-sr launch: error: --tune pbt needs --pvc srpbt-pbt"),
    ({"--population": "3"}, "allen-sr launch: error: --population 3: Katib's PBT needs at least 5"),
    ({"--tune": "annealing"}, "allen-sr launch: error: --tune annealing: unknown algorithm"),
])
def test_the_command_refuses_bad_flags_in_one_line_with_exit_code_2(change, message, tmp_path):
    options = list(CONFIGS["pbt_conv_data_on_the_claim"])
    for flag, value in change.items():
        i = options.index(flag) if flag in options else len(options)
        options[i:i + 2] = [] if value is None else [flag, value]
    proc = run_launch(["--image", "i", *options, "--dry_run"], tmp_path, tmp_path / "unused")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr


# --- dry run and submission ------------------------------------------------------------------------

def test_dry_run_prints_the_experiment_and_submission_posts_it(tmp_path):
    options = ["--image", "registry.example/allen-sr:1.0", *CONFIGS["tpe_transformer_pvc"]]
    with StandInApiServer() as api:
        config = kubeconfig(tmp_path, api.url)
        dry = run_launch(options + ["--dry_run"], tmp_path, config)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert yaml.safe_load(dry.stdout) == experiment_for(CONFIGS["tpe_transformer_pvc"])
        assert "kubectl get experiment it-tpe -n default -w" in dry.stderr and api.requests == []
        real = run_launch(options, tmp_path, config)
    assert real.returncode == 0, real.stderr[-3000:]
    assert api.requests == [("POST", "/apis/kubeflow.org/v1beta1/namespaces/default/experiments",
                             experiment_for(CONFIGS["tpe_transformer_pvc"]))]
    assert "submitted Katib Experiment it-tpe (tpe, up to 20 trials, 3 at once)" in real.stdout


def test_submission_errors_are_one_line(tmp_path, monkeypatch):
    experiment = experiment_for(CONFIGS["tpe_transformer_pvc"])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with StandInApiServer(status=409) as api:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api.url)))
        with pytest.raises(launch.LaunchError) as refused:
            tune.submit_experiment(experiment)
    message = str(refused.value)
    assert "\n" not in message and "HTTP 409" in message and "an Experiment named it-tpe exists" in message


# --- what `allen-sr train` does for a trial -----------------------------------------------------------

def test_increment_target_counts_from_the_checkpoint_and_survives_restarts():
    assert tuning.increment_target(100, 0, None) == 100
    record = {"increment": 100, "start_step": 400, "train_steps": 500}
    assert tuning.increment_target(100, 450, record) == 500  # the same run, restarted after a crash
    assert tuning.increment_target(100, 500, record) == 600  # a child of a finished run (PBT)
    assert tuning.increment_target(50, 450, record) == 500  # another increment: 50 from step 450


def test_a_restarted_trial_keeps_its_target_even_when_it_was_reached():
    """A trial killed after its last checkpoint, during the final evaluation, restarts at its target:
    it must not train another increment. Only another trial's record (a PBT parent's) starts one."""
    record = {"increment": 100, "start_step": 400, "train_steps": 500, "trial": "exp-a"}
    assert tuning.increment_target(100, 500, record, "exp-a") == 500  # restarted after its last checkpoint
    assert tuning.increment_target(100, 450, record, "exp-a") == 500  # restarted mid-way
    assert tuning.increment_target(100, 500, record, "exp-b") == 600  # a child of the parent exp-a
    assert tuning.increment_target(100, 450, record, "exp-b") == 550
    untagged = {"increment": 100, "start_step": 400, "train_steps": 500}
    assert tuning.increment_target(100, 500, untagged, "exp-b") == 600  # a record of no trial
    assert tuning.increment_target(100, 500, record) == 600  # a plain run: as before


def save_step(folder, step):
    """A real checkpoint at global step ``step`` in ``folder`` (what checkpoint_step reads)."""
    import tensorflow as tf

    with tf.Graph().as_default():
        global_step = tf.compat.v1.train.get_or_create_global_step()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.assign(global_step, step))
            tf.compat.v1.train.Saver().save(session, os.path.join(folder, "model.ckpt"), global_step=step)


def test_the_trial_name_in_the_environment_keeps_a_reached_target(tmp_path):
    save_step(str(tmp_path), 10)
    record = tmp_path / tuning.INCREMENT_RECORD
    record.write_text(json.dumps({"increment": 10, "start_step": 0, "train_steps": 10, "trial": "exp-a"}))
    argv = [f"--output_dir={tmp_path}", "--train_steps_increment=10"]
    assert tuning.resolve_train_increment(argv, {tuning.TRIAL_ENV: "exp-a"}) == [argv[0], "--train_steps=10"]
    assert json.loads(record.read_text())["train_steps"] == 10
    assert tuning.resolve_train_increment(argv, {tuning.TRIAL_ENV: "exp-b"}) == [argv[0], "--train_steps=20"]
    assert json.loads(record.read_text()) == {"increment": 10, "start_step": 10, "train_steps": 20, "trial": "exp-b"}
    record.write_text(json.dumps({"increment": 10, "start_step": 0, "train_steps": 10}))
    assert tuning.resolve_train_increment(argv, {}) == [argv[0], "--train_steps=20"]  # a plain run


def test_integral_floats_become_ints_for_int_hparams_only():
    defaults = {"learning_rate_warmup_steps": 100, "learning_rate_constant": 0.1, "pixel_loss": "l1"}
    argv = ["--hparams_set=s", "--hparams=learning_rate_warmup_steps=120.0,learning_rate_constant=1.0,pixel_loss=l1"]
    out = tuning.integral_int_hparams(argv, lambda name: defaults)
    assert out[1] == "--hparams=learning_rate_warmup_steps=120,learning_rate_constant=1.0,pixel_loss=l1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trial(job, data_dir, output_dir, timeout=600, tf_config=True):
    """Run a trial's Chief command here with its container's environment, under a one-task TF_CONFIG
    or, as the training operator runs a one-Chief TFJob (not distributed), without one."""
    argv = [a.replace("--data_dir=/data/allen", f"--data_dir={data_dir}")
             .replace("--output_dir=/ckpt", f"--output_dir={output_dir}") for a in chief_command(job)[2:]]
    container = job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    if tf_config:
        env["TF_CONFIG"] = json.dumps({"cluster": {"chief": [f"127.0.0.1:{free_port()}"]},
                                       "task": {"type": "chief", "index": 0}})
    proc = subprocess.run([ALLEN_SR, "train", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def pbt_experiment():
    return experiment_for(CONFIGS["pbt_conv_data_on_the_claim"])


@pytest.fixture(scope="module")
def parent_trial(tmp_path_factory, pbt_experiment):
    """A dataset, and the first trial of the PBT Experiment run for real: (dataset, output folder)."""
    from conftest import save_tissue_images

    root = tmp_path_factory.mktemp("tune")
    images = save_tissue_images(root / "images")
    data_dir = root / "data"
    proc = subprocess.run([ALLEN_SR, "datagen", f"--problem={PROBLEM}", f"--data_dir={data_dir}",
                           f"--tmp_dir={images}"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = dict(example_values(pbt_experiment), pixel_loss="l1")
    run_trial(trial_of(pbt_experiment, values, "srpbt-parent"), data_dir, root / "parent")
    return data_dir, root / "parent"


def katib_tfevent_metrics(directory, metric_names):
    """{metric: [values]} as Katib's TensorFlowEvent collector reads them: every file under the
    folder, tensor events only, a tag counting for metric m when it starts with m's last
    "/"-part (and, for "a/b" names, when the file's folder ends with "a")."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    found = {m: [] for m in metric_names}
    for root, _, files in os.walk(directory):
        for path in (os.path.join(root, f) for f in files):
            events = EventAccumulator(path, size_guidance={TENSORS: 0})
            events.Reload()
            for tag in events.Tags()[TENSORS]:
                for m in metric_names:
                    folder = os.path.dirname(m) if "/" in m else os.path.dirname(path)
                    if tag.startswith(m.split("/")[-1]) and os.path.dirname(path).endswith(folder):
                        found[m] += [float(tf.make_ndarray(t.tensor_proto)) for t in events.Tensors(tag)]
    return found


def eval_scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [s.value for s in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def test_katibs_collector_finds_the_objective_a_trial_writes(parent_trial, pbt_experiment):
    _, output = parent_trial
    spec = pbt_experiment["spec"]
    collector_path = spec["metricsCollectorSpec"]["source"]["fileSystemPath"]["path"]
    trial_dir = flags_of(chief_command(spec["trialTemplate"]["trialSpec"]))["output_dir"]
    local = output / os.path.relpath(collector_path, trial_dir)  # <output_dir>/eval_eval
    metric = spec["objective"]["objectiveMetricName"]
    found = katib_tfevent_metrics(str(local), [metric])[metric]
    t2t_psnr = eval_scalars(local)[f"metrics-{PROBLEM}/targets/psnr"]
    assert len(found) == 1 and found == pytest.approx(t2t_psnr, abs=1e-4), (found, t2t_psnr)
    assert 0.0 < found[0] < 60.0
    # What t2t writes by itself is invisible to the collector (a scalar, tagged metrics-...).
    assert katib_tfevent_metrics(str(local), [f"metrics-{PROBLEM}/targets/psnr"]) == {
        f"metrics-{PROBLEM}/targets/psnr": []}


def trained_variables(checkpoint):
    """{name: value} of the model's weights in a checkpoint (no optimizer slots, step or clock)."""
    import tensorflow as tf

    skip = ("Adam", "global_step", "train_clock", "beta1_power", "beta2_power")
    return {name: tf.train.load_variable(checkpoint, name) for name, _ in tf.train.list_variables(checkpoint)
            if not any(s in name for s in skip)}


def test_a_trial_resumes_from_its_parents_checkpoint_with_new_hparams(parent_trial, pbt_experiment, tmp_path):
    """PBT's exploit step: Katib copies the parent's folder for the child, whose `allen-sr train`
    finds the checkpoint there. The child's learning rate is 0, so its weights after 3 more steps
    must be exactly those it started from: the parent's, which are not the initial ones."""
    data_dir, parent = parent_trial
    child = tmp_path / "child"
    shutil.copytree(parent, child)
    values = {"learning_rate_constant": "0", "learning_rate_warmup_steps": "30.0", "pixel_loss": "l2"}
    proc = run_trial(trial_of(pbt_experiment, values, "srpbt-child"), data_dir, child)
    assert f"newest checkpoint in {child} is at step 3; training to step 6" in proc.stderr
    assert tuning.checkpoint_step(str(child)) == 6
    parent_start, parent_end = (trained_variables(str(parent / f"model.ckpt-{s}")) for s in (0, 3))
    child_end = trained_variables(str(child / "model.ckpt-6"))
    assert set(child_end) == set(parent_end) and len(child_end) > 3
    assert all(np.array_equal(child_end[k], parent_end[k]) for k in child_end)
    assert not all(np.array_equal(parent_start[k], parent_end[k]) for k in parent_end)
    hparams = json.loads((child / "hparams.json").read_text())
    assert (hparams["learning_rate_constant"], hparams["learning_rate_warmup_steps"], hparams["pixel_loss"]) == (
        0.0, 30, "l2")
    assert json.loads((child / tuning.INCREMENT_RECORD).read_text()) == {
        "increment": 3, "start_step": 3, "train_steps": 6, "trial": "srpbt-child"}


def test_a_trial_restarted_after_its_last_checkpoint_only_evaluates_again(parent_trial, pbt_experiment, tmp_path):
    """The Chief killed during its final evaluation is restarted (restartPolicy OnFailure) at its
    target step: it trains no further increment, is not refused, and evaluates again (the objective
    Katib reads). Run without TF_CONFIG, which a one-Chief TFJob does not get."""
    data_dir, parent = parent_trial
    restarted = tmp_path / "restarted"
    shutil.copytree(parent, restarted)
    values = dict(example_values(pbt_experiment), pixel_loss="l1")
    proc = run_trial(trial_of(pbt_experiment, values, "srpbt-parent"), data_dir, restarted, tf_config=False)
    assert f"newest checkpoint in {restarted} is at step 3; trial srpbt-parent reached its step 3" in proc.stderr
    assert tuning.checkpoint_step(str(restarted)) == 3
    assert json.loads((restarted / tuning.INCREMENT_RECORD).read_text()) == {
        "increment": 3, "start_step": 0, "train_steps": 3, "trial": "srpbt-parent"}
    metric = tuning.OBJECTIVE_METRIC
    assert len(katib_tfevent_metrics(str(restarted / tuning.FINAL_EVAL_DIR), [metric])[metric]) == 2
