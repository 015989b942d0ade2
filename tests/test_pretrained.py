"""The shipped pretrained models, `allen-sr models`, `from allen_sr import Upscaler` and
`allen-sr upscale` without model flags: the real shipped ONNX files, real images never trained on."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr import pretrained
from allen_sr.api import Upscaler
from allen_sr.api.models import ModelNotFoundError, resolve
from allen_sr.api.upscaler import InputImageError
from allen_sr.commands import models as models_cmd
from allen_sr.commands import upscale as upscale_cmd
from allen_sr.data.images import load_image
from allen_sr.errors import InvalidInputError, UserError
from conftest import REPO, SAMPLE_IMAGES

HELD_OUT_BRAIN = os.path.join(SAMPLE_IMAGES, "other_deepslice_GLTa_s094.png")
MAX_FILE_MB, MAX_TOTAL_MB = 5.0, 15.0
SHIPPED = pretrained.MODELS_DIR


def make_pretrained_script():
    spec = importlib.util.spec_from_file_location("make_pretrained", Path(REPO) / "scripts" / "make_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped():
    models = pretrained.available()
    assert models, f"no pretrained models in {pretrained.MODELS_DIR}: run `make pretrained`"
    return models


def test_the_shipped_models_fit_the_size_budget_and_have_cards(shipped):
    names = {m.name for m in shipped}
    assert {"conv-cpu", "conv-fast", "transformer-tiny", "conv-probabilistic"} <= names
    assert [m.name for m in shipped if m.default] == ["conv-cpu"] == [pretrained.default_name()]
    total = 0
    for m in shipped:
        for f in m.folder.iterdir():
            assert f.stat().st_size <= MAX_FILE_MB * 1e6, f
            total += f.stat().st_size
        card = m.card.read_text()
        for section in ("## Training", "## Measured quality", "## Intended use and limits", "LICENSES.md",
                        m.info["hparams_set"], f"{m.info['steps']} steps"):
            assert section in card, (m.name, section)
        config = json.loads((m.folder / "config.json").read_text())
        assert "checkpoint" not in config  # no path of the machine that made it
    assert total <= MAX_TOTAL_MB * 1e6


@pytest.mark.parametrize("name", ["conv-cpu", "conv-fast", "conv-probabilistic"])
def test_measured_quality_in_models_json_is_what_the_shipped_files_give(name):
    """Rechecks the card's numbers (held-out brain and IHC, clean and JPEG 75) with the shipped
    files, as scripts/make_pretrained.py measures them; the default model meets the goals."""
    script = make_pretrained_script()
    recorded = pretrained.find(name).info["quality"]
    measured = script.measure(name)
    for image, kinds in recorded.items():
        for kind, q in kinds.items():
            assert abs(measured[image][kind]["gain_db"] - q["gain_db"]) <= 0.02, (image, kind)
    if name == "conv-cpu":
        assert measured["brain"]["clean"]["gain_db"] >= 1.0
        assert measured["brain"]["JPEG 75"]["gain_db"] >= 0.0


def test_the_measurement_never_uses_a_training_image():
    script = make_pretrained_script()
    held_out = {Path(file).stem for file, _ in script.HELD_OUT.values()}
    for m in pretrained.available():
        seen = set(m.info["train_images"]) | set(m.info["dev_images"])
        assert seen and not seen & held_out, m.name
        layout = script.LAYOUTS[m.info["layout"]]
        assert seen == {Path(n).stem for n in (*layout["train"], *layout["dev"])}


@pytest.mark.parametrize("name", ["transformer-tiny", "conv-probabilistic"])
def test_the_shipped_models_with_distributions_give_calibrated_maps_without_tensorflow(name):
    """Their calibration was fitted on their dev split (brain tissue, never the held-out section),
    in the mode they decode in, and travels in their config; a map comes with the prediction."""
    model = pretrained.find(name)
    config = json.loads((model.folder / "config.json").read_text())
    assert "dev split" in config["uncertainty"]["fitted_on"] and config["uncertainty"]["tiles"] > 0
    assert config["uncertainty"]["mode"] == config["decode_mode"]
    assert model.info["uncertainty"]["coverage_50"] > 0
    small = load_image(HELD_OUT_BRAIN)[300:312, 500:516]
    with Upscaler.open(name) as up:
        image, sd = up.predict(small, uncertainty=True)
        assert up.calibration.temperature == config["uncertainty"]["temperature"]
    assert image.shape == (48, 64, 3) and sd.shape == (48, 64) and 0 < sd.mean() < 60


def test_allen_sr_models_lists_name_purpose_size_data_and_quality(shipped, capsys):
    assert models_cmd.models_main([]) == 0
    out = capsys.readouterr().out
    for m in shipped:
        line = next(row for row in out.splitlines() if row.startswith(m.name))
        assert f"{m.size_bytes / 1e6:.1f} MB" in line and m.purpose in line
        assert f"{m.gain_db('brain', 'clean'):+.2f} dB" in line
    assert "conv-cpu (default)" in out
    for m in shipped:  # which data each model trained on, one line per training set
        trained = next(row for row in out.splitlines() if row.startswith("  ") and m.name in row.split(":")[0])
        assert trained.endswith(": " + ", ".join(m.info["train_images"])), trained
    assert "another stain: fine-tune one on your images (allen-sr train --init_from NAME" in out
    assert models_cmd.models_main(["--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == {m.name for m in shipped}


def test_upscale_without_model_flags_is_the_default_model_and_predict_gives_its_pixels(tmp_path, capsys):
    """`allen-sr upscale --image IN --out OUT` with no model flags uses conv-cpu; the Python API
    gives the same pixels for the same array; --pretrained picks another model."""
    small = load_image(HELD_OUT_BRAIN)[200:392, 300:556]  # 192 x 256 px input
    Image.fromarray(small).save(tmp_path / "in.png")
    assert upscale_cmd.upscale_main(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "out.png"),
                                     "--no_progress"]) == 0
    assert "pretrained conv-cpu" in capsys.readouterr().out
    cli = np.asarray(Image.open(tmp_path / "out.png"))
    with Upscaler.open() as up:
        assert up.source == "pretrained conv-cpu" and up.factor == 4 and up.channels == 3
        api = up.predict(small)
    assert api.shape == cli.shape == (768, 1024, 3) and api.dtype == np.uint8
    assert np.abs(api.astype(int) - cli).mean() <= 0.5
    assert (tmp_path / "out.compare.png").exists()
    assert upscale_cmd.upscale_main(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "fast.png"),
                                     "--pretrained", "conv-fast", "--no_progress", "--preview_size", "0"]) == 0
    with Upscaler.open("conv-fast") as up:
        np.testing.assert_array_equal(up.predict(small), np.asarray(Image.open(tmp_path / "fast.png")))


def test_predict_takes_grey_rgba_and_12_bit_and_refuses_other_arrays():
    rgb = load_image(HELD_OUT_BRAIN)[100:140, 100:160]
    with Upscaler.open("conv-fast") as up:
        grey = up.predict(rgb[..., 1])
        assert grey.shape == (160, 240, 3)
        np.testing.assert_array_equal(grey, up.predict(np.repeat(rgb[..., 1:2], 3, axis=2)))
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)  # opaque: its RGB
        np.testing.assert_array_equal(up.predict(rgba), up.predict(rgb))
        camera = np.rint(rgb * (4095 / 255)).astype(np.uint16)  # a 12-bit camera's samples in uint16
        with pytest.warns(UserWarning, match="12-bit"):
            np.testing.assert_array_equal(up.predict(camera), up.predict(rgb))
        dark = camera[..., 1].copy()
        dark[:, :3] //= 8  # the image's first columns dark: its white level is still the whole image's
        with pytest.warns(UserWarning, match="12-bit"):
            np.testing.assert_array_equal(up.predict(dark), up.predict(np.rint(dark * (255 / 4095)).astype(np.uint8)))
        for bad in (rgb.astype(np.int16), rgb[..., :5].repeat(2, axis=2), rgb[None]):
            with pytest.raises(InputImageError, match="expected"):
                up.predict(bad)
    with pytest.raises(UserError, match="closed"):
        up.predict(rgb)


def test_predict_of_a_transparent_image_gives_the_cli_s_pixels_and_says_so(tmp_path, capsys):
    """An RGBA array is put on white as `allen-sr upscale` puts the same RGBA PNG (not its alpha
    dropped, which shows what lies under transparent pixels), and both say so."""
    rgb = load_image(HELD_OUT_BRAIN)[200:264, 300:396]  # tissue under the transparent columns
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[:, :30], alpha[:, 30:50] = 0, 128
    rgba = np.concatenate([rgb, alpha], axis=2)
    Image.fromarray(rgba).save(tmp_path / "in.png")
    assert upscale_cmd.upscale_main(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "out.png"),
                                     "--pretrained", "conv-fast", "--no_progress", "--preview_size", "0"]) == 0
    with Upscaler.open("conv-fast") as up:
        with pytest.warns(UserWarning, match="image: transparent pixels put on white"):
            api = up.predict(rgba)
        np.testing.assert_array_equal(api, np.asarray(Image.open(tmp_path / "out.png")))
        assert not np.array_equal(api, up.predict(rgb))


def test_predict_file_writes_a_region_and_the_preview_where_asked(tmp_path):
    with Upscaler.open("conv-fast") as up:
        summary = up.predict_file(HELD_OUT_BRAIN, tmp_path / "r.tif", region=(100, 50, 120, 80),
                                  preview_size=32, preview_to=tmp_path / "previews")
        # the region is predicted with the pixels around it: the crop of the whole image's output,
        # but for rounding where the tiles sit elsewhere (tests/test_upscale_region.py)
        whole = up.predict(load_image(HELD_OUT_BRAIN))[50 * 4:130 * 4, 100 * 4:220 * 4]
    import tifffile

    region = tifffile.imread(tmp_path / "r.tif")
    assert region.shape == whole.shape and np.abs(region.astype(int) - whole).max() <= 1
    assert summary["width"] == 480 and summary["height"] == 320
    assert Path(summary["preview"]) == tmp_path / "previews" / "r.compare.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previews", "r.tif"]
    # NumPy integers are whole numbers of px; 12.5 px is not (both failed deep inside, in TypeErrors).
    with Upscaler.open("conv-fast") as up:
        up.predict_file(HELD_OUT_BRAIN, tmp_path / "n.tif", region=tuple(np.array([100, 50, 120, 80])))
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "n.tif"), region)
        with pytest.raises(UserError, match="whole numbers"):
            up.predict_file(HELD_OUT_BRAIN, tmp_path / "f.tif", region=(100, 50, 60.5, 80))
    (tmp_path / "n.tif").unlink()
    for bad in ({"tile": 0}, {"batch_tiles": -1}):  # 0 meant "the default", -1 failed in NumPy
        with pytest.raises(UserError, match=f"{next(iter(bad))} .* must be >= 1"):
            Upscaler.open("conv-fast", **bad)
    for bad in ({"tile": 50.5}, {"overlap": 10.5}, {"batch_tiles": 2.5}, {"tile": "64"}):  # TypeErrors deep inside
        with pytest.raises(UserError, match=f"{next(iter(bad))}={next(iter(bad.values()))!r} .*: give a whole number"):
            Upscaler.open("conv-fast", **bad)
    with Upscaler.open("conv-fast", tile=np.int64(64)) as up, pytest.raises(UserError, match="pixel size 0.5 um"):
        up.predict_file(HELD_OUT_BRAIN, tmp_path / "p.tif", pixel_size_um="0.5")
    # A file where the preview folder should be: named before the work (it failed after it).
    with Upscaler.open("conv-fast") as up, pytest.raises(UserError, match="preview folder .*r.tif: a file"):
        up.predict_file(HELD_OUT_BRAIN, tmp_path / "o.tif", preview_size=32, preview_to=tmp_path / "r.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previews", "r.tif"]


def test_open_names_what_is_wrong(tmp_path):
    with pytest.raises(ModelNotFoundError, match="conv-cpu") as err:
        Upscaler.open("no-such-model")
    assert isinstance(err.value, UserError)
    with pytest.raises(pretrained.UnknownModelError, match="shipped: conv-cpu"):
        pretrained.find("nope")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1"\n')
    with pytest.raises(UserError, match="problem and hparams_set are not recorded"):
        resolve(tmp_path / "run")
    with pytest.raises(TypeError, match="unknown model options: tiles"):
        resolve(None, tiles=3)


def damaged_install(tmp_path, monkeypatch, damage):
    """A copy of the shipped models' package data (models.json copied, model folders linked, the
    default conv-cpu copied), damaged by ``damage(copy)``; allen_sr.pretrained reads it instead."""
    copy = tmp_path / "pretrained"
    copy.mkdir(parents=True)
    (copy / pretrained.INDEX_NAME).write_bytes((SHIPPED / pretrained.INDEX_NAME).read_bytes())
    for folder in (f for f in SHIPPED.iterdir() if f.is_dir() and f.name != "__pycache__"):
        if folder.name == "conv-cpu":
            shutil.copytree(folder, copy / folder.name)
        else:
            (copy / folder.name).symlink_to(folder)
    damage(copy)
    monkeypatch.setattr(pretrained, "MODELS_DIR", copy)
    return copy


def test_damaged_package_data_is_named_with_reinstall_and_the_default_never_switches(tmp_path, capsys, monkeypatch):
    """models.json cut short gave a JSONDecodeError traceback (`allen-sr models`, even
    Upscaler.open of an export folder); a listed model without its config.json made plain `upscale`
    use the next model as the default, and `--pretrained` of it said it was not shipped."""
    export = pretrained.find("conv-fast").folder  # the real one: an export folder needs no models.json
    image = tmp_path / "in.png"
    Image.fromarray(load_image(HELD_OUT_BRAIN)[:40, :40]).save(image)
    index = damaged_install(tmp_path / "a", monkeypatch,
                            lambda c: (c / "models.json").write_text((c / "models.json").read_text()[:3000]))
    index = index / "models.json"
    assert models_cmd.models_main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"allen-sr models: error: {index}: the list of shipped models is damaged (Expecting") \
        and err.endswith("; reinstall allen-sr") and len(err.splitlines()) == 1, err
    with pytest.raises(pretrained.DamagedInstallError, match="reinstall allen-sr"):
        Upscaler.open()
    with Upscaler.open(export) as up:
        assert up.predict(np.zeros((16, 16, 3), np.uint8)).shape == (64, 64, 3)

    config = damaged_install(tmp_path / "b", monkeypatch, lambda c: (c / "conv-cpu" / "config.json").unlink())
    config = config / "conv-cpu" / "config.json"
    for flags in ([], ["--pretrained", "conv-cpu"]):
        assert upscale_cmd.upscale_main(["--image", str(image), "--out", str(tmp_path / "o.png")] + flags) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"allen-sr upscale: error: {config}: the shipped model conv-cpu listed in models.json is "
                       "incomplete (no such file); reinstall allen-sr"), err
    assert not (tmp_path / "o.png").exists()


def test_upscale_flags_refuse_two_models_and_a_partial_one(tmp_path, capsys):
    base = ["--image", HELD_OUT_BRAIN, "--out", str(tmp_path / "o.png")]
    assert upscale_cmd.upscale_main(base + ["--pretrained", "conv-fast", "--exported", str(tmp_path)]) == 2
    assert "--pretrained conv-fast is the whole model: leave out --exported" in capsys.readouterr().err
    assert upscale_cmd.upscale_main(base + ["--pretrained", "nope"]) == 2
    assert "no pretrained model 'nope'" in capsys.readouterr().err
    assert upscale_cmd.upscale_main(base + ["--problem", "img2img_local_dim8to32"]) == 2
    assert "--hparams_set, --output_dir required" in capsys.readouterr().err
    assert upscale_cmd.upscale_main(base + ["--model", "conv-fast"]) == 2  # the shipped model's name
    assert "for the shipped model pass --pretrained conv-fast" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_importing_and_using_the_api_loads_no_tensorflow():
    code = ("import sys, numpy as np\nfrom allen_sr import Upscaler\n"
            "x = np.full((20, 24, 3), 128, np.uint8)\n"
            "with Upscaler.open() as up: y = up.predict(x)\n"
            "print(y.shape, 'tensorflow' in sys.modules, 'tensor2tensor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split("\n")[0] == "(80, 96, 3) False False"


@pytest.mark.slow
def test_the_tf_free_install_enhances_held_out_brain_with_no_training(py312, tmp_path, server):
    """Python 3.12, requirements/predict.txt, `pip install --no-deps .` (no TensorFlow, nothing
    trained): `allen-sr upscale --image IN --out OUT` beats bicubic by >= 1.0 dB on the brain
    section never trained on, x4 from its area average, and does no harm on the same input saved
    as JPEG 75; `Upscaler.open().predict` there gives the CLI's pixels; `allen-sr models` lists them."""
    from allen_sr.data.tiles import area_downsample
    from allen_sr.evaluation import metrics
    from conftest import run_in

    allen_sr = str(py312.parent / "allen-sr")
    target = load_image(HELD_OUT_BRAIN)
    target = target[:target.shape[0] // 4 * 4, :target.shape[1] // 4 * 4]
    small = area_downsample(target, 4)
    Image.fromarray(small).save(tmp_path / "clean.png")
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "JPEG", quality=75)
    (tmp_path / "jpeg75.jpg").write_bytes(buffer.getvalue())
    run_in(py312, "-m", "allen_sr.cli", "upscale", "--check", "--images", str(tmp_path / "*"), "--report",
           str(tmp_path / "check.json"), "--no_progress")  # both within the training: exit 0
    checked = json.loads((tmp_path / "check.json").read_text())["images"]
    assert [(row["jpeg_quality"], row["within_training"]) for row in checked] == [(None, True), (75, True)]
    gains = {}
    for name in ("clean.png", "jpeg75.jpg"):
        out = tmp_path / f"{name}.x4.png"
        run_in(py312, "-m", "allen_sr.cli", "upscale", "--image", str(tmp_path / name), "--out", str(out),
               "--no_progress")
        low = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        gains[name] = (metrics.psnr(np.asarray(Image.open(out)), target)
                       - metrics.psnr(metrics.upscale(low, 4, "bicubic"), target))
    print(f"TF-free install, default model, held-out brain: gain {gains}")
    assert gains["clean.png"] >= 1.0 and gains["jpeg75.jpg"] >= 0.0
    code = ("import sys, numpy as np; from PIL import Image; from allen_sr import Upscaler\n"
            "y = Upscaler.open().predict(np.asarray(Image.open(sys.argv[1])))\n"
            "np.save(sys.argv[2], y); print('tensorflow' in sys.modules, 'onnxruntime' in sys.modules)")
    out = run_in(py312, "-c", code, str(tmp_path / "clean.png"), str(tmp_path / "api.npy"))
    assert out.stdout.split() == ["False", "True"]
    api = np.load(tmp_path / "api.npy")
    assert np.abs(api.astype(int) - np.asarray(Image.open(tmp_path / "clean.png.x4.png"))).mean() <= 0.5
    listed = subprocess.run([allen_sr, "models"], capture_output=True, text=True, check=True, cwd="/").stdout
    assert "conv-cpu (default)" in listed and "conv-fast" in listed
    site = run_in(py312, "-c", "import allen_sr.pretrained as p; print(p.MODELS_DIR)").stdout.strip()
    assert "site-packages" in site  # package data of a normal install, not this checkout
    # the probabilistic conv model's second graph is package data too: maps without TensorFlow
    Image.fromarray(small[60:100, 100:160]).save(tmp_path / "region.png")
    run_in(py312, "-m", "allen_sr.cli", "upscale", "--pretrained", "conv-probabilistic", "--image",
           str(tmp_path / "region.png"), "--out", str(tmp_path / "region.tif"), "--uncertainty", "--no_progress")
    sd_map = tifffile.imread(tmp_path / "region.uncertainty.tif")
    assert sd_map.shape == (160, 240) and 0 < sd_map.mean() < 60
    # an Allen section by id: the download needs requests, which the install has ("needs the full install" before)
    server.add_image(4242, width=200, height=160)
    run_in(py312, "-m", "allen_sr.cli", "upscale", "--pretrained", "conv-fast", "--image_id=4242", "--downsample=1",
           f"--api_base={server.api_base}", "--download_dir", str(tmp_path / "allen"), "--out",
           str(tmp_path / "section.tif"), "--no_progress")
    assert tifffile.imread(tmp_path / "section.tif").shape == (320, 400, 3)
    # a training run there: one line saying what it needs (a ModuleNotFoundError traceback before)
    run = tmp_path / "run"
    run.mkdir()
    (run / "flags.txt").write_text("--problem=img2img_local_dim8to32\n--hparams_set=img2img_conv_sr_cpu\n")
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1"\n')
    code = ("from allen_sr import Upscaler; from allen_sr.errors import UserError\n"
            "try:\n    Upscaler.open(__import__('sys').argv[1])\nexcept UserError as exc:\n    print(exc)")
    said = run_in(py312, "-c", code, str(run)).stdout
    assert "a training run's checkpoint needs TensorFlow" in said and "export the run" in said, said


def test_evaluate_names_images_that_share_a_stem_and_keeps_its_pictures_out_of_the_images(tmp_path, capsys):
    """x.png beside x.jpg, or slides/*/x.png: results named by file or folder (a ValueError traceback
    after all the scoring); an --out among the images is refused (the next run scored grid.png)."""
    import csv

    from allen_sr.commands import evaluate

    brain = load_image(HELD_OUT_BRAIN)
    (tmp_path / "same").mkdir()
    Image.fromarray(brain[100:228, 120:248]).save(tmp_path / "same" / "x.png")
    Image.fromarray(brain[300:428, 300:428]).save(tmp_path / "same" / "x.jpg", quality=95)
    for folder in ("a", "b"):
        (tmp_path / "nested" / folder).mkdir(parents=True)
        Image.fromarray(brain[100:228, 120:248]).save(tmp_path / "nested" / folder / "x.png")
    base = ["--pretrained", "conv-fast", "--no_progress"]
    for images, extra, names in ((tmp_path / "same", ["--whole"], {"x.jpg", "x.png"}),
                                 (tmp_path / "nested" / "*" / "x.png", ["--max_tiles", "0", "--seed", "2"],
                                  {os.path.join("a", "x.png"), os.path.join("b", "x.png")})):
        out = tmp_path / f"out{len(extra)}"  # --seed also picks evaluate's tiles: not refused for conv
        assert evaluate.evaluate_main(base + ["--images", str(images), "--out", str(out), *extra]) == 0
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {row["example"].split("@")[0] for row in rows} == names
    assert evaluate.evaluate_main(base + ["--images", str(tmp_path / "same"), "--out", str(tmp_path / "same")]) == 2
    assert "holds 2 of the images evaluated" in capsys.readouterr().err


def test_evaluate_whole_scores_whole_images_as_upscale_enlarges_them(tmp_path, capsys):
    """`allen-sr evaluate --whole`: each image reduced by its area average (or --degrade), enlarged
    whole through the Upscaler, scored whole beside bicubic of the same input: the model card's
    protocol, on any folder."""
    from allen_sr.commands import evaluate
    from allen_sr.data.degrade import degrade_image, parse_fixed
    from allen_sr.evaluation import metrics

    folder = tmp_path / "in"
    folder.mkdir()
    brain = load_image(HELD_OUT_BRAIN)
    crops = {"a": brain[100:302, 120:383], "b": brain[400:560, 300:500]}  # sides not all multiples of 4
    for name, crop in crops.items():
        Image.fromarray(crop).save(folder / f"{name}.png")
    Image.fromarray(brain[:16, :40]).save(folder / "small.png")  # too small for SSIM after the border crop
    Image.fromarray(brain[:20, :40]).save(folder / "narrow.png")  # big enough for SSIM; its input (5 px) not
    for degrade in (None, "noise=3,jpeg=75"):
        out = tmp_path / f"out_{degrade}"
        argv = ["--pretrained", "conv-fast", "--images", str(folder), "--whole", "--out", str(out), "--no_progress"]
        with pytest.warns(UserWarning) as skipped:
            assert evaluate.evaluate_main(argv + (["--degrade", degrade] if degrade else [])) == 0
        assert sorted(str(w.message).split(":")[0].rsplit("/", 1)[-1] for w in skipped) == ["narrow.png", "small.png"]
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["images"] == 2 and "tiles" not in summary and summary["degrade"] == degrade
        assert summary["seed"] == 0 and summary["max_tiles"] is None  # the seed of --degrade's noise
        assert "whole images" in summary["protocol"] and "4 px cropped" in summary["protocol"]
        assert "per image, averaged over images" in summary["protocol"] and "per tile" not in summary["protocol"]
        with Upscaler.open("conv-fast") as up:
            for index, name in enumerate(sorted(crops)):
                target = crops[name][:crops[name].shape[0] // 4 * 4, :crops[name].shape[1] // 4 * 4]
                steps = parse_fixed(degrade) if degrade else []
                small = degrade_image(target, 4, steps, seed=index)  # per image, with --seed 0
                rows = {r.split(",")[1]: float(r.split(",")[2]) for r in (out / "metrics.csv").read_text().splitlines()
                        if r.startswith(f"{name},")}
                assert rows["model"] == pytest.approx(metrics.psnr(up.predict(small), target), abs=1e-5)
                assert rows["bicubic"] == pytest.approx(metrics.psnr(metrics.upscale(small, 4), target), abs=1e-5)
        assert summary["methods"]["model"]["psnr"] > summary["methods"]["bicubic"]["psnr"]
        assert summary["methods"]["model"]["psnr_y"] > summary["methods"]["bicubic"]["psnr_y"]
        assert Image.open(out / "grid.png").width > 4 * 128
        assert "(2 images)" in capsys.readouterr().out
    argv = ["--pretrained", "conv-fast", "--images", str(folder), "--whole", "--uncertainty",
            "--out", str(tmp_path / "u")]
    assert evaluate.evaluate_main(argv) == 2
    assert "--uncertainty scores tiles, --whole whole images" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()


def test_evaluate_whole_skips_images_without_tissue_and_says_how_many(tmp_path, capsys):
    """A blank (all-white) image beside tissue: it would score near the 100 dB cap for every method and
    decide the mean; it is skipped, named in one warning, and counted in metrics.json and its protocol."""
    from allen_sr.commands import evaluate

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(load_image(HELD_OUT_BRAIN)[100:302, 120:383]).save(folder / "tissue.png")
    Image.fromarray(np.full((200, 200, 3), 255, np.uint8)).save(folder / "white.png")
    out = tmp_path / "out"
    argv = ["--pretrained", "conv-fast", "--images", str(folder), "--whole", "--out", str(out), "--no_progress"]
    with pytest.warns(UserWarning) as warned:
        assert evaluate.evaluate_main(argv) == 0
    assert [str(w.message) for w in warned] == ["skipped 1 image without tissue (under 20% tissue pixels, the "
                                                "tile filter's test): white"]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["images"] == 1 and summary["skipped_without_tissue"] == 1
    assert "1 image without tissue" in summary["protocol"] and "white" not in (out / "metrics.csv").read_text()
    assert summary["methods"]["model"]["psnr"] > summary["methods"]["bicubic"]["psnr"]
    assert "(1 image)" in capsys.readouterr().out and "(1 image)" in (out / "metrics.md").read_text()


def test_evaluating_from_python_into_a_file_is_refused_before_decoding(tmp_path):
    """evaluate()/evaluate_whole() with an out_dir that is a file: one InvalidInputError first (it decoded
    every tile, then raised a raw FileExistsError)."""
    from allen_sr.api.models import resolve
    from allen_sr.commands import evaluate

    Image.fromarray(load_image(HELD_OUT_BRAIN)[100:302, 120:383]).save(tmp_path / "tissue.png")
    (tmp_path / "taken").write_text("a file")
    for run in (evaluate.evaluate, evaluate.evaluate_whole):
        with pytest.raises(InvalidInputError, match="out_dir .*taken: a file of that name exists"):
            run(resolve("conv-fast"), str(tmp_path / "tissue.png"), tmp_path / "taken", progress=False)
    assert (tmp_path / "taken").read_text() == "a file"


def test_an_exports_calibration_serves_only_its_own_decoding_mode():
    """One temperature per decoding mode: transformer-tiny's was fitted in mean_bicubic; decoded in
    another mode its maps use the model's own distributions, and say so."""
    from allen_sr import Upscaler

    with Upscaler.open("transformer-tiny") as up, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert up.calibration.mode == "mean_bicubic" and up.calibration.temperature != 1.0
    with Upscaler.open("transformer-tiny", mode="greedy") as up:
        with pytest.warns(UserWarning, match="uncalibrated .*not fitted"):  # said, not only in metrics.json
            assert up.calibration.temperature == 1.0
        assert "not fitted" in up.calibration.fitted_on and "mean_bicubic" in up.calibration.fitted_on


def test_a_conv_model_refuses_sampling_wherever_it_is_asked_for(tmp_path, capsys):
    """--mode sample (and its --temperature) were silently ignored by upscale and the API for a conv
    model, which predicts one value per sub-pixel; evaluate refused it."""
    from allen_sr import Upscaler
    from allen_sr.commands import upscale

    with pytest.raises(InvalidInputError, match="--mode sample is not available for img2img_conv_sr"):
        Upscaler.open("conv-fast", mode="sample")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "a.png")
    assert upscale.upscale_main(["--pretrained", "conv-fast", "--mode", "sample", "--image", str(tmp_path / "a.png"),
                                 "--out", str(tmp_path / "b.png"), "--no_progress"]) == 2
    assert "--mode sample is not available" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
    with Upscaler.open("conv-fast", mode="greedy") as up:  # greedy and mean are its one prediction
        assert up.predict(np.full((40, 40, 3), 128, np.uint8)).shape == (160, 160, 3)
