"""The stock tensor2tensor tools and `allen-sr datagen/train` run our problems and hparams for real."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

BIN = os.path.dirname(sys.executable)
PROBLEM = "img2img_local_dim8to32"


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, **kw)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_cli_help_lists_every_subcommand():
    out = run([os.path.join(BIN, "allen-sr"), "--help"]).stdout
    for name in ("download", "datagen", "train", "decode", "evaluate", "upscale", "plot", "launch", "demo"):
        assert f"  {name} " in out


def test_usr_dir_is_the_problems_folder():
    out = run([os.path.join(BIN, "allen-sr"), "usr_dir"]).stdout.strip()
    assert out == os.path.join(REPO, "problems")


@pytest.fixture(scope="module")
def stock_datagen(tmp_path_factory):
    from conftest import save_tissue_images

    root = tmp_path_factory.mktemp("t2t")
    images = save_tissue_images(root / "images")
    data_dir = root / "data"
    run([os.path.join(BIN, "t2t-datagen"), "--t2t_usr_dir=problems", f"--problem={PROBLEM}",
         f"--data_dir={data_dir}", f"--tmp_dir={images}"])
    return root


def test_stock_t2t_datagen_with_our_usr_dir(stock_datagen):
    names = os.listdir(stock_datagen / "data")
    assert f"{PROBLEM}-train-00000-of-00001" in names and f"{PROBLEM}-dev-00000-of-00001" in names
    assert f"{PROBLEM}-stats.json" in names


@pytest.mark.slow
def test_stock_t2t_trainer_then_allen_sr_train_resumes(stock_datagen):
    data_dir, out = stock_datagen / "data", stock_datagen / "train"
    common = [f"--problem={PROBLEM}", "--model=img2img_transformer", "--hparams_set=img2img_allen_cpu_tiny",
              f"--data_dir={data_dir}", f"--output_dir={out}", "--schedule=train",
              "--hparams=hidden_size=32,filter_size=32,batch_size=2"]
    run([os.path.join(BIN, "t2t-trainer"), "--t2t_usr_dir=problems", "--worker_gpu=0", "--train_steps=3"] + common)
    assert os.path.exists(out / "model.ckpt-3.index")
    # allen-sr train needs no --t2t_usr_dir, adds --worker_gpu=0 on this CPU-only host, and
    # continues from the checkpoint t2t-trainer wrote.
    proc = run([os.path.join(BIN, "allen-sr"), "train", "--train_steps=5"] + common)
    assert os.path.exists(out / "model.ckpt-5.index")
    assert "Restoring parameters from" in proc.stderr and "model.ckpt-3" in proc.stderr
