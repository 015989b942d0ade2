"""`allen-sr datagen` / `allen-sr train`: tensor2tensor's own tools with our registrations loaded.

Every flag of t2t-datagen / t2t-trainer passes through unchanged; `--t2t_usr_dir` is not needed
(our problems and hparams are imported first); one of your own is imported before our checks.
On a host without GPUs `train` adds `--worker_gpu=0` unless you pass --worker_gpu yourself: t2t's
default of 1 GPU floods the log with placement messages on CPU-only machines. `train` saves a checkpoint every minute
(SAVE_CHECKPOINTS_SECS) unless you pass --save_checkpoints_secs or --local_eval_frequency.
Under a TF_CONFIG cluster (Kubeflow TFJob) `train` adds the flags of this replica's role
(allen_sr.t2t.cluster.prepare_cluster_task); what it adds for tuning trials
(`--train_steps_increment`, the PSNR summary Katib reads) is allen_sr.t2t.tuning.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Callable

from allen_sr.t2t.cli_flags import (UsageError, absolute_data_dir, asks_help, check_flag_names, expand_home,
                                    has_flag, read_flagfiles)
from allen_sr.t2t.cluster import flag_value, prepare_cluster_task
from allen_sr.t2t.run_checks import check_attention_memory, check_budget_model, check_schedule, check_steps
from allen_sr.t2t.tuning import prepare_train_flags
from allen_sr.errors import InvalidInputError, UserError, machine_trouble

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams


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


# `allen-sr train` saves a checkpoint this often unless told otherwise (t2t-trainer saves every
# --local_eval_frequency=1000 steps, which could be most of a short run: lost to a Ctrl-C).
SAVE_CHECKPOINTS_SECS = 60


def checkpoint_flags(argv: list[str]) -> list[str]:
    """``argv`` plus --save_checkpoints_secs=SAVE_CHECKPOINTS_SECS, unless it says how often to save
    (--save_checkpoints_secs; --local_eval_frequency, which t2t-trainer also saves at)."""
    if has_flag(argv, "save_checkpoints_secs") or has_flag(argv, "local_eval_frequency"):
        return list(argv)
    return list(argv) + [f"--save_checkpoints_secs={SAVE_CHECKPOINTS_SECS}"]


def interrupted_note(argv: list[str]) -> str:
    """What the same command continues from after a Ctrl-C of a training."""
    from allen_sr.t2t.tuning import checkpoint_step

    output_dir = flag_value(argv, "output_dir")
    try:
        step = checkpoint_step(output_dir) if output_dir else 0
    except Exception:  # noqa: BLE001 - a note: a checkpoint that cannot be read says nothing here
        return "run the same command again to go on from the newest checkpoint"
    if not step:
        return "no checkpoint was saved yet: the same command starts over"
    return f"run the same command again to go on from step {step} (the newest checkpoint in {output_dir})"


def import_usr_dir(argv: list[str]) -> None:
    """Import the --t2t_usr_dir of ``argv`` as t2t-trainer does, so that our checks know the problems,
    models and hparams sets it registers (t2t imports it again later: a no-op); UsageError for a
    --t2t_usr_dir that is not a folder."""
    folder = flag_value(argv, "t2t_usr_dir")
    if not folder:
        return
    from allen_sr.t2t.names import register_all

    register_all()  # a usr dir may build on our sets
    from tensor2tensor.utils import usr_dir as t2t_usr_dir

    if folder != t2t_usr_dir.INTERNAL_USR_DIR_PACKAGE and not os.path.isdir(os.path.expanduser(folder)):
        raise UsageError(f"--t2t_usr_dir={folder} is not a folder: pass the folder of the Python package that "
                         "registers your problems, models or hparams sets")
    t2t_usr_dir.import_usr_dir(folder)


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


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


def _make_folder(folder: str, name: str) -> None:
    """Create the --name ``folder`` if missing; UsageError naming it when that fails (under a file,
    no permission, /proc...), which t2t reported as a traceback once it first wrote there."""
    import tensorflow as tf

    try:
        tf.io.gfile.makedirs(folder)
    except (OSError, tf.errors.OpError) as exc:
        reason = exc.message if isinstance(exc, tf.errors.OpError) else (exc.strerror or str(exc))
        raise UsageError(f"--{name}={folder} cannot be created ({reason}): pass a folder you can write to") from None


def check_datagen_flags(argv: list[str]) -> None:
    """Refuse a datagen command line that cannot work, before tensor2tensor starts."""
    check_flag_names(argv, "t2t-datagen")
    problem = _check_names(argv, ("problem",))
    data_dir = _check_folder(argv, "data_dir")
    ignored = {"random_seed": "the tiles are shuffled with a fixed seed and split by a hash of each image's name, "
                              "so every run makes the same dataset",
               "max_cases": "a problem tiles every image it finds; point --tmp_dir at fewer images for a smaller "
                            "dataset"}
    for name in ignored:  # t2t-datagen flags that allen-sr's problems do not read
        if flag_value(argv, name) is not None:
            raise UsageError(f"--{name}: allen-sr's problems do not use it ({ignored[name]}); leave it out")
    tmp_dir = flag_value(argv, "tmp_dir")
    if not tmp_dir:
        raise UsageError("--tmp_dir is required: the folder of your images (Allen problems: where downloads go)")
    if os.path.exists(tmp_dir) and not os.path.isdir(tmp_dir):
        raise UsageError(f"--tmp_dir={tmp_dir} is a file, not a folder: pass the folder of your images "
                         "(Allen problems: where downloads go)")
    _check_tmp_dir(problem, tmp_dir)
    _make_folder(data_dir, "data_dir")  # the last check: a refused command leaves no folder


def _check_tmp_dir(problem: str, tmp_dir: str) -> None:
    """The --problem's own check of its --tmp_dir (our local-image problems: a folder holding images),
    if it has one (tensor2tensor's stock problems do not)."""
    from tensor2tensor.utils import registry

    check = getattr(registry.problem(problem), "check_tmp_dir", None)
    if check is not None:
        check(tmp_dir)


def build_hparams(hparams_set: str, overrides: str | None) -> "HParams":
    """The hparams of ``hparams_set`` with the ``--hparams`` overrides (a malformed one named)."""
    from tensor2tensor.utils import hparams_lib

    from allen_sr.t2t.names import parse_overrides

    hparams = hparams_lib.create_hparams(hparams_set)
    parse_overrides(hparams, overrides, hparams_set)
    return hparams


def check_model_hparams(model: str, hparams_set: str, hparams: "HParams") -> None:
    """UsageError when ``hparams_set`` is not made for ``model``, or a value cannot train: a model
    class that checks its hparams (``check_hparams``, as img2img_conv_sr's) is asked first."""
    from tensor2tensor.utils import registry

    check = getattr(registry.model(model), "check_hparams", None)
    if check is not None:
        try:
            check(hparams)
        except InvalidInputError as exc:
            raise UsageError(f"--hparams_set={hparams_set}: {exc}") from None
    elif hasattr(hparams, "num_res_blocks"):  # the conv model's sets
        raise UsageError(f"--hparams_set={hparams_set} is a set for --model=img2img_conv_sr, not {model}: "
                         "pass both of one family (README: Models, problems and hparams sets)")
    if hasattr(hparams, "degradation"):  # parsed in each input pipeline: a bad spec failed there, in a traceback
        from allen_sr.data.degrade import parse_training

        try:
            parse_training(hparams.degradation, "--hparams degradation")
        except InvalidInputError as exc:
            raise UsageError(str(exc)) from None
    rate = getattr(hparams, "learning_rate_constant", None)  # every set's (t2t's schedules multiply by it)
    if rate is not None and not 0 <= float(rate) < float("inf"):  # 0: the weights stay as they start
        raise UsageError(f"learning_rate_constant must be >= 0, got {rate}: a negative rate trains away from "
                         "the data")
    warmup = getattr(hparams, "learning_rate_warmup_steps", None)
    if warmup is not None and not float(warmup) >= 0:
        raise UsageError(f"learning_rate_warmup_steps must be >= 0, got {warmup}")
    budget = float(getattr(hparams, "train_budget_seconds", 0.0) or 0.0)
    if not budget >= 0 or budget == float("inf"):
        raise UsageError(f"train_budget_seconds must be a number of seconds >= 0 (0 = no time budget), got {budget}")
    check_budget_model(model, registry.model(model), budget)


# Hparams that may change when a run is continued: they steer the training, not which variables the
# checkpoint holds (every other one that differs from the run's hparams.json is refused).
RESUMABLE_HPARAMS = frozenset((
    "batch_size", "batch_shuffle_size", "degradation", "color_augment", "target_noise", "cosine_decay_min",
    "cosine_decay_steps", "clip_grad_norm", "weight_decay", "weight_noise", "grad_noise_scale", "label_smoothing",
    "dropout", "attention_dropout", "relu_dropout", "symbol_dropout", "layer_prepostprocess_dropout",
    "max_length", "min_length", "length_bucket_step", "min_length_bucket", "pixel_loss", "charbonnier_epsilon",
    "gan_learning_rate", "gan_beta1", "ev_loss_weight", "embedding_smoothness", "prior_sigma",
    "optimizer_adam_beta1", "optimizer_adam_beta2", "optimizer_adam_epsilon", "optimizer_momentum_momentum",
    "optimizer_momentum_nesterov", "summarize_grads", "summarize_vars"))
RESUMABLE_PREFIXES = ("learning_rate", "eval_", "decode_", "sampling_")
# ... and those that may change except from 0 (off) to on, which adds variables (the training
# clock, the discriminator, the weight average) that the checkpoint lacks.
VARIABLES_WHEN_ON = ("train_budget_seconds", "gan_weight", "weight_ema_decay")


def changed_hparams(recorded: dict, hparams: "HParams", overrides: str | None) -> list[str]:
    """"name=value (run: value)" of each ``--hparams`` override that a run recorded as ``recorded``
    (its hparams.json, which t2t-trainer reads under the overrides) cannot be continued with."""
    from tensor2tensor.utils.hparam import PARAM_RE

    ours = json.loads(hparams.to_json())
    changed = []
    for name in dict.fromkeys(m.group("name") for m in PARAM_RE.finditer(overrides or "")):
        if name not in recorded or name not in ours or recorded[name] == ours[name]:
            continue
        if name in RESUMABLE_HPARAMS or name.startswith(RESUMABLE_PREFIXES):
            continue
        if name in VARIABLES_WHEN_ON:
            if float(recorded[name] or 0) > 0 or not float(ours[name] or 0) > 0:
                continue
            changed.append(f"{name}={ours[name]} (run: {recorded[name]}; turned on, it adds variables)")
        else:
            changed.append(f"{name}={ours[name]} (run: {recorded[name]})")
    return changed


def check_run_folder(output_dir: str, problem: str, model: str, hparams_set: str, hparams: "HParams",
                     overrides: str | None = None) -> None:
    """Refuse to continue the run in ``output_dir`` with another model or hparams set, or with
    ``--hparams`` ``overrides`` that change its variables (t2t-trainer would rewrite its hparams.json
    and flags.txt and then fail to restore it); drop an hparams.json that a run which saved no
    checkpoint left there, when it differs from this command's (t2t-trainer reads it over the set)."""
    import tensorflow as tf

    checkpoint = tf.train.latest_checkpoint(output_dir)
    if checkpoint:
        flags_path = os.path.join(output_dir, "flags.txt")
        recorded = tf.io.gfile.GFile(flags_path).read().split() if tf.io.gfile.exists(flags_path) else []
        for name, value in (("model", model), ("hparams_set", hparams_set), ("problem", problem)):
            was = flag_value(recorded, name) or value
            if was != value:  # another problem, even of the same shape: its data_dir and statistics
                hint = f" (--init_from={output_dir} starts a new run from its weights)" if name == "problem" else ""
                raise UsageError(f"--output_dir={output_dir} holds a run of --{name}={was} ({checkpoint}), not "
                                 f"{value}: pass --{name}={was} to continue it, or choose another --output_dir{hint}")
        path = os.path.join(output_dir, "hparams.json")
        if tf.io.gfile.exists(path):
            changed = changed_hparams(json.loads(tf.io.gfile.GFile(path).read()), hparams, overrides)
            if changed:
                raise UsageError(f"--output_dir={output_dir} holds a run ({checkpoint}) that cannot continue with "
                                 f"--hparams {', '.join(changed)}: the checkpoint holds another model; pass the run's "
                                 "values (its hparams.json) to continue it, or choose another --output_dir")
        return
    path = os.path.join(output_dir, "hparams.json")
    if not tf.io.gfile.exists(path):
        return
    from tensor2tensor.utils import hparams_lib

    ours = hparams_lib.copy_hparams(hparams)
    hparams_lib.add_problem_hparams(ours, problem)  # as t2t-trainer records them, without the modality
    ours.del_hparam("modality")
    stale = json.loads(tf.io.gfile.GFile(path).read())
    if any(stale.get(k, v) != v for k, v in json.loads(ours.to_json()).items()):
        tf.io.gfile.remove(path)
        print(f"note: removed {path}: another command's hparams, left by a run that saved no checkpoint "
              "(t2t-trainer would have trained with them)", flush=True)


def _count_flag(argv: list[str], name: str) -> None:
    """UsageError unless --name, if given, is a whole number >= 1."""
    value = flag_value(argv, name)
    if value is not None and not (value.isdigit() and int(value) >= 1):
        raise UsageError(f"--{name}={value}: pass a whole number >= 1")


def check_shards(data_dir: str, prefix: str, split: str, problem: str, why: str = "") -> None:
    """UsageError unless ``data_dir`` holds examples of ``split`` (not only empty shards)."""
    import tensorflow as tf

    shards = tf.io.gfile.glob(os.path.join(data_dir, f"{prefix}-{split}*"))
    if not sum(tf.io.gfile.stat(s).length for s in shards):
        found = f"only empty {prefix}-{split}-* files" if shards else f"no {prefix}-{split}-* files"
        raise UsageError(
            f"no {split} examples for {problem} in --data_dir={data_dir} ({found}){why}: run `allen-sr datagen "
            f"--problem={problem} --data_dir={data_dir} --tmp_dir=<folder of images>` with images that give "
            f"{split} tiles")


def check_trainer_command(argv: list[str]) -> tuple[str, str, str, "HParams"]:
    """(problem, model, hparams set, hparams) of a trainer command line that names registered ones
    of one family, with --hparams that parse and a --train_steps >= 1; UsageError otherwise."""
    problem = _check_names(argv, ("problem", "model", "hparams_set"))
    model, hparams_set = flag_value(argv, "model"), flag_value(argv, "hparams_set")
    _count_flag(argv, "train_steps")
    hparams = build_hparams(hparams_set, flag_value(argv, "hparams"))
    check_model_hparams(model, hparams_set, hparams)
    check_problem_hparams(problem, model, hparams_set, hparams)
    return problem, model, hparams_set, hparams


def check_problem_hparams(problem: str, model: str, hparams_set: str, hparams: "HParams") -> None:
    """UsageError when the model's hparams need an integer ratio of sizes (its ``needs_integer_factor``:
    img2img_transformer_sr's input_patch, img2img_conv_sr's upsampling; at least its ``min_scale_factor``)
    that ``problem`` lacks (48 -> 64 px, 16 -> 16 px: a graph assert or a traceback stopped it)."""
    from tensor2tensor.utils import registry

    from allen_sr.t2t.names import problem_shape

    model_class = registry.model(model)
    needs = getattr(model_class, "needs_integer_factor", None)
    option = needs(hparams) if needs is not None else None
    if not option:
        return
    least = int(getattr(model_class, "min_scale_factor", 1))
    shape = problem_shape(problem)[:2]
    if shape[1] % shape[0] or shape[1] // shape[0] < least:
        factor = ("not an integer factor, which" if shape[1] % shape[0]
                  else f"a factor of {shape[1] // shape[0]}, below the integer factor >= {least} that")
        instead = ("pass a problem such as img2img_allen_brain_dim8to32, or train --model=img2img_transformer "
                   "with an img2img_allen_* set" if least > 1 else
                   "train --model=img2img_transformer (the stock model; it reads the same sets)")
        raise UsageError(f"--problem={problem} maps {shape[0]}x{shape[0]} to {shape[1]}x{shape[1]} px, {factor} "
                         f"--model={model} needs ({option} in --hparams_set={hparams_set}): {instead}")


def check_worker_gpu(argv: list[str]) -> None:
    """UsageError for a negative --worker_gpu, or more than this host's visible GPUs when it has
    some: t2t puts a data shard on each gpu:N named, and the session runs those of the missing
    GPUs on the CPU, beside the real one. On a host without GPUs every shard runs on the CPU
    (a batch of N x batch_size per step): allowed, with a note."""
    value = flag_value(argv, "worker_gpu")
    if value is None or not value.lstrip("-").isdigit():
        return  # absl names a value that is not a number
    wanted = int(value)
    if wanted < 0:
        raise UsageError(f"--worker_gpu={value}: pass the number of GPUs to train on (0 trains on the CPU)")
    visible = _gpu_count()
    if wanted > visible > 0:
        raise UsageError(f"--worker_gpu={wanted}: this host has {visible} visible GPU(s); pass --worker_gpu={visible} "
                         "or fewer (the data shards of missing GPUs would run on the CPU)")
    if wanted > 1 and visible == 0:
        print(f"note: --worker_gpu={wanted} on a host without GPUs: {wanted} data shards run on the CPU, "
              f"a batch of {wanted} x batch_size per step (--worker_gpu=0: one)", flush=True)


def check_train_flags(argv: list[str]) -> None:
    """Refuse a training command line that cannot work before any training (unknown names, a
    model and hparams set of two families, malformed --hparams, another run's folder, no data, more memory
    than the machine has)."""
    check_flag_names(argv)
    check_schedule(argv)
    if flag_value(argv, "schedule") == "run_std_server":  # a parameter server reads no data
        return
    from tensor2tensor.utils import registry

    problem, model, hparams_set, hparams = check_trainer_command(argv)
    check_worker_gpu(argv)
    output_dir = _check_folder(argv, "output_dir", required=False)
    data_dir = _check_folder(argv, "data_dir")
    prefix = registry.problem(problem).dataset_filename()
    check_shards(data_dir, prefix, "train", problem)
    if flag_value(argv, "schedule") != "train":
        check_shards(data_dir, prefix, "dev", problem, "; evaluation reads them (--schedule=train trains without)")
    check_steps(argv, output_dir)
    check_attention_memory(argv, problem, registry.model(model), hparams)
    if output_dir:
        check_run_folder(output_dir, problem, model, hparams_set, hparams, flag_value(argv, "hparams"))
        _make_folder(output_dir, "output_dir")  # the last check: a refused command leaves no folder


def _run(tool: str, module: str, argv: list[str], check: Callable[[list[str]], None]) -> int:
    from allen_sr.t2t.names import register_all

    register_all()  # shims and our registrations before t2t parses its flags
    import tensorflow.compat.v1 as tf
    from absl import app

    help_asked = asks_help(argv)
    if not help_asked:
        try:
            check(argv)
        except UserError as exc:
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
        except KeyboardInterrupt:
            note = interrupted_note(argv) if module == "t2t_trainer" else "run the same command again to go on"
            print(f"{tool}: interrupted (Ctrl-C); {note}", file=sys.stderr)
            raise SystemExit(130) from None
        except OSError as exc:
            trouble = machine_trouble(exc)
            if trouble is None:
                raise
            print(f"{tool}: error: {trouble}", file=sys.stderr)
            raise SystemExit(1) from None

    program, sys.argv[0] = sys.argv[0], tool  # absl's usage line names sys.argv[0]
    try:
        app.run(main, argv=[tool] + argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
        return 0 if help_asked and code == 1 else code  # absl ends --help with exit status 1
    finally:
        sys.argv[0] = program
    return 0


DATAGEN_HELP = """`allen-sr datagen`: t2t-datagen with allen-sr's problems registered (every t2t-datagen flag passes
through). It tiles the images of --tmp_dir into lossless TFRecords in --data_dir: 64 px tissue tiles,
shuffled, train and dev split by image. Run again, it keeps a complete dataset and rebuilds a damaged
or outdated one.

  allen-sr datagen --problem=img2img_local_dim8to32 --data_dir ~/mine/data --tmp_dir ~/my_slides

  --problem      one of (README, "Models, problems and hparams sets"):
{problems}
                 img2img_local_* tile your own images, img2img_allen_brain_* download Allen
                 sections into --tmp_dir first (resumable)
  --data_dir     the folder the TFRecords go to (created)
  --tmp_dir      the folder of images
  --t2t_usr_dir  a folder of your own problems, imported first
"""


def datagen_help() -> str:
    """DATAGEN_HELP with the names of the problems allen-sr registers."""
    from allen_sr.t2t.names import register_all

    register_all()  # the shims (they quiet dependencies' import-time notices) before t2t's imports
    from tensor2tensor.utils import registry

    ours = sorted(name for name, cls in registry.Registries.problems.items() if cls.__module__.startswith("allen_sr."))
    indent = " " * 17
    return DATAGEN_HELP.format(problems=textwrap.fill(", ".join(ours), 100, initial_indent=indent,
                                                      subsequent_indent=indent))


def datagen_main(argv: list[str]) -> int:
    """allen-sr datagen [t2t-datagen flags]"""
    if asks_help(argv) and "--helpfull" not in argv:  # --helpfull: absl's list of every flag, alone
        print(datagen_help(), flush=True)
    try:
        argv = expand_home(read_flagfiles(argv))
        if not asks_help(argv):
            import_usr_dir(argv)  # before our checks look its problems up
    except UsageError as exc:
        print(f"allen-sr datagen: error: {exc}", file=sys.stderr)
        return 2
    return _run("allen-sr datagen", "t2t_datagen", argv, check_datagen_flags)


def train_main(argv: list[str]) -> int:
    """allen-sr train [t2t-trainer flags]"""
    try:
        argv = absolute_data_dir(expand_home(read_flagfiles(argv)))
    except UsageError as exc:
        print(f"allen-sr train: error: {exc}", file=sys.stderr)
        return 2
    if not asks_help(argv) and not has_flag(argv, "worker_gpu"):
        if _gpu_count() == 0:
            argv.append("--worker_gpu=0")
    try:
        if not asks_help(argv):
            import_usr_dir(argv)  # before our checks look its names up (and its hparams set's int values)
        argv = prepare_cluster_task(argv, os.environ)  # TF_CONFIG -> this replica's role
        # --train_steps_increment, and the eval PSNR as the tensor summary Katib reads
        argv = checkpoint_flags(prepare_train_flags(argv, os.environ))
    except ValueError as exc:
        print(f"allen-sr train: error: {exc}", file=sys.stderr)
        return 2
    return _run("allen-sr train", "t2t_trainer", argv, check_train_flags)


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
