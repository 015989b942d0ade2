"""`allen-sr upscale --images DIR|GLOB --out_dir DIR`: one output per input under its name, finished
outputs skipped, an interrupted image resumed, a bad file named and skipped. Real files, the
shipped pretrained models, real processes killed mid-run."""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr import pretrained
from allen_sr.commands import upscale
from allen_sr.data.images import load_image
from conftest import SAMPLE_IMAGES, folder_listing, kill_upscale_once_rows_are_saved

BRAIN = load_image(os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png"))


def make_inputs(folder, big: int = 0):
    folder.mkdir()
    Image.fromarray(BRAIN[100:164, 200:280]).save(folder / "a.png")
    Image.fromarray(BRAIN[300:300 + (big or 60), 400:400 + (big or 50)]).save(folder / "b.png")
    Image.fromarray(BRAIN[400:448, 500:540]).save(folder / "c.jpg", quality=90)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")


def test_a_folder_gets_one_output_per_image_and_a_rerun_skips_what_is_done(tmp_path, capsys):
    make_inputs(tmp_path / "in")
    out = tmp_path / "out" / "nested"
    argv = ["--images", str(tmp_path / "in"), "--out_dir", str(out), "--pretrained", "conv-fast", "--no_progress"]
    assert upscale.upscale_main(argv) == 1  # one input failed
    text = capsys.readouterr().out
    assert "3 written, 0 already done (skipped), 1 failed" in text
    failed = [line for line in text.splitlines() if "failed: " in line and "bad.png" in line]
    assert len(failed) == 1 and failed[0].count("bad.png") == 1, failed  # named once, with why
    assert re.search(r"failed: \S*bad\.png: not a readable image", failed[0])
    assert sorted(p.name for p in out.iterdir()) == folder_listing("a.png", "b.png", "c.jpg")  # names kept
    for name in ("a.png", "b.png"):
        src = np.asarray(Image.open(tmp_path / "in" / name))
        assert np.asarray(Image.open(out / name)).shape == (4 * src.shape[0], 4 * src.shape[1], 3)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert upscale.upscale_main(argv) == 1
    assert "0 written, 3 already done (skipped), 1 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # previews asked for on a rerun: the finished images are made again with them (they were skipped)
    assert upscale.upscale_main(argv + ["--preview_dir", str(tmp_path / "later")]) == 1
    assert "3 written, 0 already done (skipped), 1 failed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "later").iterdir()) == ["a.compare.png", "b.compare.png", "c.compare.png"]
    assert upscale.upscale_main(argv + ["--preview_dir", str(tmp_path / "later")]) == 1
    assert "0 written, 3 already done (skipped), 1 failed" in capsys.readouterr().out
    # a glob picks a subset; previews go to their own folder, never among the outputs
    glob_out = tmp_path / "glob_out"
    assert upscale.upscale_main(["--images", str(tmp_path / "in" / "*.png"), "--out_dir", str(glob_out),
                                 "--pretrained", "conv-fast", "--no_progress",
                                 "--preview_dir", str(tmp_path / "previews")]) == 1
    assert sorted(p.name for p in glob_out.iterdir()) == folder_listing("a.png", "b.png")
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["a.compare.png", "b.compare.png"]
    with Image.open(tmp_path / "previews" / "a.compare.png") as shot:
        small = shot.size
    # --preview_size holds in a folder run too (it was always 128 px; 0 wrote previews anyway)
    for size, names in ((32, ["a.compare.png"]), (0, [])):
        argv = ["--images", str(tmp_path / "in" / "a.png"), "--out_dir", str(tmp_path / f"o{size}"),
                "--pretrained", "conv-fast", "--no_progress", "--preview_dir", str(tmp_path / f"p{size}"),
                "--preview_size", str(size)]
        for _ in range(2):  # the rerun skips it: no picture was asked for with --preview_size 0
            assert upscale.upscale_main(argv) == 0
            assert sorted(p.name for p in (tmp_path / f"p{size}").glob("*")) == names
        assert "0 written, 1 already done" in capsys.readouterr().out
    with Image.open(tmp_path / "p32" / "a.compare.png") as shot:
        assert shot.size[0] < small[0]


def test_folder_mistakes_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    make_inputs(tmp_path / "in")
    base = ["--pretrained", "conv-fast", "--no_progress"]
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "in")], "would replace it"),
        (["--images", str(tmp_path / "in"), "--out_dir", (tmp_path / "in").as_uri()], "would replace it"),
        (["--images", "in", "--out_dir", "file://in"], "would replace it"),  # ./in, as fsspec writes it
        (["--images", "in", "--out_dir", "memory://bucket/o"], "memory:// lives inside this process"),
        (["--image", "in/a.png", "--out", "gs://bucket/x.png"], "pass --images in/a.png --out_dir gs://bucket"),
        (["--images", str(tmp_path / "none*.png"), "--out_dir", str(tmp_path / "o")], "no image files"),
        (["--images", str(tmp_path / "in"), "--out", str(tmp_path / "o.png")], "pass --out_dir"),
        (["--image", str(tmp_path / "in" / "a.png"), "--out_dir", str(tmp_path / "o")], "pass --out FILE"),
        (["--images", str(tmp_path / "in"), "--out_dir", "gs://bucket/out"], "install gcsfs"),  # not installed
        (["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "o"), "--preview_dir", "gs://b/p"],
         "URLs are for --out_dir"),
    ]
    for argv, message in cases:
        assert upscale.upscale_main(base + argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no gs: folder either
    Image.fromarray(BRAIN[:40, :40]).save(tmp_path / "in" / "a.tif")
    (tmp_path / "in" / "a.svs").write_bytes(b"")  # a slide type that is written as .tif
    assert upscale.upscale_main(base + ["--images", str(tmp_path / "in" / "a.*"), "--out_dir",
                                        str(tmp_path / "o")]) == 2
    assert "would both be written as" in capsys.readouterr().err
    # a.png and a.bmp (written as a.tif) would share one compare picture in --preview_dir
    Image.fromarray(BRAIN[:40, :40]).save(tmp_path / "in" / "a.bmp")
    argv = base + ["--images", str(tmp_path / "in" / "a.[pb]*"), "--out_dir", str(tmp_path / "o")]
    assert upscale.upscale_main(argv + ["--preview_dir", str(tmp_path / "p")]) == 2
    assert "would both have their compare picture at" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_uncertainty_from_a_model_without_a_distribution_is_refused_once_before_any_image(tmp_path, capsys):
    """It was refused image by image, each after being read and checked (exit 1); `evaluate` said
    it after every image had been read and tiled."""
    from allen_sr.commands import evaluate

    make_inputs(tmp_path / "in")  # bad.png among them: reading it would warn
    argv = ["--pretrained", "conv-fast", "--no_progress", "--images", str(tmp_path / "in"), "--uncertainty"]
    assert upscale.upscale_main(argv + ["--out_dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("not a distribution") == 1 and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate.evaluate_main(argv + ["--out", str(tmp_path / "eval")]) == 2
    assert "not a distribution" in capsys.readouterr().err
    assert not [w for w in caught if "bad.png" in str(w.message)]  # no image was read
    assert not (tmp_path / "eval").exists()


def test_an_empty_file_or_a_folder_at_an_output_name_is_not_a_finished_output(tmp_path, capsys):
    """Both counted as "already done" (exit 0, nothing enlarged); the empty file is enlarged again,
    the folder is named as the image's failure."""
    make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"")
    (out / "b.png").mkdir()
    argv = ["--pretrained", "conv-fast", "--no_progress", "--images", str(tmp_path / "in" / "[ab].png"),
            "--out_dir", str(out)]
    assert upscale.upscale_main(argv) == 1
    text = capsys.readouterr().out
    assert "1 written, 0 already done (skipped), 1 failed" in text and "b.png is a folder" in text, text
    with Image.open(out / "a.png") as enlarged:
        assert enlarged.size == (320, 256)


def test_outputs_of_another_model_are_refused_and_outputs_of_changed_inputs_enlarged_again(tmp_path, capsys):
    """The record beside each output (.NAME.allen-sr.json): a rerun with another model into the
    same --out_dir is refused before any work (it skipped the first model's outputs as finished,
    a folder of two models' outputs, exit 0); an input replaced since, or another --left, is
    enlarged again; an output without a record (written before records were kept) stays done."""
    (tmp_path / "in").mkdir()
    for name, (top, left) in {"a.png": (100, 200), "b.png": (300, 400), "c.png": (400, 500)}.items():
        Image.fromarray(BRAIN[top:top + 48, left:left + 40]).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    argv = ["--images", str(tmp_path / "in"), "--out_dir", str(out), "--no_progress"]
    assert upscale.upscale_main(argv + ["--pretrained", "conv-fast"]) == 0
    record = json.loads((out / ".a.png.allen-sr.json").read_text())
    assert record["model"]["source"] == "pretrained conv-fast" and record["input"]["name"] == "a.png"
    assert record["model"]["decoder"] == "img2img_conv_sr onnx"  # as opened by its folder: it is one model
    # the same shipped model opened by its folder is the same model; so is a record written when the
    # decoder was described with the model's name ("img2img_conv_sr pretrained conv-fast")
    record["model"]["decoder"] = "img2img_conv_sr pretrained conv-fast"
    (out / ".a.png.allen-sr.json").write_text(json.dumps(record))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert upscale.upscale_main(argv + ["--exported", str(pretrained.find("conv-fast").folder)]) == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert upscale.upscale_main(argv + ["--pretrained", "conv-cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 of its outputs (a.png, b.png, c.png) were made by another model " \
        "(pretrained conv-fast) than this run's (pretrained conv-cpu); choose another --out_dir" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing touched

    Image.fromarray(BRAIN[500:548, 300:340]).save(tmp_path / "in" / "b.png")  # b replaced
    (out / ".c.png.allen-sr.json").unlink()  # as written before records were kept
    assert upscale.upscale_main(argv + ["--pretrained", "conv-fast"]) == 0
    assert "1 written (1 again: input, --level or --region changed), 2 already done" in capsys.readouterr().out
    fresh = tmp_path / "fresh.png"
    assert upscale.upscale_main(["--image", str(tmp_path / "in" / "b.png"), "--out", str(fresh),
                                 "--pretrained", "conv-fast", "--no_progress"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), np.asarray(Image.open(fresh)))
    assert (out / "c.png").stat().st_mtime_ns == stamps["c.png"]
    assert upscale.upscale_main(argv + ["--pretrained", "conv-fast", "--left", "8"]) == 0
    # a and b again (c, without a record, stays done)
    assert "2 written (2 again: input, --level or --region changed), 1 already done" in capsys.readouterr().out
    with Image.open(out / "a.png") as enlarged:
        assert enlarged.size == (4 * 32, 4 * 48)


def test_a_folder_of_aperio_svs_slides_is_enlarged(tmp_path, capsys):
    """`.svs` (Aperio's tiled TIFF, which `--image` always read) counts as an image in a folder:
    it was left out, and a folder of slides was "no image files there"."""
    import tifffile

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "slide.svs", BRAIN[:48, :64], photometric="rgb", tile=(16, 16))
    out = tmp_path / "out"
    argv = ["--pretrained", "conv-fast", "--no_progress", "--images", str(tmp_path / "in"), "--out_dir", str(out)]
    assert upscale.upscale_main(argv) == 0, capsys.readouterr().err
    assert "1 written" in capsys.readouterr().out
    with Image.open(out / "slide.tif") as img:
        assert img.size == (256, 192)


@pytest.mark.slow
def test_an_image_interrupted_in_a_folder_run_resumes_and_the_others_are_skipped(tmp_path, capsys):
    make_inputs(tmp_path / "in", big=200)
    os.remove(tmp_path / "in" / "bad.png")
    out = tmp_path / "out"
    argv = ["--images", str(tmp_path / "in"), "--out_dir", str(out), "--pretrained", "conv-cpu",
            "--tile", "48", "--no_progress"]
    saved = out / ".b.png.resume"
    kill_upscale_once_rows_are_saved(argv, saved)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png"]
    assert upscale.upscale_main(argv) == 0
    text = capsys.readouterr().out
    assert "2 written, 1 already done (skipped), 0 failed" in text
    resumed = re.search(r"resuming: (\d+) of 800 output rows", text)
    assert resumed and 0 < int(resumed.group(1)) < 800
    assert "pass --restart to predict them again" in text  # the flag, by name
    assert sorted(p.name for p in out.iterdir()) == folder_listing("a.png", "b.png", "c.jpg")
    fresh = tmp_path / "fresh.png"
    assert upscale.upscale_main(["--image", str(tmp_path / "in" / "b.png"), "--out", str(fresh),
                                 "--pretrained", "conv-cpu", "--tile", "48", "--no_progress"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), np.asarray(Image.open(fresh)))


def test_an_out_dir_given_as_a_url_gets_the_same_outputs_uploaded_whole(tmp_path, capsys, monkeypatch):
    """--out_dir file:///... (through fsspec, as gs:// goes): the outputs equal a local folder run's,
    a rerun skips them, the log names the URLs, no temporary upload is left, and an upload that fails
    leaves nothing under the output's name."""
    fsspec = pytest.importorskip("fsspec")
    local_fs = fsspec.filesystem("file")
    make_inputs(tmp_path / "in")
    base = ["--images", str(tmp_path / "in"), "--pretrained", "conv-fast", "--no_progress"]
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the uploads wait
    monkeypatch.setattr("tempfile.tempdir", None)
    (tmp_path / "tmp").mkdir()
    remote = tmp_path / "bucket" / "enhanced"
    url = remote.as_uri()
    assert upscale.upscale_main(base + ["--out_dir", url]) == 1  # bad.png
    text = capsys.readouterr().out
    assert "3 written, 0 already done (skipped), 1 failed" in text
    assert f"wrote {url}/a.png (" in text and "allen-sr-upload" not in text, text  # the URL, not the upload
    assert sorted(p.name for p in remote.iterdir()) == folder_listing("a.png", "b.png", "c.jpg")
    assert not list((tmp_path / "tmp").glob("allen-sr-upload*"))
    assert upscale.upscale_main(base + ["--out_dir", str(tmp_path / "local")]) == 1
    for name in ("a.png", "b.png", "c.jpg"):
        assert (remote / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    capsys.readouterr()
    assert upscale.upscale_main(base + ["--out_dir", url]) == 1
    assert "0 written, 3 already done (skipped), 1 failed" in capsys.readouterr().out
    another = [a if a != "conv-fast" else "conv-cpu" for a in base]  # the records are read at the URL too
    assert upscale.upscale_main(another + ["--out_dir", url]) == 2
    assert "were made by another model (pretrained conv-fast)" in capsys.readouterr().err
    (remote / "a.png").write_bytes(b"")  # an empty file there is not a finished output
    assert upscale.upscale_main(base + ["--out_dir", url]) == 1
    assert "1 written, 2 already done (skipped), 1 failed" in capsys.readouterr().out
    assert (remote / "a.png").read_bytes() == (tmp_path / "local" / "a.png").read_bytes()

    (remote / "b.png").unlink()

    def broken_rename(self, path1, path2, **kwargs):
        raise OSError("connection reset while renaming")

    monkeypatch.setattr(type(local_fs), "mv", broken_rename)
    assert upscale.upscale_main(base + ["--out_dir", url]) == 1
    assert re.search(r"failed: .*b\.png: connection reset", capsys.readouterr().out)
    assert sorted(p.name for p in remote.iterdir()) == folder_listing("a.png", "c.jpg")  # no partial upload


def test_uncertainty_maps_in_folder_runs_are_planned_resumed_and_uploaded(tmp_path, capsys):
    """Maps beside each output: two inputs whose maps would share a name are refused before the
    work; an output without its maps (a run without --uncertainty, or stopped between them) is
    enlarged again; with a URL --out_dir the maps are uploaded beside the outputs."""
    pytest.importorskip("fsspec")
    (tmp_path / "in").mkdir()
    Image.fromarray(BRAIN[100:148, 200:248]).save(tmp_path / "in" / "x.png")
    Image.fromarray(BRAIN[300:348, 400:448]).save(tmp_path / "in" / "x.tif")
    base = ["--pretrained", "conv-probabilistic", "--no_progress"]
    assert upscale.upscale_main(base + ["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "o"),
                                        "--uncertainty"]) == 2
    err = capsys.readouterr().err.strip()
    assert "would both have their uncertainty maps at" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()

    one = ["--images", str(tmp_path / "in" / "x.png"), "--out_dir", str(tmp_path / "o")]
    assert upscale.upscale_main(base + one) == 0
    assert upscale.upscale_main(base + one + ["--uncertainty"]) == 0
    assert "1 written, 0 already done" in capsys.readouterr().out
    maps = ["x.uncertainty.png", "x.uncertainty.tif"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(folder_listing("x.png") + maps)
    assert upscale.upscale_main(base + one + ["--uncertainty"]) == 0
    assert "0 written, 1 already done" in capsys.readouterr().out

    remote = tmp_path / "bucket" / "maps"
    assert upscale.upscale_main(base + ["--images", str(tmp_path / "in" / "x.png"), "--out_dir", remote.as_uri(),
                                        "--uncertainty"]) == 0
    assert sorted(p.name for p in remote.iterdir()) == sorted(folder_listing("x.png") + maps)
    for name in ["x.png", "x.uncertainty.png"]:
        assert (remote / name).read_bytes() == (tmp_path / "o" / name).read_bytes(), name
    np.testing.assert_array_equal(tifffile.imread(remote / "x.uncertainty.tif"),
                                  tifffile.imread(tmp_path / "o" / "x.uncertainty.tif"))

    # an input named like another's heat map: its output would replace that map
    (tmp_path / "in" / "x.tif").unlink()
    Image.fromarray(BRAIN[300:348, 400:448]).save(tmp_path / "in" / "x.uncertainty.png")
    capsys.readouterr()
    assert upscale.upscale_main(base + ["--images", str(tmp_path / "in"), "--out_dir", str(tmp_path / "o2"),
                                        "--uncertainty"]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.uncertainty.png's output and" in err and "x.png's uncertainty map would both be" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o2").exists()


def root_cannot_write(folder: str) -> bool:
    """Whether no file can be created in ``folder`` (/sys: not even by root, whose permission bits always allow)."""
    try:
        with open(os.path.join(folder, f".allen-sr-test.{os.getpid()}"), "wb"):
            pass
    except OSError:
        return True
    os.remove(os.path.join(folder, f".allen-sr-test.{os.getpid()}"))
    return False


@pytest.mark.skipif(not root_cannot_write("/sys"), reason="/sys is writable here")
def test_output_and_preview_folders_that_cannot_be_created_are_named_with_their_flag_before_the_work(
        tmp_path, capsys):
    """As root, --out_dir /sys/x (or --preview_dir) passed the permission bits and failed after the model
    opened with "[Errno 1] Operation not permitted: '/sys/x'"; the Python API said the same."""
    from allen_sr.api import Upscaler
    from allen_sr.api.folders import upscale_folder
    from allen_sr.inference.writers import OutputError

    make_inputs(tmp_path / "in")
    base = ["--images", str(tmp_path / "in" / "a.png"), "--pretrained", "conv-fast", "--no_progress"]
    for extra, flag in ((["--out_dir", "/sys/allen-sr-o"], "--out_dir /sys/allen-sr-o"),
                        (["--out_dir", str(tmp_path / "o"), "--preview_dir", "/sys/allen-sr-p"],
                         "--preview_dir /sys/allen-sr-p")):
        assert upscale.upscale_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Errno" not in err, err
        assert f"{flag}: cannot create or write the folder (/sys is not writable" in err and "choose another" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    src = str(tmp_path / "in" / "a.png")
    with Upscaler.open("conv-fast") as up:
        with pytest.raises(OutputError, match=r"^cannot create the output folder /sys/allen-sr-o \(.+\); choose"):
            upscale_folder(up, [(src, Path("/sys/allen-sr-o/a.png"))], progress=False)
        with pytest.raises(OutputError, match=r"^cannot create the preview folder /sys/allen-sr-p \(.+\); choose"):
            upscale_folder(up, [(src, tmp_path / "o" / "a.png")], progress=False, preview_dir="/sys/allen-sr-p")
    assert not (tmp_path / "o" / "a.png").exists()
