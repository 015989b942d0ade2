"""The conv model's probabilistic head (hparam ``probabilistic``): a Laplace scale per sub-pixel,
trained by its likelihood, read as distributions on the 256 levels (closed form, calibrated like
the Image Transformer's) and written by evaluate/upscale --uncertainty through the same flags.
A real few-step training run, real datagen records for the calibration's dev split."""
from __future__ import annotations

import json
import os
import shutil

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr.commands import evaluate as evaluate_cmd
from allen_sr.commands import upscale as upscale_cmd
from allen_sr.decoding import checkpoints, laplace
from allen_sr.decoding.calibration import CALIBRATION_NAME, run_calibration, stored_calibration
from allen_sr.decoding.one_pass import OnePassDecoder
from allen_sr.decoding.uncertainty import Recorder, coverage, pixel_uncertainty
from allen_sr.testing import tiny_training
from conftest import SAMPLE_IMAGES

PROBLEM = "img2img_local_dim8to32"
CONV = "img2img_conv_sr"
CONV_SET = "img2img_conv_sr_cpu"
HPARAMS = "hidden_size=8,num_res_blocks=1,learning_rate_constant=0.02,probabilistic=True"
HELD_OUT = os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")
CONV_MODE = "greedy"  # the mode a conv run decodes in (its set names no decode_mode); its calibration's key
CONV_TTA = True  # the set averages the 8 flips/rotations (decode_tta): its calibration is kept with it
KEY = "greedy+tta"  # their entry in the calibration file


# --------------------------------------------------------------------------- the distributions


def test_draws_from_the_discretized_laplace_are_covered_at_the_nominal_rates():
    """Truths drawn from the model's own distribution (rounded, clipped to 0-255 as images are)
    are covered at the nominal rate; scales half as large under-cover."""
    rng = np.random.default_rng(0)
    for scales in ((0.2, 3.0), (0.3, 20.0)):  # narrow ones: where the discreteness of levels shows
        mu = rng.uniform(-10, 265, (1, 20000))
        b = rng.uniform(*scales, (1, 20000))
        truth = np.clip(np.rint(mu[0] + rng.laplace(0, b[0])), 0, 255)
        lo, hi = laplace.pit_interval(mu, b, truth)
        for level in (0.5, 0.9):
            assert coverage(lo, hi, level) == pytest.approx(level, abs=0.01), (scales, level)
        narrow_lo, narrow_hi = laplace.pit_interval(mu, b / 2, truth)
        assert coverage(narrow_lo, narrow_hi, 0.5) < 0.40
    # level v holds the mass from v - 0.5 to v + 0.5; the end levels hold the tails
    lo, hi = laplace.pit_interval(np.array([[10.0, 10.0, 10.0]]), np.array([[2.0, 2.0, 2.0]]), np.array([11, 0, 255]))
    np.testing.assert_allclose(lo, [1 - 0.5 * np.exp(-0.25), 0.0, 1 - 0.5 * np.exp(-244.5 / 2)])
    np.testing.assert_allclose(hi, [1 - 0.5 * np.exp(-0.75), 0.5 * np.exp(-9.5 / 2), 1.0])


def test_the_mixture_of_views_has_the_laplace_moments():
    mu, b = np.array([[10.0]]), np.array([[3.0]])
    mean, sd = laplace.mixture_moments(np.stack([mu, mu]), np.stack([b, b]))
    assert mean[0, 0] == 10.0 and sd[0, 0] == pytest.approx(np.sqrt(2) * 3.0)
    mean, sd = laplace.mixture_moments(np.array([[0.0], [4.0]]), np.array([[1.0], [1.0]]))
    assert mean[0] == 2.0 and sd[0] == pytest.approx(np.sqrt(2 + 4))  # spread between the views adds
    samples = np.random.default_rng(1).laplace(10.0, 3.0, 200000)
    assert laplace.cdf(12.0, 10.0, 3.0) == pytest.approx((samples <= 12.0).mean(), abs=0.005)


def test_the_loss_is_the_laplace_likelihood():
    import tensorflow.compat.v1 as tf

    from allen_sr.models import conv_net

    pred = np.array([[10.0, 100.0, 250.0]], np.float32)
    target = np.array([[12.0, 90.0, 250.0]], np.float32)
    log_b = np.log(np.array([[2.0, 20.0, 0.5]], np.float32))
    with tf.Graph().as_default(), tf.Session() as session:
        got = session.run(conv_net.laplace_nll(tf.constant(pred), tf.constant(log_b), tf.constant(target)))
    b = np.exp(log_b) / 255
    assert got == pytest.approx(np.mean(np.abs(pred - target) / 255 / b + np.log(b)), rel=1e-5)


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_dataset) -> str:
    out = tmp_path_factory.mktemp("prob_run")
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, HPARAMS)
    hp.add_hparam("data_dir", sample_dataset)
    tiny_training.train_checkpoint(out, hp, steps=30, batch_size=4, model_name=CONV)
    return str(out)


def flags(run: str) -> list[str]:
    return ["--problem", PROBLEM, "--model", CONV, "--hparams_set", CONV_SET, "--hparams", HPARAMS,
            "--output_dir", run, "--no_progress"]


def run_hparams(run: str):
    return checkpoints.load_hparams(CONV_SET, PROBLEM, HPARAMS, run)


def decoder(run: str, **kwargs) -> OnePassDecoder:
    return OnePassDecoder(run_hparams(run), checkpoints.find_checkpoint(run), **kwargs)


def test_the_head_trains_and_leaves_the_predictions_as_they_are(run):
    """The scale head has its own weights and they moved from zero; recording the distributions
    does not change a single predicted value, with or without 8-fold averaging."""
    import tensorflow as tf

    names = [name for name, _ in tf.train.list_variables(checkpoints.find_checkpoint(run))]
    kernel = next(n for n in names if n.endswith("scale_out/kernel"))
    assert np.abs(tf.train.load_variable(checkpoints.find_checkpoint(run), kernel)).max() > 0
    inputs, targets, _ = evaluate_cmd.cut_pairs([HELD_OUT], 32, 4, 3, 10, 0)
    for tta in (False, True):
        dec = decoder(run, tta=tta)
        try:
            plain = dec.decode(inputs)
            recorder = Recorder((1.0, 0.5), targets)
            np.testing.assert_array_equal(dec.decode(inputs, recorder=recorder), plain)
            mean, sd = dec.predict_uncertain(inputs)
            _, sd_half = dec.predict_uncertain(inputs, 0.5)
        finally:
            dec.close()
        np.testing.assert_allclose(recorder.shaped("std")[0], sd, rtol=1e-5)
        np.testing.assert_allclose(recorder.shaped("std")[1], sd_half, rtol=1e-5)
        if not tta:  # one Laplace: its sd is sqrt(2) b, and the temperature scales b
            np.testing.assert_allclose(sd_half, sd / 2, rtol=1e-5)
        else:  # the views' spread does not shrink with the temperature
            assert np.all(sd_half >= sd / 2 - 1e-4) and np.any(sd_half > sd / 2 + 0.1)
        assert np.array_equal(np.clip(np.rint(mean), 0, 255), plain)
        assert sd.min() > 0


def test_evaluate_scores_the_probabilistic_conv_model_with_the_same_flags(run, sample_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_cmd.evaluate_main(flags(run) + ["--images", HELD_OUT, "--max_tiles", "6", "--uncertainty",
                                                    "--out", str(out)]) == 0
    assert "fitting the uncertainty calibration on" in capsys.readouterr().out
    section = json.loads((out / "metrics.json").read_text())["uncertainty"]
    for key in ("coverage_50", "coverage_90", "rmse_ratio_surest_half", "rmse_ratio_surest_half_oracle"):
        assert 0 <= section[key] <= 1
    assert section["coverage_50"] < section["coverage_90"]
    stored = stored_calibration(checkpoints.find_checkpoint(run), CONV_MODE, CONV_TTA)
    assert stored is not None and sample_dataset in stored.fitted_on
    assert section["calibration"] == stored.as_dict()
    assert (out / "reliability.png").exists() and (out / "uncertainty_grid.png").exists()


def test_decode_says_its_dev_tiles_fitted_the_calibration(run, sample_dataset, tmp_path, capsys):
    """decode reads the first dev tiles of the run's data, the ones the temperature was fitted on:
    their coverage is not held out, and metrics.json and the screen say so."""
    from allen_sr.commands import decode as decode_cmd
    from allen_sr.decoding.calibration import FIT_TILES

    out = tmp_path / "dec"
    assert decode_cmd.decode_main(flags(run) + ["--data_dir", sample_dataset, "--num_examples", "3",
                                                "--uncertainty", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    section = json.loads((out / "metrics.json").read_text())["uncertainty"]
    fitted = section["calibration"]["tiles"]
    assert 3 <= fitted <= FIT_TILES and section["tiles_used_to_fit"] == 3
    assert section["held_out"].startswith("no: the temperature was fitted on 3 of these 3 tiles")
    assert "note: not held out: the temperature was fitted on 3 of these 3 tiles" in text
    assert decode_cmd.decode_main(flags(run) + ["--data_dir", sample_dataset, "--dataset_split", "train",
                                                "--num_examples", "3", "--uncertainty", "--out",
                                                str(tmp_path / "other")]) == 0
    section = json.loads((tmp_path / "other" / "metrics.json").read_text())["uncertainty"]
    assert section["tiles_used_to_fit"] == 0 and "held_out" not in section
    assert "not held out" not in capsys.readouterr().out


def test_upscale_writes_the_conv_models_map_equal_to_its_decoder(run, tmp_path, capsys):
    src = tmp_path / "in.png"
    pixels = np.asarray(Image.open(HELD_OUT).convert("RGB"))[300:330, 500:540]
    Image.fromarray(pixels).save(src)
    out = tmp_path / "out.tif"
    assert upscale_cmd.upscale_main(flags(run) + ["--image", str(src), "--out", str(out), "--uncertainty"]) == 0
    capsys.readouterr()
    assert (tmp_path / "out.uncertainty.png").exists()
    sd_map = tifffile.imread(tmp_path / "out.uncertainty.tif")
    assert sd_map.shape == (120, 160)
    temperature = stored_calibration(checkpoints.find_checkpoint(run), CONV_MODE, CONV_TTA).temperature
    dec = decoder(run, target_shape=(None, None))
    try:
        _, sd = dec.predict_uncertain(pixels[None], temperature)
    finally:
        dec.close()
    np.testing.assert_allclose(sd_map, pixel_uncertainty(sd[0]), atol=1 / 256)


def test_the_export_carries_the_distribution_and_its_calibration(run, tmp_path, capsys):
    """`allen-sr export` of a probabilistic run writes distribution.onnx and the run's calibration:
    the exported model's distributions (onnxruntime, the views averaged in NumPy) are the
    checkpoint's, and `upscale --exported --uncertainty` writes the run folder's map."""
    from allen_sr.commands.export import export
    from allen_sr.export.runtime import open_exported

    out = tmp_path / "export"
    config = export(PROBLEM, CONV_SET, run, out, overrides=HPARAMS)
    assert config["distribution"] == "distribution.onnx" and (out / "distribution.onnx").is_file()
    temperature = stored_calibration(checkpoints.find_checkpoint(run), CONV_MODE, CONV_TTA).temperature
    assert config["uncertainty"]["temperature"] == temperature and config["tta"]
    inputs, targets, _ = evaluate_cmd.cut_pairs([HELD_OUT], 32, 4, 3, 10, 0)
    exported, dec = open_exported(out), decoder(run)
    try:
        assert exported.decoder.reports_distributions
        got, want = Recorder((1.0, temperature), targets), Recorder((1.0, temperature), targets)
        decoded = exported.decoder.decode(inputs, recorder=got)
        dec.decode(inputs, recorder=want)
        for name in ("std", "pit_lo", "pit_hi"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-4, err_msg=name)
        plain = exported.decoder.decode(inputs)  # model.onnx: the views averaged in its graph
        assert np.abs(decoded.astype(int) - plain).max() <= 1 and (decoded != plain).mean() < 1e-3
        np.testing.assert_allclose(exported.decoder.predict_uncertain(inputs[:3], 0.5)[1],
                                   dec.predict_uncertain(inputs[:3], 0.5)[1], atol=1e-3)
    finally:
        exported.close()
        dec.close()
    src = tmp_path / "in.png"
    pixels = np.asarray(Image.open(HELD_OUT).convert("RGB"))[300:330, 500:540]
    Image.fromarray(pixels).save(src)
    for name, model_flags in (("run", flags(run)), ("export", ["--exported", str(out), "--no_progress"])):
        assert upscale_cmd.upscale_main(model_flags + ["--image", str(src), "--out", str(tmp_path / f"{name}.tif"),
                                                       "--uncertainty"]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(tifffile.imread(tmp_path / "export.uncertainty.tif"),
                               tifffile.imread(tmp_path / "run.uncertainty.tif"), atol=2 / 256)
    # --mode mean is the conv model's prediction too: the same calibration, from the run or the export
    for name, model_flags in (("run_mean", flags(run)), ("export_mean", ["--exported", str(out), "--no_progress"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert upscale_cmd.upscale_main(model_flags + ["--mode", "mean", "--image", str(src), "--uncertainty",
                                                           "--out", str(tmp_path / f"{name}.tif")]) == 0
        assert not [w for w in caught if "uncalibrated" in str(w.message)]
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{name}.uncertainty.tif"),
                                      tifffile.imread(tmp_path / f"{name[:-5]}.uncertainty.tif"))
    entries = json.loads((Path(run) / CALIBRATION_NAME).read_text())
    assert "mean" not in entries[os.path.basename(checkpoints.find_checkpoint(run))]  # no second fit of the same
    # a config.json whose calibration is not one: the model's own spread, said in one warning
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    config = json.loads((broken / "config.json").read_text())
    config["uncertainty"]["temperature"] = "x"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="is not a calibration"):
        assert upscale_cmd.upscale_main(["--exported", str(broken), "--no_progress", "--image", str(src),
                                         "--uncertainty", "--out", str(tmp_path / "broken.tif")]) == 0


@pytest.mark.parametrize("content", ["[]", {"temperature": 0.8, "tiles": 64},
                                     {"temperature": "x", "fitted_on": "dev", "tiles": 64},
                                     {"temperature": 0, "fitted_on": "dev", "tiles": 64}])
def test_a_malformed_calibration_file_is_fitted_again_in_one_line(run, content, tmp_path, capsys):
    """Valid JSON of the wrong shape is fitted again like an unreadable file (it was a traceback)."""
    checkpoint = checkpoints.find_checkpoint(run)
    dec = decoder(run)
    try:
        good = run_calibration(dec, run_hparams(run), PROBLEM, checkpoint, CONV_MODE)
        path = Path(run) / CALIBRATION_NAME
        path.write_text(content if isinstance(content, str) else
                        json.dumps({os.path.basename(checkpoint): {KEY: {**content, "tta": CONV_TTA}}}))
        with pytest.warns(UserWarning, match=CALIBRATION_NAME):
            assert stored_calibration(checkpoint, CONV_MODE, CONV_TTA) is None
        src = tmp_path / "in.png"
        Image.fromarray(np.asarray(Image.open(HELD_OUT).convert("RGB"))[300:316, 500:516]).save(src)
        with pytest.warns(UserWarning, match=CALIBRATION_NAME):
            assert upscale_cmd.upscale_main(flags(run) + ["--image", str(src), "--out", str(tmp_path / "o.tif"),
                                                          "--uncertainty"]) == 0
        assert stored_calibration(checkpoint, CONV_MODE, CONV_TTA) == good  # fitted again and kept
    finally:
        dec.close()


def test_decode_fits_a_moved_runs_calibration_on_its_data_dir(run, sample_dataset, tmp_path, capsys):
    """A run whose dataset moved: upscale/evaluate name the command that fits it, decode fits it on
    the --data_dir it reads; an entry written before entries named their decode_tta and checkpoint
    is fitted again, and kept while nothing can be fitted."""
    from allen_sr.commands import decode as decode_cmd

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    (moved / CALIBRATION_NAME).unlink()
    checkpoint = checkpoints.find_checkpoint(run)
    (moved / "checkpoint").write_text(f'model_checkpoint_path: "{os.path.basename(checkpoint)}"\n')
    saved = json.loads((moved / "hparams.json").read_text())
    (moved / "hparams.json").write_text(json.dumps({**saved, "data_dir": str(tmp_path / "gone")}))
    moved_flags = [str(moved) if f == run else f for f in flags(run)]
    src = tmp_path / "in.png"
    Image.fromarray(np.asarray(Image.open(HELD_OUT).convert("RGB"))[300:316, 500:516]).save(src)
    with pytest.warns(UserWarning, match=f"allen-sr decode --output_dir {moved} --data_dir DIR") as caught:
        assert upscale_cmd.upscale_main(moved_flags + ["--image", str(src), "--out", str(tmp_path / "o.tif"),
                                                       "--uncertainty"]) == 0
    assert not any("the --data_dir the run trained on" in str(w.message) for w in caught)
    moved_checkpoint = checkpoints.find_checkpoint(moved)
    old = {"temperature": 0.5, "fitted_on": "dev split of somewhere", "tiles": 64, "mode": CONV_MODE}
    (moved / CALIBRATION_NAME).write_text(json.dumps({os.path.basename(checkpoint): {KEY: old}}))
    assert stored_calibration(moved_checkpoint, CONV_MODE, CONV_TTA) is None  # fitted again when it can be
    dec = decoder(str(moved))
    try:
        assert run_calibration(dec, run_hparams(str(moved)), PROBLEM, moved_checkpoint, CONV_MODE).temperature == 0.5
    finally:
        dec.close()
    capsys.readouterr()
    assert decode_cmd.decode_main(moved_flags + ["--data_dir", sample_dataset, "--num_examples", "2",
                                                 "--uncertainty", "--out", str(tmp_path / "dec")]) == 0
    text = capsys.readouterr().out
    assert "fitting the uncertainty calibration on" in text and f"dev tiles of {sample_dataset}" in text
    fitted = stored_calibration(moved_checkpoint, CONV_MODE, CONV_TTA)
    assert sample_dataset in fitted.fitted_on
    assert fitted.temperature == stored_calibration(checkpoint, CONV_MODE, CONV_TTA).temperature


def test_the_calibration_is_kept_per_decode_tta(run):
    """8 views mix 8 distributions: decode_tta gets its own temperature (--hparams decode_tta=...
    reused the other one)."""
    checkpoint = checkpoints.find_checkpoint(run)
    views = stored_calibration(checkpoint, CONV_MODE, CONV_TTA)
    logged: list[str] = []
    dec = decoder(run, tta=not CONV_TTA)
    try:
        other_views = run_calibration(dec, run_hparams(run), PROBLEM, checkpoint, CONV_MODE, log=logged.append)
        assert logged and stored_calibration(checkpoint, CONV_MODE, not CONV_TTA) == other_views
        assert run_calibration(dec, run_hparams(run), PROBLEM, checkpoint, CONV_MODE, log=logged.append) == other_views
    finally:
        dec.close()
    assert len(logged) == 1 and stored_calibration(checkpoint, CONV_MODE, CONV_TTA) == views


def test_another_model_of_the_same_checkpoint_name_is_fitted_anew(run, sample_dataset, tmp_path):
    """A calibration file left in an output folder is not applied to a new run trained there to
    the same step: the entry names a hash of the checkpoint it was fitted for."""
    checkpoint = checkpoints.find_checkpoint(run)
    assert stored_calibration(checkpoint, CONV_MODE, CONV_TTA) is not None
    other = tmp_path / "other"
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, HPARAMS)
    hp.add_hparam("data_dir", sample_dataset)
    tiny_training.train_checkpoint(other, hp, steps=30, batch_size=4, seed=7, model_name=CONV)
    other_checkpoint = checkpoints.find_checkpoint(other)
    assert os.path.basename(other_checkpoint) == os.path.basename(checkpoint)
    shutil.copy(Path(run) / CALIBRATION_NAME, other / CALIBRATION_NAME)  # left in the folder
    assert stored_calibration(other_checkpoint, CONV_MODE, CONV_TTA) is None


def test_the_fast_sets_architecture_takes_the_head_too(tmp_path):
    """upsample=input_res (everything at the input resolution) shares its features with the head."""
    hp = checkpoints.load_hparams("img2img_conv_sr_fast", PROBLEM, "probabilistic=True")
    tiny_training.train_checkpoint(tmp_path, hp, steps=2, batch_size=2, model_name=CONV)
    dec = OnePassDecoder(checkpoints.load_hparams("img2img_conv_sr_fast", PROBLEM, "probabilistic=True", str(tmp_path)),
                         checkpoints.find_checkpoint(tmp_path))
    try:
        inputs, _, _ = evaluate_cmd.cut_pairs([HELD_OUT], 32, 4, 3, 2, 0)
        mean, sd = dec.predict_uncertain(inputs)
        np.testing.assert_array_equal(np.clip(np.rint(mean), 0, 255), dec.decode(inputs))
    finally:
        dec.close()
    assert sd.shape == (2, 32, 32, 3) and sd.min() > 0
