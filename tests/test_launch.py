"""`allen-sr launch`: TFJob manifests checked against the real Kubeflow CRD schema, their commands
against a local `allen-sr train`, submission against a stand-in Kubernetes API server on 127.0.0.1,
and the TF_CONFIG translation that `allen-sr train` applies inside each replica."""
import json
import re
import os
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from allen_sr.commands import launch
from conftest import REPO
from shared_data import shared_path

BIN = os.path.dirname(sys.executable)
ALLEN_SR = os.path.join(BIN, "allen-sr")
TRAINER_FLAGS = ["--problem=img2img_allen_brain_dim8to32", "--model=img2img_transformer",
                 "--hparams_set=img2img_allen_multigpu", "--train_steps=100000"]

# name -> (launch options, expected replicas, expected GPUs per chief/worker, expected volume claim)
CONFIGS = {
    "cpu_single_chief_gcs": (["--workers", "0", "--ps", "0", "--data_dir", "gs://bucket/data",
                              "--output_dir", "gs://bucket/train"], {"Chief": 1}, 0, None),
    "gpu_workers_ps_gcs": (["--workers", "3", "--ps", "2", "--gpus_per_worker", "8", "--data_dir",
                            "gs://bucket/data", "--output_dir", "gs://bucket/train/run1"],
                           {"Chief": 1, "Worker": 3, "PS": 2}, 8, None),
    "gpu_pvc": (["--workers", "1", "--ps", "1", "--gpus_per_worker", "1", "--pvc", "allen-data",
                 "--mount_path", "/data", "--data_dir", "/data/allen", "--output_dir", "/data/train"],
                {"Chief": 1, "Worker": 1, "PS": 1}, 1, "allen-data"),
    "mixed_gcs_data_pvc_output": (["--workers", "2", "--ps", "1", "--pvc", "runs", "--mount_path", "/runs",
                                   "--data_dir", "gs://bucket/data", "--output_dir", "/runs/sr"],
                                  {"Chief": 1, "Worker": 2, "PS": 1}, 0, "runs"),
}


def launch_argv(options, name="sr-test"):
    return ["--name", name, "--image", "registry.example/allen-sr:1.0", *options, *TRAINER_FLAGS]


def manifest_for(options, name="sr-test"):
    args, trainer_flags = launch.build_parser().parse_known_args(launch_argv(options, name))
    return launch.tfjob_manifest(args, trainer_flags)


def local_command(options):
    """The `allen-sr train` a user would type to run this configuration on one machine."""
    opts = dict(zip(options[::2], options[1::2]))
    argv = ["allen-sr", "train", f"--data_dir={opts['--data_dir']}", f"--output_dir={opts['--output_dir']}",
            *TRAINER_FLAGS]
    gpus = int(opts.get("--gpus_per_worker", 0))
    return argv + ([f"--worker_gpu={gpus}"] if gpus else [])


def parse_flags(argv):
    """{flag: value} the way absl reads --flag=value / --flag value (later ones win)."""
    flags, i = {}, 0
    while i < len(argv):
        name, sep, value = argv[i][2:].partition("=")
        if not sep:
            value = argv[i + 1]
            i += 1
        flags[name] = value
        i += 1
    return flags


# --- the CRD schema ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tfjob_schema():
    with open(shared_path("reference", "kubeflow-tfjob-crd-v1.9.0.yaml")) as f:
        crd = yaml.safe_load(f)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def schema_errors(manifest, schema):
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest))


def undeclared_fields(instance, schema, path="$"):
    """Keys the schema does not declare. The CRD allows unknown keys (the API server silently
    prunes them), so a misspelt field would pass plain validation and vanish on the cluster."""
    found = []
    if isinstance(instance, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                found += undeclared_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += undeclared_fields(value, extra, f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            found += undeclared_fields(item, schema["items"], f"{path}[{i}]")
    return found


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_manifest_is_valid_against_the_tfjob_crd(config, tfjob_schema):
    manifest = manifest_for(CONFIGS[config][0])
    assert schema_errors(manifest, tfjob_schema) == []
    assert undeclared_fields(manifest, tfjob_schema) == []


def test_the_schema_checks_can_fail(tfjob_schema):
    manifest = manifest_for(CONFIGS["gpu_pvc"][0])
    spec = manifest["spec"]["tfReplicaSpecs"]
    spec["Worker"]["replicas"] = "two"
    del spec["PS"]["template"]["spec"]["containers"][0]["name"]
    spec["Chief"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] = {"claimname": "x"}
    errors = schema_errors(manifest, tfjob_schema)
    assert any("spec/tfReplicaSpecs/Worker/replicas" in e for e in errors), errors
    assert any("'name' is a required property" in e for e in errors), errors
    assert any("'claimName' is a required property" in e for e in errors), errors
    spec["Chief"]["restartpolicy"] = "OnFailure"
    assert "$.spec.tfReplicaSpecs.Chief.restartpolicy" in undeclared_fields(manifest, tfjob_schema)


# --- structure and values ------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_manifest_replicas_resources_and_volumes(config):
    options, replicas, gpus, claim = CONFIGS[config]
    manifest = manifest_for(options)
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    assert manifest["metadata"]["name"] == "sr-test" and manifest["metadata"]["namespace"] == "default"
    assert manifest["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    specs = manifest["spec"]["tfReplicaSpecs"]
    assert {kind: spec["replicas"] for kind, spec in specs.items()} == replicas
    for kind, spec in specs.items():
        assert spec["restartPolicy"] == "OnFailure"
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        assert container["name"] == "tensorflow"  # the training operator requires this name
        assert container["image"] == "registry.example/allen-sr:1.0"
        assert "env" not in container  # TF_CONFIG is the operator's job
        limits = container.get("resources", {}).get("limits", {})
        expected_gpus = gpus if kind in ("Chief", "Worker") else 0
        assert limits == ({"nvidia.com/gpu": expected_gpus} if expected_gpus else {})
        if claim:
            mount = "/data" if claim == "allen-data" else "/runs"
            assert pod["volumes"] == [{"name": "allen-sr-data", "persistentVolumeClaim": {"claimName": claim}}]
            assert container["volumeMounts"] == [{"name": "allen-sr-data", "mountPath": mount}]
        else:
            assert "volumes" not in pod and "volumeMounts" not in container


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_replica_runs_the_local_train_command(config):
    """Each replica's command is exactly the `allen-sr train` a user would run locally; gs://
    paths stay exactly as given (t2t reads them through tf.io.gfile)."""
    options = CONFIGS[config][0]
    expected = local_command(options)
    for kind, spec in manifest_for(options)["spec"]["tfReplicaSpecs"].items():
        command = spec["template"]["spec"]["containers"][0]["command"]
        assert command == expected, kind
        assert parse_flags(command[2:]) == parse_flags(expected[2:])
    opts = dict(zip(options[::2], options[1::2]))
    flags = parse_flags(expected[2:])
    assert flags["data_dir"] == opts["--data_dir"] and flags["output_dir"] == opts["--output_dir"]


def test_replica_commands_use_only_real_t2t_trainer_flags():
    """Every flag the replicas get is one `allen-sr train` (t2t-trainer) defines."""
    proc = subprocess.run([ALLEN_SR, "train", "--helpfull"], capture_output=True, text=True, timeout=300, cwd=REPO)
    known = {line.split(":")[0].strip().lstrip("-").removeprefix("[no]")
             for line in proc.stdout.splitlines() if line.lstrip().startswith("--")}
    assert {"worker_gpu", "data_dir", "output_dir", "problem", "hparams_set"} <= known, proc.stdout[-2000:]
    for options, *_ in CONFIGS.values():
        chief = manifest_for(options)["spec"]["tfReplicaSpecs"]["Chief"]
        command = chief["template"]["spec"]["containers"][0]["command"]
        assert set(parse_flags(command[2:])) <= known


@pytest.mark.parametrize("options, message", [
    (["--workers", "2", "--ps", "0", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"], "--workers 2 needs --ps"),
    (["--data_dir", "/data/d", "--output_dir", "gs://b/o"], "--data_dir /data/d is a local path"),
    (["--pvc", "c", "--mount_path", "/data", "--data_dir", "/data/d", "--output_dir", "/tmp/o"],
     "--output_dir /tmp/o is not under --mount_path /data"),
    (["--pvc", "c", "--data_dir", "/data/d", "--output_dir", "/data/o"], "--pvc and --mount_path go together"),
    (["--pvc", "c", "--mount_path", "/data", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"],
     "--pvc is only for local"),
    (["--gpus_per_worker", "-1", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"],
     "--gpus_per_worker must be >= 0"),
    # names and paths Kubernetes or TensorFlow in the pods would refuse (all accepted before)
    (["--name", "9start", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"], "starting with a letter"),
    (["--namespace", "Bad_NS", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"], "--namespace 'Bad_NS'"),
    (["--namespace", "", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"], "--namespace ''"),
    (["--pvc", "Allen_Data", "--mount_path", "/data", "--data_dir", "/data/d", "--output_dir", "/data/o"],
     "--pvc 'Allen_Data': a claim's name"),
    (["--data_dir", "s3://b/d", "--output_dir", "gs://b/o"], "--data_dir s3://b/d: the replicas share gs://"),
    (["--data_dir", "gs://b/d", "--output_dir", "ram://o"], "--output_dir ram://o: the replicas share gs://"),
])
def test_launch_rejects_jobs_that_cannot_work(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        manifest_for(options)


@pytest.mark.parametrize("extra, message", [
    (["--ps_replicas=2"], "--ps_replicas: set per replica from TF_CONFIG"),
    (["--worker_gpu=4"], "--worker_gpu: use --gpus_per_worker"),
    (["oops"], r"unexpected argument\(s\) \['oops'\]"),
])
def test_launch_rejects_trainer_flags_it_owns(extra, message):
    args, flags = launch.build_parser().parse_known_args(
        ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", *TRAINER_FLAGS, *extra])
    with pytest.raises(ValueError, match=message):
        launch.tfjob_manifest(args, flags)
    args, flags = launch.build_parser().parse_known_args(
        ["--name", "Bad_Name", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--model=m"])
    with pytest.raises(ValueError, match="--name 'Bad_Name'"):
        launch.tfjob_manifest(args, flags)
    args.name = "ok"
    with pytest.raises(ValueError, match="missing trainer flag.*--problem --hparams_set"):
        launch.tfjob_manifest(args, flags)


# --- dry run and submission, against a stand-in Kubernetes API server ---------------------------------

class StandInApiServer:
    """A real HTTP server on 127.0.0.1 playing the Kubernetes API: records every request and
    answers TFJob creation with `status` (201 echoes the object, as the API server does)."""

    def __init__(self, status=201):
        self.requests = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(("POST", self.path, json.loads(body or b"null")))
                reply = body if outer.status == 201 else json.dumps(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                     "message": "tfjobs.kubeflow.org \"sr-test\" already exists", "code": outer.status}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self):
                outer.requests.append(("GET", self.path, None))
                self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def kubeconfig(tmp_path, server_url):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": server_url}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "tester"}}],
    }))
    return path


def run_launch(args, tmp_path, kubeconfig_path):
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(kubeconfig_path))
    return subprocess.run([ALLEN_SR, "launch", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)


def test_dry_run_prints_yaml_and_contacts_no_cluster(tmp_path):
    options = CONFIGS["gpu_workers_ps_gcs"][0]
    with StandInApiServer() as api:
        config = kubeconfig(tmp_path, api.url)
        dry = run_launch(launch_argv(options) + ["--dry_run"], tmp_path, config)
        assert dry.returncode == 0, dry.stderr
        assert yaml.safe_load(dry.stdout) == manifest_for(options)
        assert "kubectl get tfjob sr-test -n default -w" in dry.stderr
        assert api.requests == []
        # The same command without --dry_run does reach the API server: the check above could fail.
        real = run_launch(launch_argv(options), tmp_path, config)
    assert real.returncode == 0, real.stderr
    assert api.requests == [("POST", "/apis/kubeflow.org/v1/namespaces/default/tfjobs", manifest_for(options))]
    assert "kubectl logs -f sr-test-chief-0 -n default" in real.stdout
    assert shlex.join(local_command(options)) in real.stdout


def test_submit_reports_api_errors_and_missing_kubeconfig(tmp_path):
    options = CONFIGS["cpu_single_chief_gcs"][0]
    with StandInApiServer(status=409) as api:
        proc = run_launch(launch_argv(options), tmp_path, kubeconfig(tmp_path, api.url))
    assert proc.returncode == 1
    assert "HTTP 409" in proc.stderr and "a TFJob named sr-test exists" in proc.stderr
    proc = run_launch(launch_argv(options), tmp_path, tmp_path / "no-such-kubeconfig")
    assert proc.returncode == 1
    assert "no usable Kubernetes configuration" in proc.stderr and "--dry_run" in proc.stderr


def test_launch_usage_errors_name_the_option(tmp_path):
    proc = run_launch(launch_argv(["--workers", "1", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"])
                      + ["--dry_run"], tmp_path, tmp_path / "unused")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "allen-sr launch: error: --workers 1 needs --ps >= 1" in proc.stderr


@pytest.mark.parametrize("change, message", [
    ({"--hparams_set": "bogus"}, "unknown hparams set 'bogus'"),
    ({"--model": "img2img_conv_sr"}, "hparams lack num_res_blocks"),
    ({"--hparams": "foo=1"}, "--hparams foo=1"),
    ({"--train_steps": "-5"}, "--train_steps=-5: pass a whole number >= 1"),
    ({"--hparams": "degradation=blurr=3"}, "--hparams degradation: unknown key 'blurr'"),  # failed in every pod
])
def test_launch_refuses_trainer_flags_every_replica_would_refuse(change, message, capsys):
    """Checked by `allen-sr launch` itself, not found only once pods run (unless --t2t_usr_dir registers more)."""
    flags = dict(flag.split("=", 1) for flag in TRAINER_FLAGS) | change
    base = ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--dry_run"]
    assert launch.launch_main(base + [f"{k}={v}" for k, v in flags.items()]) == 2
    assert message in capsys.readouterr().err
    # a name only the image's --t2t_usr_dir may register is left to the replicas; the rest is refused still
    with_usr_dir = launch.launch_main(base + [f"{k}={v}" for k, v in flags.items()] + ["--t2t_usr_dir=/image/usr"])
    assert with_usr_dir == (0 if "unknown hparams set" in message else 2)


def test_a_separator_before_the_trainer_flags_stays_out_of_the_replicas_command(capsys):
    """`launch ... -- --problem=...`: absl stops reading flags at "--", so every replica's t2t ran
    without --problem, --model and --hparams_set."""
    base = ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--dry_run"]
    assert launch.launch_main(base + ["--", *TRAINER_FLAGS]) == 0
    with_separator = capsys.readouterr().out
    assert launch.launch_main(base + TRAINER_FLAGS) == 0
    assert with_separator == capsys.readouterr().out and "- --problem=" in with_separator


@pytest.mark.parametrize("extra, message", [
    (["--train_step=100000"], "--train_step: not a t2t-trainer flag (did you mean --train_steps?)"),
    (["--hparam", "batch_size=2"], "--hparam: not a t2t-trainer flag (did you mean --hparams?)"),
])
def test_launch_refuses_flags_no_replica_knows(extra, message, capsys):
    """absl in every replica's `allen-sr train` stopped at them ("Unknown command line flag")."""
    base = ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--dry_run"]
    assert launch.launch_main(base + TRAINER_FLAGS + extra) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"allen-sr launch: error: {message}; `allen-sr train --helpfull` lists them"]
    # absl's own, negated booleans, and the flags allen-sr train reads itself pass
    ours = ["--flagfile=/etc/flags", "--init_from=conv-fast", "--noregistry_help", "--logtostderr"]
    assert launch.launch_main(base + TRAINER_FLAGS + ours) == 0


def test_launch_options_after_the_separator_are_refused_and_nothing_is_submitted(tmp_path, monkeypatch, capsys):
    """After "--" they went into every replica's command: --dry_run submitted a TFJob of one Chief."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    base = ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o"]
    with StandInApiServer() as api:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api.url)))
        code = launch.launch_main(base + ["--", *TRAINER_FLAGS, "--workers", "2", "--ps=1", "--dry_run"])
    assert (code, api.requests) == (2, [])
    assert capsys.readouterr().err.splitlines() == [
        "allen-sr launch: error: --workers --ps --dry_run after '--', where only t2t-trainer flags go: "
        "put allen-sr launch's own options before '--'"]


def write_usr_dir(folder, hparams_set):
    """A --t2t_usr_dir package registering ``hparams_set``: img2img_conv_sr_cpu at another rate."""
    folder.mkdir()
    (folder / "__init__.py").write_text(
        "from tensor2tensor.utils import registry\nfrom allen_sr.t2t.names import register_all\n\n"
        f"register_all()\n\n\n@registry.register_hparams\ndef {hparams_set}():\n"
        "    hparams = registry.hparams('img2img_conv_sr_cpu')\n    hparams.learning_rate_constant = 5e-4\n"
        "    return hparams\n")
    return folder


def test_an_hparams_set_of_a_usr_dir_is_checked_where_the_folder_is_and_left_to_the_replicas_elsewhere(
        tmp_path, capsys):
    usr_dir = write_usr_dir(tmp_path / "launch_test_usr", "launch_test_usr_set")
    flags = ["--problem=img2img_allen_brain_dim8to32", "--model=img2img_conv_sr", "--hparams_set=launch_test_usr_set"]
    base = ["--name", "j", "--image", "i", "--data_dir", "gs://b/d", "--output_dir", "gs://b/o", "--dry_run"]
    tune = ["--tune", "tpe", "--name", "j", "--image", "i", "--pvc", "p", "--mount_path", "/data", "--data_dir",
            "/data/d", "--output_dir", "/data/t", "--dry_run"]
    # a folder only the image has: launch cannot read the set, and leaves it to each replica
    assert launch.launch_main(base + flags + ["--t2t_usr_dir=/image/usr"]) == 0
    assert ("note: --t2t_usr_dir=/image/usr cannot be imported here; not checked here, but by each replica's "
            "allen-sr train as it starts: --hparams_set=launch_test_usr_set, the flags it defines"
            in capsys.readouterr().err)
    assert launch.launch_main(tune + flags + ["--t2t_usr_dir=/image/usr"]) == 2  # the search needs its values
    assert ("--hparams_set=launch_test_usr_set is not registered here, and --tune reads its values"
            in capsys.readouterr().err)
    # a folder this machine has too is imported: its set is checked like ours, and tuned around its rate
    assert launch.launch_main(base + flags + [f"--t2t_usr_dir={usr_dir}", "--hparams=foo=1"]) == 2
    assert "--hparams foo=1" in capsys.readouterr().err
    assert launch.launch_main(base + flags + [f"--t2t_usr_dir={usr_dir}"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert launch.launch_main(tune + flags + [f"--t2t_usr_dir={usr_dir}"]) == 0
    experiment = yaml.safe_load(capsys.readouterr().out)
    rate = next(p for p in experiment["spec"]["parameters"] if p["name"] == "learning_rate_constant")
    assert float(rate["feasibleSpace"]["max"]) == pytest.approx(3 * 5e-4)
