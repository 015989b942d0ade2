"""`allen-sr upscale`: enlarge a region of an image by the model's factor, tile by tile.

The region is cut into input-sized tiles (8x8 px for the dim8to32 problems), every tile is
predicted independently and the predictions are stitched, so a person can look at tissue rather
than 32 px squares. Tiles are predicted without context from their neighbours, so seams between
tiles can show. Alongside OUT.png it writes OUT.bicubic.png and OUT.compare.png (input enlarged
with nearest | bicubic | model) for comparison.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr.commands import args as shared
from allen_sr.commands.evaluate import to_grey
from allen_sr.data.images import load_image
from allen_sr.evaluation import metrics, pictures

MAX_REGION = 256  # input px per side: 1024 tiles of 8x8, a few minutes on 2 CPU cores


@dataclass(frozen=True)
class Region:
    """A rectangle of an image in pixels; ``width``/``height`` None reach the right/bottom edge."""

    left: int = 0
    top: int = 0
    width: int | None = None
    height: int | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allen-sr upscale", description=__doc__,
        epilog=f"Regions larger than {MAX_REGION}x{MAX_REGION} input px are refused: pick one with "
               "--left/--top/--width/--height.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p)
    p.add_argument("--image", required=True, help="image file to enlarge")
    p.add_argument("--left", type=int, default=0, help="region left edge, px (default 0)")
    p.add_argument("--top", type=int, default=0, help="region top edge, px (default 0)")
    p.add_argument("--width", type=int, help=f"region width, px (default: to the right edge; at most {MAX_REGION})")
    p.add_argument("--height", type=int, help=f"region height, px (default: to the bottom edge; at most {MAX_REGION})")
    p.add_argument("--out", required=True, help="output PNG")
    return p


def region_of(image: np.ndarray, region: Region, tile: int, name: str = "the image") -> np.ndarray:
    """The requested region, trimmed to whole tiles; refuses empty or too-large regions clearly."""
    h, w = image.shape[:2]
    left, top = region.left, region.top
    width = region.width if region.width is not None else w - left
    height = region.height if region.height is not None else h - top
    if left < 0 or top < 0 or left + width > w or top + height > h or width <= 0 or height <= 0:
        raise ValueError(f"region left={left} top={top} width={width} height={height} "
                         f"is outside the {w}x{h} image {name}")
    if width > MAX_REGION or height > MAX_REGION:
        raise ValueError(f"region {width}x{height} px is larger than the {MAX_REGION}x{MAX_REGION} px "
                         f"upscale accepts; choose one with --left/--top/--width/--height")
    width, height = width - width % tile, height - height % tile
    if width == 0 or height == 0:
        raise ValueError(f"region must be at least {tile}x{tile} px (one input tile)")
    return image[top:top + height, left:left + width]


def upscale_region(decoder: Any, region: np.ndarray, tile: int, factor: int,
                   decode_kwargs: dict[str, Any]) -> np.ndarray:
    """Predict every tile of `region` and stitch the predictions."""
    rows, cols = region.shape[0] // tile, region.shape[1] // tile
    tiles_ = region.reshape(rows, tile, cols, tile, -1).swapaxes(1, 2).reshape(rows * cols, tile, tile, -1)
    preds = decoder.decode(tiles_, **decode_kwargs)
    out = tile * factor
    return preds.reshape(rows, cols, out, out, -1).swapaxes(1, 2).reshape(rows * out, cols * out, -1)


def upscale(spec: shared.ModelSpec, image_path: str, out_path: str, region: Region = Region(),
            progress: bool = True) -> np.ndarray:
    """Enlarge ``region`` of ``image_path`` with the model; writes OUT, OUT.bicubic and OUT.compare PNGs."""
    from allen_sr.t2t.names import problem_shape

    tile, size, channels = problem_shape(spec.problem)
    factor = size // tile
    image = load_image(image_path, min_size=tile)
    if channels == 1:
        image = to_grey(image)
    cut = region_of(image, region, tile, image_path)
    opened = shared.open_model(spec)
    n = (cut.shape[0] // tile) * (cut.shape[1] // tile)
    print(f"upscaling a {cut.shape[1]}x{cut.shape[0]} px region ({n} tiles) x{factor}", flush=True)
    start = time.perf_counter()
    model = upscale_region(opened.decoder, cut, tile, factor, shared.decode_kwargs(spec, opened.mode, progress))
    bicubic = metrics.upscale(cut, factor, "bicubic")
    nearest = metrics.upscale(cut, factor, "nearest")
    out = Path(out_path)
    stem = out.with_suffix("")
    pictures.save_png(model, out)
    pictures.save_png(bicubic, f"{stem}.bicubic.png")
    pictures.save_png(pictures.prediction_grid([[nearest, bicubic, model]],
                                               columns=("input (nearest)", "bicubic", "model"), scale=1),
                      f"{stem}.compare.png")
    print(f"done in {time.perf_counter() - start:.1f} s: wrote {out} ({model.shape[1]}x{model.shape[0]} px), "
          f"{stem}.bicubic.png, {stem}.compare.png")
    return model


def upscale_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        upscale(shared.model_spec(args), args.image, args.out,
                Region(args.left, args.top, args.width, args.height), not args.no_progress)

    return shared.run_command("upscale", body)


if __name__ == "__main__":
    sys.exit(upscale_main())
