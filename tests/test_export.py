"""`allen-sr export` and `--exported`: real tiny checkpoints, a real SavedModel, real ONNX (tf2onnx,
onnxruntime), real bioimage.io validation, and a real Python 3.12 venv without TensorFlow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from allen_sr.commands import evaluate as evaluate_cmd
from allen_sr.commands import upscale as upscale_cmd
from allen_sr.commands.args import ModelSpec
from allen_sr.commands.export import export, export_main
from allen_sr.decoding import checkpoints, support
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.one_pass import OnePassDecoder
from allen_sr.export.runtime import open_exported
from allen_sr.testing import tiny_training
from conftest import SAMPLE_IMAGES, run_in, tissue_image

PROBLEM = "img2img_allen_brain_dim8to32"
CONV = "img2img_conv_sr"
CONV_SET = "img2img_conv_sr_cpu"  # decode_tta=True: the 8-fold averaging goes into the graph
IT_SET = "img2img_allen_cpu_tiny"
IT_OVERRIDES = ("hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,num_decoder_layers=2,"
                "learning_rate_warmup_steps=1,learning_rate_constant=0.016,input_skip=True,normalize_inputs=True")
EVAL_TILES = 48


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("conv_run")
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, "hidden_size=8,num_res_blocks=1,learning_rate_warmup_steps=1")
    tiny_training.train_checkpoint(out, hp, steps=3, batch_size=4, model_name=CONV)
    return str(out)


@pytest.fixture(scope="module")
def conv_export(conv_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "conv"
    export(PROBLEM, CONV_SET, conv_run, out)
    return out


@pytest.fixture(scope="module")
def it_run(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("it_run")
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, IT_OVERRIDES)
    if hasattr(hp, "bicubic_prior"):  # the output head that reads evaluation.bicubic
        hp.bicubic_prior = True
    (tmp / "data").mkdir()
    (tmp / "data" / "img2img_allen_brain-stats.json").write_text(
        json.dumps({"mean": [200.0, 150.0, 170.0], "std": [30.0, 50.0, 40.0]}))
    hp.add_hparam("data_dir", str(tmp / "data"))
    tiny_training.train_checkpoint(tmp / "run", hp, steps=3, batch_size=2, seed=1, model_name=support.SKIP_MODEL)
    return str(tmp / "run")


@pytest.fixture(scope="module")
def it_export(it_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "it"
    export(PROBLEM, IT_SET, it_run, out)
    return out


def sample_tiles(n: int, seed: int = 0) -> np.ndarray:
    inputs, _, _ = evaluate_cmd.cut_pairs(evaluate_cmd.collect_images(SAMPLE_IMAGES), 32, 4, 3, n, seed)
    return inputs


# ---------------------------------------------------------------- the conv model: SavedModel, ONNX


def test_saved_model_and_onnx_serve_any_size_as_the_checkpoints_decoder(conv_run, conv_export):
    """uint8 [N, H, W, 3] of any size -> uint8 [N, 4H, 4W, 3], the 8-fold averaging inside: the
    SavedModel's serving signature (one call per image size) and the ONNX model (dynamic N/H/W,
    one input, one output) give exactly what the checkpoint's own decoder gives."""
    import onnxruntime as ort
    import tensorflow as tf

    config = json.loads((conv_export / "config.json").read_text())
    assert config["model"] == CONV and config["tta"] is True
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, "", conv_run)
    decoder = OnePassDecoder(hp, checkpoints.find_checkpoint(conv_run), target_shape=(None, None))
    assert decoder.tta
    serve = tf.saved_model.load(str(conv_export / "saved_model")).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    session = ort.InferenceSession(str(conv_export / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.type, out.type) == ("tensor(uint8)", "tensor(uint8)")
    assert all(isinstance(d, str) for d in inp.shape[:3]) and inp.shape[3] == 3
    rng = np.random.default_rng(0)
    for shape in [(2, 12, 20, 3), (1, 17, 9, 3)]:  # a batch of two, then another size
        x = rng.integers(0, 256, shape).astype(np.uint8)
        expected = decoder.decode(x)
        served = serve(image=tf.constant(x))["upscaled"].numpy()
        assert served.dtype == np.uint8 and served.shape == (shape[0], 4 * shape[1], 4 * shape[2], 3)
        np.testing.assert_array_equal(served, expected)
        np.testing.assert_array_equal(session.run(None, {inp.name: x})[0], expected)
    decoder.close()
    exported = open_exported(conv_export)
    assert not exported.decoder.reports_distributions  # a run trained without the probabilistic head
    with pytest.raises(ValueError, match="holds no distribution.onnx"):
        exported.decoder.decode(x, recorder=object())
    exported.close()


def test_fast_set_exports_to_onnx_with_its_sub_pixel_layout(tmp_path):
    """img2img_conv_sr_fast (upsample=input_res: bicubic as a fixed conv, one depth-to-space):
    its ONNX model gives what the checkpoint's decoder gives (which rounds the sub-pixels before
    rearranging them), up to float rounding (at most 1 grey level, rarely)."""
    import onnxruntime as ort

    fast = "img2img_conv_sr_fast"
    run = tmp_path / "run"
    tiny_training.train_checkpoint(run, checkpoints.load_hparams(fast, PROBLEM, "learning_rate_constant=0.05,"
                                                                 "degradation=none"),
                                   steps=3, batch_size=4, model_name=CONV)
    config = export(PROBLEM, fast, str(run), tmp_path / "export")
    assert config["degradation"] == "none"  # what the run trained with (its hparams.json), not the set's default
    decoder = OnePassDecoder(checkpoints.load_hparams(fast, PROBLEM, "", str(run)),
                             checkpoints.find_checkpoint(str(run)), target_shape=(None, None))
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (2, 13, 21, 3)).astype(np.uint8)
    try:
        expected = decoder.decode(x).astype(int)
        assert np.abs(expected - np.clip(np.rint(decoder.predict(x)), 0, 255)).max() == 0
    finally:
        decoder.close()
    diff = np.abs(session.run(None, {session.get_inputs()[0].name: x})[0].astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def test_the_training_inputs_a_model_saw_are_read_from_its_export_run_or_the_shipped_index(
        conv_run, conv_export, it_export, tmp_path):
    from allen_sr import pretrained
    from allen_sr.api.models import resolve, trained_degradation
    from allen_sr.data.degrade import REAL_INPUTS

    assert json.loads((conv_export / "config.json").read_text())["degradation"] == REAL_INPUTS
    assert trained_degradation(resolve(conv_export)) == REAL_INPUTS
    assert trained_degradation(resolve(it_export)) == REAL_INPUTS  # inside the exported hparams
    assert trained_degradation(resolve(conv_run, problem=PROBLEM, hparams_set=CONV_SET)) == REAL_INPUTS
    for shipped in pretrained.available():
        assert trained_degradation(resolve(shipped.name)) == shipped.info["degradation"], shipped.name
    older = tmp_path / "older_export"  # an export made before config.json recorded it
    older.mkdir()
    config = json.loads((conv_export / "config.json").read_text())
    del config["degradation"]
    (older / "config.json").write_text(json.dumps(config))
    assert trained_degradation(resolve(older)) is None
    older_it = tmp_path / "older_it_export"  # an Image Transformer's: its exported hparams still hold it
    older_it.mkdir()
    config = json.loads((it_export / "config.json").read_text())
    del config["degradation"]
    (older_it / "config.json").write_text(json.dumps(config))
    assert trained_degradation(resolve(older_it)) == REAL_INPUTS


def test_bioimageio_package_validates_offline_and_its_test_tensors_reproduce(conv_export, tmp_path):
    rdf = yaml.safe_load((conv_export / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5") and set(rdf["weights"]) >= {"onnx"}
    assert any("1802.05751" in c.get("doi", "") for c in rdf["cite"])  # Image Transformer (Parmar et al.)
    assert any("Tensor2Tensor" in c["text"] for c in rdf["cite"])
    assert "Allen Mouse Brain Atlas" in rdf["config"]["allen_sr"]["training_data"]
    assert rdf["training_data"]["name"] == "Allen Mouse Brain Atlas"  # inline: no dataset id to resolve
    for name in [rdf["documentation"], *rdf["covers"], rdf["inputs"][0]["test_tensor"]["source"],
                 rdf["outputs"][0]["test_tensor"]["source"], *(w["source"] for w in rdf["weights"].values())]:
        assert (conv_export / name).is_file(), name
    readme = (conv_export / rdf["documentation"]).read_text()
    assert f"`degradation={json.loads((conv_export / 'config.json').read_text())['degradation']}`" in readme
    assert "(global step 3)" in readme  # conv_run's 3 steps
    # Validation in a fresh process with every HTTP(S) request sent to a closed port: offline.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed,
           "https_proxy": closed, "NO_PROXY": "", "no_proxy": "", "BIOIMAGEIO_CACHE_PATH": str(tmp_path)}
    code = ("import sys; from bioimageio.spec import load_description\n"
            "d = load_description(sys.argv[1], perform_io_checks=True)\n"
            "print(d.validation_summary.status); print(d.validation_summary.format())")
    out = subprocess.run([sys.executable, "-c", code, str(conv_export / "rdf.yaml")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split("\n")[0] in ("valid-format", "passed"), out.stdout + out.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(conv_export / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(conv_export / rdf["inputs"][0]["test_tensor"]["source"])
    assert x.dtype == np.uint8 and x.ndim == 4
    np.testing.assert_array_equal(session.run(None, {"image": x})[0],
                                  np.load(conv_export / rdf["outputs"][0]["test_tensor"]["source"]))


# ---------------------------------------------------------------- refusals


def test_bioimageio_package_describes_the_images_of_its_problem(tmp_path):
    """A model of img2img_local_* (the user's own images) was described as brightfield brain
    sections and tagged mouse/brain; only the Allen problems' models are."""
    import shutil

    from allen_sr import pretrained
    from allen_sr.export.bioimageio import write_package

    shipped = pretrained.find("conv-fast").folder
    config = {**json.loads((shipped / "config.json").read_text()), "checkpoint": "model.ckpt-1"}
    assert config["problem"] == "img2img_local_dim8to32"
    for problem, folder in ((config["problem"], tmp_path / "local"), (PROBLEM, tmp_path / "allen")):
        folder.mkdir()
        shutil.copy(shipped / "model.onnx", folder / "model.onnx")
        rdf_path = write_package(folder, {**config, "problem": problem}, "model.onnx", None, "me")
        rdf = yaml.safe_load(rdf_path.read_text())
        readme = (folder / rdf["documentation"]).read_text()
        if problem == PROBLEM:
            assert "mouse brain sections" in rdf["description"] and {"mouse", "brain"} <= set(rdf["tags"])
            assert "mouse brain sections" in readme
        else:
            assert "brain" not in rdf["description"] and not {"mouse", "brain"} & set(rdf["tags"])
            assert "brain" not in readme.split("Training data:")[0]
            assert "brightfield microscopy images like the ones it was trained on" in rdf["description"]


def test_an_export_into_the_current_empty_folder(conv_run, tmp_path, monkeypatch):
    """--out . (an empty folder, as --help allows) died after the work: "PosixPath('.') has an empty name"."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert export_main(["--problem", PROBLEM, "--hparams_set", CONV_SET, "--output_dir", conv_run, "--out", "./"]) == 0
    assert (here / "config.json").is_file() and (here / "rdf.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_a_greyscale_models_package_says_greyscale(tmp_path):
    """Its tensors were described as "uint8 RGB image" (and its README's input as RGB)."""
    import onnx
    from onnx import TensorProto, helper

    from allen_sr.export.bioimageio import write_package

    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),  # nearest x4: a 1-channel stand-in
             helper.make_node("Resize", ["f", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "grey", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, None, None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None, None, None, 1])],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 4.0, 4.0, 1.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "model.onnx")
    config = {"name": "grey", "model": CONV, "hparams_set": CONV_SET, "problem": "img2img_allen_brain_dim8to32_grey",
              "input_size": 8, "target_size": 32, "channels": 1, "radius": 0, "tta": False,
              "checkpoint": "model.ckpt-1"}
    rdf = yaml.safe_load(write_package(tmp_path, config, "model.onnx", None, "me").read_text())
    said = [rdf["description"], rdf["inputs"][0]["description"], rdf["outputs"][0]["description"],
            (tmp_path / rdf["documentation"]).read_text().split("Training data:")[0]]
    assert all("greyscale" in text and "RGB" not in text for text in said), said
    assert rdf["inputs"][0]["axes"][-1]["channel_names"] == ["grey"]


@pytest.mark.parametrize("case", ["missing", "other_model", "conv_with_it_set", "it_with_conv_set"])
def test_export_refuses_a_foreign_or_missing_checkpoint_by_name(case, conv_run, it_run, tmp_path, capsys):
    argv = {
        "missing": ["--hparams_set", CONV_SET, "--output_dir", str(tmp_path / "nowhere")],
        "other_model": ["--hparams_set", CONV_SET, "--output_dir", conv_run, "--model", support.SKIP_MODEL],
        "conv_with_it_set": ["--hparams_set", IT_SET, "--output_dir", conv_run],
        "it_with_conv_set": ["--hparams_set", CONV_SET, "--output_dir", it_run],
    }[case]
    named = {"missing": str(tmp_path / "nowhere"), "other_model": support.SKIP_MODEL,
             "conv_with_it_set": IT_SET, "it_with_conv_set": CONV_SET}[case]
    out = tmp_path / "out"
    assert export_main(["--problem", PROBLEM, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("allen-sr export: error:") and named in err[0], err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("which", ["conv", "it"])
def test_a_damaged_checkpoint_is_named_with_the_older_intact_one_by_every_command(which, conv_run, it_run, tmp_path,
                                                                                  capsys):
    """A copy or a save cut short gave TensorFlow's traceback ("Read less bytes than requested", "Restoring
    from checkpoint failed"), exit 1, from each command that reads the run's weights."""
    run = tmp_path / "run"
    shutil.copytree(conv_run if which == "conv" else it_run, run)
    newest = checkpoints.find_checkpoint(run)
    for path in run.glob(os.path.basename(newest) + ".*"):  # an older step, whole
        shutil.copy(path, run / path.name.replace(os.path.basename(newest), "model.ckpt-1"))
    cut = max(run.glob(os.path.basename(newest) + ".data-*"), key=lambda p: p.stat().st_size)
    os.truncate(cut, 16)
    model = ["--problem", PROBLEM, "--hparams_set", CONV_SET if which == "conv" else IT_SET, "--output_dir", str(run)]
    image = ["--image", os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s044.png"), "--out", str(tmp_path / "u.png")]
    for main, argv in ((export_main, ["--out", str(tmp_path / "x")]), (upscale_cmd.upscale_main, image),
                       (evaluate_cmd.evaluate_main, ["--images", SAMPLE_IMAGES, "--out", str(tmp_path / "e")])):
        assert main(model + argv) == 2, main
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"checkpoint {newest} is damaged (a file of it is cut short" in err[0], err
        assert f"pass --output_dir {run / 'model.ckpt-1'} to use the newest intact one there" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    for path in [cut, *run.glob("model.ckpt-1.*")]:
        path.unlink()
    assert upscale_cmd.upscale_main(model + image) == 2
    err = capsys.readouterr().err.strip()
    assert f"is damaged ({cut.name} missing): copy the run again" in err and "\n" not in err, err


def test_an_out_where_no_folder_can_be_created_is_named_before_any_work(tmp_path, capsys):
    """As root, --out /sys/exp passed the checks and failed after the export's work with "[Errno 1] ...
    '/sys/.exp.PID.HEX.tmp'"; now before the run is even read (here: a run that does not exist)."""
    argv = ["--problem", PROBLEM, "--hparams_set", CONV_SET, "--output_dir", str(tmp_path / "none"),
            "--out", "/sys/allen-sr-exp"]
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Errno" not in err and ".tmp" not in err, err
    assert "--out /sys/allen-sr-exp: cannot create the folder (/sys is not writable" in err, err
    assert "choose another --out" in err


def test_export_reads_the_problem_and_set_from_the_runs_flags(it_run, tmp_path, capsys):
    """As decode, evaluate and upscale do: --problem and --hparams_set were required."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(it_run, run)
    out = tmp_path / "out"
    assert export_main(["--output_dir", str(run), "--out", str(out)]) == 2  # nothing records them
    assert "its problem and hparams_set are not recorded" in capsys.readouterr().err and not out.exists()
    (run / "flags.txt").write_text(f"--problem={PROBLEM}\n--hparams_set={IT_SET}\n--model=x\n")
    assert export_main(["--output_dir", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["problem"] == PROBLEM and config["hparams_set"] == IT_SET
    assert export_main(["--output_dir", "conv-cpu", "--out", str(tmp_path / "again")]) == 2
    assert "--output_dir conv-cpu is an exported model already" in capsys.readouterr().err


def test_exported_flags_refuse_a_missing_folder_and_mixed_flags(tmp_path, capsys):
    assert evaluate_cmd.evaluate_main(["--exported", str(tmp_path / "none"), "--images", SAMPLE_IMAGES,
                                       "--out", str(tmp_path / "e")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
    assert evaluate_cmd.evaluate_main(["--exported", str(tmp_path), "--problem", PROBLEM, "--images",
                                       SAMPLE_IMAGES, "--out", str(tmp_path / "e")]) == 2
    assert "leave out --problem" in capsys.readouterr().err
    assert evaluate_cmd.evaluate_main(["--output_dir", str(tmp_path), "--images", SAMPLE_IMAGES,
                                       "--out", str(tmp_path / "e")]) == 2
    assert "not a training run (no checkpoint)" in capsys.readouterr().err
    assert evaluate_cmd.evaluate_main(["--problem", PROBLEM, "--images", SAMPLE_IMAGES,
                                       "--out", str(tmp_path / "e")]) == 2
    assert "--exported DIR" in capsys.readouterr().err


SHIPPED = Path(__file__).resolve().parent.parent / "allen_sr" / "pretrained"


def damaged_copy(shipped: str, tmp_path: Path, damage) -> Path:
    """A copy of the shipped export ``shipped`` with ``damage(folder)`` done to it."""
    folder = tmp_path / f"{shipped}-damaged"
    shutil.copytree(SHIPPED / shipped, folder)
    damage(folder)
    return folder


def truncate(name: str):
    """Cut the file ``name`` to its first third, as an interrupted copy leaves it."""
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 3])
    return damage


def edit_config(**changes):
    """Set (a value) or drop (None) keys of config.json."""
    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                del config[key]
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return damage


def drop_variable(folder: Path) -> None:
    with np.load(folder / "weights.npz") as data:
        weights = {name: data[name] for name in data.files}
    del weights[sorted(name for name in weights if name.endswith("/bias"))[0]]
    np.savez(folder / "weights.npz", **weights)


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"allen-sr {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("case, shipped, damage, says", [
    ("onnx_truncated", "conv-fast", truncate("model.onnx"), "model.onnx is unreadable (InvalidProtobuf"),
    ("weights_truncated", "transformer-tiny", truncate("weights.npz"), "weights.npz is unreadable (BadZipFile"),
    ("weights_lack_a_variable", "transformer-tiny", drop_variable, "weights.npz does not hold the model config.json"),
    ("config_lacks_radius", "conv-fast", edit_config(radius=None), "config.json has no 'radius'"),
    ("config_lacks_tta", "conv-fast", edit_config(tta=None), "config.json has no 'tta'"),
    ("config_lacks_input_size", "conv-fast", edit_config(input_size=None), "config.json has no 'input_size'"),
    ("config_lacks_hparams", "transformer-tiny", edit_config(hparams=None), "config.json has no 'hparams'"),
    ("unknown_model", "conv-fast", edit_config(model="foo"), "config.json names model 'foo'"),
    ("no_model", "conv-fast", edit_config(model=None), "config.json names no model"),
])
def test_a_damaged_export_is_refused_in_one_line_naming_its_file(case, shipped, damage, says, tmp_path, capsys):
    """A truncated graph or weights file, weights that lack a variable, a config.json without a
    key its model needs or naming a model allen-sr does not run: `upscale` and `evaluate
    --exported` say which file of which folder, and to export again (exit 2, no traceback)."""
    folder = damaged_copy(shipped, tmp_path, damage)
    image = tmp_path / "in.png"
    Image.fromarray(tissue_image(24, 24)).save(image)
    expected = f"export folder {folder}: {says}"
    assert upscale_cmd.upscale_main(["--exported", str(folder), "--image", str(image),
                                     "--out", str(tmp_path / "out.png")]) == 2
    line = one_error_line(capsys, "upscale")
    assert expected in line and line.endswith("export again with `allen-sr export`"), line
    assert evaluate_cmd.evaluate_main(["--exported", str(folder), "--images", str(image), "--whole",
                                       "--out", str(tmp_path / "ev")]) == 2
    assert expected in one_error_line(capsys, "evaluate")
    assert not (tmp_path / "out.png").exists()


def test_a_probabilistic_export_reads_its_distribution_only_for_uncertainty_maps(tmp_path, capsys):
    """distribution.onnx is loaded when the uncertainty maps are asked for: without it (or with it
    truncated) a plain `upscale` writes the same picture as the whole export, and `upscale
    --uncertainty` refuses in one line naming the file, before any image of a folder is read (each
    image failed in turn, blamed for it), as does `upscale --check --uncertainty` (it said fine)."""
    image = tmp_path / "in.png"
    Image.fromarray(tissue_image(24, 24)).save(image)
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(tissue_image(24, 24)).save(tmp_path / "in" / name)

    def upscale(folder: Path, out: str, *flags: str) -> int:
        return upscale_cmd.upscale_main(["--exported", str(folder), "--image", str(image),
                                         "--out", str(tmp_path / out), "--no_progress", *flags])

    assert upscale(SHIPPED / "conv-probabilistic", "whole.png") == 0
    for name, damage, says in (("none", lambda f: (f / "distribution.onnx").unlink(), "is missing; export again"),
                               ("truncated", truncate("distribution.onnx"), "is unreadable (InvalidProtobuf")):
        folder = damaged_copy("conv-probabilistic", tmp_path / name, damage)
        capsys.readouterr()
        assert upscale(folder, f"{name}.png") == 0, capsys.readouterr().err
        assert (tmp_path / f"{name}.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
        assert upscale(folder, f"{name}_u.png", "--uncertainty") == 2
        line = one_error_line(capsys, "upscale")
        assert f"export folder {folder}: distribution.onnx {says}" in line, line
        for flags in (["--out_dir", str(tmp_path / f"{name}_out")], ["--check"]):
            assert upscale_cmd.upscale_main(["--exported", str(folder), "--images", str(tmp_path / "in"),
                                             "--no_progress", "--uncertainty", *flags]) == 2
            line = one_error_line(capsys, "upscale")
            assert f"export folder {folder}: distribution.onnx {says}" in line, line
        assert not (tmp_path / f"{name}_out").exists()


# ---------------------------------------------------------------- the TF-free install (Python 3.12)


@pytest.mark.slow
def test_exported_models_run_on_python_312_without_tensorflow(py312, conv_run, conv_export, it_run,
                                                              it_export, tmp_path):
    """In a Python 3.12 venv of requirements/predict.txt + `pip install --no-deps .` (no
    TensorFlow, no tensor2tensor): `allen-sr evaluate --exported` scores the conv model's PSNR
    as the full install scores the checkpoint (within 0.05 dB), on ideal and on --degrade inputs,
    `upscale --exported` writes the same image, and the exported Image Transformer decodes to the
    full stack's greedy values."""
    probe = run_in(py312, "-c", "import importlib.util as u, sys; print(sys.version_info[:2], "
                   "u.find_spec('tensorflow'), u.find_spec('tensor2tensor'))")
    assert probe.stdout.strip() == "(3, 12) None None"
    allen_sr = str(py312.parent / "allen-sr")
    # evaluate: the checkpoint with the full stack, the export in the 3.12 venv; ideal and real inputs
    spec = ModelSpec(problem=PROBLEM, hparams_set=CONV_SET, output_dir=conv_run)
    for degrade in (None, "blur=1,noise=2,jpeg=80"):
        full = evaluate_cmd.evaluate(spec, SAMPLE_IMAGES, tmp_path / "full", EVAL_TILES, progress=False,
                                     degrade=degrade)
        subprocess.run([allen_sr, "evaluate", "--exported", str(conv_export), "--images", SAMPLE_IMAGES,
                        "--max_tiles", str(EVAL_TILES), "--out", str(tmp_path / "light"), "--no_progress",
                        *(["--degrade", degrade] if degrade else [])],
                       check=True, capture_output=True, cwd="/")
        light = json.loads((tmp_path / "light" / "metrics.json").read_text())
        assert light["tiles"] == full["tiles"] == EVAL_TILES and light["degrade"] == full["degrade"] == degrade
        gap = abs(light["methods"]["model"]["psnr"] - full["methods"]["model"]["psnr"])
        print(f"{degrade}: PSNR full {full['methods']['model']['psnr']} exported "
              f"{light['methods']['model']['psnr']} gap {gap:.4f} dB")
        assert gap <= 0.05
        assert light["methods"]["bicubic"] == full["methods"]["bicubic"]  # the same degraded inputs
    # upscale: same tiling, blending and writer
    image = os.path.join(SAMPLE_IMAGES, "other_skimage_ihc_colon_DAB.png")
    region = ["--image", image, "--width", "150", "--height", "100", "--tile", "64", "--no_progress",
              "--preview_size", "0"]
    upscale_cmd.upscale_main(["--problem", PROBLEM, "--hparams_set", CONV_SET, "--output_dir", conv_run,
                              *region, "--out", str(tmp_path / "full.tif")])
    subprocess.run([allen_sr, "upscale", "--exported", str(conv_export), *region, "--out",
                    str(tmp_path / "light.tif")], check=True, capture_output=True, cwd="/")
    import tifffile

    a, b = (tifffile.imread(tmp_path / n).astype(int) for n in ("full.tif", "light.tif"))
    assert a.shape == b.shape == (400, 600, 3)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3  # rounded before blending: a level at most
    # the Image Transformer: greedy values of the exported NumPy decoder equal the full stack's
    inputs = sample_tiles(3)
    np.save(tmp_path / "inputs.npy", inputs)
    code = ("import sys, numpy as np; from allen_sr.export.runtime import open_exported\n"
            "m = open_exported(sys.argv[1]); x = np.load(sys.argv[2])\n"
            "np.save(sys.argv[3], m.decoder.decode(x, mode='greedy'))\n"
            "print('tensorflow' in sys.modules, 'tensor2tensor' in sys.modules)")
    out = run_in(py312, "-c", code, str(it_export), str(tmp_path / "inputs.npy"), str(tmp_path / "it.npy"))
    assert out.stdout.split() == ["False", "False"]
    hp = checkpoints.load_hparams(IT_SET, PROBLEM, "", it_run)
    expected = FastDecoder.from_checkpoint(hp, it_run, support.SKIP_MODEL).decode(inputs, mode="greedy")
    got = np.load(tmp_path / "it.npy")
    assert len(np.unique(expected)) > 8  # a real decode, not a constant canvas
    np.testing.assert_array_equal(got, expected)
