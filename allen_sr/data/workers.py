"""Worker processes for the dataset build: a forked pool tuned for it, and how to drive it.

The pool's workers die with the build's process (prctl PR_SET_PDEATHSIG), keep large freed
blocks in their heap (mallopt), and are forked with the parent's objects frozen out of garbage
collection (gc.freeze), so they do not copy the parent's memory. Design notes and measurements:
docs/ARCHITECTURE.md ("The data side").
"""
from __future__ import annotations

import contextlib
import gc
import os
from concurrent.futures import Executor, Future

__all__ = ["SerialExecutor", "executor", "frozen_gc", "in_order", "cancel_on_error"]


class SerialExecutor(Executor):
    """Runs submitted calls at once, in this process (workers=1, or no fork available)."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller via result()
            future.set_exception(exc)
        return future


def executor(workers: int) -> Executor:
    """`workers` forked processes, or the calling process alone.

    Fork, not spawn: spawn re-imports the caller's __main__, which breaks scripts and notebooks
    without a main guard. The children run only NumPy/Pillow code, never TensorFlow, so forking a
    process that has TensorFlow loaded is safe here. Without fork (not Linux/macOS), run serially.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return SerialExecutor()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(os.getpid(),))


@contextlib.contextmanager
def frozen_gc():
    """Keep the parent's objects out of the workers' garbage collections while they run.

    A forked worker shares the parent's memory copy-on-write; a garbage collection walking the
    parent's objects (hundreds of MB once TensorFlow is imported) would write to every page it
    visits and copy them all. gc.freeze() moves the parent's objects out of the collector's way
    before the pool forks.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _init_worker(parent: int) -> None:
    """Worker initializer: end this worker when the build's process dies (SIGKILL included).

    Orphaned workers would go on appending to the bucket files of a dead build while its rerun
    deletes that build's work folder. Linux delivers SIGKILL to the worker when its parent exits
    (prctl PR_SET_PDEATHSIG); elsewhere the worker only checks once, at start.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        # glibc serves allocations above 128 kB (an image, a strip's temporaries) with fresh
        # mmap()s and unmaps them when freed, so every image faults its memory in again. Keep
        # blocks up to 32 MB in the heap and freed memory mapped: ~30% less system time.
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not Linux / not glibc
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def in_order(futures, bar):
    """Results of `futures` in submission order, advancing `bar` as each finishes."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        bar.update(len(done))
    return [f.result() for f in futures]


@contextlib.contextmanager
def cancel_on_error(pool: Executor):
    """On an error (disk full, Ctrl-C), drop queued work instead of finishing it first."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
