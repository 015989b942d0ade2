"""`allen-sr evaluate` and `allen-sr upscale` on a real (briefly trained) checkpoint."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from allen_sr.decoding import checkpoints
from allen_sr.commands import args, evaluate
from allen_sr.evaluation import metrics
from allen_sr.data import tiles
from allen_sr.data.images import load_image
from allen_sr.testing import tiny_training
from allen_sr.commands import upscale
from conftest import tissue_image

PROBLEM = "img2img_allen_brain_dim8to32"
HPARAMS_SET = "img2img_allen_cpu_tiny"
MODEL = "img2img_transformer_sr"
TINY = "hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,num_decoder_layers=1"


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    hparams = checkpoints.load_hparams(HPARAMS_SET, PROBLEM, TINY)
    tiny_training.train_checkpoint(out, hparams, steps=3, batch_size=2, model_name=MODEL)
    return out


def model_flags(ckpt_dir):
    return [f"--problem={PROBLEM}", f"--model={MODEL}", f"--hparams_set={HPARAMS_SET}",
            f"--output_dir={ckpt_dir}", "--mode=mean"]


def test_evaluate_reports_every_method_on_tissue_tiles(ckpt_dir, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for k in range(2):
        Image.fromarray(tissue_image(96, 128, seed=k)).save(images / f"s{k}.png")
    (images / "broken.png").write_text("not an image")
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="broken.png"):
        code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={images}", "--max_tiles=5", f"--out={out}"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tiles"] == 5 and "RGB" in summary["protocol"] and MODEL in summary["protocol"]
    assert set(summary["methods"]) == {"nearest", "bilinear", "bicubic", "model"}
    # The baselines are scored on real tiles: recompute one from the CSV's tile name.
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    first = next(r for r in rows if r["method"] == "bicubic")
    name, pos = first["example"].split("@")
    top, left = map(int, pos.split(","))
    target = load_image(str(images / f"{name}.png"))[top:top + 32, left:left + 32]
    assert tiles.tissue_fraction(target[None])[0] >= tiles.TISSUE_MIN_FRACTION
    bicubic = metrics.upscale(tiles.area_downsample(target, 4), 4, "bicubic")
    assert float(first["psnr"]) == pytest.approx(metrics.psnr(bicubic, target), abs=1e-3)
    assert "| bicubic |" in (out / "metrics.md").read_text()
    assert Image.open(out / "grid.png").height > 5 * 32
    printed = capsys.readouterr().out
    assert "nearest" in printed and "bilinear" in printed and "metrics.json" in printed


def test_evaluate_names_a_bad_images_argument(ckpt_dir, tmp_path, capsys):
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={tmp_path}/nothing*.png", f"--out={tmp_path}/o"])
    assert code == 2 and "nothing*.png" in capsys.readouterr().err


def test_upscale_stitches_tiles_and_refuses_large_regions(ckpt_dir, tmp_path, capsys):
    src = tmp_path / "slide.png"
    Image.fromarray(tissue_image(300, 300)).save(src)
    out = tmp_path / "up.png"
    code = upscale.upscale_main(model_flags(ckpt_dir) + [f"--image={src}", "--left=40", "--top=50",
                                                        "--width=27", "--height=16", f"--out={out}"])
    assert code == 0
    model = np.asarray(Image.open(out))
    assert model.shape == (64, 96, 3)  # 27 px trimmed to 3 whole 8 px tiles, x4
    # Each 32x32 block is the decoder's prediction of the matching 8x8 input tile.
    spec = args.model_spec(upscale.build_parser().parse_args(model_flags(ckpt_dir) + [f"--image={src}", "--out=x"]))
    decoder = args.open_model(spec).decoder
    tile = load_image(str(src))[58:66, 48:56][None]
    expected = decoder.decode(tile, mode="mean", batch_size=1)[0]
    np.testing.assert_array_equal(model[32:64, 32:64], expected)
    assert (tmp_path / "up.bicubic.png").exists() and (tmp_path / "up.compare.png").exists()

    code = upscale.upscale_main(model_flags(ckpt_dir) + [f"--image={src}", f"--out={tmp_path}/big.png"])
    err = capsys.readouterr().err
    assert code == 2 and "300x300" in err and f"{upscale.MAX_REGION}x{upscale.MAX_REGION}" in err
    assert not (tmp_path / "big.png").exists()
