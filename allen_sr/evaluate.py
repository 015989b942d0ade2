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
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr import fileio, metrics, records, tiles as tiling

GRID_ROWS = 16


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every command that runs a trained model shares."""
    p.add_argument("--problem", required=True, help="registered problem the model was trained on")
    p.add_argument("--model", default="img2img_transformer_sr", help="t2t model (default %(default)s)")
    p.add_argument("--hparams_set", required=True, help="hparams set the model was trained with")
    p.add_argument("--hparams", default="", help="hparams overrides, as for t2t-trainer")
    p.add_argument("--output_dir", required=True, help="the training output_dir (checkpoints)")
    p.add_argument("--mode", default="greedy", choices=("greedy", "sample", "mean"),
                   help="autoregressive decoding mode (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="for --mode sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16, help="tiles decoded together")
    p.add_argument("--decoder", default="fast", choices=("fast", "naive"))


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(decoder, hparams) for the model `args` names, restored from its latest checkpoint."""
    from allen_sr import decoding

    decoding._check_registered(args.problem, args.hparams_set)
    hparams = decoding.load_hparams(args.hparams_set, args.problem, args.hparams, args.output_dir)
    size = int(hparams.img_len)
    decoder = decoding.make_decoder(args.model, args.decoder, hparams,
                                    decoding.find_checkpoint(args.output_dir), target_shape=(size, size))
    return decoder, hparams


def problem_shape(problem_name: str) -> tuple[int, int, int]:
    """(input size, target size, channels) of a registered problem."""
    from allen_sr import decoding

    decoding._import_registrations()
    from tensor2tensor.utils import registry

    p = registry.problem(problem_name)
    return int(p.input_dim), int(p.output_dim), int(p.num_channels)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma as tf.image.rgb_to_grayscale computes it (what the greyscale problems train on)."""
    y = rgb.astype(np.float64) @ records.LUMA
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def collect_images(spec: str) -> list[str]:
    """A folder (its images) or a glob pattern; a clear error when nothing matches."""
    if os.path.isdir(spec):
        paths = tiling.list_images(spec)
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
            image = tiling.load_image(path, size)
        except tiling.ImageSkipped as exc:
            warnings.warn(str(exc))
            continue
        kept, positions, _ = tiling.tissue_tiles(image, size)
        found.append(kept)
        names += [f"{tiling.image_id(path)}@{top},{left}" for top, left in positions]
    if not names:
        raise ValueError(f"no tissue tiles of {size}x{size} px in {len(paths)} image(s)")
    targets = np.concatenate(found)
    if max_tiles and len(targets) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(targets), max_tiles, replace=False))
        targets, names = targets[keep], [names[i] for i in keep]
    if channels == 1:
        targets = to_grey(targets)
    return targets, names


def parse_args(argv):
    p = argparse.ArgumentParser(prog="allen-sr evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--images", required=True, help="folder of images, or a glob pattern")
    p.add_argument("--max_tiles", type=int, default=256, help="evaluate at most this many tiles (default 256; 0 = all)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, metrics.csv, grid.png")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation `args` describes; writes the outputs and returns the summary."""
    from allen_sr import pictures

    input_size, size, channels = problem_shape(args.problem)
    factor = size // input_size
    targets, names = cut_targets(collect_images(args.images), size, channels, args.max_tiles or None, args.seed)
    inputs = np.stack([tiling.area_downsample(t, factor) for t in targets])
    decoder, _ = open_model(args)
    print(f"evaluating {len(targets)} tiles of {size}x{size} px ({args.model}, {args.mode})", flush=True)
    start = time.perf_counter()
    predictions = decoder.decode(inputs, mode=args.mode, temperature=args.temperature, seed=args.seed,
                                 batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - start

    table = metrics.MetricTable()
    rows, captions = [], []
    for i, (lr, pred, hr) in enumerate(zip(inputs, predictions, targets)):
        candidates = metrics.baselines(lr, factor)
        candidates["model"] = pred
        scores = table.add_images(names[i], hr, candidates)
        if i < GRID_ROWS:
            rows.append([candidates["nearest"], candidates["bicubic"], pred, hr])
            captions.append(f"{names[i]}: model {scores['model'][0]:.2f} dB / bicubic {scores['bicubic'][0]:.2f} dB")
    protocol = (f"{metrics.PROTOCOL}; {len(targets)} tissue tiles of {size}x{size} from {args.images}; "
                f"model {args.model} {args.hparams_set}, {args.decoder} decoding, mode {args.mode}")
    summary = table.summary(protocol)
    out = Path(args.out)
    fileio.write_json_atomic(summary, out / "metrics.json")
    fileio.atomic_write_text(f"# Evaluation\n\n{metrics.summary_to_markdown(summary)}\n", out / "metrics.md")
    table.write_csv(out / "metrics.csv")
    pictures.save_png(pictures.prediction_grid(
        rows, columns=("input (nearest)", "bicubic", "model", "target"), captions=captions), out / "grid.png")
    print(metrics.summary_to_text(summary))
    print(f"decoded {len(targets)} tiles in {seconds:.1f} s; wrote {out}/metrics.json, metrics.md, metrics.csv, grid.png")
    return summary


def evaluate_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate(args)
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        print(f"allen-sr evaluate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(evaluate_main())
