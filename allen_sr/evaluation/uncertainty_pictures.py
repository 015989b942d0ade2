"""Pictures of uncertainty (Pillow only, so they work in the TF-free install): a heat map of a
per-pixel map in grey levels with its colour bar, and the reliability diagram (nominal vs
observed coverage of the central intervals)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from allen_sr.evaluation.pictures import save_png

__all__ = ["heat", "heat_map_with_bar", "reliability_diagram", "uncertainty_scale", "uncertainty_grid", "bar_top",
           "level_text", "SCALE_FLOOR"]

# A perceptually ordered dark-blue -> purple -> orange -> pale-yellow ramp (anchors of matplotlib's
# "inferno", sampled at 0, 0.25, 0.5, 0.75, 1), interpolated to 256 colours.
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).round().astype(np.uint8)


# The lowest top of a colour bar, grey levels: a map whose spread is all below it (a blank tile) is
# shown dark, not its noise stretched over the whole ramp.
SCALE_FLOOR = 1.0


def _p99(values: np.ndarray) -> float:
    """The 99th percentile of ``values`` (0 for an empty map)."""
    return float(np.percentile(values, 99)) if values.size else 0.0


def uncertainty_scale(values: np.ndarray) -> float:
    """The grey-level value shown at the top of the colour bar: the 99th percentile (at least SCALE_FLOOR)."""
    return max(SCALE_FLOOR, _p99(np.asarray(values, np.float64)))


def level_text(value: float) -> str:
    """A number of grey levels with at least 2 significant digits: "0.26", "1.4", "37", "255"."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def bar_top(values: np.ndarray) -> tuple[float, str, str]:
    """(top, its label, what the caption says of it) of the colour bar of ``values``: the 99th
    percentile, or SCALE_FLOOR when that is lower (the caption then gives the percentile); the
    label ends in "+" when higher values share the top's colour."""
    data = np.asarray(values, np.float64)
    p99 = _p99(data)
    top = max(SCALE_FLOOR, p99)
    label = level_text(top) + ("+" if data.size and data.max() > top else "")
    if p99 < SCALE_FLOOR:
        return top, label, f"bar top: {level_text(SCALE_FLOOR)}, the floor (99th percentile {level_text(p99)})"
    return top, label, "bar top: 99th percentile"


def heat(values: np.ndarray, vmax: float) -> np.ndarray:
    """uint8 RGB [H, W, 3] of ``values`` [H, W] on 0..``vmax`` (clipped)."""
    index = np.clip(np.asarray(values, np.float64) / max(vmax, 1e-9) * 255.0, 0, 255).round().astype(np.intp)
    return _LUT[index]


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow without the size argument
        return ImageFont.load_default()


def heat_map_with_bar(values: np.ndarray, path: str | os.PathLike[str], vmax: float | None = None,
                      label: str = "uncertainty (sd, grey levels)") -> Path:
    """Save ``values`` [H, W] as a heat map with a colour bar on its right, labelled in grey levels;
    the picture is widened to its caption. Without ``vmax`` the bar's top is :func:`bar_top`'s (the
    caption says which)."""
    if vmax is None:
        vmax, top, note = bar_top(values)
        label = f"{label}; {note}"
    else:
        top = level_text(vmax)
    image = heat(values, vmax)
    h, w = image.shape[:2]
    bar_h = max(h, 120)
    font = _font()
    text_w = int(np.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)))
    canvas = Image.new("RGB", (max(w + 110, text_w + 8), bar_h + 24), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    ramp = _LUT[np.linspace(255, 0, bar_h - 20).round().astype(np.intp)]
    bar = np.repeat(ramp[:, None, :], 14, axis=1)
    canvas.paste(Image.fromarray(bar), (w + 10, 10))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 28, 4), top, fill=(0, 0, 0), font=font)
    draw.text((w + 28, bar_h - 18), "0", fill=(0, 0, 0), font=font)
    draw.text((2, bar_h + 6), label, fill=(0, 0, 0), font=font)
    return save_png(canvas, path)


def reliability_diagram(curves: dict[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str],
                        title: str = "central intervals: nominal vs observed coverage") -> Path:
    """Save a reliability diagram: one line per curve of (nominal, observed) points, the diagonal
    (perfect calibration) dashed."""
    size, margin = 360, 48
    canvas = Image.new("RGB", (size + 2 * margin + 150, size + 2 * margin), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), _font()

    def at(x: float, y: float) -> tuple[float, float]:
        return margin + x * size, margin + (1 - y) * size

    draw.rectangle([at(0, 1), at(1, 0)], outline=(0, 0, 0))
    for k in range(11):
        v = k / 10
        draw.line([at(v, 0), (at(v, 0)[0], at(v, 0)[1] + 4)], fill=(0, 0, 0))
        draw.line([at(0, v), (at(0, v)[0] - 4, at(0, v)[1])], fill=(0, 0, 0))
        if k % 2 == 0:
            draw.text((at(v, 0)[0] - 8, at(v, 0)[1] + 6), f"{v:.1f}", fill=(0, 0, 0), font=font)
            draw.text((at(0, v)[0] - 34, at(0, v)[1] - 7), f"{v:.1f}", fill=(0, 0, 0), font=font)
    for k in range(20):  # the diagonal, dashed
        if k % 2 == 0:
            draw.line([at(k / 20, k / 20), at((k + 1) / 20, (k + 1) / 20)], fill=(120, 120, 120), width=1)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for i, (name, points) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        xy = [at(x, y) for x, y in points]
        draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([(size + margin + 16, margin + 10 + 18 * i), (size + margin + 36, margin + 10 + 18 * i)],
                  fill=colour, width=3)
        draw.text((size + margin + 40, margin + 3 + 18 * i), name, fill=(0, 0, 0), font=font)
    draw.text((margin, 12), title, fill=(0, 0, 0), font=font)
    draw.text((margin + size // 2 - 60, size + margin + 24), "nominal coverage", fill=(0, 0, 0), font=font)
    draw.text((4, margin - 30), "observed", fill=(0, 0, 0), font=font)
    return save_png(canvas, path)


def uncertainty_grid(inputs: np.ndarray, preds: np.ndarray, targets: np.ndarray, maps: np.ndarray,
                     rows: int = 8) -> Image.Image:
    """Rows of input (nearest) | model | uncertainty | |error| | target, the two maps on one
    colour scale in grey levels (the 99th percentile of the uncertainty at the top)."""
    from allen_sr.evaluation.pictures import prediction_grid

    error = np.abs(preds.astype(np.float64) - targets.astype(np.float64)).mean(axis=-1)
    vmax = uncertainty_scale(maps)
    grid_rows = [[inputs[i], preds[i], heat(maps[i], vmax), heat(error[i], vmax), targets[i]]
                 for i in range(min(rows, len(inputs)))]
    return prediction_grid(grid_rows, columns=("input (nearest)", "model", "uncertainty (sd)",
                                               "|error|", "target"),
                           captions=[f"sd {maps[i].mean():.1f}, |error| {error[i].mean():.1f} grey levels "
                                     f"(scale 0-{level_text(vmax)})" for i in range(len(grid_rows))])
