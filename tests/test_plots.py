"""TensorBoard scalars read from event files, loss-curve plots and `allen-sr plot`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allen_sr.commands.plot import plot_main
from allen_sr.evaluation import plots
from allen_sr.evaluation.plots import MissingScalarError


# ----------------------------------------------------------------------------- event files


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


T0 = 1_700_000_000.0


def _write_v1_events(tf, run_dir: Path, points, tag: str = "loss", extra_tag: str | None = None,
                     suffix: str = ""):
    """Events the way the Estimator writes them: Summary protos with simple_value."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with tf.compat.v1.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(str(run_dir), filename_suffix=suffix)
        for step, wall, value in points:
            values = [tf.compat.v1.Summary.Value(tag=tag, simple_value=value)]
            if extra_tag:
                values.append(tf.compat.v1.Summary.Value(tag=extra_tag, simple_value=1.0))
            writer.add_event(tf.compat.v1.Event(
                wall_time=wall, step=step, summary=tf.compat.v1.Summary(value=values)))
        writer.close()


def _write_v2_events(tf, run_dir: Path, points, tag: str = "loss"):
    """Events from TF2 tf.summary.scalar: the value is stored as a scalar tensor."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        for step, _, value in points:
            tf.summary.scalar(tag, value, step=step)
    writer.close()


@pytest.fixture(scope="module")
def runs(tf, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # Written out of step order, to check the reader sorts.
    a_points = [(step, T0 + 60.0 * i, 5.0 / (1 + i)) for i, step in enumerate([0, 100, 300, 200, 400])]
    _write_v1_events(tf, root / "run_a", a_points, extra_tag="global_step/sec")
    b_points = [(step, 0.0, 4.0 - step / 100.0) for step in range(0, 300, 50)]
    _write_v2_events(tf, root / "run_b", b_points)
    _write_v2_events(tf, root / "run_b" / "eval", [(0, 0.0, 3.5), (250, 0.0, 2.5)])
    return root


def test_read_scalars_simple_values_in_step_order(runs):
    points = plots.read_scalars(runs / "run_a")
    assert [s for s, _, _ in points] == [0, 100, 200, 300, 400]
    by_step = {s: (w, v) for s, w, v in points}
    assert by_step[200] == (T0 + 180.0, pytest.approx(5.0 / 4))
    assert by_step[300] == (T0 + 120.0, pytest.approx(5.0 / 3))


def test_read_scalars_tensor_values_and_eval_subdir(runs):
    points = plots.read_scalars(runs / "run_b")
    assert [(s, pytest.approx(v)) for s, _, v in points] == [(s, 4.0 - s / 100.0) for s in range(0, 300, 50)]
    assert all(w > 0 for _, w, _ in points)
    # The top-level read does not mix in the eval folder; subdir reads it instead.
    eval_points = plots.read_scalars(runs / "run_b", subdir="eval*")
    assert [(s, v) for s, _, v in eval_points] == [(0, 3.5), (250, 2.5)]
    assert plots.available_tags(runs / "run_a") == ["global_step/sec", "loss"]


def test_truncated_and_empty_event_files_are_tolerated(tf, runs, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(runs / "run_a", run)
    (events,) = list(run.glob("events.out.tfevents.*"))
    # A job that is still writing: the last record is cut short, and a new file is still empty.
    events.write_bytes(events.read_bytes()[:-5])
    (run / "events.out.tfevents.9999999999.host").write_bytes(b"")
    points = plots.read_scalars(run)
    assert sorted(s for s, _, _ in points) == [0, 100, 200, 300]  # step 400 was the last record


def test_restarted_run_keeps_latest_write_per_step(tf, tmp_path):
    run = tmp_path / "restarted"
    _write_v1_events(tf, run, [(0, T0, 5.0), (100, T0 + 60, 4.0), (200, T0 + 120, 3.9)])
    # The restarted job writes a second file (the suffix keeps the names apart within a second).
    _write_v1_events(tf, run, [(100, T0 + 600, 4.1), (200, T0 + 660, 3.0), (300, T0 + 720, 2.5)],
                     suffix=".restart")
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    assert [(s, v) for s, _, v in plots.read_scalars(run)] == [(0, 5.0), (100, pytest.approx(4.1)),
                                                                   (200, 3.0), (300, 2.5)]


def test_missing_tag_and_missing_run_errors_are_explicit(runs, tmp_path):
    with pytest.raises(MissingScalarError) as info:
        plots.read_scalars(runs / "run_a", tag="accuracy")
    message = str(info.value)
    assert str(runs / "run_a") in message and "'accuracy'" in message
    assert "global_step/sec, loss" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.read_scalars(tmp_path / "nope")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no events.out.tfevents"):
        plots.read_scalars(tmp_path / "empty_run")


# ----------------------------------------------------------------------------- loss curves


def test_plot_loss_curves_writes_png(runs, tmp_path):
    out = plots.plot_loss_curves([runs / "run_a", runs / "run_b"], tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1200, 450)
        # Not a blank canvas: the coloured lines are drawn.
        pixels = np.asarray(image.convert("RGB")).astype(int)
        assert np.sum(pixels.max(-1) - pixels.min(-1) > 100) > 500
    assert os.listdir(out.parent) == ["loss.png"]
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plots.plot_loss_curves([runs / "run_a"], tmp_path / "x.png", labels=["a", "b"])


def test_plot_loss_curves_names_the_run_without_the_tag(runs, tmp_path):
    # run_a has the tag, run_b does not: the error must point at run_b and list what it has.
    with pytest.raises(MissingScalarError, match=r"run_b: no scalar 'global_step/sec'.*tags present: loss$"):
        plots.plot_loss_curves([runs / "run_a", runs / "run_b"], tmp_path / "x.png", tag="global_step/sec")
    assert not (tmp_path / "x.png").exists()


def test_plot_main_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "loss.png"
    code = plot_main(["--runs", str(runs / "run_a"), str(runs / "run_b"), "--out", str(out),
                               "--tag", "loss"])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG"

    assert plot_main(["--runs", str(runs / "run_b"), "--out", str(out), "--eval"]) == 0

    assert plot_main(["--runs", str(runs / "run_a"), "--out", str(out), "--tag", "bleu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("allen-sr plot: error:") and "run_a" in err and "global_step/sec" in err

    blocker = tmp_path / "file"
    blocker.write_text("x")  # where the picture's folder should be: one line, not a traceback
    assert plot_main(["--runs", str(runs / "run_a"), "--out", str(blocker / "loss.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err and str(blocker) in err, err
    # an existing folder as --out, a file as a run: one line each, naming it
    assert plot_main(["--runs", str(runs / "run_a"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path} is a folder" in err, err
    assert plot_main(["--runs", str(blocker), "--out", str(out)]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        plot_main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: allen-sr plot")


@pytest.mark.parametrize("name", ["loss.jpg", "loss.pdf", "loss"])
def test_plot_refuses_a_name_that_says_another_format(runs, tmp_path, capsys, name):
    """PNG data was written under a .jpg name."""
    assert plot_main(["--runs", str(runs / "run_a"), "--out", str(tmp_path / name)]) == 2
    assert "the plot is written as a PNG; name it .png" in capsys.readouterr().err
    assert not (tmp_path / name).exists()

