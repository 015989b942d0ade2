"""`allen-sr train --init_from MODEL`: fine-tuning starts from exactly the shipped model (its
pixels, its weights), a rerun continues from the run's own checkpoint, and a model that does not
fit is refused in one line. Real `allen-sr train` subprocesses on the sample images' dataset; the
learning rate is 0 where the test compares with the shipped model, so the weights stay as loaded."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SAMPLE_IMAGES
from allen_sr import pretrained
from allen_sr.api import Upscaler
from allen_sr.data.images import load_image
from allen_sr.data.tiles import area_downsample

ALLEN_SR = os.path.join(os.path.dirname(sys.executable), "allen-sr")
PROBLEM = "img2img_local_dim8to32"


def train(data_dir, output_dir, *flags):
    return subprocess.run([ALLEN_SR, "train", f"--problem={PROBLEM}", f"--data_dir={data_dir}",
                           f"--output_dir={output_dir}", "--eval_steps=1", *flags],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def small_input():
    image = load_image(os.path.join(SAMPLE_IMAGES, "other_skimage_ihc_colon_DAB.png"))[:96, :128]
    return area_downsample(image, 4)


def test_fine_tuning_a_shipped_conv_model_starts_from_its_pixels_and_resumes_its_own_run(
        sample_dataset, tmp_path, small_input):
    run = tmp_path / "run"
    first = ok(train(sample_dataset, run, "--init_from", "conv-cpu", "--model=img2img_conv_sr",
                     "--hparams_set=img2img_conv_sr_cpu", "--hparams=learning_rate_constant=0.0",
                     "--train_steps=1"))
    assert "starting from conv-cpu (img2img_conv_sr, img2img_conv_sr_cpu, 16000 steps)" in first.stdout
    assert "warm start: 34 variables from" in first.stderr
    with Upscaler.open(str(run)) as tuned, Upscaler.open("conv-cpu") as shipped:
        difference = np.abs(tuned.predict(small_input).astype(int) - shipped.predict(small_input).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01

    again = ok(train(sample_dataset, run, "--init_from", "conv-cpu", "--model=img2img_conv_sr",
                     "--hparams_set=img2img_conv_sr_cpu", "--train_steps=2"))
    assert "starting from" not in again.stdout and "warm start:" not in again.stderr  # its own checkpoint
    assert os.path.exists(run / "model.ckpt-2.index")


@pytest.mark.slow
def test_fine_tuning_the_shipped_image_transformer_loads_every_variable(sample_dataset, tmp_path):
    """Its input statistics too (non-trainable): training starts from exactly the shipped model."""
    import tensorflow as tf

    run = tmp_path / "run"
    ok(train(sample_dataset, run, "--init_from", "transformer-tiny", "--model=img2img_transformer_sr",
             "--hparams_set=img2img_allen_cpu_tiny", "--hparams=learning_rate_constant=0.0", "--train_steps=1",
             "--schedule=train"))
    reader = tf.train.load_checkpoint(str(run / "model.ckpt-1"))
    with np.load(pretrained.find("transformer-tiny").folder / "weights.npz") as shipped:
        assert len(shipped.files) > 70
        for name in shipped.files:
            assert np.array_equal(reader.get_tensor(name), shipped[name]), name


@pytest.mark.parametrize("flags, message", [
    (["--init_from", "conv-cpu", "--model=img2img_transformer_sr", "--hparams_set=img2img_allen_cpu_tiny"],
     "--init_from conv-cpu is an img2img_conv_sr model and this run trains img2img_transformer_sr: "
     "pass --model=img2img_conv_sr --hparams_set=img2img_conv_sr_cpu"),
    (["--init_from", "no-such-model", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu"],
     "no model 'no-such-model': not a shipped model"),
    (["--init_from", "conv-cpu", "--warm_start_from=/tmp", "--model=img2img_conv_sr",
      "--hparams_set=img2img_conv_sr_cpu"], "--init_from and --warm_start_from both say where training starts"),
    (["--init_from=conv-cpu", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast"],
     "--init_from conv-cpu was trained with img2img_conv_sr_cpu; pass --hparams_set=img2img_conv_sr_cpu"),
    (["--init_from=conv-fast", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast"],
     "--init_from conv-fast cannot be fine-tuned: its export (img2img_conv_sr, img2img_conv_sr_fast) folded"),
], ids=["another-model", "unknown", "two-starts", "another-architecture", "folded-export"])
def test_a_model_that_does_not_fit_is_refused_in_one_line(sample_dataset, tmp_path, flags, message):
    proc = train(sample_dataset, tmp_path / "run", "--train_steps=1", *flags)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("allen-sr train: error: ")]
    assert len(error) == 1 and message in error[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").glob("model.ckpt-*"))  # no training step was taken


def test_init_from_a_folder_under_a_quoted_home_and_from_a_flagfile(sample_dataset, tmp_path):
    """--init_from '~/model' (quoted, so no shell expands it) was looked up as a model named
    '~/model'; an --init_from in a --flagfile was not seen at all and the run trained from scratch."""
    from allen_sr import pretrained

    home = tmp_path / "home"
    home.mkdir()
    (home / "model").symlink_to(pretrained.find("conv-cpu").folder)
    wrong_set = ["--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_gpu", "--train_steps=1"]
    flagfile = tmp_path / "fine_tune.flags"
    flagfile.write_text("--init_from=~/model\n")
    for given in (["--init_from", "~/model"], [f"--flagfile={flagfile}"]):
        proc = subprocess.run([ALLEN_SR, "train", f"--problem={PROBLEM}", f"--data_dir={sample_dataset}",
                               f"--output_dir={tmp_path / 'run'}", *given, *wrong_set], capture_output=True,
                              text=True, timeout=600, cwd=REPO, env={**os.environ, "HOME": str(home)})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"--init_from {home / 'model'} was trained with img2img_conv_sr_cpu" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


START = ["--problem=img2img_local_dim8to32", "--model=img2img_conv_sr", "--train_steps=1"]


@pytest.mark.parametrize("source, flags, message", [
    ("conv-fast", ["--hparams_set=img2img_conv_sr_fast"],
     "--init_from conv-fast cannot be fine-tuned: its export (img2img_conv_sr, img2img_conv_sr_fast) folded its "
     "upsampling layer into other constants"),
    ("conv-fast", ["--hparams_set=img2img_conv_sr_cpu"],  # not advice to pass its set, then this refusal
     "--init_from conv-fast cannot be fine-tuned: its export (img2img_conv_sr, img2img_conv_sr_fast) folded its "
     "upsampling layer into other constants"),
    ("conv-cpu", ["--hparams_set=img2img_conv_sr_gpu"],
     "--init_from conv-cpu was trained with img2img_conv_sr_cpu; pass --hparams_set=img2img_conv_sr_cpu, "
     "not img2img_conv_sr_gpu"),
    ("conv-cpu", ["--hparams_set=img2img_conv_sr_cpu", "--hparams=probabilistic=True"],
     "--init_from conv-cpu has no uncertainty head (hparam probabilistic)"),
], ids=["folded-export", "folded-export-another-set", "another-set", "no-head"])
def test_an_export_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, source, flags, message):
    """Said by start_from, before the graph is built (it took a minute) and before the run folder
    gets its warm_start checkpoint."""
    from allen_sr.commands.train import start_from
    from allen_sr.errors import InvalidInputError

    run = tmp_path / "run"
    with pytest.raises(InvalidInputError) as caught:
        start_from(source, [*START, f"--output_dir={run}", *flags])
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not run.exists()


@pytest.mark.parametrize("case, message", [
    ("output-dir-is-a-file", "is a file, not a folder: pass a folder"),
    ("no-data", "no train examples for img2img_local_dim8to32 in --data_dir="),
    ("unknown-hparam", "--hparams nosuch=1: Unknown hyperparameter"),
])
def test_a_command_train_refuses_leaves_no_checkpoint_of_the_model(sample_dataset, tmp_path, case, message):
    """--init_from wrote OUTPUT_DIR/warm_start/model.ckpt before train's own checks ran: a file as
    --output_dir was a FailedPreconditionError traceback, and a command refused for its data or
    --hparams had already written the model's checkpoint."""
    from allen_sr.commands.train import start_from
    from allen_sr.errors import InvalidInputError

    run, data = tmp_path / "run", sample_dataset
    flags = ["--hparams_set=img2img_conv_sr_cpu"]
    if case == "output-dir-is-a-file":
        run.write_text("not a folder\n")
    elif case == "no-data":
        data = tmp_path / "nodata"
    else:
        flags.append("--hparams=nosuch=1")
    with pytest.raises(InvalidInputError) as caught:
        start_from("conv-cpu", [*START, f"--output_dir={run}", f"--data_dir={data}", *flags])
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if case == "output-dir-is-a-file" else [])


def test_a_run_folder_or_model_that_does_not_fit_is_refused_naming_what_it_was_trained_with(sample_dataset, tmp_path):
    """A run folder trained with another hparams set was refused only once the graph was built, by
    variable shapes, without naming the set its flags.txt records; a 3-channel model on a 1-channel
    problem blamed the hparams and named OUTPUT_DIR/warm_start/model.ckpt instead of the model."""
    from allen_sr.commands.train import start_from
    from allen_sr.errors import InvalidInputError
    from allen_sr.export.warm_start import write_checkpoint

    trained = tmp_path / "trained"
    write_checkpoint({"img2img_conv_sr/body/conv_in/kernel": np.zeros((3, 3, 3, 8), np.float32)}, trained)
    (trained / "flags.txt").write_text("--model=img2img_conv_sr\n--hparams_set=img2img_conv_sr_fast\n"
                                       "--problem=img2img_local_dim8to32\n")
    run = tmp_path / "run"
    common = [*START, f"--output_dir={run}", f"--data_dir={sample_dataset}"]
    with pytest.raises(InvalidInputError) as caught:
        start_from(str(trained), [*common, "--hparams_set=img2img_conv_sr_cpu"])
    assert (f"--init_from {trained} was trained with img2img_conv_sr_fast; pass --hparams_set=img2img_conv_sr_fast, "
            "not img2img_conv_sr_cpu") in str(caught.value)
    grey = [a.replace(PROBLEM, "img2img_allen_brain_dim8to32_grey") for a in common]
    for source, hparams_set in ((str(trained), "img2img_conv_sr_fast"), ("conv-cpu", "img2img_conv_sr_cpu")):
        with pytest.raises(InvalidInputError) as caught:
            start_from(source, [*grey, f"--hparams_set={hparams_set}"])
        assert (f"--init_from {source} was trained on img2img_local_dim8to32 (8x8 -> 32x32 px, 3 channel(s)) and "
                "--problem=img2img_allen_brain_dim8to32_grey has 8x8 -> 32x32 px, 1 channel(s)") in str(caught.value)
    assert not run.exists()
    started = start_from(str(trained), [*common, "--hparams_set=img2img_conv_sr_fast"])
    assert started[-1] == f"--warm_start_from={trained}"


def test_fine_tuning_a_probabilistic_model_keeps_training_its_uncertainty_head(sample_dataset, tmp_path, capsys):
    """conv-probabilistic's scale head was dropped without a word when --hparams did not say
    probabilistic=True; an explicit probabilistic=False still leaves it out."""
    from allen_sr.commands.train import start_from

    common = [*START, "--hparams_set=img2img_conv_sr_cpu", f"--data_dir={sample_dataset}"]
    argv = start_from("conv-probabilistic",
                      [*common, f"--output_dir={tmp_path / 'a'}", "--hparams=cosine_decay_steps=5"])
    assert [a for a in argv if a.startswith("--hparams=")] == ["--hparams=cosine_decay_steps=5,probabilistic=True"]
    assert "conv-probabilistic has an uncertainty head: this run trains it too" in capsys.readouterr().out
    argv = start_from("conv-probabilistic", [*common, f"--output_dir={tmp_path / 'b'}"])
    assert "--hparams=probabilistic=True" in argv and "uncertainty head" in capsys.readouterr().out
    argv = start_from("conv-probabilistic",
                      [*common, f"--output_dir={tmp_path / 'c'}", "--hparams=probabilistic=False"])
    assert [a for a in argv if a.startswith("--hparams=")] == ["--hparams=probabilistic=False"]
    assert "uncertainty head" not in capsys.readouterr().out


def test_fine_tuning_the_image_transformer_keeps_its_decode_mode(sample_dataset, tmp_path, capsys):
    """transformer-tiny decodes with mean_bicubic (its hparam decode_mode): a run started from it
    decoded with its hparams set's default (mean) when --hparams did not say; a mode given stays."""
    from allen_sr.commands.train import start_from

    common = ["--problem=img2img_local_dim8to32", "--model=img2img_transformer_sr", "--train_steps=1",
              "--hparams_set=img2img_allen_cpu_tiny", f"--data_dir={sample_dataset}"]
    argv = start_from("transformer-tiny", [*common, f"--output_dir={tmp_path / 'a'}", "--hparams=batch_size=2"])
    assert [a for a in argv if a.startswith("--hparams=")] == ["--hparams=batch_size=2,decode_mode=mean_bicubic"]
    assert "transformer-tiny decodes with mean_bicubic: so does this run" in capsys.readouterr().out
    argv = start_from("transformer-tiny", [*common, f"--output_dir={tmp_path / 'b'}", "--hparams=decode_mode=greedy"])
    assert [a for a in argv if a.startswith("--hparams=")] == ["--hparams=decode_mode=greedy"]
    assert "decodes with" not in capsys.readouterr().out
    argv = start_from("conv-cpu", [*START, "--hparams_set=img2img_conv_sr_cpu", f"--data_dir={sample_dataset}",
                                   f"--output_dir={tmp_path / 'c'}"])
    assert not [a for a in argv if a.startswith("--hparams=")]  # a conv model has no decode_mode hparam


def test_each_process_of_a_cluster_writes_its_own_copy_of_the_model(monkeypatch):
    """Every task builds the model and reads the checkpoint: no two write the same files."""
    from allen_sr.commands.train import warm_start_folder

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert warm_start_folder("/runs/a") == "/runs/a/warm_start"
    cluster = {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert warm_start_folder("/runs/a") == "/runs/a/warm_start/worker-1"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert warm_start_folder("/runs/a") == "/runs/a/warm_start/chief-0"
