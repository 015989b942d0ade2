"""`allen-sr export` of the runs users have: one trained before options existed, one whose dataset
has moved, one named with the wrong problem or with a damaged checkpoint list. Real tiny checkpoints
and real exports, as in test_export.py."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from allen_sr.commands.decode import decode_main
from allen_sr.commands.export import export, export_main
from allen_sr.decoding import checkpoints, support
from allen_sr.decoding.fast import FastDecoder
from allen_sr.errors import InvalidInputError, MissingInputError
from allen_sr.export.runtime import open_exported
from allen_sr.testing import tiny_training

PROBLEM = "img2img_local_dim8to32"  # the problem of conftest's sample_dataset
IT_SET = "img2img_allen_cpu_tiny"
# A run trained before 2026-12-01: neither the bicubic prior nor the input_patch head.
TRAINED = ("hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,num_decoder_layers=2,"
           "learning_rate_warmup_steps=1,normalize_inputs=True")
OLD = "bicubic_prior=False,input_patch=0"
# What the hparams.json of such a run does not name: the options added on 2026-12-01 and since.
LATER = ("bicubic_prior", "prior_sigma", "input_patch", "upscale_factor", "free_logit_scale", "context_bicubic",
         "ev_loss_weight", "self_condition", "degradation", "decode_tta")


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("old") / "run"
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, f"{TRAINED},{OLD}")
    tiny_training.train_checkpoint(run, hp, steps=3, batch_size=2, seed=1, model_name=support.SKIP_MODEL)
    recorded = json.loads((run / "hparams.json").read_text())
    (run / "hparams.json").write_text(json.dumps({k: v for k, v in recorded.items() if k not in LATER}))
    (run / "flags.txt").write_text(f"--problem={PROBLEM}\n--hparams_set={IT_SET}\n--hparams={TRAINED}\n"
                                   f"--model={support.SKIP_MODEL}\n")
    return str(run)


def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)


def export_quietly(*args, **kwargs) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = export(*args, **kwargs)
    return config, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_an_image_transformer_run_or_export_from_before_its_prior_decodes_as_it_was_trained(old_run, tmp_path):
    """Options a set turned on later (bicubic_prior, input_patch) are off for a run or an export that
    does not record them: they decode what the run trained, not a KeyError or an export refused."""
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "", old_run)
    assert hp.bicubic_prior is False and hp.input_patch == 0
    trained = checkpoints.load_hparams(IT_SET, PROBLEM, f"{TRAINED},{OLD}")
    weights = checkpoints.read_model_weights(old_run, support.SKIP_MODEL)
    expected = FastDecoder(trained, weights, support.SKIP_MODEL).decode(tiles(), mode="greedy")
    assert (FastDecoder.from_checkpoint(hp, old_run, support.SKIP_MODEL).decode(tiles(), mode="greedy")
            == expected).all()
    out = tmp_path / "export"
    config, _ = export_quietly(PROBLEM, IT_SET, old_run, out)
    assert config["hparams"]["bicubic_prior"] is False and config["hparams"]["input_patch"] == 0
    assert (open_exported(out).decoder.decode(tiles(), mode="greedy") == expected).all()
    older = tmp_path / "older"  # exported by an allen-sr of before the options: its hparams lack them
    shutil.copytree(out, older)
    config["hparams"] = {k: v for k, v in config["hparams"].items() if k not in LATER}
    (older / "config.json").write_text(json.dumps(config))
    assert (open_exported(older).decoder.decode(tiles(), mode="greedy") == expected).all()


def test_hparams_that_describe_another_model_than_the_checkpoint_are_refused_naming_it(old_run, tmp_path, capsys):
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "bicubic_prior=True", old_run)
    with pytest.raises(InvalidInputError, match=r"does not hold the model these hparams describe \(variable "
                                                r".*bicubic_prior/kernel not in the checkpoint\)"):
        FastDecoder.from_checkpoint(hp, old_run, support.SKIP_MODEL)
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "normalize_inputs=False", old_run)
    with pytest.raises(InvalidInputError, match=r"\(4 checkpoint variable\(s\) unused .*input_normalization/mean"):
        FastDecoder.from_checkpoint(hp, old_run, support.SKIP_MODEL)
    # A head of radius 2 ((2r+1)^2 taps of 3 channels) read as radius 1: NumPy's einsum failed when decoding.
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "input_patch=1", old_run)
    weights = checkpoints.read_model_weights(old_run, support.SKIP_MODEL)
    weights[f"{support.SKIP_MODEL}/body/input_patch/skip"] = np.zeros((4, 4, 3, 75, 32), np.float32)
    with pytest.raises(InvalidInputError, match="trained with input_patch=2, not input_patch=1"):
        FastDecoder.matching(hp, weights, support.SKIP_MODEL, "checkpoint X")
    out = tmp_path / "out"
    assert export_main(["--output_dir", old_run, "--out", str(out), "--hparams", "input_patch=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input_patch/skip not in the checkpoint" in err[0], err
    assert not out.exists()


def test_export_warns_of_an_uncalibrated_export_and_reads_a_moved_dataset(old_run, sample_dataset, tmp_path):
    """The run's data_dir has no dev split (its dataset moved): the export says so in one line, and
    --data_dir fits the calibration where the dataset is now. Stale temp folders of a killed export
    to the same folder are removed, a running one's kept."""
    out = tmp_path / "export"
    dead, running = (tmp_path / f".export.{pid}.0a1b2c3d.tmp" for pid in (999999999, os.getpid()))
    dead.mkdir()
    running.mkdir()
    (dead / "weights.npz").write_bytes(b"partial")
    with pytest.warns(UserWarning) as caught:
        assert export_main(["--output_dir", old_run, "--out", str(out), "--no_bioimageio"]) == 0
    said = [str(w.message) for w in caught if "uncalibrated" in str(w.message)]
    assert len(said) == 1 and "\n" not in said[0] and "export again with --data_dir" in said[0], said
    assert not dead.exists() and running.is_dir()
    config = json.loads((out / "config.json").read_text())
    assert config["uncertainty"]["temperature"] == 1.0 and "not fitted" in config["uncertainty"]["fitted_on"]
    assert config["global_step"] == 3 and config["hparams_overrides"] == TRAINED  # the run's, from flags.txt
    moved = tmp_path / "moved"
    config, said = export_quietly(PROBLEM, IT_SET, old_run, moved, data_dir=sample_dataset)
    assert sample_dataset in config["uncertainty"]["fitted_on"] and not [s for s in said if "uncalibrated" in s]
    with pytest.raises(MissingInputError, match="--data_dir .*nowhere: no such folder"):
        export(PROBLEM, IT_SET, old_run, tmp_path / "again", data_dir=str(tmp_path / "nowhere"))


def test_export_refuses_a_problem_the_run_was_not_trained_on(old_run, tmp_path, capsys):
    """Its bioimage.io metadata and config.json describe the problem: another one would be wrong."""
    out = tmp_path / "out"
    assert export_main(["--output_dir", old_run, "--problem", "img2img_allen_brain_dim8to32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was trained on --problem {PROBLEM}, not img2img_allen_brain_dim8to32" in err[0], err
    assert not out.exists()


def test_a_checkpoint_list_naming_missing_files_says_which_and_what_to_pass(old_run, sample_dataset, tmp_path,
                                                                          capsys):
    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-30"\n'
                                    'all_model_checkpoint_paths: "model.ckpt-3"\n'
                                    'all_model_checkpoint_paths: "model.ckpt-30"\n')
    with pytest.raises(MissingInputError) as caught:
        checkpoints.find_checkpoint(run)
    message = str(caught.value)
    assert "names model.ckpt-30, whose files are missing" in message, message
    assert f"pass --output_dir {run / 'model.ckpt-3'} " in message, message
    # Its data file cut short: decode said "IndexError: Read less bytes than requested" (exit 1).
    cut = max(run.glob("model.ckpt-3.data-*"), key=lambda p: p.stat().st_size)
    os.truncate(cut, 16)
    out = tmp_path / "decoded"
    assert decode_main(["--output_dir", str(run / "model.ckpt-3"), "--data_dir", sample_dataset, "--out", str(out),
                        "--num_examples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {run / 'model.ckpt-3'} is damaged (a file of it is cut short" in err[0], err
    assert err[0].endswith("copy the run again from where it was trained, or train it again") and not out.exists()
