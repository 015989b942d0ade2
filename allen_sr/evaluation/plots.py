"""Loss curves: scalars read from TensorBoard event files, plotted against step and wall time.

matplotlib (always through the Agg canvas, never pyplot, so no display or global backend state is
involved) and the TensorBoard event reader are imported inside the functions that use them.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from allen_sr.errors import InvalidInputError, MissingInputError
from allen_sr.fileio import atomic_write_bytes


class MissingScalarError(InvalidInputError):
    """A run's event files have no scalar with the requested tag."""

    def __init__(self, run_dir: Path, tag: str, available: list[str], n_files: int) -> None:
        self.run_dir, self.tag, self.available = run_dir, tag, available
        shown = ", ".join(available) if available else "(none)"
        super().__init__(
            f"run {run_dir}: no scalar {tag!r} in {n_files} event file(s); tags present: {shown}"
        )


@dataclass
class _RunEvents:
    points: list[tuple[int, float, float]]
    first_wall_time: float | None
    tags: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)


def _event_files(run_dir: Path, subdir: str | None) -> list[Path]:
    if not run_dir.is_dir():
        what = "is a file, not a run folder" if run_dir.exists() else "does not exist"
        raise MissingInputError(f"run dir {run_dir} {what}: pass a training run's --output_dir")
    dirs = [run_dir] if subdir is None else sorted(p for p in run_dir.glob(subdir) if p.is_dir())
    # Names embed the creation time (events.out.tfevents.<unix time>.<host>...), so name order
    # is write order within a folder.
    files = sorted(f for d in dirs for f in d.glob("events.out.tfevents.*") if f.is_file())
    if not files:
        where = run_dir if subdir is None else f"{run_dir}/{subdir}"
        raise MissingInputError(f"run {run_dir}: no events.out.tfevents.* files in {where}")
    return files


def _scalar_of(value: Any) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":  # tf.compat.v1 / Estimator summaries
        return float(value.simple_value)
    if kind == "tensor":  # TF2 tf.summary.scalar
        from tensorboard.util import tensor_util

        try:
            arr = tensor_util.make_ndarray(value.tensor)
        except (ValueError, TypeError):
            return None
        if arr.size != 1 or arr.dtype.kind not in "fiub":
            return None
        return float(arr.reshape(()))
    return None


def _read_run(run_dir: Path, tag: str, subdir: str | None) -> _RunEvents:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    files = _event_files(run_dir, subdir)
    result = _RunEvents(points=[], first_wall_time=None, files=files)
    latest: dict[int, tuple[float, float]] = {}
    for path in files:
        # The loader stops quietly at a truncated last record (a job still writing), which is
        # why it is used rather than tf.compat.v1.train.summary_iterator, which raises.
        for event in LegacyEventFileLoader(str(path)).Load():
            if event.wall_time and (
                result.first_wall_time is None or event.wall_time < result.first_wall_time
            ):
                result.first_wall_time = event.wall_time
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                result.tags.add(value.tag)
                if value.tag != tag:
                    continue
                scalar = _scalar_of(value)
                if scalar is None:
                    continue
                # A job restarted from a checkpoint logs some steps again; the later write wins
                # so the curve follows the run that actually continued.
                previous = latest.get(event.step)
                if previous is None or event.wall_time >= previous[0]:
                    latest[event.step] = (event.wall_time, scalar)
    if not latest:
        raise MissingScalarError(run_dir, tag, sorted(result.tags), len(files))
    result.points = [(step, wall, value) for step, (wall, value) in sorted(latest.items())]
    return result


def available_tags(run_dir: str | os.PathLike[str], subdir: str | None = None) -> list[str]:
    """Sorted summary tags present in a run's event files (see :func:`read_scalars` for ``subdir``)."""
    try:
        return sorted(_read_run(Path(run_dir), "\0no such tag\0", subdir).tags)
    except MissingScalarError as error:
        return error.available


def read_scalars(
    run_dir: str | os.PathLike[str], tag: str = "loss", subdir: str | None = None
) -> list[tuple[int, float, float]]:
    """``[(step, wall_time, value), ...]`` of scalar ``tag`` from a run's TensorBoard event files.

    Reads every ``events.out.tfevents.*`` file directly in ``run_dir`` (the training summaries the
    Estimator writes); ``subdir`` is a glob of sub-folders to read instead, e.g. ``"eval*"`` for
    the Estimator's evaluation summaries. Scalars may be stored as ``simple_value`` (TF1 /
    Estimator) or as a scalar tensor (TF2 ``tf.summary.scalar``). A truncated last record, as in a
    file a running job is writing, is ignored. Results are sorted by step; when a step was logged
    more than once (a restart from a checkpoint) the latest write is kept.

    Raises:
      FileNotFoundError: the run dir does not exist or has no event files.
      MissingScalarError: (a ``ValueError``) no scalar ``tag``; the message lists the tags present.
    """
    return _read_run(Path(run_dir), tag, subdir).points


# --------------------------------------------------------------------------- loss curves


def _smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (so early points are not pulled to 0)."""
    out = np.empty_like(values)
    last = 0.0
    for i, v in enumerate(values):
        last = last * weight + (1.0 - weight) * v
        out[i] = last / (1.0 - weight ** (i + 1))
    return out


def _labels_for(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    # Several runs called e.g. "output" in different experiments: add the parent folder.
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]


def plot_loss_curves(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    tag: str = "loss",
    labels: Sequence[str] | None = None,
    subdir: str | None = None,
    smoothing: float = 0.6,
    log_y: bool | None = None,
) -> Path:
    """Plot scalar ``tag`` of each run against step and against wall time; write a PNG atomically.

    Two panels share the y axis: value vs global step, and value vs minutes since the run's first
    event (including start-up time before the first logged loss). Each run is one colour: a faint
    raw line plus a line smoothed like TensorBoard's slider (``smoothing`` in [0, 1); 0 = raw
    only). ``log_y=None`` uses a log scale when the values are positive and span more than a factor
    of 10. Labels default to the run folder names. All runs are read before anything is drawn, so
    a run without the scalar fails with :class:`MissingScalarError` naming it and its tags.

    Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not run_dirs:
        raise InvalidInputError("plot_loss_curves needs at least one run dir")
    if not 0.0 <= smoothing < 1.0:
        raise InvalidInputError(f"smoothing must be in [0, 1), got {smoothing}")
    paths = [Path(r) for r in run_dirs]
    if labels is None:
        labels = _labels_for(paths)
    elif len(labels) != len(paths):
        raise InvalidInputError(f"{len(labels)} labels for {len(paths)} runs")
    runs = [_read_run(p, tag, subdir) for p in paths]

    finite_values = np.concatenate(
        [np.array([v for _, _, v in run.points], dtype=np.float64) for run in runs]
    )
    finite_values = finite_values[np.isfinite(finite_values)]
    if log_y is None:
        log_y = bool(
            finite_values.size
            and finite_values.min() > 0
            and finite_values.max() / finite_values.min() > 10.0
        )

    figure = Figure(figsize=(12, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax_step, ax_time = figure.subplots(1, 2, sharey=True)
    for index, (run, label) in enumerate(zip(runs, labels)):
        # "C0".."C9" is matplotlib's default cycle; the same colour is needed in both panels.
        color = f"C{index % 10}"
        steps = np.array([s for s, _, _ in run.points], dtype=np.float64)
        walls = np.array([w for _, w, _ in run.points], dtype=np.float64)
        values = np.array([v for _, _, v in run.points], dtype=np.float64)
        # NaN/inf losses would poison the moving average forever; leave them out of both lines.
        keep = np.isfinite(values)
        steps, walls, values = steps[keep], walls[keep], values[keep]
        start = run.first_wall_time or 0.0  # None only when every wall_time is 0
        minutes = (walls - start) / 60.0
        for ax, x in ((ax_step, steps), (ax_time, minutes)):
            if smoothing > 0 and len(values) > 1:
                ax.plot(x, values, color=color, alpha=0.25, linewidth=1.0)
                ax.plot(x, _smooth(values, smoothing), color=color, linewidth=1.8, label=label)
            else:
                ax.plot(x, values, color=color, linewidth=1.5, label=label,
                        marker="o" if len(values) == 1 else None)
    for ax, xlabel in ((ax_step, "step"), (ax_time, "minutes since the run's first event")):
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3, which="both")
        if log_y:
            ax.set_yscale("log")
    where = "" if subdir is None else f" ({subdir})"
    ax_step.set_ylabel(tag)
    ax_step.set_title(f"{tag}{where} vs step")
    ax_time.set_title(f"{tag}{where} vs wall time")
    ax_step.legend(loc="best", fontsize="small")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(buffer.getvalue(), out_path)
