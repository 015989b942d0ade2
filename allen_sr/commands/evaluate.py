"""`allen-sr evaluate`: PSNR/SSIM of a trained model against nearest, bilinear and bicubic on any
folder of images (not only a dataset's dev split).

Images are cut into target tiles of the problem's output size (tissue tiles only, the same filter
as datagen); each input is the rounded area downsample of its target, exactly what the model saw
in training. The model is decoded with the decoder `allen-sr decode` uses for it.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import warnings

import numpy as np

from allen_sr.commands import args as shared
from allen_sr.evaluation import metrics
from allen_sr.data.images import ImageSkipped, image_id, list_images, load_image
from allen_sr.data.stats import LUMA
from allen_sr.data import tiles as tiling


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma as tf.image.rgb_to_grayscale computes it (what the greyscale problems train on)."""
    y = rgb.astype(np.float64) @ LUMA
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def collect_images(spec: str) -> list[str]:
    """A folder (its images) or a glob pattern; a clear error when nothing matches."""
    if os.path.isdir(spec):
        paths = list_images(spec)
    else:
        paths = sorted(p for p in glob.glob(os.path.expanduser(spec)) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"--images {spec!r} matches no image files: pass a folder or a glob like 'slides/*.png'")
    return paths


def cut_targets(paths: list[str], size: int, channels: int, max_tiles: int | None,
                seed: int) -> tuple[np.ndarray, list[str]]:
    """Tissue tiles of `size` from every readable image, subsampled to `max_tiles` (seeded)."""
    found, names = [], []
    for path in paths:
        try:
            image = load_image(path, size)
        except ImageSkipped as exc:
            warnings.warn(str(exc))
            continue
        kept, positions, _ = tiling.tissue_tiles(image, size)
        found.append(kept)
        names += [f"{image_id(path)}@{top},{left}" for top, left in positions]
    if not names:
        raise ValueError(f"no tissue tiles of {size}x{size} px in {len(paths)} image(s)")
    targets = np.concatenate(found)
    if max_tiles and len(targets) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(targets), max_tiles, replace=False))
        targets, names = targets[keep], [names[i] for i in keep]
    if channels == 1:
        targets = to_grey(targets)
    return targets, names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p)
    p.add_argument("--images", required=True, help="folder of images, or a glob pattern")
    p.add_argument("--max_tiles", type=int, default=256, help="evaluate at most this many tiles (default 256; 0 = all)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, metrics.csv, grid.png")
    return p


def evaluate(spec: shared.ModelSpec, images: str, out_dir: str | os.PathLike[str],
             max_tiles: int | None = 256, progress: bool = True) -> dict:
    """Score the model ``spec`` names on tissue tiles of ``images``; writes the results, returns the summary."""
    from allen_sr.evaluation.results import write_results

    input_size, size, channels = shared.model_shape(spec)
    factor = size // input_size
    targets, names = cut_targets(collect_images(images), size, channels, max_tiles or None, spec.seed)
    inputs = np.stack([tiling.area_downsample(t, factor) for t in targets])
    opened = shared.open_model(spec)
    print(f"evaluating {len(targets)} tiles of {size}x{size} px ({opened.model}, {opened.mode})", flush=True)
    start = time.perf_counter()
    predictions = opened.decoder.decode(inputs, **shared.decode_kwargs(spec, opened.mode, progress))
    seconds = time.perf_counter() - start
    kind = getattr(opened.decoder, "name", "model")
    source = f"exported {spec.exported}" if spec.exported else spec.hparams_set
    note = (f"{len(targets)} tissue tiles of {size}x{size} from {images}; "
            f"model {opened.model} {source}, {kind} decoding, mode {opened.mode}"
            + (", mean of the 8 flips/rotations" if getattr(opened.decoder, "tta", False) else ""))
    summary = write_results(out_dir, inputs, targets, predictions, note, names=names,
                            baselines=metrics.METHODS)
    print(metrics.summary_to_text(summary))
    print(f"decoded {len(targets)} tiles in {seconds:.1f} s; wrote {out_dir}/metrics.json, metrics.md, "
          "metrics.csv, grid.png")
    return summary


def evaluate_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        evaluate(shared.model_spec(args), args.images, args.out, args.max_tiles, not args.no_progress)

    return shared.run_command("evaluate", body)


if __name__ == "__main__":
    sys.exit(evaluate_main())
