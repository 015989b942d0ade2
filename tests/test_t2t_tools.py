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
def test_stock_t2t_trainer_trains_our_allen_brain_class(stock_datagen, tmp_path):
    """t2t-trainer --t2t_usr_dir=problems resolves the stock name img2img_allen_brain_dim8to32 to
    our class: it trains on our lossless 64 px tile records, which the stock class cannot read."""
    import shutil

    data_dir = tmp_path / "allen"
    data_dir.mkdir()
    for name in os.listdir(stock_datagen / "data"):  # our Allen problems read img2img_allen_brain-*
        shutil.copy(stock_datagen / "data" / name, data_dir / name.replace(PROBLEM, "img2img_allen_brain"))
    out = tmp_path / "train"
    run([os.path.join(BIN, "t2t-trainer"), "--t2t_usr_dir=problems", "--worker_gpu=0", "--train_steps=2",
         "--problem=img2img_allen_brain_dim8to32", "--model=img2img_transformer",
         "--hparams_set=img2img_allen_cpu_tiny", f"--data_dir={data_dir}", f"--output_dir={out}",
         "--schedule=train", "--hparams=hidden_size=16,filter_size=16,batch_size=2,num_heads=2"])
    assert os.path.exists(out / "model.ckpt-2.index")


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


# --------------------------------------------------------------------------- bad input, one line


def _one_line_error(capsys, code, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def test_train_without_a_dataset_names_the_datagen_command(tmp_path, capsys):
    from allen_sr.t2t import tools

    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_transformer",
                             "--hparams_set=img2img_allen_cpu_tiny", f"--data_dir={tmp_path}",
                             f"--output_dir={tmp_path / 'out'}", "--worker_gpu=0"])
    _one_line_error(capsys, code, str(tmp_path), f"{PROBLEM}-train", f"allen-sr datagen --problem={PROBLEM}")


@pytest.mark.parametrize("flag, value, words", [
    ("problem", "img2img_alen_brain_dim8to32", ["unknown problem", "img2img_allen_brain_dim8to32"]),
    ("model", "img2img_transformr", ["unknown model", "img2img_transformer"]),
    ("hparams_set", "img2img_allen_cpu_tinny", ["unknown hparams set", "img2img_allen_cpu_tiny"]),
])
def test_train_names_the_closest_registered_name(flag, value, words, tmp_path, capsys):
    from allen_sr.t2t import tools

    flags = {"problem": PROBLEM, "model": "img2img_transformer", "hparams_set": "img2img_allen_cpu_tiny"}
    flags[flag] = value
    code = tools.train_main([f"--{k}={v}" for k, v in flags.items()] + [f"--data_dir={tmp_path}", "--worker_gpu=0"])
    line = _one_line_error(capsys, code, *words)
    assert len(line) < 400  # the closest names, not tensor2tensor's whole list


def test_datagen_with_a_file_as_data_dir_is_refused(tmp_path, capsys):
    from allen_sr.t2t import tools

    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={a_file}", f"--tmp_dir={tmp_path}"])
    _one_line_error(capsys, code, f"--data_dir={a_file}", "is a file")


def test_datagen_with_an_empty_tmp_dir_says_what_to_do_without_a_traceback(tmp_path):
    empty = tmp_path / "images"
    empty.mkdir()
    proc = subprocess.run([os.path.join(BIN, "allen-sr"), "datagen", f"--problem={PROBLEM}",
                           f"--data_dir={tmp_path / 'data'}", f"--tmp_dir={empty}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("allen-sr datagen: error:")]
    assert len(errors) == 1 and str(empty) in errors[0] and "put your" in errors[0]
