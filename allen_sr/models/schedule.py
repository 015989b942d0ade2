"""Training time as a checkpointed clock, the hook that stops at a time budget, and the
clamped cosine learning-rate decay over steps or over that time (TensorFlow only).

Used by `img2img_conv_sr` (hparams ``cosine_decay_steps``, ``cosine_decay_min`` and
``train_budget_seconds``).
"""
from __future__ import annotations

import math
from typing import Any

import tensorflow.compat.v1 as tf

__all__ = ["CLOCK_SCOPE", "StopAfterSecondsHook", "cosine_decay", "tick_after", "training_clock"]

CLOCK_SCOPE = "train_clock"


def training_clock() -> tuple[tf.Tensor, tf.Tensor]:
    """(elapsed, step_start): seconds of training so far, and the time a step starts at.

    ``elapsed`` (float64, in the checkpoint as ``train_clock/elapsed_seconds``) adds up the
    wall-clock time spent inside training steps: from ``step_start`` (a timestamp with no inputs,
    taken as the step's session run begins) to the end of the step's update. The first step of
    each process is not counted (it also builds the input pipeline and starts the graph), nor is
    anything between steps (hooks, checkpoints, evaluation) or the time a job was down: a restart
    from a checkpoint resumes the clock. Advance it with :func:`tick_after` on the train op.
    """
    with tf.variable_scope(CLOCK_SCOPE, reuse=tf.AUTO_REUSE):
        elapsed = tf.get_variable("elapsed_seconds", [], tf.float64, tf.zeros_initializer(),
                                  trainable=False)
        _started()
    return elapsed, tf.timestamp(name=f"{CLOCK_SCOPE}_step_start")


def _started() -> tf.Variable:
    """1.0 once this process ran a step (a local variable: not checkpointed)."""
    with tf.variable_scope(CLOCK_SCOPE, reuse=tf.AUTO_REUSE):
        return tf.get_variable("process_started", [], tf.float64, tf.zeros_initializer(),
                               trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])


def tick_after(clock: tuple[tf.Tensor, tf.Tensor], update: Any) -> tf.Operation:
    """The op that adds the step's time to the clock of :func:`training_clock`, run after ``update``
    (the train op; nothing is added on the first step of a process). Run it once per step."""
    elapsed, step_start = clock
    started = _started()
    with tf.control_dependencies([update]):
        end = tf.timestamp()
        delta = tf.where(started > 0.0, end - step_start, tf.constant(0.0, tf.float64))
        with tf.control_dependencies([tf.assign_add(elapsed, delta)]):
            return tf.assign(started, 1.0).op


class StopAfterSecondsHook(tf.train.SessionRunHook):
    """Request the end of training once ``elapsed`` (see :func:`training_clock`) >= ``seconds``.

    The estimator then ends as at its last step: its checkpoint saver writes a final checkpoint,
    so the model trained for the budget is the newest checkpoint of the run. ``name`` (the
    model's) prefixes the log line. A run resumed from a checkpoint whose clock has already
    reached the budget stops before its first step: it trains no further.
    """

    def __init__(self, elapsed: tf.Tensor, seconds: float, name: str = "training") -> None:
        self._elapsed = elapsed
        self._seconds = float(seconds)
        self._name = name

    def after_create_session(self, session: Any, coord: Any) -> None:
        if session.run(self._elapsed) >= self._seconds:
            tf.logging.info("%s: train_budget_seconds=%g already spent by the checkpoint; no further "
                            "training (raise it to train longer)", self._name, self._seconds)
            coord.request_stop()

    def before_run(self, run_context: Any) -> Any:
        return tf.train.SessionRunArgs(self._elapsed)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        if run_values.results >= self._seconds:
            tf.logging.info("%s: train_budget_seconds=%g reached; stopping", self._name, self._seconds)
            run_context.request_stop()


def cosine_decay(learning_rate: tf.Tensor, floor: float, decay_steps: int = 0,
                 budget_seconds: float = 0.0, elapsed: tf.Tensor | None = None) -> tf.Tensor:
    """``learning_rate`` times a half cosine from 1 to ``floor``, then ``floor`` for good.

    The cosine runs over ``budget_seconds`` of training time (``elapsed`` of
    :func:`training_clock`) if that is > 0, else over ``decay_steps`` global steps; with neither,
    ``learning_rate`` is returned unchanged. Clamped, unlike t2t's cyclic ``cosdecay``: a run
    longer than planned stays at the floor instead of climbing back to the peak.
    """
    if budget_seconds > 0:
        if elapsed is None:
            raise ValueError("a time-driven decay (budget_seconds > 0) needs the clock's elapsed seconds")
        progress = tf.to_float(tf.minimum(elapsed / budget_seconds, 1.0))
    elif decay_steps > 0:
        step = tf.minimum(tf.to_float(tf.train.get_or_create_global_step()), float(decay_steps))
        progress = step / decay_steps
    else:
        return learning_rate
    cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
    return learning_rate * (floor + (1.0 - floor) * cosine)


def with_stop_hook(spec: Any, clock: tuple[tf.Tensor, tf.Tensor] | None, budget_seconds: float,
                   name: str) -> Any:
    """A TRAIN EstimatorSpec plus the hook that ends training at ``budget_seconds`` (no clock: as is)."""
    if clock is None:
        return spec
    hook = StopAfterSecondsHook(clock[0], float(budget_seconds), name)
    return spec._replace(training_hooks=list(spec.training_hooks) + [hook])
