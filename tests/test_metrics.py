"""Metrics against TensorFlow's reference implementations, baselines, the results table, file I/O."""
from __future__ import annotations

import csv
import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from allen_sr import fileio
from allen_sr.errors import InvalidInputError
from allen_sr.evaluation import metrics
from allen_sr.evaluation.metrics import METHODS, PROTOCOL, PSNR_CAP_DB, MetricTable


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported only by the tests that compare against it."""
    return pytest.importorskip("tensorflow")


def _structured(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Gradients, stripes and a bright square: edges and smooth areas, unlike pure noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 100 * np.sin(xx / 3.0) * np.cos(yy / 5.0),
        (xx * 255.0 / max(width - 1, 1)),
        np.where((xx // 4 + yy // 4) % 2 == 0, 40.0, 210.0),
    ]
    image = np.stack(planes[:channels], axis=-1)
    image[height // 4 : height // 2, width // 4 : width // 2] = 250.0
    return np.clip(image, 0, 255).astype(np.uint8)


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


PAIRS = {
    "random 32x32x3": lambda r: (r.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                 r.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
    "structured+noise 32x32x3": lambda r: (_structured(32, 32, 3), _noisy(_structured(32, 32, 3), 12, 1)),
    "structured vs shifted 48x64x3": lambda r: (_structured(48, 64, 3),
                                                np.roll(_structured(48, 64, 3), 2, axis=1)),
    "bicubic of 8x8 vs target 32x32x3": lambda r: (
        metrics.upscale(_structured(32, 32, 3)[::4, ::4], 4, "bicubic"), _structured(32, 32, 3)),
    "greyscale 32x32x1": lambda r: (_structured(32, 32, 1), _noisy(_structured(32, 32, 1), 25, 2)),
    "smallest allowed 11x11x3": lambda r: (r.integers(0, 256, (11, 11, 3), dtype=np.uint8),
                                           r.integers(0, 256, (11, 11, 3), dtype=np.uint8)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_ssim_and_psnr_match_tensorflow(tf, name):
    # The whole point of the numpy SSIM: the same numbers tf.image.ssim gives, within 1e-4.
    pred, target = PAIRS[name](np.random.default_rng(0))
    assert metrics.ssim(pred, target) == pytest.approx(float(tf.image.ssim(pred, target, 255)), abs=1e-4)
    assert metrics.psnr(pred, target) == pytest.approx(float(tf.image.psnr(pred, target, 255)), abs=1e-3)


def test_float_images_with_max_val_one_match_tensorflow(tf):
    rng = np.random.default_rng(3)
    pred = rng.random((40, 36, 3)).astype(np.float32)
    target = np.clip(pred + rng.normal(0, 0.05, pred.shape), 0, 1).astype(np.float32)
    assert metrics.ssim(pred, target, 1.0) == pytest.approx(float(tf.image.ssim(pred, target, 1.0)), abs=1e-4)
    assert metrics.psnr(pred, target, 1.0) == pytest.approx(float(tf.image.psnr(pred, target, 1.0)), abs=1e-3)


def test_batched_forms_match_tensorflow_per_image(tf):
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    preds = np.stack([_noisy(t, 5 + 10 * i, i) for i, t in enumerate(targets)])
    np.testing.assert_allclose(metrics.ssim_batch(preds, targets),
                               tf.image.ssim(preds, targets, 255).numpy(), atol=1e-4)
    np.testing.assert_allclose(metrics.psnr_batch(preds, targets),
                               tf.image.psnr(preds, targets, 255).numpy(), atol=1e-3)
    # The single-image forms agree with the batched ones.
    assert metrics.ssim(preds[2], targets[2]) == pytest.approx(metrics.ssim_batch(preds, targets)[2])


def test_identical_images_psnr_capped_ssim_one(tf):
    image = _structured(32, 32, 3)
    assert metrics.psnr(image, image) == PSNR_CAP_DB == 100.0
    assert metrics.ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert float(tf.image.ssim(image, image, 255)) == pytest.approx(1.0, abs=1e-6)
    # A summary of identical tiles is still valid (finite) JSON.
    table = MetricTable()
    table.add_images(0, image, {"model": image})
    json.dumps(table.summary(), allow_nan=False)


def test_one_level_difference_stays_below_the_cap(tf):
    # The cap must not hide real (tiny) errors on the tile size we evaluate.
    target = _structured(32, 32, 3)
    pred = target.copy()
    pred[0, 0, 0] ^= 1
    expected = 10 * math.log10(255.0**2 * 32 * 32 * 3)
    assert metrics.psnr(pred, target) == pytest.approx(expected)
    assert metrics.psnr(pred, target) < PSNR_CAP_DB
    assert metrics.psnr(pred, target) == pytest.approx(float(tf.image.psnr(pred, target, 255)), abs=1e-3)


def test_bright_near_flat_tiles_equal_tf_formula_in_float64(tf):
    # On flat bright tiles tf.image.ssim (always float32) loses ~1e-4 to cancellation; our float64
    # value is TF's own per-channel formula evaluated in float64, to rounding error.
    image_ops = pytest.importorskip("tensorflow.python.ops.image_ops_impl")
    if not hasattr(image_ops, "_ssim_per_channel"):
        pytest.skip("TensorFlow's private _ssim_per_channel moved")
    rng = np.random.default_rng(6)
    for _ in range(5):
        target = np.clip(rng.integers(180, 250) + rng.normal(0, 2, (32, 32, 3)), 0, 255).astype(np.uint8)
        pred = _noisy(target, 2, int(rng.integers(1000)))
        per_channel, _ = image_ops._ssim_per_channel(
            tf.constant(pred / 255.0, tf.float64), tf.constant(target / 255.0, tf.float64),
            max_val=tf.constant(1.0, tf.float64))
        assert metrics.ssim(pred, target) == pytest.approx(float(tf.reduce_mean(per_channel)), abs=1e-9)
        assert metrics.ssim(pred, target) == pytest.approx(float(tf.image.ssim(pred, target, 255)), abs=1e-3)


def test_constant_images(tf):
    grey = np.full((32, 32, 3), 100, np.uint8)
    lighter = np.full((32, 32, 3), 140, np.uint8)
    assert metrics.ssim(grey, grey) == pytest.approx(1.0)
    # Flat images have no contrast, so SSIM is the luminance term alone. TF's float32 result is
    # 1.2e-4 off here (see test above), hence the analytic value as the reference.
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1)
    assert metrics.ssim(grey, lighter) == pytest.approx(expected, abs=1e-12)
    assert float(tf.image.ssim(grey, lighter, 255)) == pytest.approx(expected, abs=1e-3)
    assert metrics.psnr(grey, lighter) == pytest.approx(20 * math.log10(255 / 40))
    black = np.zeros((32, 32, 1), np.uint8)
    assert metrics.ssim(black, black) == pytest.approx(1.0)
    assert metrics.psnr(black, black) == PSNR_CAP_DB


def test_greyscale_2d_equals_single_channel():
    a, b = PAIRS["greyscale 32x32x1"](None)
    assert metrics.ssim(a[..., 0], b[..., 0]) == pytest.approx(metrics.ssim(a, b), abs=1e-12)
    assert metrics.psnr(a[..., 0], b[..., 0]) == pytest.approx(metrics.psnr(a, b), abs=1e-12)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.psnr(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="_batch"):
        metrics.ssim(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 32, 3), np.uint8))


def test_luma_is_matlab_s_bt601_as_published_tables_score():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(metrics.luma(colours)[0, :, 0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    np.testing.assert_array_equal(metrics.luma(grey), grey)


def test_luma_scores_crop_the_border_and_see_only_luma():
    target = (_structured(32, 32, 3) // 2 + 40)[None]
    shifted = target + 10
    psnr_y, ssim_y = metrics.luma_scores(shifted, target, 4)
    # every channel 10 levels up: the luma 10 * 219 / 255 up (no rounding)
    assert psnr_y[0] == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-9)
    assert ssim_y[0] < 1
    border = target.copy()
    border[:, :4] = 0
    border[:, :, -4:] = 255
    assert metrics.luma_scores(border, target, 4)[0][0] == PSNR_CAP_DB  # only the cropped border differs
    assert metrics.luma_scores(border, target, 3)[0][0] < 60
    swapped = target[..., ::-1]  # red and blue exchanged: other colours, other luma
    assert metrics.luma_scores(swapped, target, 0)[0][0] < PSNR_CAP_DB
    assert metrics.luma_scores(target[:, :20, :20], target[:, :20, :20], 5) is None  # 10 px: no SSIM window


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(8, 8, 3), (8, 8, 1), (8, 8), (4, 6, 3)])
def test_upscale_shapes_and_dtype(method, shape):
    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    out = metrics.upscale(image, 4, method)
    assert out.dtype == np.uint8
    assert out.shape == (shape[0] * 4, shape[1] * 4) + shape[2:]
    # A flat image stays flat whatever the kernel (no ringing, no off-by-one rounding).
    flat = np.full(shape, 77, np.uint8)
    assert np.all(metrics.upscale(flat, 4, method) == 77)


def test_upscale_nearest_is_pixel_replication_and_bicubic_differs():
    image = _structured(8, 8, 3)
    nearest = metrics.upscale(image, 4, "nearest")
    np.testing.assert_array_equal(nearest, np.repeat(np.repeat(image, 4, 0), 4, 1))
    assert not np.array_equal(metrics.upscale(image, 4, "bicubic"), nearest)
    assert set(metrics.baselines(image, 4)) == set(METHODS)


def test_upscale_rejects_bad_arguments():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown method"):
        metrics.upscale(image, 4, "lanczos")
    with pytest.raises(TypeError, match="uint8"):
        metrics.upscale(image.astype(np.float32), 4, "bicubic")
    with pytest.raises(ValueError, match="positive integer"):
        metrics.upscale(image, 2.5, "bicubic")
    with pytest.raises(ValueError, match="HxW"):
        metrics.upscale(np.zeros((8, 8, 4), np.uint8), 4, "bicubic")


def _filled_table() -> MetricTable:
    table = MetricTable()
    for example, (b_psnr, b_ssim, m_psnr, m_ssim) in enumerate(
        [(26.0, 0.80, 27.0, 0.85), (24.0, 0.70, 26.0, 0.75), (25.0, 0.75, 25.5, 0.8)]
    ):
        table.add(example, "bicubic", b_psnr, b_ssim)
        table.add(example, "model", m_psnr, m_ssim)
    return table


def test_summary_has_exact_shape_and_means():
    summary = _filled_table().summary()
    assert summary == {
        "protocol": PROTOCOL,
        "tiles": 3,
        "methods": {
            "bicubic": {"psnr": 25.0, "ssim": 0.75},
            "model": {"psnr": pytest.approx(26.167, abs=1e-9), "ssim": pytest.approx(0.8, abs=1e-9)},
        },
    }
    assert list(summary["methods"]) == ["bicubic", "model"]  # insertion order
    assert all(type(v) is float for m in summary["methods"].values() for v in m.values())
    assert "\n" not in PROTOCOL


def test_table_from_images_scores_every_method():
    target = _structured(32, 32, 3)
    table = MetricTable()
    scores = table.add_images("tile-7", target, {**metrics.baselines(target[::4, ::4], 4), "model": target})
    assert list(scores) == [*METHODS, "model"]
    assert scores["model"] == (PSNR_CAP_DB, pytest.approx(1.0))
    bicubic = metrics.upscale(target[::4, ::4], 4, "bicubic")
    assert scores["bicubic"][0] == pytest.approx(metrics.psnr(bicubic, target))
    assert table.summary()["tiles"] == 1


def test_incomplete_or_duplicate_entries_are_refused():
    table = _filled_table()
    with pytest.raises(ValueError, match="already added"):
        table.add(0, "model", 1.0, 0.1)
    table.add(3, "bicubic", 20.0, 0.5)
    with pytest.raises(ValueError, match="3/model"):
        table.summary()


def test_csv_json_and_rendered_tables(tmp_path):
    table = _filled_table()
    csv_path = table.write_csv(tmp_path / "deep" / "per_example.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["example", "method", "psnr", "ssim"]
    assert rows[1] == ["0", "bicubic", "26.000000", "0.800000"]
    assert len(rows) == 1 + 3 * 2
    assert MetricTable.from_csv(csv_path).summary() == table.summary()

    json_path = table.write_json(tmp_path / "metrics.json")
    assert json.loads(json_path.read_text()) == table.summary()

    markdown = table.to_markdown().splitlines()
    assert markdown[0] == "| method (3 tiles) | PSNR (dB) | SSIM |"
    assert markdown[2] == "| bicubic | 25.00 | 0.7500 |"
    assert markdown[3] == "| model | 26.17 | 0.8000 |"
    text = table.to_text().splitlines()
    assert text[0].split() == ["method", "PSNR", "(dB)", "SSIM"]
    assert text[2].split() == ["model", "26.17", "0.8000"]
    assert len({len(line) for line in text[:3]}) == 1  # aligned columns
    assert text[-1] == "(3 tiles)"


def test_scores_of_a_file_whose_name_is_not_utf8_are_written(tmp_path):
    """A Latin-1 file name (its byte held as a surrogate) used to crash the CSV and JSON writers after
    every tile was scored; it is written as a backslash escape, and the JSON reads back as the name."""
    name = os.fsdecode(b"caf\xe9.png")
    table = MetricTable()
    table.add(name, "bicubic", 25.0, 0.75)
    csv_path = table.write_csv(tmp_path / "per_example.csv")
    text = csv_path.read_bytes().decode("utf-8")
    assert "caf\\udce9.png,bicubic" in text
    assert MetricTable.from_csv(csv_path).summary() == table.summary()
    json_path = fileio.write_json_atomic({"files": [name]}, tmp_path / "names.json")
    assert json.loads(json_path.read_text(encoding="utf-8")) == {"files": [name]}


def test_atomic_writers_replace_whole_files_and_clean_up(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    fileio.write_json_atomic({"a": 1}, target)
    fileio.write_json_atomic({"a": 2}, target)
    assert json.loads(target.read_text()) == {"a": 2}
    # NaN is not JSON: refused, and the previous file is left intact with no temp file around.
    with pytest.raises(ValueError):
        fileio.write_json_atomic({"a": float("nan")}, target)
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]
    # Permissions follow the umask like a plain open() would (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    fileio.atomic_write_text("x\n", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_bytes() == b"x\n"


def test_library_modules_do_not_import_heavy_dependencies():
    # metrics/pictures are imported by the CLI and by tools without TensorFlow; importing them
    # must not pull in TensorFlow, tensor2tensor or matplotlib.
    code = (
        "import sys, allen_sr.evaluation.metrics, allen_sr.evaluation.pictures, allen_sr.fileio\n"
        "heavy = ('tensorflow', 'tensor2tensor', 'matplotlib', 'tensorboard')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's /sys")
def test_an_output_folder_where_no_file_can_be_created_is_refused_whatever_its_permission_bits(tmp_path):
    """/sys looks writable to root by its bits; a file tried there says otherwise (and leaves nothing)."""
    with pytest.raises(InvalidInputError, match=r"--out /sys/allen-sr-x: cannot create or write the folder "
                                                r"\(/sys is not writable"):
        fileio.check_output_folder("/sys/allen-sr-x", "--out")
    fileio.check_output_folder(tmp_path / "new" / "out", "--out")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_ended_processes_are_removed_files_and_folders_alike(tmp_path):
    """What a process that has ended left (a file or a whole folder) goes; a running process's,
    and names the pattern does not match, stay; a missing folder has nothing to remove."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / f"work-{ended.pid}-a" / "inner").mkdir(parents=True)
    (tmp_path / f"work-{ended.pid}").write_text("partial")
    (tmp_path / f"work-{os.getpid()}-b").mkdir()
    (tmp_path / f"other-{ended.pid}").write_text("kept")
    removed = fileio.remove_orphans(tmp_path, r"work-(?P<pid>\d+)(-.*)?")
    assert removed == [f"work-{ended.pid}", f"work-{ended.pid}-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"work-{os.getpid()}-b", f"other-{ended.pid}"])
    assert fileio.remove_orphans(tmp_path / "missing", r"(?P<pid>\d+)") == []


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    """A temporary file named after a process that is gone is removed; a live one's is kept."""
    import subprocess as sp

    dead = sp.run([sys.executable, "-c", "import os; print(os.getpid())"],
                  capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".data-stats.json.{dead}.abcd1234.tmp"
    live = tmp_path / f".data-info.json.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / f".other-stats.json.{dead}.abcd1234.tmp"
    for path in (stale, live, other):
        path.write_text("partial")
    assert fileio.remove_stale_temp_files(tmp_path, "data-") == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()
    written = fileio.atomic_write_text("x", tmp_path / "data-stats.json")
    assert written.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "data-stats.json"])
