"""`allen-sr train`: t2t-trainer with our problems and hparams sets (`allen_sr.t2t.tools`; every
t2t-trainer flag passes through), plus --init_from MODEL to fine-tune a trained model on your own
images instead of training one from random weights.

MODEL is a shipped model's name (`allen-sr models`), an `allen-sr export` folder, or a run folder
or checkpoint. Train it with the model and hparams set it was trained with, on a problem of its
channel count: every trainable variable must come from it. Another model, hparams set or channel
count (an export's config.json or a run's flags.txt says which), or an export that folded a layer
such as conv-fast, is refused before anything is written, as is a command train's checks refuse;
a variable of another shape or missing there is still refused by name when training starts.
A model with an uncertainty head (conv-probabilistic) trains it too: the run gets the
hparam probabilistic=True unless --hparams says otherwise.
The optimizer, the learning-rate schedule and the step count start anew. Only a new run starts
from it: a run whose --output_dir has a checkpoint continues from that.
"""
from __future__ import annotations

import json
import os
import re
import sys

from allen_sr.commands.args import run_command
from allen_sr.errors import InvalidInputError
from allen_sr.t2t import cli_flags, compat, tools
from allen_sr.t2t.cluster import flag_value
from allen_sr.t2t.tuning import without_flag


def warm_start_folder(output_dir: str) -> str:
    """Where this process writes MODEL's checkpoint: ``OUTPUT_DIR/warm_start``, one subfolder per
    task of a TF_CONFIG cluster (each process builds the model and reads it)."""
    from allen_sr.export.warm_start import WARM_START_DIR

    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    folder = os.path.join(output_dir, WARM_START_DIR)
    return os.path.join(folder, f"{task.get('type')}-{task.get('index', 0)}") if task.get("type") else folder


def start_from(source: str, argv: list[str]) -> list[str]:
    """``argv`` with the --warm_start_from that starts training from ``source``. A model that does
    not fit this run (another model, hparams set or channel count, a folded layer, an uncertainty
    head the run would drop or lack), or a command train's checks refuse, is refused here, before
    anything is written."""
    import tensorflow as tf

    from allen_sr.api.models import resolve, run_flags
    from allen_sr.decoding.checkpoints import run_folder
    from allen_sr.export.warm_start import check_fine_tunable, export_weights, write_checkpoint

    if flag_value(argv, "warm_start_from") is not None:
        raise InvalidInputError("--init_from and --warm_start_from both say where training starts: keep one")
    output_dir = flag_value(argv, "output_dir")
    if not output_dir:
        raise InvalidInputError("--output_dir is required")
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    if flag_value(argv, "schedule") == "run_std_server" or task.get("type") == "ps":
        return argv  # a parameter server builds no model
    if tf.io.gfile.isdir(output_dir) and tf.train.latest_checkpoint(output_dir):
        return argv  # a run with a checkpoint continues from it
    spec = resolve(source)
    if not spec.exported:  # a run: t2t reads its checkpoint as it is
        trained = run_flags(run_folder(spec.output_dir))
        shape = _problem_shape(trained.get("problem"))
        check_fits(source, argv, trained.get("model"), spec.hparams_set, shape and (trained["problem"], *shape))
        check_command(argv)
        return argv + [f"--warm_start_from={spec.output_dir}"]
    weights, config = export_weights(spec.exported)
    shape = (config.get("problem", "?"), config.get("input_size"), config.get("target_size"), config.get("channels"))
    check_fine_tunable(source, weights, config)  # first: another set or model would not help it
    check_fits(source, argv, config["model"], config["hparams_set"], shape if None not in shape else None)
    argv = with_uncertainty_head(source, argv, bool(config.get("distribution")))
    recorded = config.get("hparams") if isinstance(config.get("hparams"), dict) else {}
    argv = with_decode_mode(source, argv, recorded.get("decode_mode"))  # an Image Transformer's
    check_command(argv)
    prefix = write_checkpoint(weights, warm_start_folder(output_dir))
    steps = config.get("steps") or str(config.get("checkpoint", "")).rpartition("model.ckpt-")[2] or "?"
    print(f"starting from {source} ({config['model']}, {config['hparams_set']}, {steps} steps): {prefix}",
          flush=True)
    return argv + [f"--warm_start_from={prefix}"]


def _problem_shape(problem: str | None) -> tuple[int, int, int] | None:
    """(input size, target size, channels) of a registered ``problem``; None if it is not one."""
    from allen_sr.t2t.names import UnknownNameError, problem_shape, register_all

    if not problem:
        return None
    register_all()
    try:
        return problem_shape(problem)
    except UnknownNameError:
        return None  # said by train's checks (or a problem of a --t2t_usr_dir not imported yet)


def check_fits(source: str, argv: list[str], model: str | None, hparams_set: str,
               trained: tuple[str, int, int, int] | None) -> None:
    """InvalidInputError naming ``source`` when this run trains another model or hparams set than
    ``source`` was trained with, or a problem of another channel count than ``trained`` (its
    problem, input size, target size, channels): its variables would not fit."""
    wanted, wanted_set = flag_value(argv, "model"), flag_value(argv, "hparams_set")
    if model and wanted and model != wanted:
        raise InvalidInputError(f"--init_from {source} is an {model} model and this run trains {wanted}: "
                                f"pass --model={model} --hparams_set={hparams_set}")
    if hparams_set and wanted_set and hparams_set != wanted_set:
        raise InvalidInputError(f"--init_from {source} was trained with {hparams_set}; pass "
                                f"--hparams_set={hparams_set}, not {wanted_set} (its variables are "
                                "that set's; change how it trains with --hparams)")
    problem = flag_value(argv, "problem")
    here = _problem_shape(problem)
    if trained is None or here is None or trained[3] == here[2]:
        return
    shape = "{0}x{0} -> {1}x{1} px, {2} channel(s)".format
    raise InvalidInputError(f"--init_from {source} was trained on {trained[0]} ({shape(*trained[1:])}) and "
                            f"--problem={problem} has {shape(*here)}: its first and last layers fit only "
                            f"{trained[3]}-channel images; fine-tune it on a problem of {trained[3]} channel(s), "
                            "or train without --init_from")


def check_command(argv: list[str]) -> None:
    """Train's own checks of ``argv`` (`allen_sr.t2t.tools.check_train_flags`: names, --hparams,
    folders, data, another run's folder), before MODEL's checkpoint is written into --output_dir."""
    from allen_sr.t2t.names import register_all

    register_all()
    tools.import_usr_dir(argv)  # before the checks look its names up
    tools.check_train_flags(argv)


def with_uncertainty_head(source: str, argv: list[str], has_head: bool) -> list[str]:
    """``argv`` training the uncertainty head (hparam probabilistic) of ``source`` when it has one
    and --hparams does not say (a note says so; probabilistic=False leaves it out); InvalidInputError
    for probabilistic=True when ``source`` has none (that variable would not be there)."""
    overrides = flag_value(argv, "hparams") or ""
    given = re.findall(r"(?:^|,)\s*probabilistic\s*=\s*([^,]*)", overrides)
    asked = given[-1].strip().lower() in ("true", "1") if given else None
    if asked and not has_head:
        raise InvalidInputError(f"--init_from {source} has no uncertainty head (hparam probabilistic): start from "
                                "a model that has one (allen-sr models), or leave probabilistic=True out")
    if not has_head or asked is not None:
        return argv
    print(f"note: --init_from {source} has an uncertainty head: this run trains it too (hparam "
          "probabilistic=True; add --hparams=probabilistic=False to leave it out)", flush=True)
    merged = f"{overrides},probabilistic=True" if overrides.strip() else "probabilistic=True"
    return without_flag(argv, "hparams") + [f"--hparams={merged}"]


def with_decode_mode(source: str, argv: list[str], mode: str | None) -> list[str]:
    """``argv`` decoding as ``source`` does (its hparam decode_mode, which the hparams set's default
    would replace) when --hparams does not say; a note says so."""
    overrides = flag_value(argv, "hparams") or ""
    if not mode or re.search(r"(?:^|,)\s*decode_mode\s*=", overrides):
        return argv
    print(f"note: --init_from {source} decodes with {mode}: so does this run (hparam decode_mode={mode}; "
          "add --hparams=decode_mode=MODE for another)", flush=True)
    merged = f"{overrides},decode_mode={mode}" if overrides.strip() else f"decode_mode={mode}"
    return without_flag(argv, "hparams") + [f"--hparams={merged}"]


def define_flag() -> None:
    """--init_from among t2t-trainer's absl flags, so that --helpfull lists it (it is taken out
    of the command line before t2t-trainer parses it)."""
    from absl import flags

    if "init_from" not in flags.FLAGS:
        flags.DEFINE_string("init_from", None, "fine-tune this model: a shipped model's name (allen-sr models), "
                            "an allen-sr export folder, or a run folder or checkpoint (allen-sr train --help)")


def train_main(argv: list[str]) -> int:
    """allen-sr train [--init_from MODEL] [t2t-trainer flags]"""
    define_flag()
    if cli_flags.asks_help(argv):
        print(__doc__, flush=True)
        return tools.train_main(list(argv))
    try:  # --init_from may come from a flag file, or name a folder under ~
        argv = cli_flags.expand_home(cli_flags.read_flagfiles(argv), ("init_from",))
    except InvalidInputError as exc:
        print(f"allen-sr train: error: {exc}", file=sys.stderr)
        return 2
    source = flag_value(argv, "init_from")
    if source is None:
        return tools.train_main(argv)

    def body() -> int:
        started = start_from(source, without_flag(argv, "init_from"))
        compat.warm_start_strict = True  # the whole model comes from MODEL
        return tools.train_main(started)

    return run_command("train", body)


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
