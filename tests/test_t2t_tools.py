"""The stock tensor2tensor tools and `allen-sr datagen/train` run our problems and hparams for real."""
import os
import subprocess
import sys

import pytest

from allen_sr.errors import InvalidInputError
from allen_sr.t2t import cli_flags
from conftest import REPO

BIN = os.path.dirname(sys.executable)
PROBLEM = "img2img_local_dim8to32"


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, **kw)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_train_help_is_a_success_naming_the_command():
    proc = run([os.path.join(BIN, "allen-sr"), "train", "--help"])  # absl ends --help with status 1
    assert "USAGE: allen-sr train [flags]" in proc.stdout + proc.stderr


def test_datagen_help_names_our_problems_and_the_flags_that_matter_without_dependency_notices():
    """`allen-sr datagen --help` said only "Try --helpfull"; it now says what the command does."""
    proc = run([os.path.join(BIN, "allen-sr"), "datagen", "--help"])
    for needed in ("img2img_local_dim8to32", "img2img_allen_brain_dim8to32_grey", "--data_dir", "--tmp_dir",
                   "USAGE: allen-sr datagen [flags]"):
        assert needed in proc.stdout + proc.stderr
    assert "google.api_core" not in proc.stderr


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
def test_stock_t2t_trainer_trains_our_allen_brain_class_then_allen_sr_train_resumes(stock_datagen, tmp_path):
    """t2t-trainer --t2t_usr_dir=problems resolves the stock name img2img_allen_brain_dim8to32 to
    our class: it trains on our lossless 64 px tile records, which the stock class cannot read.
    `allen-sr train` then needs no --t2t_usr_dir, adds --worker_gpu=0 on this CPU-only host, and
    continues from the checkpoint t2t-trainer wrote."""
    import shutil

    data_dir = tmp_path / "allen"
    data_dir.mkdir()
    for name in os.listdir(stock_datagen / "data"):  # our Allen problems read img2img_allen_brain-*
        shutil.copy(stock_datagen / "data" / name, data_dir / name.replace(PROBLEM, "img2img_allen_brain"))
    out = tmp_path / "train"
    common = ["--problem=img2img_allen_brain_dim8to32", "--model=img2img_transformer",
              "--hparams_set=img2img_allen_cpu_tiny", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--schedule=train", "--hparams=hidden_size=16,filter_size=16,batch_size=2,num_heads=2"]
    run([os.path.join(BIN, "t2t-trainer"), "--t2t_usr_dir=problems", "--worker_gpu=0", "--train_steps=2"] + common)
    assert os.path.exists(out / "model.ckpt-2.index")
    proc = run([os.path.join(BIN, "allen-sr"), "train", "--train_steps=4"] + common)
    assert os.path.exists(out / "model.ckpt-4.index")
    assert "Restoring parameters from" in proc.stderr and "model.ckpt-2" in proc.stderr


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


def test_names_a_usr_dir_registers_are_known_to_the_checks(tmp_path, capsys):
    """`--t2t_usr_dir` is imported before the checks (they said "unknown hparams set" of its sets)."""
    from allen_sr.t2t import tools

    usr_dir = tmp_path / "t2t_tools_test_usr"
    usr_dir.mkdir()
    (usr_dir / "__init__.py").write_text(
        "from tensor2tensor.utils import registry\nfrom allen_sr.t2t.names import register_all\n\n"
        "register_all()\n\n\n@registry.register_hparams\ndef t2t_tools_test_set():\n"
        "    return registry.hparams('img2img_conv_sr_cpu')\n\n\n"
        f"class P(type(registry.problem('{PROBLEM}'))):\n    pass\n\n\n"
        "registry.register_problem('t2t_tools_test_problem')(P)\n")
    flags = [f"--t2t_usr_dir={usr_dir}", f"--data_dir={tmp_path}", "--worker_gpu=0"]
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=t2t_tools_test_set",
                             *flags])  # the set is found: the next check speaks of the missing dataset
    _one_line_error(capsys, code, f"no train examples for {PROBLEM}")
    code = tools.datagen_main(["--problem=t2t_tools_test_problem", *flags])
    _one_line_error(capsys, code, "--tmp_dir is required")
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
                             f"--t2t_usr_dir={tmp_path / 'nowhere'}", f"--data_dir={tmp_path}"])
    _one_line_error(capsys, code, f"--t2t_usr_dir={tmp_path / 'nowhere'} is not a folder")


def test_datagen_with_a_file_as_data_dir_is_refused(tmp_path, capsys):
    from allen_sr.t2t import tools

    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={a_file}", f"--tmp_dir={tmp_path}"])
    _one_line_error(capsys, code, f"--data_dir={a_file}", "is a file")


@pytest.mark.parametrize("flag", ["--random_seed=7", "--max_cases=10"])
def test_datagen_flags_the_problems_do_not_read_are_refused(flag, tmp_path, capsys):
    """t2t-datagen has them; allen-sr's problems made the same dataset whatever they said."""
    from allen_sr.t2t import tools

    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={tmp_path}", f"--tmp_dir={tmp_path}", flag])
    _one_line_error(capsys, code, flag.split("=")[0], "do not use it", "leave it out")


@pytest.mark.parametrize("flag, says", [
    ("--images=slides", "--images: not a t2t-datagen flag (your images: --tmp_dir"),
    ("--tmp_dirr=x", "--tmp_dirr: not a t2t-datagen flag (did you mean --tmp_dir?)")])
def test_a_flag_t2t_datagen_does_not_define_is_named_first(flag, says, tmp_path, capsys):
    """Our checks ran before absl saw the flag: `--images x` was answered "--tmp_dir is required"."""
    from allen_sr.t2t import tools

    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={tmp_path / 'data'}", flag])
    _one_line_error(capsys, code, says, "`allen-sr datagen --helpfull` lists them")
    assert not (tmp_path / "data").exists()
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={tmp_path / 'data'}", "--train_step=5"])
    _one_line_error(capsys, code, "--train_step: not a t2t-trainer flag (did you mean --train_steps?)")


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


@pytest.mark.parametrize("kind", ["missing", "empty", "no images"])
def test_a_tmp_dir_without_images_is_refused_before_data_dir_is_made(kind, tmp_path, capsys):
    """The local-image problem's own check of --tmp_dir runs before datagen creates --data_dir,
    so a refused command leaves no empty data folder behind."""
    from allen_sr.t2t import tools

    images = tmp_path / "images"
    if kind != "missing":
        images.mkdir()
    if kind == "no images":
        (images / "notes.txt").write_text("not an image")
    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={tmp_path / 'data'}", f"--tmp_dir={images}"])
    _one_line_error(capsys, code, str(images))
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- mistakes found before training

@pytest.fixture(scope="module")
def conv_run(stock_datagen):
    """One real step of a probabilistic img2img_conv_sr_fast run on the module's dataset."""
    out = stock_datagen / "conv_run"
    run([os.path.join(BIN, "allen-sr"), "train", f"--problem={PROBLEM}", "--model=img2img_conv_sr",
         "--hparams_set=img2img_conv_sr_fast", f"--data_dir={stock_datagen / 'data'}", f"--output_dir={out}",
         "--schedule=train", "--train_steps=1", "--hparams=probabilistic=True"])
    return out


@pytest.mark.parametrize("model, hparams_set, extra, words", [
    ("img2img_conv_sr", "img2img_allen_cpu_tiny", [], ["hparams lack", "img2img_conv_sr_*"]),
    ("img2img_transformer_sr", "img2img_conv_sr_cpu", [], ["is a set for --model=img2img_conv_sr"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--hparams=foo=1"], ["--hparams foo=1", "Unknown hyperparameter"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--hparams=learning_rate"], ["--hparams learning_rate"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--hparams=train_budget_seconds=nan"], ["train_budget_seconds"]),
    ("img2img_transformer_sr", "img2img_allen_cpu_tiny", ["--hparams=train_budget_seconds=-5"],
     ["train_budget_seconds", "-5"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--train_steps=0"], ["--train_steps=0", ">= 1"]),
    ("img2img_transformer", "img2img_allen_cpu_tiny", ["--hparams=train_budget_seconds=20"],
     ["train_budget_seconds=20", "--model=img2img_transformer does not stop", "img2img_transformer_sr"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--hparams=degradation=blur=0:2,noise=0:10"],
     ["for noise", "join degradation items with ';' (quote the --hparams for the shell)"]),
    ("img2img_conv_sr", "img2img_conv_sr_cpu", ["--schedule=nosuch"],
     ["--schedule=nosuch", "continuous_train_and_eval", "evaluate", "train_and_evaluate"]),
])
def test_train_refuses_what_cannot_train_before_anything_is_written(model, hparams_set, extra, words,
                                                                    stock_datagen, tmp_path, capsys):
    from allen_sr.t2t import tools

    out = tmp_path / "out"
    code = tools.train_main([f"--problem={PROBLEM}", f"--model={model}", f"--hparams_set={hparams_set}",
                             f"--data_dir={stock_datagen / 'data'}", f"--output_dir={out}", "--worker_gpu=0"] + extra)
    _one_line_error(capsys, code, *words)
    assert not out.exists()  # no hparams.json for a later run to pick up


def test_a_folder_that_cannot_be_created_is_one_line(stock_datagen, tmp_path, capsys):
    """--output_dir under a file or in /proc, --data_dir of datagen under a file: named before t2t
    starts (it failed with a TensorFlow traceback and exit status 1)."""
    from allen_sr.t2t import tools

    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for out in (a_file / "run", "/proc/allen_sr_run"):
        code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr",
                                 "--hparams_set=img2img_conv_sr_fast", f"--data_dir={stock_datagen / 'data'}",
                                 f"--output_dir={out}", "--worker_gpu=0", "--train_steps=1"])
        _one_line_error(capsys, code, f"--output_dir={out} cannot be created", "pass a folder you can write to")
    code = tools.datagen_main([f"--problem={PROBLEM}", f"--data_dir={a_file / 'data'}",
                               f"--tmp_dir={stock_datagen / 'images'}"])
    _one_line_error(capsys, code, f"--data_dir={a_file / 'data'} cannot be created")


def test_more_gpus_than_the_host_has_are_refused(stock_datagen, tmp_path, capsys, monkeypatch):
    """--worker_gpu=2 on a one-GPU host (the second shard would run on the CPU) and a negative count
    are refused; on a host without GPUs the shards on the CPU are allowed, with a note."""
    from allen_sr.t2t import tools

    flags = [f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
             f"--data_dir={stock_datagen / 'data'}", f"--output_dir={tmp_path / 'run'}", "--train_steps=1",
             "--schedule=train"]
    monkeypatch.setattr(tools, "_gpu_count", lambda: 1)
    _one_line_error(capsys, tools.train_main(flags + ["--worker_gpu=2"]), "--worker_gpu=2", "1 visible GPU",
                    "--worker_gpu=1 or fewer")
    _one_line_error(capsys, tools.train_main(flags + ["--worker_gpu", "-1"]), "--worker_gpu=-1", "0 trains on the CPU")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(tools, "_gpu_count", lambda: 0)
    tools.check_worker_gpu(flags + ["--worker_gpu=2"])
    assert "2 data shards run on the CPU" in capsys.readouterr().out


def test_train_saves_every_minute_unless_told_how_often():
    from allen_sr.t2t import tools

    assert tools.checkpoint_flags(["--problem=p"]) == ["--problem=p", "--save_checkpoints_secs=60"]
    for own in (["--save_checkpoints_secs=0"], ["--save_checkpoints_secs", "600"], ["--local_eval_frequency=5"]):
        assert tools.checkpoint_flags(own) == own


def test_a_malformed_tf_config_is_one_line(stock_datagen, tmp_path, capsys, monkeypatch):
    from allen_sr.t2t import tools

    monkeypatch.setenv("TF_CONFIG", "{bad")
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
                             f"--data_dir={stock_datagen / 'data'}", f"--output_dir={tmp_path}", "--worker_gpu=0"])
    _one_line_error(capsys, code, "TF_CONFIG is not valid JSON")


def test_a_failed_datagen_fails_again_and_its_dataset_does_not_train(tmp_path, capsys):
    """Images that give no dev tile: datagen says so, and says so again on a rerun (the dataset it
    wrote is complete, with an empty dev split); training on it is refused before it starts."""
    from conftest import save_tissue_images

    from allen_sr.t2t import tools

    images = save_tissue_images(tmp_path / "images", count=3)  # slide_0..2: all in train by the hash split
    argv = [os.path.join(BIN, "allen-sr"), "datagen", f"--problem={PROBLEM}", f"--data_dir={tmp_path / 'data'}",
            f"--tmp_dir={images}"]
    for _ in range(2):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("allen-sr datagen: error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1 and "no dev tiles from the 3 images" in errors[0], proc.stderr
        assert "each file goes wholly to train or dev" in errors[0] and "cut one large slide" in errors[0]
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
                             f"--data_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}", "--worker_gpu=0"])
    _one_line_error(capsys, code, "no dev examples", "only empty", "--schedule=train")


def test_a_run_is_continued_only_with_its_own_set(conv_run, capsys):
    from allen_sr.t2t import tools

    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
                             f"--data_dir={conv_run.parent / 'data'}", f"--output_dir={conv_run}", "--worker_gpu=0",
                             "--train_steps=2"])
    _one_line_error(capsys, code, "holds a run of --hparams_set=img2img_conv_sr_fast", "model.ckpt-1")
    assert not (conv_run / "model.ckpt-2.index").exists()


def test_a_run_is_continued_only_with_hparams_its_checkpoint_can_restore(conv_run, capsys):
    """Another num_res_blocks (or a budget turned on: the clock is a variable) is refused before
    t2t-trainer rewrites the run's hparams.json and flags.txt; a new learning rate or batch size is not."""
    from allen_sr.t2t import tools

    before = {name: (conv_run / name).read_text() for name in ("hparams.json", "flags.txt")}
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={conv_run.parent / 'data'}", f"--output_dir={conv_run}", "--worker_gpu=0",
                             "--train_steps=2", "--hparams=probabilistic=True,num_res_blocks=2,batch_size=3"])
    line = _one_line_error(capsys, code, "num_res_blocks=2 (run: 1)", "model.ckpt-1", "another --output_dir")
    assert "batch_size" not in line and "probabilistic" not in line
    assert {name: (conv_run / name).read_text() for name in before} == before
    assert not (conv_run / "model.ckpt-2.index").exists()

    def check(overrides):
        hparams = tools.build_hparams("img2img_conv_sr_fast", overrides)
        tools.check_run_folder(str(conv_run), PROBLEM, "img2img_conv_sr", "img2img_conv_sr_fast", hparams, overrides)

    check("probabilistic=True,learning_rate_constant=1e-4,batch_size=3,degradation=none,cosine_decay_steps=50")
    with pytest.raises(tools.UsageError, match=r"train_budget_seconds=30.0 \(run: 0.0; turned on"):
        check("probabilistic=True,train_budget_seconds=30")
    with pytest.raises(tools.UsageError, match=r"probabilistic=False \(run: True\)"):
        check("probabilistic=False")


def test_a_literal_tilde_names_the_same_folders_for_the_checks_as_for_t2t(conv_run, tmp_path, monkeypatch, capsys):
    """--output_dir='~/run' --data_dir='~/data' (a quoted ~, as from a manifest): t2t-trainer expands
    the ~ itself, so the checks must look at the same folders (a dataset found, another set's run refused)."""
    import shutil

    from allen_sr.t2t import tools

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(conv_run, tmp_path / "run")
    shutil.copytree(conv_run.parent / "data", tmp_path / "data")
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_cpu",
                             "--data_dir=~/data", "--output_dir", "~/run", "--worker_gpu=0", "--train_steps=2"])
    _one_line_error(capsys, code, f"--output_dir={tmp_path / 'run'} holds a run of --hparams_set=img2img_conv_sr_fast")
    assert not (tmp_path / "run" / "model.ckpt-2.index").exists()
    assert cli_flags.expand_home(["--tmp_dir=~/x", "--data_dir", "~/d", "--hparams=a=~"]) == [
        f"--tmp_dir={tmp_path}/x", "--data_dir", f"{tmp_path}/d", "--hparams=a=~"]


def test_flags_in_a_flagfile_are_checked_like_flags_on_the_command_line(conv_run, tmp_path, capsys):
    """t2t-trainer reads --flagfile itself: a model-changing --hparams given in one went past the
    checks and rewrote the run's hparams.json. A flag file that cannot be read is one line too."""
    from allen_sr.t2t import tools

    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"# resume the fast run\n--output_dir={conv_run}\n--hparams=hidden_size=8\n")
    before = (conv_run / "hparams.json").read_text()
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={conv_run.parent / 'data'}", f"--flagfile={flagfile}", "--worker_gpu=0",
                             "--train_steps=2"])
    _one_line_error(capsys, code, "hidden_size")
    assert (conv_run / "hparams.json").read_text() == before
    code = tools.datagen_main([f"--flagfile={tmp_path / 'missing.flags'}"])
    _one_line_error(capsys, code, "--flagfile", "missing.flags")


def test_a_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch):
    """t2t writes --data_dir into the run's hparams.json as given: a relative one named another folder
    (or none) for a command run elsewhere, and the uncertainty calibration was fitted on that."""
    from allen_sr.t2t import cli_flags

    monkeypatch.chdir(tmp_path)
    assert cli_flags.absolute_data_dir(["--problem=p", "--data_dir", "data", "--train_steps=1"]) == [
        "--problem=p", "--train_steps=1", f"--data_dir={tmp_path / 'data'}"]
    for kept in (["--data_dir=gs://bucket/data"], [f"--data_dir={tmp_path}"], ["--problem=p"]):
        assert cli_flags.absolute_data_dir(kept) == kept


def test_hparams_json_of_a_run_without_checkpoint_is_dropped_only_when_it_differs(conv_run, tmp_path, capsys):
    """t2t-trainer reads OUTPUT_DIR/hparams.json over the set: one left by a run that failed before its
    first checkpoint would silently replace a corrected command's hparams."""
    import shutil

    from allen_sr.t2t import tools

    for name in ("hparams.json", "flags.txt"):
        shutil.copy(conv_run / name, tmp_path / name)
    same = tools.build_hparams("img2img_conv_sr_fast", "probabilistic=True")
    tools.check_run_folder(str(tmp_path), PROBLEM, "img2img_conv_sr", "img2img_conv_sr_fast", same)
    assert (tmp_path / "hparams.json").exists()  # the same command: kept (a cluster's replicas share it)
    other = tools.build_hparams("img2img_conv_sr_fast", "")
    tools.check_run_folder(str(tmp_path), PROBLEM, "img2img_conv_sr", "img2img_conv_sr_fast", other)
    assert not (tmp_path / "hparams.json").exists()
    assert "removed" in capsys.readouterr().out


def test_export_and_decode_of_a_checkpoint_prefix_read_the_runs_hparams(conv_run, tmp_path, capsys):
    from allen_sr.commands.decode import decode_main
    from allen_sr.commands.export import export_main

    out = tmp_path / "export"
    assert export_main(["--problem", PROBLEM, "--hparams_set", "img2img_conv_sr_fast", "--output_dir",
                        str(conv_run / "model.ckpt-1"), "--out", str(out), "--no_bioimageio"]) == 0
    assert (out / "distribution.onnx").exists()  # probabilistic=True, recorded in the run's hparams.json
    from allen_sr.commands.train import start_from

    with pytest.raises(InvalidInputError, match="cannot be fine-tuned: its export .*folded its upsampling layer"):
        start_from(str(out), ["--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                              f"--output_dir={tmp_path / 'tuned'}"])  # the fast set's export, as conv-fast
    assert not (tmp_path / "tuned").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code = decode_main(["--output_dir", str(conv_run), "--data_dir", str(empty), "--num_examples", "2",
                        "--out", str(tmp_path / "decoded")])
    _one_line_error(capsys, code, f"no dev examples of {PROBLEM}", str(empty), "allen-sr datagen")
    code = decode_main(["--output_dir", str(conv_run), "--data_dir", str(conv_run.parent / "data"),
                        "--num_examples", "2", "--out", str(tmp_path / "decoded"), "--hparams", "foo=1"])
    _one_line_error(capsys, code, "--hparams foo=1")


def test_a_run_is_not_read_as_a_problem_of_another_shape(conv_run, tmp_path, capsys):
    from PIL import Image

    from allen_sr.commands.evaluate import evaluate_main
    from conftest import tissue_image

    Image.fromarray(tissue_image(64, 64, seed=1)).save(tmp_path / "a.png")
    code = evaluate_main(["--output_dir", str(conv_run), "--problem", "img2img_allen_brain_dim8to32_grey",
                          "--images", str(tmp_path / "a.png"), "--out", str(tmp_path / "eval")])
    _one_line_error(capsys, code, f"trained on --problem {PROBLEM}", "1 channels", f"pass --problem {PROBLEM}")


@pytest.mark.parametrize("model, extra, refused", [
    ("img2img_transformer_sr", [], "input_patch=2, input_skip=True, bicubic_prior=True, context_bicubic=1.0"),
    ("img2img_transformer_sr", ["--hparams=input_patch=0"], "(input_skip=True, bicubic_prior=True"),
    ("img2img_transformer_sr", ["--hparams=input_patch=0,input_skip=False,bicubic_prior=False,context_bicubic=0"],
     None),
    ("img2img_transformer", [], None),
])
def test_a_non_integer_ratio_problem_is_refused_where_the_model_needs_one(model, extra, refused, tmp_path, capsys):
    """img2img_allen_brain_dim48to64 (48 -> 64 px) with img2img_transformer_sr's input_patch head (or the
    other options that need an integer factor): one line before the graph is built (it stopped at a graph
    assert under ~90 lines of traceback)."""
    from allen_sr.t2t import tools

    out = tmp_path / "out"
    code = tools.train_main(["--problem=img2img_allen_brain_dim48to64", f"--model={model}",
                             "--hparams_set=img2img_allen_cpu_tiny", f"--data_dir={tmp_path / 'data'}",
                             f"--output_dir={out}", "--worker_gpu=0", *extra])
    if refused:
        _one_line_error(capsys, code, "48x48 to 64x64 px, not an integer factor, which --model=img2img_transformer_sr",
                        refused, "img2img_allen_cpu_tiny", "train --model=img2img_transformer ")
    else:  # past this check: the next one finds no dataset
        err = capsys.readouterr().err
        assert code == 2 and "input_patch" not in err and "no train examples" in err
    assert not out.exists()


def test_an_image_transformer_run_beyond_the_machines_memory_is_refused_naming_a_batch_size_that_fits():
    """img2img_allen_brain_dim48to64 with the stock img2img_transformer and img2img_allen_cpu_tiny (batch 8): its
    attention over the 6912 input sub-pixels had reached 17.6 GB when the kernel killed it, before step 1, on a
    24 GB machine. train's checks refuse it in one line with the batch_size that fits (the machine's available
    memory given here; a real run of batch_size=1 peaked at 8.0 GB, 1 + 1 layers at 6.0 GB). No training."""
    from tensor2tensor.utils import registry

    from allen_sr.t2t.names import register_all
    from allen_sr.t2t.run_checks import attention_bytes, check_attention_memory
    from allen_sr.t2t.tools import build_hparams

    register_all()
    problem, model = "img2img_allen_brain_dim48to64", registry.model("img2img_transformer")
    hp = build_hparams("img2img_allen_cpu_tiny", "")
    with pytest.raises(cli_flags.UsageError, match=r"^--problem=img2img_allen_brain_dim48to64 with batch_size=8: "
                       r"training on the CPU needs about 58\.\d GB .*, more than the 24\.0 GB available: pass "
                       r"--hparams=batch_size=3 \(about 22\.\d GB\), or train on a GPU"):
        check_attention_memory(["--worker_gpu=0"], problem, model, hp, available=24e9)
    with pytest.raises(cli_flags.UsageError, match=r"; batch_size=1 needs 8\.2 GB: train on a GPU \(--worker_gpu=1\), "
                                                   "or on a problem with smaller inputs"):
        check_attention_memory([], problem, model, hp, available=4e9)
    check_attention_memory(["--worker_gpu=1"], problem, model, hp, available=4e9)  # a GPU's memory: not estimated
    check_attention_memory([], "img2img_allen_brain_dim8to32", model, hp, available=4e9)  # about 1.4 GB
    check_attention_memory([], problem, registry.model("img2img_conv_sr"), hp, available=4e9)
    for overrides, measured in (("", 8.05e9), (",num_encoder_layers=1,num_decoder_layers=1", 5.98e9)):
        estimate = attention_bytes(build_hparams("img2img_allen_cpu_tiny", "batch_size=1" + overrides), problem, 1)
        assert abs(estimate / measured - 1) < 0.05, (overrides, estimate)


@pytest.mark.parametrize("problem, shape", [
    ("img2img_allen_brain_dim48to64", "48x48 to 64x64 px, not an integer factor"),
    ("img2img_allen_brain_dim16to16_paint1", "16x16 to 16x16 px, a factor of 1")])
def test_the_conv_model_is_refused_on_a_problem_it_cannot_upscale(problem, shape, tmp_path, capsys):
    """img2img_conv_sr on 48 -> 64 px (an autograph StagingError) or the 16 -> 16 px in-painting problem
    (DepthToSpace's block_size 1): one line naming the problem and what trains, before anything is written."""
    from allen_sr.t2t import tools

    out = tmp_path / "out"
    code = tools.train_main([f"--problem={problem}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={tmp_path / 'data'}", f"--output_dir={out}", "--worker_gpu=0"])
    _one_line_error(capsys, code, f"--problem={problem}", shape, "--model=img2img_conv_sr needs", "integer factor",
                    "img2img_allen_brain_dim8to32", "--model=img2img_transformer")
    assert not out.exists()


def test_the_conv_model_is_refused_on_a_problem_without_image_sizes(tmp_path, capsys):
    """A registered problem that is not an image problem of fixed sizes (text2text_tmpdir): one line
    naming it, from the one reader of problem sizes (names.problem_shape)."""
    from allen_sr.t2t import tools

    out = tmp_path / "out"
    code = tools.train_main(["--problem=text2text_tmpdir", "--model=img2img_conv_sr",
                             "--hparams_set=img2img_conv_sr_fast", f"--data_dir={tmp_path / 'data'}",
                             f"--output_dir={out}", "--worker_gpu=0"])
    _one_line_error(capsys, code, "--problem=text2text_tmpdir is not an image problem of fixed sizes")
    assert not out.exists()


def _as_allen_data(stock_datagen, folder):
    """The module's dataset under the file names of the Allen problems (img2img_allen_brain-*)."""
    import shutil

    folder.mkdir()
    for name in os.listdir(stock_datagen / "data"):
        shutil.copy(stock_datagen / "data" / name, folder / name.replace(PROBLEM, "img2img_allen_brain"))
    return folder


def test_a_run_is_continued_only_with_its_own_problem(conv_run, tmp_path, capsys):
    """A run of img2img_local_dim8to32 continued under the grey problem: t2t-trainer rewrote its flags.txt and
    hparams.json (1 channel) and then failed to restore the RGB checkpoint, leaving a run no command could read.
    Another problem of the same shape is refused too (another dataset: that is --init_from's job)."""
    from allen_sr.t2t import tools

    data = _as_allen_data(conv_run.parent, tmp_path / "allen")
    before = {name: (conv_run / name).read_text() for name in ("hparams.json", "flags.txt")}
    code = tools.train_main(["--problem=img2img_allen_brain_dim8to32_grey", "--model=img2img_conv_sr",
                             "--hparams_set=img2img_conv_sr_fast", f"--data_dir={data}", f"--output_dir={conv_run}",
                             "--worker_gpu=0", "--train_steps=40", "--schedule=train", "--hparams=probabilistic=True"])
    _one_line_error(capsys, code, f"holds a run of --problem={PROBLEM}", "model.ckpt-1", f"pass --problem={PROBLEM}",
                    f"--init_from={conv_run}")
    assert {name: (conv_run / name).read_text() for name in before} == before
    hparams = tools.build_hparams("img2img_conv_sr_fast", "probabilistic=True")
    with pytest.raises(tools.UsageError, match=f"--problem={PROBLEM} .*, not img2img_allen_brain_dim8to32:"):
        tools.check_run_folder(str(conv_run), "img2img_allen_brain_dim8to32", "img2img_conv_sr",
                               "img2img_conv_sr_fast", hparams)
    tools.check_run_folder(str(conv_run), PROBLEM, "img2img_conv_sr", "img2img_conv_sr_fast", hparams)


def test_train_steps_the_run_has_reached_are_refused(conv_run, capsys, monkeypatch):
    """--train_steps at or below the checkpoint's step trained nothing, exited 0 and rewrote flags.txt; an
    evaluation of the run, a --train_steps beyond it and a task of a cluster are not refused."""
    from allen_sr.t2t import run_checks, tools

    before = (conv_run / "flags.txt").read_text()
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={conv_run.parent / 'data'}", f"--output_dir={conv_run}", "--worker_gpu=0",
                             "--train_steps=1", "--schedule=train", "--hparams=probabilistic=True"])
    _one_line_error(capsys, code, f"--output_dir={conv_run} is at step 1: pass --train_steps above 1 to train on")
    assert (conv_run / "flags.txt").read_text() == before
    for argv in (["--schedule=evaluate", "--train_steps=1"], ["--schedule=continuous_eval"], ["--train_steps=2"]):
        run_checks.check_steps(argv, str(conv_run))
    monkeypatch.setenv("TF_CONFIG", '{"task": {"type": "chief", "index": 0}}')
    run_checks.check_steps(["--train_steps=1"], str(conv_run))


def test_evaluating_a_folder_without_a_checkpoint_is_refused(stock_datagen, tmp_path, capsys):
    """--schedule=evaluate of an empty or mistyped --output_dir scored untrained weights and exited 0."""
    from allen_sr.t2t import tools

    out = tmp_path / "mistyped"
    code = tools.train_main([f"--problem={PROBLEM}", "--model=img2img_conv_sr", "--hparams_set=img2img_conv_sr_fast",
                             f"--data_dir={stock_datagen / 'data'}", f"--output_dir={out}", "--worker_gpu=0",
                             "--schedule=evaluate"])
    _one_line_error(capsys, code, "--schedule=evaluate: no checkpoint in", str(out), "trained run")
    assert not out.exists()
