"""`allen-sr datagen` / `allen-sr train`: tensor2tensor's own tools with our registrations loaded.

Every flag of t2t-datagen / t2t-trainer passes through unchanged; `--t2t_usr_dir` is not needed
(our problems and hparams are imported first). On a host without GPUs `train` adds
`--worker_gpu=0` unless you pass --worker_gpu yourself: t2t's default of 1 GPU floods the log
with placement messages on CPU-only machines. Under a TF_CONFIG cluster (Kubeflow TFJob) `train`
adds the flags of this replica's role (allen_sr.t2t.cluster.prepare_cluster_task); what it adds
for tuning trials (`--train_steps_increment`, the PSNR summary Katib reads) is allen_sr.t2t.tuning.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from allen_sr.t2t.cluster import flag_value, prepare_cluster_task
from allen_sr.t2t.tuning import prepare_train_flags
from allen_sr.errors import InvalidInputError, UserError


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


class UsageError(InvalidInputError):
    """A user's mistake in the flags of `allen-sr datagen/train` (the message says what to do)."""


def _check_names(argv: list[str], need: tuple[str, ...]) -> str:
    """The --problem of ``argv``; UsageError for a missing or unknown name among ``need``."""
    from allen_sr.t2t.names import UnknownNameError, check_names

    values = {name: flag_value(argv, name) for name in need}
    missing = [f"--{name}" for name, value in values.items() if not value]
    if missing:
        raise UsageError(f"{', '.join(missing)} is required (see --helpfull)")
    try:
        check_names(problem=values["problem"], hparams_set=values.get("hparams_set"), model=values.get("model"))
    except UnknownNameError as exc:
        raise UsageError(str(exc)) from None
    return values["problem"]


def _check_folder(argv: list[str], name: str, required: bool = True) -> str | None:
    """The --name folder of ``argv``; UsageError if it is missing or names a file."""
    import tensorflow as tf

    folder = flag_value(argv, name)
    if not folder:
        if required:
            raise UsageError(f"--{name} is required")
        return None
    if tf.io.gfile.exists(folder) and not tf.io.gfile.isdir(folder):
        raise UsageError(f"--{name}={folder} is a file, not a folder: pass a folder (it is created if missing)")
    return folder


def check_datagen_flags(argv: list[str]) -> None:
    """Refuse a datagen command line that cannot work, before tensor2tensor starts."""
    _check_names(argv, ("problem",))
    _check_folder(argv, "data_dir")
    tmp_dir = _check_folder(argv, "tmp_dir")
    if tmp_dir is not None and os.path.exists(tmp_dir) and not os.path.isdir(tmp_dir):
        raise UsageError(f"--tmp_dir={tmp_dir} is a file, not a folder of images")


def check_train_flags(argv: list[str]) -> None:
    """Refuse a training command line that cannot work (unknown names, no dataset)."""
    if flag_value(argv, "schedule") == "run_std_server":  # a parameter server reads no data
        return
    import tensorflow as tf
    from tensor2tensor.utils import registry

    problem = _check_names(argv, ("problem", "model", "hparams_set"))
    _check_folder(argv, "output_dir", required=False)
    data_dir = _check_folder(argv, "data_dir")
    prefix = registry.problem(problem).dataset_filename()
    if not tf.io.gfile.glob(os.path.join(data_dir, f"{prefix}-train*")):
        raise UsageError(
            f"no training data for {problem} in --data_dir={data_dir} (expected {prefix}-train-* "
            f"files): run `allen-sr datagen --problem={problem} --data_dir={data_dir} "
            "--tmp_dir=<folder of images>` first")


def _run(tool: str, module: str, argv: list[str], check: Callable[[list[str]], None]) -> int:
    from allen_sr.t2t.names import register_all

    register_all()  # shims and our registrations before t2t parses its flags
    import tensorflow.compat.v1 as tf
    from absl import app

    if not any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        try:
            check(argv)
        except UsageError as exc:
            print(f"{tool}: error: {exc}", file=sys.stderr)
            return 2
    t2t = __import__(f"tensor2tensor.bin.{module}", fromlist=["main"])
    tf.logging.set_verbosity(tf.logging.INFO)

    def main(args: list[str]) -> None:
        try:
            t2t.main(args)
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            if module != "t2t_datagen" and not isinstance(exc, UserError):  # a training failure keeps its traceback
                raise
            # Our problems' generate_data names the input and what to do (no images, bad folder).
            print(f"{tool}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    try:
        app.run(main, argv=[tool] + argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def datagen_main(argv: list[str]) -> int:
    """allen-sr datagen [t2t-datagen flags]"""
    return _run("allen-sr datagen", "t2t_datagen", argv, check_datagen_flags)


def train_main(argv: list[str]) -> int:
    """allen-sr train [t2t-trainer flags]"""
    argv = list(argv)
    if not any(a in ("-h", "--help", "--helpfull") for a in argv) and not _has_flag(argv, "worker_gpu"):
        if _gpu_count() == 0:
            argv.append("--worker_gpu=0")
    argv = prepare_cluster_task(argv, os.environ)  # TF_CONFIG -> this replica's role
    try:  # --train_steps_increment, and the eval PSNR as the tensor summary Katib reads
        argv = prepare_train_flags(argv, os.environ)
    except ValueError as exc:
        print(f"allen-sr train: error: {exc}", file=sys.stderr)
        return 2
    return _run("allen-sr train", "t2t_trainer", argv, check_train_flags)


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
