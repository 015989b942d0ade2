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


def tiles_of_csv(rows, images):
    """The target tiles a metrics.csv names (``image@top,left``), in its order."""
    found = []
    for name in dict.fromkeys(r["example"] for r in rows):
        image, pos = name.split("@")
        top, left = map(int, pos.split(","))
        found.append(load_image(str(images / f"{image}.png"))[top:top + 32, left:left + 32])
    return found


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
    assert "| bicubic |" in (out / "metrics.md").read_text() and "PSNR Y (dB)" in (out / "metrics.md").read_text()
    # and the luma with a 4 px border crop, as published x4 tables score (the means of the tiles)
    bicubic_y = [metrics.luma_scores(metrics.upscale(tiles.area_downsample(t, 4), 4, "bicubic")[None], t[None], 4)
                 for t in tiles_of_csv(rows, images)]
    assert summary["methods"]["bicubic"]["psnr_y"] == pytest.approx(np.mean([p for p, _ in bicubic_y]), abs=1e-3)
    assert summary["methods"]["bicubic"]["ssim_y"] == pytest.approx(np.mean([s for _, s in bicubic_y]), abs=1e-5)
    assert all({"psnr_y", "ssim_y"} <= set(scores) for scores in summary["methods"].values())
    assert "4 px cropped" in summary["protocol"]
    assert Image.open(out / "grid.png").height > 5 * 32
    printed = capsys.readouterr().out
    assert "nearest" in printed and "bilinear" in printed and "metrics.json" in printed and "PSNR Y (dB)" in printed


def test_evaluate_degrade_cuts_tiles_from_the_degraded_whole_image(ckpt_dir, tmp_path, capsys):
    """--degrade: the whole image is blurred, averaged, noised and JPEG-coded in that order, tiles
    are cut off JPEG's 8x8 grid, and the baselines are scored on the same degraded inputs."""
    from allen_sr.data import degrade

    images = tmp_path / "imgs"
    images.mkdir()
    for k in range(2):
        Image.fromarray(tissue_image(160, 192, seed=k)).save(images / f"s{k}.png")
    spec = "blur=1.5,noise=3,jpeg=85"
    out = tmp_path / "eval"
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={images}", "--max_tiles=6",
                                                          f"--degrade={spec}", f"--out={out}"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["degrade"] == spec and spec in summary["protocol"] and summary["tiles"] == 6
    assert summary["seed"] == 0 and summary["max_tiles"] == 6  # both change what is scored
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["method"] in ("nearest", "bicubic")]
    offsets = set()
    for row in rows:
        name, pos = row["example"].split("@")
        top, left = map(int, pos.split(","))
        offsets.add((top // 4 % 8, left // 4 % 8))
        index = sorted(p.stem for p in images.iterdir()).index(name)
        whole = load_image(str(images / f"{name}.png"))
        low = degrade.degrade_image(whole, 4, degrade.parse_fixed(spec), seed=index)  # --seed 0
        lr = low[top // 4:top // 4 + 8, left // 4:left // 4 + 8]
        target = whole[top:top + 32, left:left + 32]
        upscaled = metrics.upscale(lr, 4, row["method"])
        assert float(row["psnr"]) == pytest.approx(metrics.psnr(upscaled, target), abs=1e-3)
        clean = metrics.upscale(tiles.area_downsample(target, 4), 4, row["method"])
        assert abs(float(row["psnr"]) - metrics.psnr(clean, target)) > 0.01  # not the clean input
    assert all(oy and ox for oy, ox in offsets), offsets  # never on the JPEG grid


def test_degrade_help_says_the_tiles_move_and_how_to_compare():
    """Any --degrade cuts tiles on a shifted grid (other tiles than without it): the help says so and
    names the clean input on the same tiles."""
    text = " ".join(evaluate.build_parser().format_help().split())
    assert "shifted by 1-7 input px" in text and "--degrade blur=0 for the clean input on the same tiles" in text


@pytest.mark.parametrize("spec, named, whole", [
    ("jpeg=75,sharpen=1", "sharpen", []), ("jpeg=120", "jpeg=120", []), ("noise=2,blur=1", "blur=1", []),
    ("", "empty spec", []), ("", "empty spec", ["--whole"]),  # an unset shell variable, not the clean inputs
])
def test_evaluate_refuses_a_malformed_degrade_spec_in_one_line(ckpt_dir, tmp_path, capsys, spec, named, whole):
    Image.fromarray(tissue_image(96, 128)).save(tmp_path / "s.png")  # what an empty spec would evaluate
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={tmp_path}", f"--degrade={spec}",
                                                          f"--out={tmp_path}/o", *whole])
    err = capsys.readouterr().err.strip()
    assert code == 2 and named in err and "--degrade" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_evaluate_names_a_bad_images_argument(ckpt_dir, tmp_path, capsys):
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={tmp_path}/nothing*.png", f"--out={tmp_path}/o"])
    assert code == 2 and "nothing*.png" in capsys.readouterr().err
    Image.fromarray(tissue_image(64, 64)).save(tmp_path / "a.png")
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={tmp_path}", "--max_tiles=-1",
                                                          f"--out={tmp_path}/o"])
    assert code == 2 and "--max_tiles must be >= 0" in capsys.readouterr().err  # was a NumPy traceback
    code = evaluate.evaluate_main(model_flags(ckpt_dir) + [f"--images={tmp_path}", "--max_tiles=4", "--whole",
                                                          f"--out={tmp_path}/o"])
    assert code == 2 and "--max_tiles counts tiles" in capsys.readouterr().err  # was silently ignored
    assert not (tmp_path / "o").exists()


def test_upscale_without_overlap_stitches_the_decoders_tiles(ckpt_dir, tmp_path, capsys):
    src = tmp_path / "slide.png"
    Image.fromarray(tissue_image(300, 300)).save(src)
    out = tmp_path / "up.png"
    code = upscale.upscale_main(model_flags(ckpt_dir) + [f"--image={src}", "--left=40", "--top=50",
                                                        "--width=24", "--height=16", "--overlap=0",
                                                        f"--out={out}"])
    assert code == 0
    model = np.asarray(Image.open(out))
    assert model.shape == (64, 96, 3)
    # Abutting tiles: each 32x32 block is the decoder's prediction of the matching 8x8 input tile.
    spec = args.model_spec(upscale.build_parser().parse_args(model_flags(ckpt_dir) + [f"--image={src}", "--out=x",
                                                                                    "--batch_size=1"]))
    decoder = args.open_model(spec).decoder
    tile = load_image(str(src))[58:66, 48:56][None]
    expected = decoder.decode(tile, mode="mean", batch_size=1)[0]
    np.testing.assert_array_equal(model[32:64, 32:64], expected)
    assert (tmp_path / "up.compare.png").exists()
    # The 256 px limit is gone; a region outside the image is refused, naming it.
    code = upscale.upscale_main(model_flags(ckpt_dir) + [f"--image={src}", "--left=290", "--width=20",
                                                        f"--out={tmp_path}/big.png"])
    err = capsys.readouterr().err
    assert code == 2 and "300x300" in err and "slide.png" in err
    assert not (tmp_path / "big.png").exists()


def test_a_transformer_region_is_the_crop_of_the_whole_images_output(ckpt_dir, tmp_path):
    """A region is decoded with a tile's overlap (4 px) of the pixels around it, so its edge pixels
    are blended from overlapping tiles as inside the image. Sides and offsets that are multiples of
    4 px put the region's tiles where the whole image's are: the same pixels exactly. (Elsewhere
    the tiles sit differently and pixels differ by up to 4 grey levels inside and at the edges
    alike, measured with transformer-tiny; without the context the edges differed by up to 22.)"""
    src = tmp_path / "slide.png"
    Image.fromarray(tissue_image(32, 40, seed=7)).save(src)
    flags = model_flags(ckpt_dir) + [f"--image={src}", "--preview_size=0", "--no_progress"]
    assert upscale.upscale_main(flags + [f"--out={tmp_path / 'whole.png'}"]) == 0
    whole = np.asarray(Image.open(tmp_path / "whole.png"))
    for left, top, width, height in ((12, 8, 16, 12), (24, 20, 16, 12), (0, 0, 20, 16)):  # inside, at the edges
        out = tmp_path / f"r{left}_{top}.png"
        assert upscale.upscale_main(flags + [f"--out={out}", f"--left={left}", f"--top={top}", f"--width={width}",
                                             f"--height={height}"]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                      whole[top * 4:(top + height) * 4, left * 4:(left + width) * 4])


def test_upscale_blends_transformer_tiles_without_seams(ckpt_dir, tmp_path):
    from test_upscale import border_lines, seam_ratio, SEAM_TOLERANCE
    from allen_sr.inference import tiling

    src = tmp_path / "slide.png"
    Image.fromarray(tissue_image(120, 120, seed=4)).save(src)
    ratios = {}
    for overlap in (4, 0):
        out = tmp_path / f"o{overlap}.png"
        code = upscale.upscale_main(model_flags(ckpt_dir) + [f"--image={src}", "--left=36", "--top=36",
                                                            "--width=32", "--height=32", f"--overlap={overlap}",
                                                            "--preview_size=0", "--no_progress", f"--out={out}"])
        assert code == 0
        res = np.asarray(Image.open(out))
        lay = tiling.plan_tiles(32, 32, 8, overlap, exact_tile=True, min_tile=8)
        ratios[overlap] = seam_ratio(res, border_lines(lay.cols, 8, 4, 128), border_lines(lay.rows, 8, 4, 128))
    print("transformer seam ratios", ratios)
    assert ratios[4] <= SEAM_TOLERANCE, ratios
    assert ratios[0] > SEAM_TOLERANCE, ratios  # abutting tiles do show seams, and the measure sees them


def test_a_tile_subset_is_seeded_ordered_and_spread_over_the_tiles_not_their_start():
    keep = evaluate.tile_subset(256, 48, seed=0)
    assert len(keep) == len(set(keep.tolist())) == 48 and np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, evaluate.tile_subset(256, 48, seed=0))
    assert not np.array_equal(keep, evaluate.tile_subset(256, 48, seed=1))
    assert keep.max() >= 200  # reaches the last images of a cell, not only the top of its first
    assert np.array_equal(evaluate.tile_subset(30, None, seed=0), np.arange(30))
    assert np.array_equal(evaluate.tile_subset(30, 64, seed=0), np.arange(30))


def test_a_non_integer_ratio_problem_is_evaluated_on_its_own_area_resized_inputs(tmp_path):
    """img2img_allen_brain_dim48to64: each 64 px target's input is its 48 px area resize as the problem
    makes it (TF's resize AREA, exactly), not the target itself (64 // 48 = 1 made every baseline 100 dB)."""
    import tensorflow as tf

    Image.fromarray(tissue_image(192, 256)).save(tmp_path / "s.png")
    inputs, targets, _ = evaluate.cut_pairs([str(tmp_path / "s.png")], 64, 1, 3, 4, 0, input_size=48)
    assert inputs.shape == (4, 48, 48, 3) and targets.shape == (4, 64, 64, 3)
    problem = tf.cast(tf.round(tf.image.resize(tf.cast(targets, tf.float32), [48, 48], method="area")), tf.uint8)
    np.testing.assert_array_equal(inputs, problem.numpy())


@pytest.mark.parametrize("problem, extra, words", [
    ("img2img_allen_brain_dim16to16_paint1", [], "16x16 to 16x16 px (in-painting"),
    ("img2img_allen_brain_dim16to16_paint1", ["--whole"], "16x16 to 16x16 px (in-painting"),
    ("img2img_allen_brain_dim48to64", ["--whole"], "48x48 to 64x64 px, not an integer factor, which --whole"),
    ("img2img_allen_brain_dim48to64", ["--degrade=jpeg=75"], "not an integer factor, which --degrade needs"),
])
def test_evaluate_refuses_what_it_cannot_score_of_a_problem_in_one_line(problem, extra, words, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    Image.fromarray(tissue_image(96, 128)).save(tmp_path / "s.png")
    argv = [f"--problem={problem}", f"--model={MODEL}", f"--hparams_set={HPARAMS_SET}",
            f"--output_dir={tmp_path / 'run'}", f"--images={tmp_path / 's.png'}", f"--out={tmp_path / 'eval'}", *extra]
    assert evaluate.evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and f"--problem {problem}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_degrade_on_a_small_image_keeps_a_tile_off_the_jpeg_grid_whatever_the_seed(tmp_path):
    """--degrade shifts the tile grid 1-7 input px, at most the room the image has: a 64x48 image keeps a 32 px
    tile, still off JPEG's grid, with every seed (a 7 px shift left it none); a blank image is named in a warning."""
    from allen_sr.data import degrade

    Image.fromarray(tissue_image(48, 64)).save(tmp_path / "small.png")
    steps = degrade.parse_fixed("jpeg=85")
    for seed in range(8):
        _, targets, names = evaluate.cut_pairs([str(tmp_path / "small.png")], 32, 4, 3, None, seed, steps)
        for name in names:
            top, left = map(int, name.split("@")[1].split(","))
            assert top // 4 % 8 and left // 4 % 8 and top + 32 <= 48 and left + 32 <= 64, (seed, name)
    Image.fromarray(np.full((48, 64, 3), 245, np.uint8)).save(tmp_path / "blank.png")
    with pytest.warns(UserWarning, match=r"blank.png: no tissue tile of 32x32 px on its grid shifted"):
        _, targets, _ = evaluate.cut_pairs([str(tmp_path / p) for p in ("blank.png", "small.png")], 32, 4, 3, None,
                                           0, steps)
    assert len(targets) >= 1
