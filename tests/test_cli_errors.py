"""How `allen-sr` reports errors: a user's mistake is one line and exit code 2, a bug keeps its
traceback, `allen-sr --debug` shows the traceback of a mistake too. Real commands, real processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from allen_sr.commands.args import USAGE_ERROR, expand_home, run_command
from allen_sr.errors import InvalidInputError, MissingInputError, UserError
from conftest import REPO, SAMPLE_IMAGES


def test_a_user_error_is_one_line_and_a_bug_propagates(capsys):
    def mistake() -> None:
        raise InvalidInputError("tile size must be at least 8 px, got 2")

    assert run_command("upscale", mistake) == USAGE_ERROR
    assert capsys.readouterr().err == "allen-sr upscale: error: tile size must be at least 8 px, got 2\n"

    def bug() -> None:
        raise ValueError("operands could not be broadcast together")  # not a UserError: a bug

    with pytest.raises(ValueError, match="broadcast"):
        run_command("upscale", bug)
    # the kinds are also the built-in exceptions callers catch
    assert issubclass(InvalidInputError, ValueError) and issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(MissingInputError, UserError)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ALLEN_SR_DEBUG"}
    return subprocess.run([sys.executable, "-m", "allen_sr.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_the_command_line_and_debug(tmp_path):
    argv = ["upscale", "--pretrained", "conv-fast", "--image", str(tmp_path / "none.png"),
            "--out", str(tmp_path / "o.png")]
    plain = cli(*argv)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "none.png" in plain.stderr
    debug = cli("--debug", *argv)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "none.png" in debug.stderr


def test_a_pattern_the_shell_expanded_and_a_closed_pipe_are_said_plainly(tmp_path):
    """`--images slides/*.tif` unquoted reached argparse as "unrecognized arguments: b.tif c.tif";
    `allen-sr models --json | head -1` ended in a BrokenPipeError traceback."""
    files = [str(tmp_path / f"{name}.png") for name in "abc"]
    for file in files:
        shutil.copy(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s044.png"), file)
    for command in ("upscale", "evaluate"):
        proc = cli(command, "--pretrained", "conv-fast", "--images", *files, "--out", str(tmp_path / "out"))
        assert proc.returncode == 2 and "the shell expanded the pattern into 3 files: quote it" in proc.stderr
    assert "unrecognized arguments: --bogus" in cli("models", "--bogus").stderr
    env = {k: v for k, v in os.environ.items() if k != "ALLEN_SR_DEBUG"}
    reader_gone = subprocess.Popen([sys.executable, "-m", "allen_sr.cli", "models", "--json"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader_gone.stdout.close()  # before the command writes: its first write meets a closed pipe
    assert reader_gone.wait(timeout=120) == 1 and reader_gone.stderr.read() == ""


@pytest.mark.parametrize("command, flags, flag", [
    ("evaluate", ["--pretrained", "conv-fast", "--images", "{images}"], "--out"),
    ("decode", ["--problem", "img2img_allen_brain_dim8to32", "--model", "img2img_conv_sr", "--hparams_set",
                "img2img_conv_sr_cpu", "--output_dir", "{tmp}", "--data_dir", "{tmp}"], "--out"),
    ("demo", [], "--out"),
    ("upscale", ["--pretrained", "conv-fast", "--images", "{images}"], "--out_dir"),
    ("upscale", ["--pretrained", "conv-fast", "--images", "{images}", "--out_dir", "{tmp}/out"], "--preview_dir"),
    ("download", ["--image_ids", "1", "--api_base", "http://127.0.0.1:9"], "--tmp_dir"),
])
def test_an_output_folder_that_cannot_be_one_is_named_before_any_work(tmp_path, capsys, command, flags, flag):
    """A file where an output folder should be, or below it: one line naming the flag and the path,
    exit 2, before any image is read or predicted (it was a traceback after the work)."""
    import importlib

    from PIL import Image

    from conftest import tissue_image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(tissue_image(64, 64)).save(images / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    main = getattr(importlib.import_module(f"allen_sr.commands.{command}"), f"{command}_main")
    argv = [f.format(images=images, tmp=tmp_path) for f in flags]
    for target, words in ((blocker, "a file of that name exists"),
                          (blocker / "sub", f"cannot create or write the folder ({blocker} is a file)")):
        assert main(argv + [flag, str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag} {target}: {words}" in err, err
    assert blocker.read_text() == "x" and not list((tmp_path / "out").glob("*"))


def test_a_command_of_the_full_install_says_so_where_its_packages_are_missing(tmp_path):
    """In the prediction-only install (no TensorFlow, absl, matplotlib, requests) `allen-sr train`
    and the like ended in a ModuleNotFoundError traceback: one line naming the package and the
    install that has it. A module of allen-sr's own that is missing is a bug and keeps its traceback."""
    def run(blocked: str, *argv: str) -> subprocess.CompletedProcess:
        code = (f"import sys; sys.modules.update(dict.fromkeys({blocked.split()!r})); from allen_sr.cli import main; "
                f"sys.exit(main({list(argv)!r}))")
        env = {k: v for k, v in os.environ.items() if k != "ALLEN_SR_DEBUG"}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=120)

    for blocked, argv, package in [("absl tensorflow", ["train", "--problem=x"], "absl"),
                                   ("matplotlib", ["plot", "--runs", "r", "--out", "l.png"], "matplotlib"),
                                   ("requests", ["download", "--tmp_dir", "d", "--image_ids", "1"], "requests")]:
        proc = run(blocked, *argv)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1, err
        assert f"allen-sr {argv[0]}: needs the Python package '{package}'" in err and "full install" in err, err
    bug = run("allen_sr.data.tiles", "datagen", "--problem=img2img_local_dim8to32")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "full install" not in bug.stderr
    debug = run("absl tensorflow", "--debug", "train", "--problem=x")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ModuleNotFoundError" in debug.stderr


def test_a_quoted_home_folder_is_expanded_in_every_path_option(tmp_path, monkeypatch):
    """'~/...' reaches a command when quoted: --images and --exported expanded it, but --image was
    'not found' and --out_dir, --out and --preview_dir made a folder named '~' in the working folder."""
    from PIL import Image

    from allen_sr.commands import plot, upscale

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "in").mkdir(parents=True)
    with Image.open(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")) as brain:
        brain.convert("RGB").crop((200, 100, 248, 148)).save(tmp_path / "home" / "in" / "a.png")
    base = ["--pretrained", "conv-fast", "--no_progress"]
    assert upscale.upscale_main(base + ["--image", "~/in/a.png", "--out", "~/out/a.png"]) == 0
    assert upscale.upscale_main(base + ["--images", "~/in", "--out_dir", "~/folder", "--preview_dir", "~/shots"]) == 0
    home = tmp_path / "home"
    assert (home / "out" / "a.png").is_file() and (home / "folder" / "a.png").is_file()
    assert (home / "shots" / "a.compare.png").is_file() and not (tmp_path / "~").exists()
    args = plot.build_parser().parse_args(["--runs", "~/r1", "r2", "--out", "~/loss.png"])
    assert expand_home(args).runs == [str(home / "r1"), "r2"] and args.out == str(home / "loss.png")


def test_a_file_too_large_for_the_disk_is_one_line_naming_the_file_and_what_to_do(tmp_path):
    """evaluate writing its pictures beyond a file size limit (EFBIG: a FAT32 disk's 4 GB, here a ulimit): one
    line and exit status 1, not an OSError traceback; not said as a full disk (it is not)."""
    import resource

    from PIL import Image

    with Image.open(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")) as brain:
        brain.convert("RGB").crop((200, 100, 456, 356)).save(tmp_path / "a.png")

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run([sys.executable, "-m", "allen_sr.cli", "evaluate", "--pretrained", "conv-fast",
                           "--images", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--max_tiles", "4",
                           "--no_progress"], capture_output=True, text=True, cwd=REPO, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "File too large" in err[0] and "make room" not in err[0], proc.stderr[-2000:]
    assert "cannot hold a file this large" in err[0] and "exFAT" in err[0] and "run the same command again" in err[0]
    assert str(tmp_path / "out") in err[0]  # the file it was writing


def test_messages_name_only_the_flags_given_and_count_in_words(tmp_path, capsys):
    """upscale --image without --out named --out_dir and --preview_dir, which were not given;
    evaluate --out eval/ printed eval//metrics.json; one tile was "1 tiles"; upscale's --help said
    --batch_size's default was None."""
    import numpy as np
    from PIL import Image

    from allen_sr.commands import evaluate, upscale
    from allen_sr.data.images import load_image

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(load_image(os.path.join(SAMPLE_IMAGES, "other_skimage_ihc_colon_DAB.png"))[:32, :32]).save(image)
    assert upscale.upscale_main(["--pretrained", "conv-fast", "--image", str(image)]) == USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert err.endswith("--image and --image_id write one file: pass --out FILE"), err
    assert upscale.upscale_main(["--pretrained", "conv-fast", "--image", str(image), "--out_dir", str(tmp_path)]) == 2
    assert "pass --out FILE (not --out_dir: those are for --images)" in capsys.readouterr().err

    out = f"{tmp_path / 'eval'}/"
    assert evaluate.evaluate_main(["--pretrained", "conv-fast", "--images", str(image.parent), "--out", out,
                                   "--no_progress"]) == 0
    text = capsys.readouterr().out
    assert "evaluating 1 tile of 32x32 px" in text and "decoded 1 tile in" in text, text
    assert f"wrote {tmp_path / 'eval' / 'metrics.json'}," in text and "//" not in text
    assert np.isfinite(json.loads((tmp_path / "eval" / "metrics.json").read_text())["methods"]["model"]["psnr"])

    with pytest.raises(SystemExit):
        upscale.upscale_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "tiles decoded together (default: 1 for a conv model" in help_text and "default None" not in help_text


def test_upscale_says_when_another_outputs_compare_picture_is_replaced(tmp_path, capsys):
    """a_x4.png and a_x4.ome.tif share a_x4.compare.png (named without the image type): the second
    run replaced the first's picture without a word."""
    from PIL import Image

    from allen_sr.commands import upscale
    from allen_sr.data.images import load_image

    image = tmp_path / "a.png"
    Image.fromarray(load_image(os.path.join(SAMPLE_IMAGES, "other_skimage_ihc_colon_DAB.png"))[:24, :24]).save(image)
    flags = ["--pretrained", "conv-fast", "--image", str(image), "--no_progress", "--preview_size", "8"]
    assert upscale.upscale_main(flags + ["--out", str(tmp_path / "a_x4.png")]) == 0
    assert upscale.upscale_main(flags + ["--out", str(tmp_path / "a_x4.png")]) == 0  # its own: nothing to say
    assert "note:" not in capsys.readouterr().out
    assert upscale.upscale_main(flags + ["--out", str(tmp_path / "a_x4.ome.tif")]) == 0
    assert ("note: a_x4.compare.png of a_x4.png will be replaced by a_x4.ome.tif's (the pictures of both are "
            "named a_x4.*); give --out another name to keep them") in capsys.readouterr().out

