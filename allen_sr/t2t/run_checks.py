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


# Training memory of an Image Transformer (t2t's Img2imgTransformer and its subclasses) is mostly its global
# attention: the encoder's self-attention over the input's N_in = rows x cols x channels sub-pixels (when
# enc_attention_type is "global", the stock default) and each decoder layer's attention from the target's N_out
# sub-pixels to them. A score per (query, key) pair, head and example is kept for the backward pass, and the layer
# whose gradient is being computed holds a few more temporaries of each of its scores:
#     scores  = num_heads x (num_encoder_layers x N_in^2 + num_decoder_layers x N_out x N_in)
#     largest = num_heads x max(N_in^2, N_out x N_in)                     (one layer's scores)
#     peak bytes ~ BASE + batch_size x (PER_SCORE x scores + PER_LARGEST x largest)
# Measured (peak RSS by /usr/bin/time -v, 2 steps of `allen-sr train --schedule=train --hparams=batch_size=1` on a
# CPU, img2img_allen_cpu_tiny: 2 heads): img2img_allen_brain_dim8to32 (2.5M scores) 1.1 GB, the base;
# img2img_allen_brain_dim48to64 (N_in 6912, N_out 12288; largest 170M) 8.0 GB with 2 + 2 layers (531M scores) and
# 6.0 GB with 1 + 1 (265M): 7.8 bytes a score and 16.6 a score of the largest layer. The decoder's local 1-D
# self-attention (block_length keys a query) is left out. With batch_size=8 (its set's) the estimate is 58 GB: such
# a run had reached 17.6 GB when the kernel killed it, before its first step, on a 24 GB machine.
ATTENTION_BASE_BYTES = 1.1e9
ATTENTION_BYTES_PER_SCORE = 8
ATTENTION_BYTES_PER_LARGEST = 17


def attention_bytes(hparams: Any, problem: str, batch_size: int) -> float:
    """Estimated peak memory of a training step of an Image Transformer on ``problem`` (see above)."""
    from allen_sr.t2t.names import problem_shape

    size_in, size_out, channels = problem_shape(problem)
    n_in, n_out = size_in * size_in * channels, size_out * size_out * channels
    heads, encoder = int(hparams.num_heads), n_in * n_in if hparams.enc_attention_type == "global" else 0
    scores = heads * (int(hparams.num_encoder_layers) * encoder + int(hparams.num_decoder_layers) * n_out * n_in)
    largest = heads * max(encoder, n_out * n_in)
    return ATTENTION_BASE_BYTES + batch_size * (ATTENTION_BYTES_PER_SCORE * scores
                                                + ATTENTION_BYTES_PER_LARGEST * largest)


def check_attention_memory(argv: list[str], problem: str, model_class: Any, hparams: Any,
                           available: float | None = None) -> None:
    """UsageError when a CPU-only Image Transformer run (no --worker_gpu) would need more memory than the
    machine has ``available`` (bytes; default: psutil's available memory): the kernel would kill it before
    its first step. Names the batch_size that fits."""
    from tensor2tensor.models.image_transformer_2d import Img2imgTransformer

    gpus = flag_value(argv, "worker_gpu")
    if not isinstance(model_class, type) or not issubclass(model_class, Img2imgTransformer) or (
            gpus and gpus.isdigit() and int(gpus) > 0):
        return
    try:
        per_example = attention_bytes(hparams, problem, 1) - ATTENTION_BASE_BYTES
    except (AttributeError, ValueError):
        return  # not an image problem of known sizes: nothing to estimate
    if available is None:
        try:
            import psutil
        except ImportError:
            return
        available = float(psutil.virtual_memory().available)
    batch = int(hparams.batch_size)
    need = ATTENTION_BASE_BYTES + batch * per_example
    if need <= available:
        return
    fits = int((available - ATTENTION_BASE_BYTES) // per_example)
    gb = "{:.1f} GB".format
    say = (f"--problem={problem} with batch_size={batch}: training on the CPU needs about {gb(need / 1e9)} (the "
           f"model's attention over the input's sub-pixels), more than the {gb(available / 1e9)} available")
    if fits >= 1:
        fit = gb((ATTENTION_BASE_BYTES + fits * per_example) / 1e9)
        raise UsageError(f"{say}: pass --hparams=batch_size={fits} (about {fit}), or train on a GPU (--worker_gpu=1)")
    raise UsageError(f"{say}; batch_size=1 needs {gb((ATTENTION_BASE_BYTES + per_example) / 1e9)}: train on a GPU "
                     "(--worker_gpu=1), or on a problem with smaller inputs such as img2img_allen_brain_dim16to64")
