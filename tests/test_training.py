"""Training for real: data shards on CPU, a chief/worker/ps cluster on 127.0.0.1, resuming after a
SIGKILL, non-local filesystems, and PSNR/SSIM in t2t's eval.

Every slow test trains a tiny model (hidden 32, one encoder and one decoder layer) for a few steps
through the `allen-sr train` console script in real subprocesses and checks what it wrote.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

BIN = os.path.dirname(sys.executable)
ALLEN_SR = os.path.join(BIN, "allen-sr")
PROBLEM = "img2img_local_dim8to32"
TINY = "hidden_size=32,filter_size=32,batch_size=2,num_encoder_layers=1,num_decoder_layers=1"
STEP_LINE = re.compile(r"INFO:tensorflow:loss = [-0-9.e]+, step = (\d+)")


def train_flags(data_dir, output_dir, *extra):
    return [f"--problem={PROBLEM}", "--model=img2img_transformer",
            "--hparams_set=img2img_allen_cpu_tiny", f"--hparams={TINY}",
            f"--data_dir={data_dir}", f"--output_dir={output_dir}", *extra]


def tail(text, n=4000):
    return text[-n:]


# t2t's own crash on a TF_CONFIG with a chief, which allen_sr.t2t.cluster.prepare_cluster_task fixes.
NOT_HOOKED = ("allen-sr train does not call allen_sr.t2t.cluster.prepare_cluster_task: t2t's "
              "create_run_config crashed on TF_CONFIG (KeyError 'evaluation_master')")


def run_train(flags, timeout=600, **kw):
    proc = subprocess.run([ALLEN_SR, "train", *flags], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kw)
    assert "KeyError: 'evaluation_master'" not in proc.stderr, NOT_HOOKED
    assert proc.returncode == 0, f"allen-sr train failed:\n{tail(proc.stdout)}\n{tail(proc.stderr)}"
    return proc


def logged_steps(log):
    """Global steps of t2t's "loss = ..., step = N" lines (INFO:tensorflow copies only)."""
    return [int(m.group(1)) for m in STEP_LINE.finditer(log)]


def latest_checkpoint_step(output_dir):
    """Step of the newest checkpoint listed in output_dir/checkpoint, or None."""
    path = os.path.join(output_dir, "checkpoint")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    match = re.search(r'^model_checkpoint_path: ".*?model\.ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else None


def graph_nodes(output_dir):
    """(name, op, device) of every node in the graph.pbtxt the estimator wrote."""
    import tensorflow as tf
    from google.protobuf import text_format

    graph = tf.compat.v1.GraphDef()
    with open(os.path.join(output_dir, "graph.pbtxt")) as f:
        text_format.Parse(f.read(), graph)
    return [(n.name, n.op, n.device) for n in graph.node]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny dataset of the local-images problem (72 train / 8 dev tiles)."""
    from conftest import save_tissue_images

    root = tmp_path_factory.mktemp("training")
    images = save_tissue_images(root / "images")
    data_dir = root / "data"
    proc = subprocess.run([ALLEN_SR, "datagen", f"--problem={PROBLEM}", f"--data_dir={data_dir}",
                           f"--tmp_dir={images}"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"allen-sr datagen failed:\n{tail(proc.stdout)}\n{tail(proc.stderr)}"
    return data_dir


# --- 1. data parallelism ----------------------------------------------------------------------

@pytest.mark.slow
def test_two_data_shards_on_cpu(dataset, tmp_path):
    """--worker_gpu=2 on a CPU-only host builds 2 data shards, runs them and writes a checkpoint.

    t2t 1.15.7 has no --locally_shard_to_cpu (absl rejects it as an unknown flag); it places the
    shards on gpu:0 and gpu:1, and the session's allow_soft_placement runs them on the CPU.
    """
    out = tmp_path / "train"
    proc = run_train(train_flags(dataset, out, "--schedule=train", "--train_steps=3", "--worker_gpu=2"))

    match = re.search(r"INFO:tensorflow:datashard_devices: (\[.*?\])", proc.stderr)
    assert match, f"t2t did not log its data shards:\n{tail(proc.stderr)}"
    assert match.group(1) == "['gpu:0', 'gpu:1']"
    # The graph that ran has the model body twice, one copy pinned to each shard device (a few
    # ops, e.g. constants, carry no device at all).
    body_devices = {}
    for name, _, device in graph_nodes(out):
        shard = re.match(r"img2img_transformer/parallel_(\d+)(?:_\d+)?/(?:img2img_transformer/)+body/", name)
        if shard and device:
            body_devices.setdefault(int(shard.group(1)), set()).add(device)
    assert body_devices == {0: {"/device:GPU:0"}, 1: {"/device:GPU:1"}}
    assert (out / "model.ckpt-3.index").exists()
    # Both shards train one set of weights: each variable once in the checkpoint, under the
    # model's variable scope (before allen_sr.t2t.compat shared t2t's layers, shard 1 had its own
    # copy of every dense weight under img2img_transformer/parallel_1/...).
    import tensorflow as tf
    names = [name for name, _ in tf.train.list_variables(str(out / "model.ckpt-3"))]
    assert any(n.endswith("self_attention/q/kernel") for n in names)
    assert not [n for n in names if "/parallel_" in n]


# --- 2. a chief, a parameter server and two workers on 127.0.0.1 -------------------------------

def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_chief_ps_and_two_workers_each_train_through_tf_config(dataset, tmp_path):
    """Four `allen-sr train` processes with the same flags and their own TF_CONFIG train together,
    and each trainer runs training steps of its own, a worker that joins late included.

    The ps, the chief and worker 0 start together; worker 1 starts once the chief has begun
    training. Asynchronous training on 2 shared cores is a race (the chief alone can finish the
    run before a late worker has built its graph), so the test decides the interleaving with real
    process control: a trainer that has logged its quota of steps (chief 1, workers 3 each) is
    paused with SIGSTOP until every trainer has; then the workers resume and finish the run, then
    the chief, which writes the final checkpoint and runs the final evaluation (t2t's default
    schedule; the workers are switched to --schedule=train). A paused chief also shows that the
    workers need nothing from it: their device filters let them train on the ps alone. The ps
    serves until the test stops it with SIGTERM (it never exits by itself).
    """
    out = tmp_path / "train"
    steps, quota = 40, {"chief": 1, "worker0": 3, "worker1": 3}
    ports = free_ports(4)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "ps": [f"127.0.0.1:{ports[1]}"],
               "worker": [f"127.0.0.1:{ports[2]}", f"127.0.0.1:{ports[3]}"]}
    flags = train_flags(dataset, out, f"--train_steps={steps}", "--eval_steps=1", "--log_step_count_steps=1")
    procs, logs, paused = {}, {}, set()

    def start(name):
        task_type, index = ("worker", int(name[-1])) if name.startswith("worker") else (name, 0)
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "w") as log:
            procs[name] = subprocess.Popen([ALLEN_SR, "train", *flags], env=env, cwd=REPO,
                                           stdout=log, stderr=subprocess.STDOUT)

    def log_of(name):
        return logs[name].read_text(errors="replace")

    def pause_at_quota(names, until, timeout=240):
        """Poll the logs of `names`, pausing each trainer at its quota, until `until` reached theirs."""
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                if name not in paused and len(logged_steps(log_of(name))) >= quota[name]:
                    procs[name].send_signal(signal.SIGSTOP)
                    paused.add(name)
                elif name not in paused and procs[name].poll() is not None:
                    pytest.fail(f"{name} exited {procs[name].returncode} before {quota[name]} steps:\n"
                                f"{tail(log_of(name))}")
            if all(name in paused for name in until):
                return
            if time.monotonic() > deadline:
                pytest.fail("no steps from " + ", ".join(f"{n}:\n{tail(log_of(n))}" for n in until if n not in paused))
            time.sleep(0.05)

    def finish(name, timeout=300):
        if name in paused:
            procs[name].send_signal(signal.SIGCONT)
            paused.discard(name)
        try:
            code = procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish:\n{tail(log_of(name))}")
        assert "KeyError: 'evaluation_master'" not in log_of(name), NOT_HOOKED
        assert code == 0, f"{name} exited {code}:\n{tail(log_of(name))}"

    try:
        for name in ("ps", "chief", "worker0"):
            start(name)
        pause_at_quota(["chief", "worker0"], until=["chief"])
        start("worker1")  # joins late: the chief has begun training
        pause_at_quota(["worker0", "worker1"], until=["worker0", "worker1"])
        for name in ("worker0", "worker1"):
            procs[name].send_signal(signal.SIGCONT)
            paused.discard(name)
        for name in ("worker0", "worker1", "chief"):
            finish(name)

        assert procs["ps"].poll() is None, f"the ps died early:\n{tail(log_of('ps'))}"
        procs["ps"].send_signal(signal.SIGTERM)
        assert procs["ps"].wait(timeout=60) == -signal.SIGTERM
        assert "Traceback" not in log_of("ps"), tail(log_of("ps"))
        assert "schedule=run_std_server" in log_of("ps")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    chief, workers = log_of("chief"), {name: log_of(name) for name in ("worker0", "worker1")}
    trained = {name: logged_steps(log_of(name)) for name in ("chief", "worker0", "worker1")}
    for name, logged in trained.items():
        # Each process logs its own steps only, each with the global step its run read (N or
        # N + 1 for its step N, so one value may repeat, but never goes back).
        assert len(logged) >= quota[name], (name, logged)
        assert logged == sorted(logged), (name, logged)
    # Only the chief saves checkpoints; its last one is the final step. Training is asynchronous:
    # the two workers may both start a step just before the end (one past train_steps), and the
    # chief, resumed last, completes one more step (it checks for the end only after a step).
    final = latest_checkpoint_step(out)
    assert steps + 1 <= final <= steps + 2, final
    # Every increment of the shared global step is one logged step of exactly one process.
    assert sum(len(logged) for logged in trained.values()) == final, {n: len(v) for n, v in trained.items()}
    assert min(trained["worker1"]) > min(trained["chief"])  # it joined a run already under way
    assert f"Saving checkpoints for {final} into" in chief
    assert f"Saving dict for global step {final}" in chief
    for index, (name, log) in enumerate(workers.items()):
        assert f"TF_CONFIG task worker:{index} of {{'chief': 1, 'ps': 1, 'worker': 2}}, schedule=train" in log
        assert "Saving checkpoints for" not in log and "Saving dict" not in log, name
    # Every variable lives on the parameter server; the chief's compute stays on the chief.
    nodes = graph_nodes(out)
    variables = {device for _, op, device in nodes if op in ("VarHandleOp", "VariableV2")}
    assert variables and all(d.startswith("/job:ps/task:0") for d in variables), variables
    body = {device for name, _, device in nodes if "/body/" in name and not name.startswith("training/")}
    assert any(d.startswith("/job:chief/task:0") for d in body), body


@pytest.mark.slow
def test_a_chief_only_cluster_trains_like_a_local_run(dataset, tmp_path):
    """What `allen-sr launch --workers 0 --ps 0` runs: TF_CONFIG with just a chief. t2t would crash
    on it (KeyError 'evaluation_master'); the estimator trains in a local session, no server."""
    out = tmp_path / "train"
    [port] = free_ports(1)
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": {"chief": [f"127.0.0.1:{port}"]}, "task": {"type": "chief", "index": 0}}))
    proc = run_train(train_flags(dataset, out, "--schedule=train", "--train_steps=2"), env=env)
    assert "TF_CONFIG task chief:0 of {'chief': 1}, schedule=train" in proc.stderr
    assert latest_checkpoint_step(out) == 2


# --- 3. resume after SIGKILL -------------------------------------------------------------------

@pytest.mark.slow
def test_resumes_from_last_checkpoint_after_sigkill(dataset, tmp_path):
    """Kill -9 a run after its first checkpoint beyond step 0; the same command continues from it."""
    out = tmp_path / "train"
    steps = 60
    # t2t-trainer saves every max(--iterations_per_loop, --local_eval_frequency) steps.
    cmd = [ALLEN_SR, "train", *train_flags(dataset, out, "--schedule=train", f"--train_steps={steps}",
                                            "--local_eval_frequency=5", "--iterations_per_loop=5",
                                            "--log_step_count_steps=1")]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 420
        while (latest_checkpoint_step(out) or 0) == 0:
            assert first.poll() is None, f"first run exited {first.returncode}:\n{tail(log_path.read_text())}"
            assert time.monotonic() < deadline, f"no checkpoint after step 0:\n{tail(log_path.read_text())}"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    killed_at = latest_checkpoint_step(out)  # it may have written one more before dying
    assert 0 < killed_at < steps, f"the first run was not killed mid-training (checkpoint {killed_at})"

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert second.returncode == 0, tail(second.stderr)
    assert re.search(rf"Restoring parameters from \S*model\.ckpt-{killed_at}\b", second.stderr), tail(second.stderr)
    # The logged step is read in the same run as the increment, so it is N or N+1 for step N.
    resumed = logged_steps(second.stderr)
    assert min(resumed) in (killed_at, killed_at + 1), resumed[:5]
    assert max(resumed) in (steps - 1, steps), resumed[-5:]
    assert latest_checkpoint_step(out) == steps

    import tensorflow as tf
    assert tf.train.load_variable(str(out / f"model.ckpt-{steps}"), "global_step") == steps


@pytest.mark.slow
def test_ctrl_c_loses_at_most_a_minute_and_names_the_step_to_go_on_from(dataset, tmp_path):
    """SIGINT (Ctrl-C) mid-training: one line, exit status 130, no KeyboardInterrupt traceback. Without
    a flag saying how often to save, `allen-sr train` saves a checkpoint every minute: t2t-trainer
    saved only every max(--local_eval_frequency=1000, --iterations_per_loop) steps (made unreachable
    here), so a Ctrl-C lost all the training since the start. The line names the step the same
    command goes on from."""
    out = tmp_path / "train"
    cmd = [ALLEN_SR, "train", f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
           f"--data_dir={dataset}", f"--output_dir={out}", "--schedule=train", "--train_steps=100000000",
           "--iterations_per_loop=100000000"]

    def as_a_terminal_delivers_it() -> None:  # pytest-xdist's workers ignore SIGINT; children inherit that
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])

    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=as_a_terminal_delivers_it)
    try:
        deadline = time.monotonic() + 300  # the first save is at 60 s of training (the one at step 0 aside)
        while (latest_checkpoint_step(out) or 0) == 0 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        saved = latest_checkpoint_step(out) or 0
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert saved > 0, f"no checkpoint after step 0 within 300 s:\n{tail(err)}"
    assert run.returncode == 130 and "Traceback" not in err, tail(err)
    lines = [line for line in err.splitlines() if "interrupted (Ctrl-C)" in line]
    assert lines == [f"allen-sr train: interrupted (Ctrl-C); run the same command again to go on from step "
                     f"{latest_checkpoint_step(out)} (the newest checkpoint in {out})"], tail(err)


# --- 4. non-local filesystems ------------------------------------------------------------------

RAM_FS_TRAIN = """
import glob, os, sys
import tensorflow as tf
from allen_sr.t2t import tools as t2t_tools

local_data, flags = sys.argv[1], sys.argv[2:]
tf.io.gfile.makedirs("ram://sr/data")
for path in glob.glob(os.path.join(local_data, "*")):
    tf.io.gfile.copy(path, "ram://sr/data/" + os.path.basename(path))
code = t2t_tools.train_main(flags)
print("EXIT", code)
print("FILES", sorted(tf.io.gfile.listdir("ram://sr/train")))
"""


@pytest.mark.slow
def test_training_reads_and_writes_a_non_local_filesystem(dataset, tmp_path):
    """--data_dir/--output_dir on TF's in-memory ram:// filesystem: records read, checkpoints written.

    ram:// lives inside one process, so the dataset is copied there and `allen-sr train`'s entry
    point runs in that same process. Anything in our wrappers that treated the paths as local
    (os.path.abspath, os.makedirs, open) would either fail or leave a "ram:" folder in the cwd;
    the same tf.io.gfile code path serves gs://.
    """
    flags = train_flags("ram://sr/data", "ram://sr/train", "--schedule=train", "--train_steps=2")
    proc = subprocess.run([sys.executable, "-c", RAM_FS_TRAIN, str(dataset), *flags],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0 and "EXIT 0" in proc.stdout, f"{tail(proc.stdout)}\n{tail(proc.stderr)}"
    files = re.search(r"FILES (\[.*\])", proc.stdout).group(1)
    assert "'model.ckpt-2.index'" in files and "'hparams.json'" in files
    assert os.listdir(tmp_path) == [], "something wrote the ram:// paths to the local disk"


RAM_FS_DATAGEN = """
import sys
import tensorflow as tf
from allen_sr.t2t import tools as t2t_tools
code = t2t_tools.datagen_main(sys.argv[1:])
print("EXIT", code)
print("FILES", sorted(tf.io.gfile.listdir("ram://sr/data")) if tf.io.gfile.exists("ram://sr/data") else None)
print("RECORDS", sum(1 for f in tf.io.gfile.glob("ram://sr/data/*-train-*") for _ in tf.data.TFRecordDataset(f)))
print("AGAIN", t2t_tools.datagen_main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_datagen_writes_a_non_local_filesystem(image_folder, tmp_path):
    """A non-local --data_dir (ram:// here, gs:// for users) is built locally and uploaded through
    tf.io.gfile: nothing lands in the working directory, and a rerun sees the complete dataset."""
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", RAM_FS_DATAGEN, f"--problem={PROBLEM}",
                           "--data_dir=ram://sr/data", f"--tmp_dir={image_folder}"],
                          capture_output=True, text=True, timeout=600, cwd=work)
    assert "EXIT 0" in proc.stdout, tail(proc.stderr)
    files = re.search(r"FILES (\[.*\])", proc.stdout).group(1)
    for name in (f"{PROBLEM}-train-00000-of-00001", f"{PROBLEM}-stats.json", f"{PROBLEM}-info.json"):
        assert f"'{name}'" in files, tail(proc.stdout)
    assert int(re.search(r"RECORDS (\d+)", proc.stdout).group(1)) > 0
    assert "AGAIN 0" in proc.stdout and "complete and up to date" in proc.stdout, tail(proc.stdout)
    assert os.listdir(work) == []


# --- 5. PSNR and SSIM in t2t's eval -------------------------------------------------------------

def test_metric_fns_match_the_reference_metrics_on_logits_and_intensities():
    """t2t metric fns == allen_sr.metrics (float64 SSIM, capped PSNR), for logits and for RGB floats."""
    import tensorflow as tf
    from allen_sr.evaluation import metrics
    from allen_sr.t2t import metrics as t2t_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 256, (3, 32, 32, 3))
    labels[2] = 250  # a flat bright tile: where float32 SSIM drifts
    logits = rng.normal(size=(3, 32, 32, 3, 256)).astype(np.float32)
    logits[2, ..., 247] += 10.0  # predict 247 everywhere on the flat tile
    argmax = logits.argmax(-1)
    for name, fn, reference in (("psnr", t2t_metrics.psnr, metrics.psnr_batch),
                                ("ssim", t2t_metrics.ssim, metrics.ssim_batch)):
        values, weights = fn(tf.constant(logits), tf.constant(labels), weights_fn=None, features={})
        np.testing.assert_allclose(values.numpy(), reference(argmax, labels), rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(weights.numpy(), np.ones(3))
        assert t2t_metrics.EVAL_METRIC_FNS[name] is fn

    # Continuous RGB predictions [B, H, W, C] are rounded and clipped like a saved PNG.
    rgb = labels + rng.normal(0, 6, labels.shape)
    rgb[0, 0, 0, 0] = 300.0
    as_png = np.clip(np.round(rgb.astype(np.float32)), 0, 255)
    values, _ = t2t_metrics.ssim(tf.constant(rgb, tf.float32), tf.constant(labels))
    np.testing.assert_allclose(values.numpy(), metrics.ssim_batch(as_png, labels), atol=1e-9)
    values, _ = t2t_metrics.psnr(tf.constant(rgb, tf.float32), tf.constant(labels))
    np.testing.assert_allclose(values.numpy(), metrics.psnr_batch(as_png, labels), atol=1e-9)
    # Identical images: capped, not infinite.
    values, _ = t2t_metrics.psnr(tf.one_hot(labels, 256), tf.constant(labels))
    assert values.numpy().tolist() == [metrics.PSNR_CAP_DB] * 3
    with pytest.raises(ValueError, match="shape"):
        t2t_metrics.psnr(tf.zeros([2, 32, 32]), tf.constant(labels[:2]))
    with pytest.raises(ValueError, match="11x11"):
        t2t_metrics.ssim(tf.zeros([1, 8, 8, 3]), tf.zeros([1, 8, 8, 3]))


def eval_scalars(event_dir):
    """{tag: [values]} of the float summaries in every event file under event_dir."""
    import tensorflow as tf

    scalars = {}
    for path in tf.io.gfile.glob(os.path.join(str(event_dir), "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                # The estimator writes eval metrics as simple_value (strings such as
                # checkpoint_path go in tensors).
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


@pytest.mark.slow
def test_eval_writes_psnr_and_ssim_to_tensorboard(dataset, tmp_path):
    """t2t-trainer's own eval writes metrics-<problem>/targets/{psnr,ssim} beside accuracy."""
    out = tmp_path / "train"
    run_train(train_flags(dataset, out, "--schedule=continuous_train_and_eval",
                          "--train_steps=2", "--eval_steps=2"))
    scalars = eval_scalars(out / "eval")
    prefix = f"metrics-{PROBLEM}/targets"
    assert f"{prefix}/accuracy" in scalars, sorted(scalars)
    psnr, ssim = scalars.get(f"{prefix}/psnr"), scalars.get(f"{prefix}/ssim")
    assert psnr and ssim, sorted(scalars)
    # A 2-step model is close to random: a few dB, SSIM near 0, and never the identical-image cap.
    assert all(0.0 < v < 40.0 for v in psnr), psnr
    assert all(-1.0 <= v < 0.5 for v in ssim), ssim
