"""`allen-sr upscale --images DIR --out_dir DIR --dask ADDRESS`: one task per image on a real Dask
cluster (a scheduler and workers started here as processes on 127.0.0.1, or `--dask local:N`),
outputs equal to in-process runs, finished outputs skipped, a bad file named, a failing task
retried once, a worker killed mid-image without losing finished outputs."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allen_sr.api import cluster_folders, remote
from allen_sr.api.models import resolve
from allen_sr.api.upscaler import Options
from allen_sr.commands import upscale
from allen_sr.data.images import load_image
from conftest import SAMPLE_IMAGES, folder_listing

distributed = pytest.importorskip("distributed")

BRAIN = load_image(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png"))
START_TIMEOUT = 60


def make_inputs(folder: Path) -> None:
    """Three small real crops (PNG, PNG, a JPEG below the quality the models trained on), a
    truncated PNG and a text file."""
    folder.mkdir()
    Image.fromarray(BRAIN[100:164, 200:280]).save(folder / "a.png")
    Image.fromarray(BRAIN[300:360, 400:450]).save(folder / "b.png")
    Image.fromarray(BRAIN[400:448, 500:540]).save(folder / "c.jpg", quality=40)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")


@contextmanager
def dask_cluster(folder: Path, workers: int = 2):
    """A scheduler and ``workers`` one-thread workers (no nanny: each process is the worker), as
    subprocesses on 127.0.0.1 working in ``folder``; yields (address, {worker address: process})."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "scheduler.json"
    python = [sys.executable, "-m"]
    procs = [subprocess.Popen(python + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                        "--dashboard-address", ":0", "--scheduler-file", str(file)],
                              cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + START_TIMEOUT
        while not file.exists() and time.time() < deadline:
            time.sleep(0.05)
        for k in range(workers):
            procs.append(subprocess.Popen(python + ["distributed.cli.dask_worker", "--scheduler-file", str(file),
                                                    "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                                                    "--no-dashboard", "--name", f"w{k}"],
                                          cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(file.read_text())["address"]
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT)
            names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
        yield address, {names[f"w{k}"]: procs[k + 1] for k in range(workers)}
    finally:  # the workers first: a worker whose scheduler is gone waits for it before it stops
        for group in (procs[1:], procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("dask")) as running:
        yield running


def one_image(src: Path, out: Path, *model: str) -> np.ndarray:
    """What an in-process one-image run writes for ``src``."""
    assert upscale.upscale_main(["--image", str(src), "--out", str(out), "--no_progress", *model]) == 0
    return np.asarray(Image.open(out)).astype(np.int16)


def test_a_folder_on_a_cluster_equals_in_process_runs_and_a_rerun_skips_everything(cluster, tmp_path,
                                                                                   monkeypatch, capsys):
    address, _ = cluster
    make_inputs(tmp_path / "in")
    monkeypatch.chdir(tmp_path)  # relative paths: the workers work elsewhere, they get absolute ones
    argv = ["--images", "in", "--out_dir", "out/nested", "--pretrained", "conv-fast", "--no_progress",
            "--dask", address]
    assert upscale.upscale_main(argv + ["--preview_dir", "previews"]) == 1  # one input failed
    text = capsys.readouterr().out
    assert "3 written, 0 already done (skipped), 1 failed" in text
    failed = [line for line in text.splitlines() if "failed: " in line]  # named once, as given, with why
    assert len(failed) == 1 and re.search(r"failed: in/bad\.png: not a readable image", failed[0]), failed
    assert failed[0].count("bad.png") == 1, failed
    assert "; 1 beyond the inputs the model trained on" in text  # the workers' input checks, gathered
    assert re.search(r"  warning: \S*in/c\.jpg is JPEG-compressed at quality 40", text)
    assert len(set(re.findall(r"wrote out/nested/\S+ on (tcp://127\.0\.0\.1:\d+)", text))) >= 1
    out = tmp_path / "out" / "nested"
    assert sorted(p.name for p in out.iterdir()) == folder_listing("a.png", "b.png", "c.jpg")  # names kept
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["a.compare.png", "b.compare.png",
                                                                         "c.compare.png"]
    for name in ("a.png", "b.png", "c.jpg"):
        fresh = one_image(tmp_path / "in" / name, tmp_path / f"fresh_{name}", "--pretrained", "conv-fast")
        written = np.asarray(Image.open(out / name)).astype(np.int16)
        assert written.shape == fresh.shape and np.abs(written - fresh).mean() <= 0.5, name
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert upscale.upscale_main(argv) == 1
    assert "0 written, 3 already done (skipped), 1 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert upscale.upscale_main([a if a != "conv-fast" else "conv-cpu" for a in argv]) == 2  # another model
    assert "were made by another model (pretrained conv-fast)" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_workers_upload_to_an_out_dir_given_as_a_url(cluster, tmp_path, capsys, monkeypatch):
    """--out_dir file:///... goes through the URL path (fsspec; gs:// and s3:// take the same one
    with their backend): each worker enlarges into its own temporary folder and uploads."""
    address, _ = cluster
    make_inputs(tmp_path / "in")
    out = tmp_path / "bucket" / "out"
    argv = ["--images", str(tmp_path / "in"), "--out_dir", out.as_uri(), "--pretrained", "conv-fast",
            "--no_progress", "--dask", address]
    assert upscale.upscale_main(argv) == 1
    assert "3 written, 0 already done (skipped), 1 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == folder_listing("a.png", "b.png", "c.jpg")  # no partial uploads
    fresh = one_image(tmp_path / "in" / "a.png", tmp_path / "fresh.png", "--pretrained", "conv-fast")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), fresh)
    assert upscale.upscale_main(argv) == 1
    assert "0 written, 3 already done (skipped), 1 failed" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # file://DIR is ./DIR: the workers, elsewhere, are given its absolute path
    assert upscale.upscale_main(argv[:3] + ["file://relative"] + argv[4:]) == 1
    assert "3 written, 0 already done (skipped), 1 failed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "relative").iterdir()) == folder_listing("a.png", "b.png", "c.jpg")


def test_a_local_cluster_started_by_the_command_writes_the_same_outputs(tmp_path, capsys):
    make_inputs(tmp_path / "in")
    os.remove(tmp_path / "in" / "bad.png")
    out = tmp_path / "out"
    argv = ["--images", str(tmp_path / "in"), "--out_dir", str(out), "--pretrained", "conv-fast", "--dask", "local:2"]
    assert upscale.upscale_main(argv) == 0
    assert "3 written, 0 already done (skipped), 0 failed" in capsys.readouterr().out
    fresh = one_image(tmp_path / "in" / "b.png", tmp_path / "fresh.png", "--pretrained", "conv-fast")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), fresh)


class Flaky:
    """An Upscaler whose predict_file raises a non-input error: for ``once`` the first time only,
    for ``always`` every time (what a worker's own trouble looks like, not a bad file)."""

    calls: dict[str, int] = {}

    def __init__(self, real, once: str, always: str) -> None:
        self.real, self.once, self.always = real, once, always

    @property
    def made_by(self):
        return self.real.made_by

    def predict_file(self, src, dst, **kwargs):
        name = os.path.basename(src)
        Flaky.calls[name] = Flaky.calls.get(name, 0) + 1
        if name == self.always or (name == self.once and Flaky.calls[name] == 1):
            raise RuntimeError(f"worker trouble with {name}")
        return self.real.predict_file(src, dst, **kwargs)


def test_a_failing_task_is_retried_once_then_named_while_the_others_finish(tmp_path, monkeypatch, capsys):
    # Workers in this process (threads), so the fault can be injected; the cluster is real.
    make_inputs(tmp_path / "in")
    os.remove(tmp_path / "in" / "bad.png")
    real = cluster_folders.worker_upscaler
    monkeypatch.setattr(cluster_folders, "worker_upscaler",
                        lambda spec, options: Flaky(real(spec, options), once="a.png", always="c.jpg"))
    Flaky.calls.clear()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        argv = ["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "out"), "--pretrained", "conv-fast",
                "--no_progress", "--dask", lc.scheduler_address]
        assert upscale.upscale_main(argv) == 1
    text = capsys.readouterr().out
    assert "2 written, 0 already done (skipped), 1 failed" in text
    assert re.search(r"failed: .*c\.jpg: RuntimeError: worker trouble with c\.jpg \(tried 2 times\)", text)
    assert Flaky.calls == {"a.png": 2, "b.png": 1, "c.jpg": 2}  # each failure retried exactly once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == folder_listing("a.png", "b.png")


def test_dask_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    make_inputs(tmp_path / "in")
    base = ["--pretrained", "conv-fast", "--no_progress"]
    folder = ["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "o")]
    monkeypatch.setattr(cluster_folders, "CONNECT_TIMEOUT", "2s")
    cases = [
        (["--image", str(tmp_path / "in" / "a.png"), "--out", str(tmp_path / "a.png"), "--dask", "local"],
         "--dask runs a folder of images"),
        (folder + ["--dask", "local:0"], "give local, local:N"),
        (folder + ["--dask", "tcp://127.0.0.1:9"], "no Dask scheduler answered"),
        (folder + ["--dask", "tcp://127.0.0.1:99999"], "a port from 1 to 65535"),
        (folder + ["--dask", "tls://127.0.0.1:9"], "tls:// needs Dask security settings"),  # was a TypeError
        (["--images", str(tmp_path / "in"), "--out_dir", "memory://bucket/o", "--dask", "local:1"],
         "memory:// lives inside this process"),  # 'written', and gone with the workers
        (folder + ["--dask", "local:1", "--tile", "4"], "tile size must be at least 8 px"),  # was: every image failed
    ]
    for argv, message in cases:
        assert upscale.upscale_main(base + argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "distributed", None)  # an install without dask (predict.txt)
    assert upscale.upscale_main(base + folder + ["--dask", "local"]) == 2
    err = capsys.readouterr().err
    assert "needs dask and distributed" in err and "pip install" in err and len(err.strip().splitlines()) == 1


def test_a_worker_names_an_output_another_model_made_after_the_client_looked(tmp_path):
    """upscale_image (the task, run here in-process) checks the output's record again: an output
    another model made meanwhile is a failure that names it, not overwritten or skipped."""
    make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert upscale.upscale_main(["--images", str(tmp_path / "in" / "a.png"), "--out_dir", str(out),
                                 "--pretrained", "conv-fast", "--no_progress"]) == 0
    stamp = (out / "a.png").stat().st_mtime_ns
    spec, options = resolve("conv-cpu"), Options()
    task = (spec, options, str(tmp_path / "in" / "a.png"), str(out / "a.png"), None, {"level": 0})
    result = cluster_folders.upscale_image(*task)
    assert result.outcome == "failed" and "a.png was made by another model meanwhile" in result.why
    assert (out / "a.png").stat().st_mtime_ns == stamp
    (out / "a.png").unlink()
    assert cluster_folders.upscale_image(*task).outcome == "written"
    assert json.loads((out / ".a.png.allen-sr.json").read_text())["model"]["source"] == "pretrained conv-cpu"


def test_a_local_cluster_listens_on_this_machine_only():
    """--dask local: the scheduler, the dashboards and the workers listen on the loopback (the
    dashboards listened on every interface, open to the network for the whole run)."""
    psutil = pytest.importorskip("psutil")

    def listening() -> set[tuple[str, int]]:  # this process's and its children's listening sockets
        me = psutil.Process()
        return {(c.laddr.ip, c.laddr.port) for proc in [me, *me.children(recursive=True)]
                for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before = listening()  # other tests' clusters in this process (a fixture's) are not this one
    with cluster_folders.dask_client("local:1") as client:
        client.wait_for_workers(1, timeout=60)
        opened = listening() - before
    assert len(opened) >= 3, opened  # scheduler, its dashboard, a worker (and its dashboard)
    assert {ip for ip, _ in opened} <= {"127.0.0.1", "::1"}, opened


def test_importing_the_cluster_module_imports_no_dask():
    code = ("import allen_sr.api.cluster_folders, sys; "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["[]"]


@pytest.mark.slow
def test_a_worker_killed_mid_image_loses_no_finished_output_and_the_run_completes(tmp_path):
    (tmp_path / "in").mkdir()
    crops = {f"s{k}.png": BRAIN[100 + 90 * k:260 + 90 * k, 200 + 60 * k:360 + 60 * k] for k in range(4)}
    for name, crop in crops.items():
        Image.fromarray(crop).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    model = ["--pretrained", "conv-cpu", "--tile", "48"]
    with dask_cluster(tmp_path / "dask") as (address, workers):
        argv = ["--images", str(tmp_path / "in"), "--out_dir", str(out), "--no_progress", "--dask", address, *model]
        run = subprocess.Popen([sys.executable, "-c", "import sys; from allen_sr.commands.upscale import "
                                f"upscale_main; sys.exit(upscale_main({argv!r}))"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def busy() -> list[str]:  # outputs being written: saved rows, no output yet
            return [p.name for p in out.glob(".*.resume") if list(p.glob("rows-*"))]

        deadline = time.time() + 120
        while (not any(out.glob("*.png")) or len(busy()) < 2) and time.time() < deadline and run.poll() is None:
            time.sleep(0.02)
        assert run.poll() is None, "the run ended before a worker could be killed"
        with distributed.Client(address, timeout="30s") as client:
            working = [addr for addr, keys in client.processing().items() if keys and addr in workers]
        finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
        workers[working[0]].send_signal(signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stdout + stderr
    assert "4 written, 0 already done (skipped), 0 failed" in stdout
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished  # finished outputs untouched
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(crops)
    from allen_sr.api import Upscaler

    with Upscaler.open("conv-cpu", tile=48) as up:
        for name, crop in crops.items():
            np.testing.assert_array_equal(np.asarray(Image.open(out / name)), up.predict(crop), err_msg=name)


def test_the_workers_of_a_local_cluster_leave_ctrl_c_to_the_client():
    """A worker stopped by Ctrl-C printed its tracebacks and was started again, mid-shutdown."""
    with cluster_folders.dask_client("local:1") as client:
        (pid,) = client.run(os.getpid).values()
        os.kill(pid, signal.SIGINT)
        time.sleep(2)
        assert list(client.run(os.getpid).values()) == [pid]


def test_upload_folders_of_processes_that_ended_are_removed(tmp_path, monkeypatch):
    """A worker ended mid-image (Ctrl-C, killed) cannot remove its upload folder: the next upload
    on the machine does; those of running processes and of other machines stay."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = socket.gethostname()
    names = [f"allen-sr-upload-{host}-{ended.pid}-x1", f"allen-sr-upload-{host}-{os.getpid()}-x2",
             f"allen-sr-upload-elsewhere-{ended.pid}-x3"]
    for name in names:
        (tmp_path / name / ".a.png.resume").mkdir(parents=True)
    with remote.upload_folder() as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f"allen-sr-upload-{host}-{os.getpid()}-")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:] + [folder.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_cluster_that_fails_to_close_after_ctrl_c_leaves_the_ctrl_c_and_kills_its_workers():
    """Ctrl-C under load: closing --dask local's cluster timed out (the nanny's join of its worker), and
    the TimeoutError replaced the KeyboardInterrupt: a traceback and exit 1 instead of one line and 130.
    Here each close of a real cluster gets too little time to finish, in a process of its own."""
    code = """if True:
        import os, time, psutil, distributed
        from allen_sr.api import cluster_folders
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        (pid,) = client.run(os.getpid).values()
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                cluster_folders.close_after_failure(client, cluster, timeout=1e-9)
                raise
        except KeyboardInterrupt:
            worker = psutil.Process(pid) if psutil.pid_exists(pid) else None
            ended = worker is None or worker.status() == psutil.STATUS_ZOMBIE
            print("KeyboardInterrupt", cluster.status.name, "worker ended" if ended else worker.status())
        print(time.time())
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome, ended_at = run.stdout.splitlines()
    interrupt, status, ended = outcome.split(" ", 2)
    assert (interrupt, ended) == ("KeyboardInterrupt", "worker ended"), outcome
    assert status in ("running", "closing"), outcome  # not closed: the close did fail
    assert time.time() - float(ended_at) < 8, "closed again at exit"  # distributed's atexit close waits 10 s
    assert "Restarting worker" not in run.stderr


def test_ctrl_c_in_a_run_on_a_local_cluster_stays_a_ctrl_c_and_ends_its_workers():
    psutil = pytest.importorskip("psutil")
    with pytest.raises(KeyboardInterrupt):
        with cluster_folders.dask_client("local:1") as client:
            (pid,) = client.run(os.getpid).values()
            raise KeyboardInterrupt
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
