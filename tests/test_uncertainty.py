"""Uncertainty maps of the Image Transformer: the recorded distributions are the decoder's own
(checked against teacher-forced logits of the real checkpoint), the fast, reference and exported
decoders agree, coverage is counted without the inclusive-interval inflation, calibration is
fitted on the run's dev split only and kept, and decode/evaluate/upscale write what they promise."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from allen_sr.api import Upscaler
from allen_sr.commands import decode as decode_cmd
from allen_sr.commands import evaluate as evaluate_cmd
from allen_sr.commands import upscale as upscale_cmd
from allen_sr.commands.export import export
from allen_sr.decoding import checkpoints, support
from allen_sr.decoding.calibration import CALIBRATION_NAME, stored_calibration
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.modes import VOCAB
from allen_sr.decoding.reference import NaiveDecoder
from allen_sr.decoding.uncertainty import Recorder, coverage, rmse_ratio_surest_half, softmax
from allen_sr.export.runtime import open_exported
from allen_sr.testing import tiny_training
from conftest import SAMPLE_IMAGES

PROBLEM = "img2img_local_dim8to32"
IT_SET = "img2img_allen_cpu_tiny"
OVERRIDES = ("hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,num_decoder_layers=2,"
             "learning_rate_warmup_steps=1,learning_rate_constant=0.016")
HELD_OUT = os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_dataset) -> str:
    out = tmp_path_factory.mktemp("it_run")
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, OVERRIDES)
    hp.add_hparam("data_dir", sample_dataset)
    tiny_training.train_checkpoint(out, hp, steps=3, batch_size=2, seed=1, model_name=support.SKIP_MODEL)
    return str(out)


def held_out_pairs(n: int):
    inputs, targets, _ = evaluate_cmd.cut_pairs([HELD_OUT], 32, 4, 3, n, 0)
    return inputs, targets


def model_flags(run: str) -> list[str]:
    return ["--problem", PROBLEM, "--hparams_set", IT_SET, "--output_dir", run, "--no_progress"]


# --------------------------------------------------------------------------- counting


def test_coverage_counts_discrete_levels_without_inflation():
    """A sure forecast of the right level covers the truth at exactly the nominal rate (an
    inclusive interval would say 100%); truths drawn from the forecast itself are covered at the
    nominal rate; a forecast twice too wide over-covers."""
    rng = np.random.default_rng(0)
    ones = np.ones(1000)
    for level in (0.1, 0.5, 0.9):
        assert coverage(0 * ones, ones, level) == pytest.approx(level)
    logits = rng.normal(0, 3, (4000, VOCAB))
    p = softmax(logits, 1.0)
    truth = np.array([rng.choice(VOCAB, p=row) for row in p])
    cdf = np.cumsum(p, axis=1)
    hi = cdf[np.arange(len(truth)), truth]
    lo = hi - p[np.arange(len(truth)), truth]
    for level in (0.5, 0.9):
        assert abs(coverage(lo, hi, level) - level) < 0.02
    narrow = np.full(4000, 0.5) + rng.normal(0, 0.1, 4000)  # PIT bunched in the middle: too wide
    assert coverage(narrow, narrow, 0.5) > 0.9


def test_surest_half_ratio_is_one_for_a_useless_map_and_the_oracle_for_the_error():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    pred = np.clip(target + rng.normal(0, 1, target.shape) * rng.uniform(1, 30, (4, 16, 16, 1)), 0, 255)
    squared_error = ((pred - target) ** 2).mean(axis=-1)
    surest, oracle = rmse_ratio_surest_half(squared_error, pred, target)
    assert surest == pytest.approx(oracle)
    random_map, _ = rmse_ratio_surest_half(rng.random((4, 16, 16)), pred, target)
    assert 0.85 < random_map < 1.15 and oracle < 0.6


def test_a_small_maps_heat_map_holds_its_whole_caption_and_says_what_the_bar_top_is(tmp_path):
    """The caption of a 32 px map was cut at the picture's edge, and the bar's top (the 99th
    percentile, higher values clipped to its colour) was an unlabelled number."""
    from allen_sr.evaluation.uncertainty_pictures import heat_map_with_bar

    values = np.arange(32 * 32, dtype=np.float32).reshape(32, 32) / 10
    path = heat_map_with_bar(values, tmp_path / "map.png", label="uncertainty: sd in grey levels (temperature 0.72)")
    picture = np.asarray(Image.open(path).convert("L"))
    caption = picture[-16:]  # the caption's row under the map and its bar
    inked = np.flatnonzero((caption < 128).any(axis=0))
    assert inked.size and inked[-1] < picture.shape[1] - 4  # the text ends inside the picture
    assert inked[-1] > 32 + 110  # ... and is longer than the old width: "; bar top: 99th percentile"
    fixed = np.asarray(Image.open(heat_map_with_bar(values, tmp_path / "fixed.png", vmax=200.0)).convert("L"))
    assert fixed.shape[1] < picture.shape[1]  # a given scale is not a percentile: no note


# --------------------------------------------------------------------------- the decoders


def test_recorded_distributions_are_the_ones_decoded_from(run):
    """The sd the recorder keeps equals the sd of softmax(teacher-forced logits) on the decoded
    canvas: the distribution each value was chosen from, given the model's own outputs."""
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "", run)
    fast = FastDecoder.from_checkpoint(hp, run, support.SKIP_MODEL)
    inputs, targets = held_out_pairs(3)
    recorder = Recorder((1.0, 0.5), targets)
    decoded = fast.decode(inputs, mode="mean", recorder=recorder)
    logits = fast.logits(inputs, decoded)
    for i, temperature in enumerate((1.0, 0.5)):
        p = softmax(logits, temperature)
        mean = p @ np.arange(VOCAB)
        sd = np.sqrt(np.maximum(p @ np.arange(VOCAB) ** 2 - mean ** 2, 0))
        np.testing.assert_allclose(recorder.shaped("std")[i], sd, atol=1e-3)
        cdf = np.cumsum(p, axis=-1)
        hi = np.take_along_axis(cdf, targets[..., None].astype(np.int64), -1)[..., 0]
        np.testing.assert_allclose(recorder.shaped("pit_hi")[i], hi, atol=1e-4)
    np.testing.assert_array_equal(decoded, fast.decode(inputs, mode="mean"))  # values unchanged


def test_fast_reference_and_exported_decoders_give_the_same_distributions(run, tmp_path):
    """The first sub-pixels (the reference decoder runs the whole t2t graph per step) of the fast,
    reference and exported decoders: the same sd at the same temperature."""
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "", run)
    inputs, _ = held_out_pairs(2)
    steps = 96
    sds = {}
    naive = NaiveDecoder(hp, checkpoints.find_checkpoint(run), model_name=support.SKIP_MODEL)
    try:
        for name, decoder in (("fast", FastDecoder.from_checkpoint(hp, run, support.SKIP_MODEL)), ("naive", naive)):
            recorder = Recorder((0.8,))
            decoder.decode(inputs, mode="mean", recorder=recorder, max_steps=steps)
            sds[name] = recorder.std[0]
    finally:
        naive.close()
    export(PROBLEM, IT_SET, run, tmp_path / "export")
    recorder = Recorder((0.8,))
    open_exported(tmp_path / "export").decoder.decode(inputs, mode="mean", recorder=recorder)
    sds["exported"] = recorder.std[0]
    order = FastDecoder.from_checkpoint(hp, run, support.SKIP_MODEL).order.positions[:steps]
    assert sds["fast"][:, order].std() > 0.01  # a real map, not a constant
    np.testing.assert_allclose(sds["naive"][:, order], sds["fast"][:, order], atol=1e-2)
    np.testing.assert_allclose(sds["exported"][:, order], sds["fast"][:, order], atol=1e-4)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["uncertainty"] == stored_calibration(checkpoints.find_checkpoint(run), "mean").as_dict()


def test_tta_mixture_of_eight_decodes(run):
    """With decode_tta the reported distribution is the mixture of the 8 decodes: its PIT interval
    is the mean of theirs, its variance the mean variance plus the spread of the means."""
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "decode_tta=True", run)
    tta = FastDecoder.from_checkpoint(hp, run, support.SKIP_MODEL)
    inputs, targets = held_out_pairs(2)
    recorder = Recorder((1.0,), targets)
    tta.decode(inputs, mode="mean", recorder=recorder)
    assert np.all(recorder.pit_hi >= recorder.pit_lo) and np.all(recorder.pit_hi <= 1 + 1e-5)
    single = Recorder((1.0,), targets)
    FastDecoder.from_checkpoint(checkpoints.load_hparams(IT_SET, PROBLEM, "", run), run,
                                support.SKIP_MODEL).decode(inputs, mode="mean", recorder=single)
    # the identity transform is one of the 8: the mixture's sd is at least its share of spread
    assert recorder.std.mean() >= 0.5 * single.std.mean()


# --------------------------------------------------------------------------- calibration and commands


def test_evaluate_calibrates_on_the_dev_split_once_and_scores_the_maps(run, sample_dataset, tmp_path, capsys):
    checkpoint = checkpoints.find_checkpoint(run)
    calibration_file = os.path.join(run, CALIBRATION_NAME)
    if os.path.exists(calibration_file):
        os.remove(calibration_file)
    out = tmp_path / "eval"
    assert evaluate_cmd.evaluate_main(model_flags(run) + ["--images", HELD_OUT, "--max_tiles", "6",
                                                          "--uncertainty", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fitting the uncertainty calibration on" in text and sample_dataset in text
    section = json.loads((out / "metrics.json").read_text())["uncertainty"]
    stored = stored_calibration(checkpoint, "mean")  # the set's decode_mode
    assert section["calibration"] == stored.as_dict() and stored.mode == "mean"
    assert "dev split" in stored.fitted_on and sample_dataset in stored.fitted_on and stored.tiles > 0
    for key in ("coverage_50", "coverage_90", "rmse_ratio_surest_half", "rmse_ratio_surest_half_oracle"):
        assert 0 <= section[key] <= 1
    assert section["coverage_50"] < section["coverage_90"]
    assert "randomised-PIT" in section["counting"]
    assert (out / "reliability.png").exists() and (out / "uncertainty_grid.png").exists()
    # fitted once: a second evaluation reads it back
    assert evaluate_cmd.evaluate_main(model_flags(run) + ["--images", HELD_OUT, "--max_tiles", "6",
                                                          "--uncertainty", "--out", str(tmp_path / "again")]) == 0
    assert "fitting" not in capsys.readouterr().out
    # the images evaluated never decide the temperature
    entry = json.loads(open(calibration_file).read())[os.path.basename(checkpoint)]["mean"]
    assert len(entry["reliability_calibrated"]) == len(entry["reliability_uncalibrated"]) == 10
    # another mode conditions the distributions on other values: fitted for it, kept beside
    assert evaluate_cmd.evaluate_main(model_flags(run) + ["--images", HELD_OUT, "--max_tiles", "6", "--mode",
                                                          "mean_bicubic", "--uncertainty", "--out",
                                                          str(tmp_path / "bicubic_context")]) == 0
    assert "fitting the uncertainty calibration on" in capsys.readouterr().out
    section = json.loads((tmp_path / "bicubic_context" / "metrics.json").read_text())["uncertainty"]
    assert section["calibration"] == stored_calibration(checkpoint, "mean_bicubic").as_dict()
    assert section["calibration"]["mode"] == "mean_bicubic" and stored_calibration(checkpoint, "mean") == stored


def test_decode_uncertainty_writes_a_map_per_example(run, sample_dataset, tmp_path, capsys):
    out = tmp_path / "dec"
    assert decode_cmd.decode_main(model_flags(run) + ["--data_dir", sample_dataset, "--num_examples", "2",
                                                      "--uncertainty", "--out", str(out)]) == 0
    assert "coverage_50" in capsys.readouterr().out
    assert (out / "uncertainty_000.png").exists() and (out / "uncertainty_001.png").exists()
    assert "uncertainty" in json.loads((out / "metrics.json").read_text())


def test_upscale_writes_the_map_beside_the_output_equal_to_the_api(run, tmp_path, capsys):
    import tifffile

    src = tmp_path / "in.png"
    Image.fromarray(np.asarray(Image.open(HELD_OUT).convert("RGB"))[300:320, 500:524]).save(src)
    out = tmp_path / "out.ome.tif"
    assert upscale_cmd.upscale_main(model_flags(run) + ["--image", str(src), "--out", str(out), "--uncertainty",
                                                        "--preview_size", "16"]) == 0
    capsys.readouterr()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["in.png", "out.compare.png", "out.ome.tif", "out.uncertainty.png", "out.uncertainty.tif"]
    sd = tifffile.imread(tmp_path / "out.uncertainty.tif")
    assert sd.dtype == np.float32 and sd.shape == (80, 96)
    with Upscaler.open(run, problem=PROBLEM, hparams_set=IT_SET) as up:
        image, api_sd = up.predict(np.asarray(Image.open(src)), uncertainty=True)
    np.testing.assert_array_equal(image, tifffile.imread(out))
    np.testing.assert_allclose(api_sd, sd, atol=1 / 256)
    assert Image.open(tmp_path / "out.compare.png").size[0] > 4 * 16 * 3  # a fourth panel


def test_the_conv_model_says_it_has_no_distribution(tmp_path, capsys):
    out = tmp_path / "o.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "i.png")
    assert upscale_cmd.upscale_main(["--image", str(tmp_path / "i.png"), "--out", str(out), "--pretrained",
                                     "conv-fast", "--uncertainty", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "not a distribution" in err and len(err.strip().splitlines()) == 1
    assert "--pretrained conv-probabilistic" in err and "transformer-tiny" in err  # maps without training
    assert not out.exists()


def test_a_run_whose_dev_split_is_gone_gets_the_models_own_distributions(tmp_path):
    """Calibration never blocks an export or an evaluation: without readable dev records the
    temperature is 1 and says why."""
    from allen_sr.decoding.calibration import run_calibration

    hp = checkpoints.load_hparams(IT_SET, PROBLEM, OVERRIDES)
    hp.add_hparam("data_dir", str(tmp_path))  # exists, holds datagen's statistics but no records
    (tmp_path / f"{PROBLEM}-stats.json").write_text(json.dumps({"mean": [200.0, 150.0, 170.0],
                                                                 "std": [30.0, 50.0, 40.0]}))
    tiny_training.train_checkpoint(tmp_path / "run", hp, steps=1, batch_size=2, model_name=support.SKIP_MODEL)
    checkpoint = checkpoints.find_checkpoint(tmp_path / "run")
    calibration = run_calibration(FastDecoder.from_checkpoint(hp, checkpoint, support.SKIP_MODEL), hp,
                                  PROBLEM, checkpoint, "mean")
    assert calibration.temperature == 1.0 and f"no dev split of {PROBLEM}" in calibration.fitted_on
    assert stored_calibration(checkpoint, "mean") is None
