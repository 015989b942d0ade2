"""`allen-sr demo` end to end on the shipped sample images, with a short training run."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """allen-sr installed the way `pip install .` does (a built wheel, not the checkout)."""
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "allen-sr"
    # A copy of the source, so the build leaves nothing in the checkout.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(source)],
                   check=True, capture_output=True, text=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import allen_sr; print(allen_sr.__file__)"], env=env,
                           cwd=str(site), check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site))  # not the checkout
    return env


@pytest.mark.slow
def test_demo_writes_predictions_metrics_and_loss(tmp_path, installed):
    """`allen-sr demo` from an installed copy, run outside the checkout, finds its sample images,
    and trains for its time budget (--train_minutes, as `make demo` does with its default)."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "allen_sr.cli", "demo", f"--out={out}", "--train_minutes=0.1", "--num_examples=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=installed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("predictions.png", "metrics.json", "loss.png"):
        assert str(out / name) in proc.stdout  # it says where its results are

    grid = Image.open(out / "predictions.png")
    assert grid.width > 4 * 32 and grid.height > 4 * 32  # 4 columns, 4 rows of enlarged tiles

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"] == 4 and "RGB" in metrics["protocol"]
    for method in ("bicubic", "model"):
        assert 5 < metrics["methods"][method]["psnr"] < 100
        assert -1 <= metrics["methods"][method]["ssim"] <= 1
    assert Image.open(out / "loss.png").size[0] > 200

    # The dataset came from the shipped sample images and holds only tissue tiles, split by image.
    info = json.loads((out / "data" / "img2img_local_dim8to32-info.json").read_text())
    images = info["summary"]["images"]
    assert images["dev"] and images["train"] and not set(images["dev"]) & set(images["train"])
    # The set's clock ended training at the 6-second budget, with a final checkpoint that decoded.
    assert "train_budget_seconds=6 reached; stopping" in (out / "train.log").read_text()
    assert json.loads((out / "train" / "hparams.json").read_text())["train_budget_seconds"] == 6
    step = int(re.search(r"model\.ckpt-(\d+)", metrics["protocol"]).group(1))
    assert step > 0 and os.path.exists(out / "train" / f"model.ckpt-{step}.index")

    # Run again with --train_steps: it trains on to that step (the budget its run recorded is spent).
    cmd = [sys.executable, "-m", "allen_sr.cli", "demo", f"--out={out}", f"--train_steps={step + 2}",
           "--num_examples=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=installed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.path.exists(out / "train" / f"model.ckpt-{step + 2}.index")
    # ... and again with the same: nothing to train (train would refuse it), the rest runs
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=installed)
    assert proc.returncode == 0 and f"is at step {step + 2}: trained already" in proc.stdout, proc.stderr[-3000:]


def test_demo_trains_our_sets_by_the_clock_and_stock_sets_by_steps(capsys):
    """The demo's default is 7 minutes of the set's clock; --train_steps, or a stock t2t set
    (no train_budget_seconds), trains by steps; a budget of 0 (no budget: endless) is refused."""
    from allen_sr.commands import demo

    plan = demo.training_plan(demo.parse_args([]))
    assert plan.seconds == 420 and plan.steps is None
    assert "--hparams=train_budget_seconds=420" in plan.flags
    plan = demo.training_plan(demo.parse_args(["--train_steps=30"]))
    assert (plan.seconds, plan.steps) == (None, 30)
    assert plan.flags == ["--train_steps=30", "--hparams=cosine_decay_steps=30,train_budget_seconds=0"]
    stock = demo.training_plan(demo.parse_args(["--hparams_set=img2img_transformer2d_tiny"]))
    assert (stock.seconds, stock.steps, stock.flags) == (None, demo.STOCK_STEPS, [f"--train_steps={demo.STOCK_STEPS}"])
    assert demo.training_plan(demo.parse_args(["--train_minutes=0.001"])).seconds == 1
    for bad in ("--train_minutes=0", "--train_steps=-3", "--num_examples=0"):
        with pytest.raises(SystemExit):
            demo.parse_args([bad])
        assert "must be greater than 0" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--images", "{tmp}/none"], ["--images", "none", "is not a folder"]),
    (["--images", "{tmp}/empty"], ["no images", "empty"]),
    (["--hparams_set", "img2img_allen_cpu_tinny"], ["unknown hparams set", "img2img_allen_cpu_tiny"]),
])
def test_demo_mistakes_are_one_line_before_training(flags, words, tmp_path, capsys):
    from allen_sr.commands import demo

    (tmp_path / "empty").mkdir()
    code = demo.demo_main(["--out", str(tmp_path / "out")] + [f.format(tmp=tmp_path) for f in flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("allen-sr demo: error:")]
    assert code == 2 and len(errors) == 1, errors
    assert all(word in errors[0] for word in words), errors[0]
    assert not (tmp_path / "out" / "train").exists()
