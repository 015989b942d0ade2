"""`allen-sr`: one command for the whole pipeline.

Each subcommand lives in the module that owns its concern and is imported only when used, so
`allen-sr --help` is instant and `allen-sr download` never loads TensorFlow.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings

# name -> (module, function, one-line help). Each function takes argv (list of str), returns an exit code.
SUBCOMMANDS = {
    "download": ("allen_sr.commands.download", "download_main", "download Allen section images (resumable, verified)"),
    "datagen": ("allen_sr.t2t.tools", "datagen_main",
                "t2t-datagen with our problems registered (every t2t-datagen flag)"),
    "train": ("allen_sr.commands.train", "train_main",
              "t2t-trainer with our problems/hparams registered (every t2t-trainer flag; --init_from MODEL "
              "fine-tunes)"),
    "decode": ("allen_sr.commands.decode", "decode_main",
               "decode dev examples autoregressively; PNGs, grid, PSNR/SSIM CSV"),
    "evaluate": ("allen_sr.commands.evaluate", "evaluate_main",
                 "PSNR/SSIM of a model vs nearest/bilinear/bicubic on any images"),
    "upscale": ("allen_sr.commands.upscale", "upscale_main",
                "enlarge an image, a region or a folder 4x (default: a pretrained model)"),
    "models": ("allen_sr.commands.models", "models_main", "list the pretrained models shipped with allen-sr"),
    "export": ("allen_sr.commands.export", "export_main",
               "write a trained model as ONNX/SavedModel/bioimage.io or NumPy weights"),
    "plot": ("allen_sr.commands.plot", "plot_main", "loss curves of one or several runs on one figure"),
    "launch": ("allen_sr.commands.launch", "launch_main",
               "build (and submit) a Kubeflow TFJob for multi-host training"),
    "demo": ("allen_sr.commands.demo", "demo_main", "the main job end to end on the shipped sample images (make demo)"),
    "usr_dir": ("allen_sr.t2t.tools", "usr_dir_main", "print the --t2t_usr_dir path for t2t-datagen / t2t-trainer"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: allen-sr [--debug] <command> [flags]  (allen-sr <command> --help for its flags)", "",
             "--debug: show the traceback of every error, also of a user's mistake", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
python_formatwarning = warnings.formatwarning


def one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' own signature
    """allen-sr's own warnings (a file skipped, an image converted) as one line each; others as Python shows them."""
    if category is UserWarning and os.path.abspath(filename).startswith(PACKAGE_DIR + os.sep):
        return f"warning: {message}\n"
    return python_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CUDA probing on CPU hosts, oneDNN notices) buries our
    # own progress output; TF_CPP_MIN_LOG_LEVEL=0 in the environment still shows it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.formatwarning = one_line_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
        os.environ["ALLEN_SR_DEBUG"] = "1"  # allen_sr.commands.args.DEBUG_ENV
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0].replace("-", "_")
    if name not in SUBCOMMANDS:
        print(f"allen-sr: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[name]
    try:
        code = int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:  # `allen-sr models | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing == "allen_sr" or os.environ.get("ALLEN_SR_DEBUG"):
            raise  # a module of our own: a bug
        print(f"allen-sr {argv[0]}: needs the Python package {missing!r}, which this environment lacks. "
              f"{FULL_INSTALL}", file=sys.stderr)
        return 2


# What a command of the full install says in the prediction-only one (requirements/predict.txt).
FULL_INSTALL = ("train, datagen, decode, export, plot and demo need the full install: `make venv` in "
                "a checkout (or pip install -r requirements/lock.txt, then pip install --no-deps .); the "
                "prediction-only install runs upscale, evaluate (--pretrained, --exported), download and models.")


if __name__ == "__main__":
    sys.exit(main())
