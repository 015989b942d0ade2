"""The one results writer of `decode`, `evaluate` and `upscale`-style runs: metrics and pictures.

Given low-resolution inputs, targets and predictions it scores the model and interpolation
baselines (PSNR/SSIM, :mod:`allen_sr.evaluation.metrics`) and writes, in one folder:
``metrics.json`` (summary with its protocol), ``metrics.md``, ``metrics.csv`` (per example and
method) and ``grid.png`` (input enlarged | baseline | model | target, captioned with the PSNRs);
optionally one PNG per prediction.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from allen_sr import fileio
from allen_sr.evaluation import metrics, pictures

GRID_ROWS = 16  # at most this many examples in grid.png


def centre_cells(lr: np.ndarray, outputs: Sequence[np.ndarray], size: int, scale: int) -> list[np.ndarray]:
    """The centred ``size // scale`` px of the input ``lr`` and, of each output-size image in
    ``outputs``, the ``size`` px over the same region (from the input crop's corner times ``scale``):
    centring each alone puts the input half an input pixel off when the difference of sizes is odd."""
    side = size // scale
    top, left = max((lr.shape[0] - side) // 2, 0), max((lr.shape[1] - side) // 2, 0)
    return [lr[top:top + side, left:left + side],
            *(c[top * scale:top * scale + size, left * scale:left * scale + size] for c in outputs)]


def remove_stale_pictures(out: Path, examples: int, uncertainty: bool) -> None:
    """Remove the pictures an earlier run wrote into ``out`` that this run's metrics do not describe:
    ``example_NNN.png`` (and ``uncertainty_NNN.png``) from ``examples`` on, and without
    ``uncertainty`` every uncertainty picture. Files of other names stay."""
    for path in out.glob("*.png"):
        found = re.fullmatch(r"(example|uncertainty)_(\d{3,})\.png", path.name)
        if found and (int(found[2]) >= examples or (found[1] == "uncertainty" and not uncertainty)):
            path.unlink()
        elif path.name in ("reliability.png", "uncertainty_grid.png") and not uncertainty:
            path.unlink()


def write_results(
    out_dir: str | os.PathLike[str],
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    protocol_note: str = "",
    names: Sequence[str] | None = None,
    baselines: Sequence[str] = ("bicubic",),
    example_pngs: bool = False,
    grid_rows: int = GRID_ROWS,
    extra: dict[str, Any] | None = None,
    grid_crop: int | None = None,
    unit: str = "tile",
) -> dict[str, Any]:
    """Score ``predictions`` against ``targets`` and write the outputs; returns the summary.

    ``names`` label the examples in the CSV and grid (default: their index). ``baselines`` are
    the interpolation methods scored beside the model; the last one is the grid's baseline
    column. ``example_pngs`` also writes ``example_000.png``... (one per prediction). ``extra``
    entries are added to the summary and ``metrics.json`` (e.g. how the inputs were made).
    Examples may differ in size (whole images: ``unit`` "image" in the protocol); ``grid_crop``
    (output px) then shows the centre of each in the grid.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The baselines are resized to each target's size, so a non-integer ratio (48 -> 64 px) and an
    # in-painting problem (16 -> 16) are scored too; the luma crop is the ratio rounded up.
    ratio = targets[0].shape[0] / inputs[0].shape[0]
    scale = math.ceil(ratio)
    whole = scale == ratio
    names = [str(i) for i in range(len(inputs))] if names is None else list(names)
    shown = baselines[-1]
    table = metrics.MetricTable()
    rows, captions = [], []
    luma_scores: dict[str, list] = {}  # method -> per example (PSNR, SSIM) of the luma, or None
    if grid_crop:  # one square crop for every row, within the smallest image shown, whole input pixels
        smallest = min(min(hr.shape[:2]) for hr in targets[:grid_rows])
        grid_crop = max(scale, min(grid_crop, smallest) // scale * scale)
    for i, (lr, pred, hr) in enumerate(zip(inputs, predictions, targets)):
        candidates = metrics.baselines(lr, scale, baselines, shape=None if whole else hr.shape[:2])
        candidates["model"] = pred
        scores = table.add_images(names[i], hr, candidates)
        for method, image in candidates.items():
            found = metrics.luma_scores(image[None], hr[None], scale)
            luma_scores.setdefault(method, []).append(None if found is None else (found[0][0], found[1][0]))
        if example_pngs:
            pictures.save_png(pred, out / f"example_{i:03d}.png")
        if i < grid_rows:
            cells = [lr if whole else metrics.resize(lr, hr.shape[:2], "nearest"), candidates[shown], pred, hr]
            if grid_crop and whole:
                cells = centre_cells(lr, cells[1:], grid_crop, scale)
            rows.append(cells)
            captions.append(f"{names[i]}: model {scores['model'][0]:.2f} dB / "
                            f"{shown} {scores[shown][0]:.2f} dB")
    remove_stale_pictures(out, len(predictions) if example_pngs else 0, "uncertainty" in (extra or {}))
    summary = table.summary(metrics.protocol(unit))
    if unit != "tile":  # whole images are counted as what they are
        summary = {f"{unit}s" if key == "tiles" else key: value for key, value in summary.items()}
    luma = metrics.luma_summary(luma_scores)
    for method, scores in luma.items():
        summary["methods"][method] |= scores
    if luma:
        summary["protocol"] += "; " + metrics.LUMA_PROTOCOL.format(crop=scale)
    summary["protocol"] += f"; {protocol_note}" if protocol_note else ""
    summary |= extra or {}
    table.write_csv(out / "metrics.csv")
    fileio.write_json_atomic(summary, out / "metrics.json")
    fileio.atomic_write_text(f"# Results\n\n{metrics.summary_to_markdown(summary)}\n", out / "metrics.md")
    grid = pictures.prediction_grid(
        rows, columns=("input (nearest)", shown, "model", "target"), captions=captions)
    pictures.save_png(grid, out / "grid.png")
    return summary
