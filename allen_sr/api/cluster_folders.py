"""Many images with one model on a Dask cluster: `allen-sr upscale --images ... --dask ADDRESS`.

The same run as `allen_sr.api.folders.upscale_folder`, spread over the workers of a Dask
cluster: one task per image. Each worker process opens the model once and keeps it for the next
images; it reads its inputs and writes its outputs itself, with the same atomic, resumable
writers, so the inputs, ``--out_dir`` and ``--preview_dir`` must be on storage that the client
and every worker share (the same paths everywhere), or ``--out_dir`` a URL every worker can write
(``gs://bucket/out``: `allen_sr.api.remote`). Outputs that exist are skipped before
anything is submitted (they appear only when complete). A bad input file is named and not
retried; an error on a worker is retried once and then named, while the other images go on. An
image whose worker died is given to another worker by the scheduler (up to its
``distributed.scheduler.allowed-failures`` times) and resumes from the rows it saved. The result
is a :class:`allen_sr.api.folders.FolderReport`.

``local`` or ``local:N`` starts a cluster of N worker processes (default 2, one thread each) for
the run; anything else is a scheduler's address (``tcp://host:port``).

dask and distributed are imported inside functions: importing allen_sr.api stays cheap, and an
install without them (requirements/predict.txt) fails in one line only when a cluster is asked
for. Tasks are functions of this module, so workers import them by name: every worker needs
allen-sr installed (cloudpickle 1.6, which gym pins, cannot send Python 3.11 functions by value).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from allen_sr.api.folders import INPUT_ERRORS, FolderReport, Output, enlarge, failure, output_state, plan_states, wanted
from allen_sr.api.remote import RemoteFile, is_url, make_parent, remove_stale_uploads
from allen_sr.api.models import ModelSpec
from allen_sr.api.upscaler import Options, Upscaler
from allen_sr.errors import InvalidInputError, UserError, first_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    from distributed import Client, Future

__all__ = ["ImageResult", "LOCAL_WORKERS", "RETRIES", "check_address", "dask_client", "local_workers",
           "upscale_image", "upscale_folder_on_cluster"]

LOCAL_WORKERS = 2  # worker processes of ``--dask local``
# A task that raised (not a bad input file) runs once more. A task whose worker died is run again
# by the scheduler itself, up to its distributed.scheduler.allowed-failures (default 3) times.
RETRIES = 1
CONNECT_TIMEOUT = "30s"
MISSING_DASK = ("--dask needs dask and distributed, which this install lacks: pip install dask distributed "
                "(beside TensorFlow the versions requirements/lock.txt pins, as gym needs cloudpickle 1.6)")

Log = Callable[[str], None]

# The model each worker process keeps between tasks, by (ModelSpec, Options); the lock lets one
# task at a time open or use it (workers should run one thread: the model uses the cores itself).
_MODELS: dict[tuple[ModelSpec, Options], Upscaler] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageResult:
    """What a worker did with one image: ``written``, ``skipped`` (it existed) or ``failed`` (why)."""

    src: str
    dst: str
    outcome: str
    why: str = ""
    seconds: float = 0.0
    worker: str = ""
    warnings: tuple[str, ...] = ()  # the input check's (allen_sr.inference.input_check)


# ----------------------------------------------------------------------------- the cluster
def local_workers(address: str) -> int | None:
    """The worker count of ``local`` / ``local:N``, or None for a scheduler address."""
    if address != "local" and not address.startswith("local:"):
        return None
    count = address.partition(":")[2] or str(LOCAL_WORKERS)
    if not count.isdigit() or int(count) < 1:
        raise InvalidInputError(f"--dask {address}: give local, local:N (N >= 1 worker processes) "
                                "or a scheduler address such as tcp://host:8786")
    return int(count)


def host_port(address: str) -> tuple[str, str]:
    """(host, port) of a scheduler address ``tcp://host:port`` or ``host:port`` (IPv6 in brackets)."""
    host, _, port = (address.partition("://")[2] if "://" in address else address).rpartition(":")
    return host.strip("[]"), port


def check_address(address: str) -> int | None:
    """:func:`local_workers` of ``address`` after checking it, before any model is opened:
    InvalidInputError for a scheme other than tcp:// (TLS needs certificates allen-sr does not
    pass)."""
    workers = local_workers(address)
    scheme = address.partition("://")[0] if "://" in address else "tcp"
    if workers is None and scheme == "inproc":  # a cluster in this very process (Python API, tests)
        return None
    if workers is None and scheme != "tcp":
        raise InvalidInputError(f"--dask {address}: give a tcp://host:port scheduler address ({scheme}:// "
                                "needs Dask security settings allen-sr does not pass: use tcp:// inside a private "
                                "network, or a tunnel to the scheduler), or local / local:N")
    host, port = host_port(address)
    if workers is None and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise InvalidInputError(f"--dask {address}: give a scheduler address such as tcp://host:8786 "
                                "(a port from 1 to 65535), or local / local:N")
    return workers


def reachable(address: str) -> None:
    """UserError, at once, when nothing listens at the scheduler address (the client would wait its
    whole connect timeout for a refused connection)."""
    host, port = host_port(address)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"--dask {address}: no Dask scheduler answered ({exc.strerror or exc}); check the "
                        "address (tcp://host:port) or use --dask local") from exc


def import_distributed() -> Any:
    """The distributed package, or a UserError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise UserError(MISSING_DASK) from exc
    return distributed


def close_after_failure(client: "Client | None", cluster: Any, timeout: float | None = None) -> None:
    """Close ``client`` and its LocalCluster after the run raised (Ctrl-C, mostly). Closing can fail
    too (a worker that does not end in time: TimeoutError from the nanny; OSError): that failure
    must not replace what the run raised, so it is left aside and the workers still running are
    killed (not restarted by their nannies, nor closed again at exit: that waited 10 s more).
    ``timeout``: seconds for each close (None: distributed's own)."""
    import psutil

    processes = []
    for nanny in list(cluster.workers.values()):
        nanny.auto_restart = False
        pid = getattr(nanny, "pid", None)
        if isinstance(pid, int):  # psutil.Process(None) would be this process
            with contextlib.suppress(psutil.Error):
                processes.append(psutil.Process(pid))
    for close in ([] if client is None else [client.close]) + [cluster.close]:
        with contextlib.suppress(Exception):
            close(timeout=timeout)
    cluster.shutdown_on_close = False
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)  # ended before this returns (a kill is delivered, not awaited)


@contextlib.contextmanager
def dask_client(address: str, log: Log | None = None) -> Iterator["Client"]:
    """A Client of the scheduler at ``address``, or of a cluster started here for ``local[:N]``
    (closed on exit)."""
    workers = check_address(address)
    distributed = import_distributed()
    if workers is not None:  # every port on this machine's loopback only; Ctrl-C stops this process alone
        try:
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                               worker_dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                                               preload=[__name__])
            client = None
            try:
                client = distributed.Client(cluster)
                yield client
            except BaseException:
                close_after_failure(client, cluster)
                raise
            client.close()
            cluster.close()
        finally:  # a worker stopped mid-image leaves its upload folder, and the workers have ended now
            remove_stale_uploads()
        return
    if not address.startswith("inproc://"):
        reachable(address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise UserError(f"--dask {address}: no Dask scheduler answered ({first_line(exc)}); "
                        "check the address (tcp://host:port) or use --dask local") from exc
    with client:
        if log and not client.scheduler_info().get("workers"):
            log(f"the scheduler at {address} has no workers yet: the images wait for some")
        yield client


# ----------------------------------------------------------------------------- on a worker
def dask_setup(worker: Any) -> None:
    """Run by each worker process of ``--dask local`` as it starts (this module is its preload):
    Ctrl-C, which the terminal sends to every process of the command, is left to the client, which
    closes the cluster in one line (a worker stopped by it printed tracebacks and was restarted)."""
    import multiprocessing
    import signal

    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def on_this_machine(spec: ModelSpec) -> ModelSpec:
    """``spec`` with a pretrained model's folder found in this machine's allen-sr install (the
    client's path may not exist on a worker)."""
    if not spec.pretrained:
        return spec
    from allen_sr import pretrained

    return replace(spec, exported=str(pretrained.find(spec.pretrained).folder))


def worker_upscaler(spec: ModelSpec, options: Options) -> Upscaler:
    """This process's Upscaler for (spec, options), opened on first use; another model replaces
    it (one model in memory per worker). Call with ``_MODELS_LOCK`` held."""
    key = (spec, options)
    if key not in _MODELS:
        for old in _MODELS.values():
            old.close()
        _MODELS.clear()
        _MODELS[key] = Upscaler(on_this_machine(spec), options)
    return _MODELS[key]


def worker_address() -> str:
    """This worker's address (what the client's log names), or the host's name outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostname()


def upscale_image(spec: ModelSpec, options: Options, src: str, dst: str, preview_dir: str | None,
                  file_options: dict[str, Any]) -> ImageResult:
    """Runs on a worker: enlarge ``src`` into ``dst`` unless it is done (`folders.output_state`).
    A bad input file is a ``failed`` result (retrying cannot help); anything else raises, and Dask
    retries the task."""
    worker = worker_address()
    out: Output = RemoteFile(dst) if is_url(dst) else Path(dst)
    if isinstance(out, Path) and not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} is not on worker {worker}: --out_dir must be "
                        "storage that the client and every worker share, at the same path")
    if not os.path.exists(src):
        return ImageResult(src, dst, "failed", f"{src} is not on worker {worker}: --images must be on "
                           "storage that the client and every worker share, at the same path", worker=worker)
    preview = {} if preview_dir is None else {"preview_size": options.preview_size, "preview_to": Path(preview_dir)}
    start = time.perf_counter()
    with _MODELS_LOCK:
        upscaler = worker_upscaler(spec, options)
        try:
            state, _ = output_state(out, file_options.get("uncertainty", False),
                                    wanted(upscaler.made_by, src, file_options))
            if state in ("done", "other"):  # done since the client looked: by this model, or another
                return ImageResult(src, dst, "skipped" if state == "done" else "failed",
                                   "" if state == "done" else f"{dst} was made by another model meanwhile",
                                   worker=worker)
            summary = enlarge(upscaler, src, out, progress=False, **preview, **file_options)
        except INPUT_ERRORS as exc:
            return ImageResult(src, dst, "failed", first_line(exc), worker=worker)
    return ImageResult(src, dst, "written", seconds=time.perf_counter() - start, worker=worker,
                       warnings=tuple(summary["input_check"]["warnings"]))


# ----------------------------------------------------------------------------- on the client
def shared_path(path: str | os.PathLike[str]) -> str:
    """An absolute path (a worker's working folder is not the client's); so is a file:// URL's
    (``file://out`` is ./out); other URLs stay as they are."""
    text = os.fspath(path)
    if not is_url(text):
        return os.path.abspath(text)
    local = RemoteFile(text).local_path
    return text if local is None else local.as_uri()


def shared_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` with absolute folders, as a worker elsewhere needs them."""
    if spec.pretrained:
        return spec
    return replace(spec, output_dir=shared_path(spec.output_dir) if spec.output_dir else "",
                   exported=shared_path(spec.exported) if spec.exported else None)


def result_of(future: "Future", src: str, dst: str) -> ImageResult:
    """A finished task's ImageResult; a task that raised (after its retry) or was lost is ``failed``."""
    if future.status == "finished":
        result = future.result()
        where = shared_path(src)  # the worker's reason names the input by its absolute path
        why = src + result.why[len(where):] if result.why.startswith(f"{where}:") else result.why
        return replace(result, src=src, dst=dst, why=why)  # the paths as the user gave them
    if future.status == "error":
        exc = future.exception()
        if type(exc).__name__ == "KilledWorker":  # the scheduler's own retries (allowed-failures) are spent
            return ImageResult(src, dst, "failed", "every worker that ran it died (KilledWorker); see the "
                               "workers' logs: is the image too large for a worker's memory?")
        return ImageResult(src, dst, "failed", f"{type(exc).__name__}: {first_line(exc)} (tried {RETRIES + 1} times)")
    return ImageResult(src, dst, "failed", f"the cluster lost the task ({future.status}); run again")


def submit_images(client: "Client", spec: ModelSpec, options: Options, pairs: list[tuple[str, Output]],
                  preview_dir: str | None, file_options: dict[str, Any]) -> dict["Future", tuple[str, str]]:
    """One task per (input, output), with absolute paths; {future: (input, output) as given}."""
    spec = shared_spec(spec)
    futures = {}
    for src, dst in pairs:  # pure=False: keys upscale_image-<uuid>, never shared with another run
        future = client.submit(upscale_image, spec, options, shared_path(src), shared_path(str(dst)), preview_dir,
                               file_options, retries=RETRIES, pure=False)
        futures[future] = (src, str(dst))
    return futures


def upscale_folder_on_cluster(client: "Client", spec: ModelSpec, options: Options, made_by: dict[str, Any],
                              pairs: list[tuple[str, Output]], progress: bool = True,
                              preview_dir: str | os.PathLike[str] | None = None, log: Log | None = None,
                              **file_options: Any) -> FolderReport:
    """Enlarge every (input, output) of ``pairs`` not yet done on the workers of ``client``, the
    model being the one ``made_by`` describes (`Upscaler.made_by`: what the outputs' records are
    checked against); ``file_options`` go to :meth:`Upscaler.predict_file` (region, level,
    restart, compression, ...). A progress bar follows the images as the cluster finishes them."""
    from distributed import as_completed
    from tqdm import tqdm

    start = time.perf_counter()
    states = plan_states(pairs, made_by, file_options)
    if pairs:
        make_parent(pairs[0][1])
    if preview_dir is not None:
        Path(preview_dir).mkdir(parents=True, exist_ok=True)
    done = {dst for dst, state in states.items() if state == "done"}
    results = {dst: ImageResult("", dst, "skipped") for dst in done}
    todo = [(src, dst) for src, dst in pairs if str(dst) not in done]
    futures = submit_images(client, spec, options, todo,
                            None if preview_dir is None else shared_path(preview_dir), file_options)
    with tqdm(total=len(pairs), initial=len(results), desc="images", unit="image", disable=not progress) as bar:
        for future in as_completed(list(futures)):
            src, dst = futures.pop(future)
            result = results[dst] = result_of(future, src, dst)
            future.release()
            bar.update(1)
            bar.set_postfix_str(os.path.basename(src))
            if log:
                log(describe(result))
    report = folder_report(pairs, results, time.perf_counter() - start)
    report.redone = [dst for dst in report.written if states[dst] == "changed"]
    return report


def describe(result: ImageResult) -> str:
    """One log line about a finished image."""
    if result.outcome == "failed":
        return f"skipped {failure(result.src, result.why)}"
    if result.outcome == "skipped":
        return f"{result.dst} exists (skipped)"
    return (f"wrote {result.dst} on {result.worker} in {result.seconds:.1f} s"
            + "".join(f"\n  warning: {text}" for text in result.warnings))


def folder_report(pairs: list[tuple[str, Output]], results: dict[str, ImageResult], seconds: float) -> FolderReport:
    """The FolderReport of a run, its lists in the inputs' order (as the in-process run gives)."""
    report = FolderReport(seconds=seconds)
    for src, dst in pairs:
        result = results[str(dst)]
        if result.outcome == "written":
            report.written.append(str(dst))
            if result.warnings:
                report.warned[src] = list(result.warnings)
        elif result.outcome == "skipped":
            report.skipped.append(str(dst))
        else:
            report.failed[src] = result.why
    return report
