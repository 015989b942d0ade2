"""`allen-sr datagen` / `allen-sr train`: tensor2tensor's own tools with our registrations loaded.

Every flag of t2t-datagen / t2t-trainer passes through unchanged; `--t2t_usr_dir` is not needed
(our problems and hparams are imported first). On a host without GPUs `train` adds
`--worker_gpu=0` unless you pass --worker_gpu yourself: t2t's default of 1 GPU floods the log
with placement messages on CPU-only machines. Under a TF_CONFIG cluster (Kubeflow TFJob) `train`
adds the flags of this replica's role (allen_sr.launch.prepare_cluster_task).
"""
from __future__ import annotations

import os
import sys


def usr_dir() -> str:
    """The folder to pass as --t2t_usr_dir to the stock t2t tools (found without importing it,
    which would load TensorFlow)."""
    import importlib.util

    return os.path.dirname(os.path.abspath(importlib.util.find_spec("allen_sr.problems").origin))


def usr_dir_main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: allen-sr usr_dir\n\nPrints the --t2t_usr_dir path, e.g.\n"
              "  t2t-trainer --t2t_usr_dir=$(allen-sr usr_dir) --problem=... ")
        return 0
    print(usr_dir())
    return 0


def _has_flag(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _run(tool: str, module: str, argv: list[str]) -> int:
    import allen_sr.problems  # noqa: F401  (shims + registrations before t2t parses flags)
    import tensorflow.compat.v1 as tf
    from absl import app

    t2t = __import__(f"tensor2tensor.bin.{module}", fromlist=["main"])
    tf.logging.set_verbosity(tf.logging.INFO)
    try:
        app.run(t2t.main, argv=[tool] + argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def datagen_main(argv: list[str]) -> int:
    """allen-sr datagen [t2t-datagen flags]"""
    return _run("allen-sr datagen", "t2t_datagen", argv)


def train_main(argv: list[str]) -> int:
    """allen-sr train [t2t-trainer flags]"""
    argv = list(argv)
    if not any(a in ("-h", "--help", "--helpfull") for a in argv) and not _has_flag(argv, "worker_gpu"):
        if _gpu_count() == 0:
            argv.append("--worker_gpu=0")
    from allen_sr.launch import prepare_cluster_task  # TF_CONFIG -> this replica's role (multi-host)

    argv = prepare_cluster_task(argv, os.environ)
    return _run("allen-sr train", "t2t_trainer", argv)


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
