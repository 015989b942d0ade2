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
from pathlib import Path

import numpy as np

from allen_sr import evaluate, metrics, pictures, tiles as tiling

MAX_REGION = 256  # input px per side: 1024 tiles of 8x8, a few minutes on 2 CPU cores


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="allen-sr upscale", description=__doc__,
        epilog=f"Regions larger than {MAX_REGION}x{MAX_REGION} input px are refused: pick one with "
               "--left/--top/--width/--height.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_model_args(p)
    p.add_argument("--image", required=True, help="image file to enlarge")
    p.add_argument("--left", type=int, default=0, help="region left edge, px (default 0)")
    p.add_argument("--top", type=int, default=0, help="region top edge, px (default 0)")
    p.add_argument("--width", type=int, help=f"region width, px (default: to the right edge; at most {MAX_REGION})")
    p.add_argument("--height", type=int, help=f"region height, px (default: to the bottom edge; at most {MAX_REGION})")
    p.add_argument("--out", required=True, help="output PNG")
    return p.parse_args(argv)


def region_of(image: np.ndarray, args: argparse.Namespace, tile: int) -> np.ndarray:
    """The requested region, trimmed to whole tiles; refuses empty or too-large regions clearly."""
    h, w = image.shape[:2]
    width = args.width if args.width is not None else w - args.left
    height = args.height if args.height is not None else h - args.top
    if args.left < 0 or args.top < 0 or args.left + width > w or args.top + height > h or width <= 0 or height <= 0:
        raise ValueError(f"region left={args.left} top={args.top} width={width} height={height} "
                         f"is outside the {w}x{h} image {args.image}")
    if width > MAX_REGION or height > MAX_REGION:
        raise ValueError(f"region {width}x{height} px is larger than the {MAX_REGION}x{MAX_REGION} px "
                         f"upscale accepts; choose one with --left/--top/--width/--height")
    width, height = width - width % tile, height - height % tile
    if width == 0 or height == 0:
        raise ValueError(f"region must be at least {tile}x{tile} px (one input tile)")
    return image[args.top:args.top + height, args.left:args.left + width]


def upscale_region(decoder, region: np.ndarray, tile: int, factor: int, args) -> np.ndarray:
    """Predict every tile of `region` and stitch the predictions."""
    rows, cols = region.shape[0] // tile, region.shape[1] // tile
    tiles_ = region.reshape(rows, tile, cols, tile, -1).swapaxes(1, 2).reshape(rows * cols, tile, tile, -1)
    preds = decoder.decode(tiles_, mode=args.mode, temperature=args.temperature, seed=args.seed,
                           batch_size=args.batch_size, progress=True)
    out = tile * factor
    return preds.reshape(rows, cols, out, out, -1).swapaxes(1, 2).reshape(rows * out, cols * out, -1)


def upscale_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tile, size, channels = evaluate.problem_shape(args.problem)
        factor = size // tile
        image = tiling.load_image(args.image, min_size=tile)
        if channels == 1:
            image = evaluate.to_grey(image)
        region = region_of(image, args, tile)
        decoder, _ = evaluate.open_model(args)
    except (tiling.ImageSkipped, ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"allen-sr upscale: error: {exc}", file=sys.stderr)
        return 1
    n = (region.shape[0] // tile) * (region.shape[1] // tile)
    print(f"upscaling a {region.shape[1]}x{region.shape[0]} px region ({n} tiles) x{factor}", flush=True)
    start = time.perf_counter()
    model = upscale_region(decoder, region, tile, factor, args)
    bicubic = metrics.upscale(region, factor, "bicubic")
    nearest = metrics.upscale(region, factor, "nearest")
    out = Path(args.out)
    stem = out.with_suffix("")
    pictures.save_png(model, out)
    pictures.save_png(bicubic, f"{stem}.bicubic.png")
    pictures.save_png(pictures.prediction_grid([[nearest, bicubic, model]], columns=("input (nearest)", "bicubic", "model"), scale=1),
                      f"{stem}.compare.png")
    print(f"done in {time.perf_counter() - start:.1f} s: wrote {out} ({model.shape[1]}x{model.shape[0]} px), "
          f"{stem}.bicubic.png, {stem}.compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(upscale_main())
