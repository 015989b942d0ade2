"""Checks of `allen-sr train` on what a command asks of its run: a --schedule t2t-trainer has, steps
beyond the checkpoint to train, a checkpoint to evaluate, a model that keeps train_budget_seconds.
Each raises :class:`allen_sr.t2t.cli_flags.UsageError` (one line) before t2t-trainer writes anything
(its flags.txt and hparams.json); TensorFlow and tensor2tensor are imported only when called."""
from __future__ import annotations

import os
from typing import Any

from allen_sr.t2t.cli_flags import UsageError
from allen_sr.t2t.cluster import flag_value

# The schedules that train (t2t-trainer's default: continuous_train_and_eval), and those that only
# evaluate a checkpoint once (continuous_eval waits for one: an evaluator may start before the trainer).
TRAINING_SCHEDULES = ("continuous_train_and_eval", "train", "train_and_evaluate", "train_eval_and_decode")
EVALUATING_SCHEDULES = ("evaluate", "evaluate_on_train_data")


def schedule_names() -> list[str]:
    """The --schedule values t2t-trainer runs: the methods of its experiment."""
    from tensor2tensor.utils.trainer_lib import T2TExperiment

    return sorted(name for name, value in vars(T2TExperiment).items() if not name.startswith("_") and callable(value))


def schedule_of(argv: list[str]) -> str:
    """The --schedule of ``argv``, or t2t-trainer's default."""
    return flag_value(argv, "schedule") or TRAINING_SCHEDULES[0]


def check_schedule(argv: list[str]) -> None:
    """UsageError for a --schedule t2t-trainer does not have (it ended in "Experiment has no method")."""
    schedule = schedule_of(argv)
    names = schedule_names()
    if schedule not in names:
        raise UsageError(f"--schedule={schedule}: not a t2t-trainer schedule; pass one of {', '.join(names)}")


def check_steps(argv: list[str], output_dir: str | None) -> None:
    """UsageError when the command would do nothing and exit 0: a training --train_steps at or below
    the step of the checkpoint in ``output_dir`` (t2t-trainer logs "Skipping training" and rewrites
    flags.txt), or an evaluation without a checkpoint (it scored untrained weights). Not checked
    for a task of a TF_CONFIG cluster or a Katib trial (whose one-Chief TFJob gets no TF_CONFIG): a
    task restarted after its training ended must end as it did, with its final evaluation."""
    import tensorflow as tf

    schedule = schedule_of(argv)
    checkpoint = tf.train.latest_checkpoint(output_dir) if output_dir and tf.io.gfile.isdir(output_dir) else None
    if schedule in EVALUATING_SCHEDULES and not checkpoint:
        where = f"--output_dir={output_dir}" if output_dir else "no --output_dir"
        raise UsageError(f"--schedule={schedule}: no checkpoint in {where} to evaluate: pass the --output_dir of a "
                         "trained run (it would score untrained weights)")
    from allen_sr.t2t.tuning import TRIAL_ENV, checkpoint_step

    if schedule not in TRAINING_SCHEDULES or not checkpoint or os.environ.get("TF_CONFIG") or os.environ.get(TRIAL_ENV):
        return
    from absl import flags

    value = flag_value(argv, "train_steps")
    train_steps = int(value) if value is not None else int(flags.FLAGS["train_steps"].default)
    step = checkpoint_step(output_dir)
    if train_steps <= step:
        raise UsageError(f"--output_dir={output_dir} is at step {step}: pass --train_steps above {step} to train on "
                         f"(--train_steps={train_steps} counts from step 0)")


def check_budget_model(model: str, model_class: Any, budget: float) -> None:
    """UsageError for train_budget_seconds > 0 with a model that has no training clock to stop at it
    (the stock img2img_transformer trained on to --train_steps)."""
    if budget > 0 and not getattr(model_class, "honours_train_budget", False):
        raise UsageError(f"train_budget_seconds={budget:g}: --model={model} does not stop at a time budget (only "
                         "img2img_transformer_sr and img2img_conv_sr do): pass one of them, or end the run with "
                         "--train_steps")
