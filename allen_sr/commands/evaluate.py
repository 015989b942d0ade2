"""`allen-sr evaluate`: PSNR/SSIM of a trained model against nearest, bilinear and bicubic on any
folder of images (not only a dataset's dev split).

Images are cut into target tiles of the problem's output size (tissue tiles only, the same filter
as datagen); each input is the rounded area downsample of its target, the problem's ideal input,
or with --degrade SPEC a tile of the whole image degraded as a real input is (blurred, noisy,
JPEG). The model is decoded with the decoder `allen-sr decode` uses for it. With --whole, each
image is scored whole, enlarged as `allen-sr upscale` enlarges it (tiles with context, blended).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr import fileio
from allen_sr.api.folders import collect_images
from allen_sr.commands import args as shared
from allen_sr.evaluation import metrics
from allen_sr.data.degrade import FixedStep, degrade_image, format_fixed, parse_fixed
from allen_sr.data.images import ImageSkipped, image_id, load_image
from allen_sr.data.stats import to_grey
from allen_sr.data import tiles as tiling
from allen_sr.errors import InvalidInputError, UnsupportedInputError, count


def tile_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices, in order, of a seeded random ``limit`` of ``n`` tiles; all of them without a limit.

    Random rather than the first ``limit``: tiles come image by image in reading order, so the first
    ones are the top of the first image."""
    if not limit or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def example_names(paths: list[str]) -> list[str]:
    """One name per image for the results: its stem (``image_id``), or where two share one (x.png and
    x.jpg, slides/*/section.png) the file's name, else its path below the folder all share."""
    for names in ([image_id(p) for p in paths], [os.path.basename(p) for p in paths]):
        if len(set(names)) == len(names):
            return names
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


def collect_inputs(images: str, out_dir: str | os.PathLike[str]) -> list[str]:
    """The images of ``images``; InvalidInputError when ``out_dir`` cannot be a folder (said before the
    decoding, not after it) or some images lie in it, where this run writes its pictures (a second run
    scored the first one's grid.png as tissue)."""
    fileio.check_output_folder(out_dir, "out_dir")
    paths = collect_images(images)
    out = Path(out_dir).resolve()
    inside = [p for p in paths if Path(p).resolve().parent == out or out in Path(p).resolve().parents]
    if inside:
        raise InvalidInputError(f"--out {out_dir} holds {len(inside)} of the images evaluated ({inside[0]}, ...): "
                                "this run writes its pictures there; choose an --out outside --images")
    return paths


def area_resize(tile: np.ndarray, size: int) -> np.ndarray:
    """The rounded area average of ``tile`` [H, H, C] at ``size`` x ``size`` for any ratio (64 -> 48 px):
    each output pixel the mean of the input area it covers, partly covered pixels weighted by the part.
    In float32 in the order of TF's resize_area, so it rounds as the problems' ``tf.image.resize(..., AREA)``."""
    step = np.float32(tile.shape[0] / size)
    edges = np.arange(size + 1, dtype=np.float32) * step
    pixels = np.arange(tile.shape[0], dtype=np.float32)
    weights = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    rows = np.einsum("jw,hwc->hjc", weights, tile.astype(np.float32))
    return np.round(np.einsum("ih,hjc->ijc", weights, rows) * np.float32(1 / (step * step))).astype(np.uint8)


def check_ratio(spec: shared.ModelSpec, input_size: int, size: int, whole: bool = False,
                degrade: bool = False) -> None:
    """UnsupportedInputError for a problem evaluate cannot score as it would score it: one that does not
    enlarge (in-painting, 16 -> 16 px), or with --whole or --degrade one of a non-integer ratio (48 -> 64)."""
    name = f"--exported {spec.exported}" if spec.exported else f"--problem {spec.problem}"
    shape = f"{name} maps {input_size}x{input_size} to {size}x{size} px"
    if size <= input_size:
        raise UnsupportedInputError(f"{shape} (in-painting, no enlargement): evaluate scores enlargements; "
                                    "score its dev split with `allen-sr decode`")
    if size % input_size and (whole or degrade):
        flag = "--whole" if whole else "--degrade"
        raise UnsupportedInputError(f"{shape}, not an integer factor, which {flag} needs: leave out {flag} "
                                    "(tiles, each input the area average of its target)")


def cut_pairs(paths: list[str], size: int, factor: int, channels: int, max_tiles: int | None,
              seed: int, degrade: list[FixedStep] | None = None,
              input_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs, targets, names): tissue tiles of ``size`` from every readable image and their inputs.

    Without ``degrade`` each input is the rounded area average of its target, exactly what the
    model saw in training (of ``input_size`` px where the ratio is no integer: :func:`area_resize`),
    and tiles lie on the grid from the image's corner. With ``degrade`` the
    whole image is degraded first (:func:`allen_sr.data.degrade.degrade_image`, as a real input
    would be) and each input is cut from that; the tile grid is then shifted by a seeded 1-7 input
    px per image and axis, so JPEG's 8x8 block grid (which starts at the image's corner) does not
    line up with the tiles. Tiles are subsampled to ``max_tiles`` (seeded).
    """
    found_inputs, found, names = [], [], []
    image_names = example_names(paths)
    for index, path in enumerate(paths):
        try:
            image = load_image(path, size)
        except ImageSkipped as exc:
            warnings.warn(str(exc))
            continue
        if degrade is None:
            kept, positions, _ = tiling.tissue_tiles(image, size)
            kept = to_grey(kept) if channels == 1 else kept
            inputs = [area_resize(t, input_size) if input_size and size % input_size
                      else tiling.area_downsample(t, factor) for t in kept]
        else:
            kept, positions, inputs = degraded_pairs(image, size, factor, channels, degrade, seed, index)
            if not len(kept):
                warnings.warn(f"{path}: no tissue tile of {size}x{size} px on its grid shifted 1-7 input px from "
                              "JPEG's (--degrade); it is left out (blank, or too small for a shifted tile)")
        found.append(kept)
        found_inputs += inputs
        names += [f"{image_names[index]}@{top},{left}" for top, left in positions]
    if not names:
        raise InvalidInputError(f"no tissue tiles of {size}x{size} px in {count(len(paths), 'image')}")
    targets = np.concatenate(found)
    inputs = np.stack(found_inputs)
    keep = tile_subset(len(targets), max_tiles, seed)
    return inputs[keep], targets[keep], [names[i] for i in keep]


def degraded_pairs(image: np.ndarray, size: int, factor: int, channels: int, degrade: list[FixedStep],
                   seed: int, index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(targets, positions, inputs) of image number ``index``, its whole low-resolution version degraded.

    The tile grid starts 1-7 input px (drawn from ``seed`` and ``index``) from the image's corner
    on each axis, where JPEG's block grid starts, so the two never line up; the noise is seeded
    by both too. The shift is capped at the room the image has beyond one tile (a small image
    keeps a tile whatever the seed; on an axis without room the grid starts at the corner).
    """
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    room = np.maximum(np.array([h - size, w - size]) // factor, 0)
    shift = np.minimum(np.random.default_rng([seed, index]).integers(1, 8, size=2), room) * factor
    kept, positions, _ = tiling.tissue_tiles(image[shift[0]:h, shift[1]:w], size)
    positions = positions + shift
    if channels == 1:
        image, kept = to_grey(image), to_grey(kept)
    low = degrade_image(image[:h, :w], factor, degrade, seed=seed * 1_000_003 + index)
    step = size // factor
    inputs = [low[top // factor:top // factor + step, left // factor:left // factor + step] for top, left in positions]
    return kept, positions, inputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p)
    p.add_argument("--images", required=True, help="folder of images, or a glob pattern")
    p.add_argument("--max_tiles", type=int, default=None,
                   help="evaluate at most this many tiles (default 256; 0 = all; not with --whole)")
    p.add_argument("--degrade", metavar="SPEC",
                   help="evaluate on realistic inputs: steps applied in order to each whole image, e.g. "
                        "jpeg=75 or blur=1.5,noise=3,jpeg=85 (blur: Gaussian sigma in full-resolution px "
                        "before the area average; kernel=area|bicubic|bilinear: the downsampling; "
                        "noise: Gaussian sd in grey levels; shot: signal-dependent sd at white; jpeg: "
                        "quality, 4:2:0). Default: the exact area average. With any --degrade the tiles are cut "
                        "on a grid shifted by 1-7 input px (off JPEG's 8x8 blocks; less where a small image has no "
                        "room), so other tiles than "
                        "without it: compare with --degrade blur=0 for the clean input on the same tiles")
    p.add_argument("--uncertainty", action="store_true",
                   help="Image Transformers and probabilistic conv models: also score the per-pixel "
                        "uncertainty (coverage of the central 50%%/90%% intervals, how well it ranks the "
                        "errors) -> metrics.json 'uncertainty', reliability.png, uncertainty_grid.png")
    p.add_argument("--whole", action="store_true",
                   help="score whole images as `allen-sr upscale` enlarges them (tiled, with context, "
                        "blended) instead of tissue tiles: each image reduced by its area average (or "
                        "--degrade), the whole output against it, RGB and luma; conv models (an Image "
                        "Transformer takes minutes per small image)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, metrics.csv, grid.png")
    return p


def evaluate(spec: shared.ModelSpec, images: str, out_dir: str | os.PathLike[str],
             max_tiles: int | None = 256, progress: bool = True, degrade: str | None = None,
             uncertainty: bool = False) -> dict:
    """Score the model ``spec`` names on tissue tiles of ``images``; writes the results, returns the summary.

    ``degrade`` (for example ``"blur=1.5,noise=3,jpeg=85"``, :mod:`allen_sr.data.degrade`) makes
    the inputs realistic instead of ideal; the model and the baselines see the same inputs.
    ``uncertainty``: also score the calibrated per-pixel uncertainty (`allen_sr.decoding.uncertainty`).
    """
    from allen_sr.evaluation.results import write_results

    steps = parse_fixed(degrade) if degrade is not None else None  # "": an unset variable, refused
    input_size, size, channels = shared.model_shape(spec)
    check_ratio(spec, input_size, size, degrade=bool(steps))
    factor = size // input_size
    paths = collect_inputs(images, out_dir)
    opened = shared.open_model(spec)
    recorder = calibration = None
    if uncertainty:  # before the images are read: a model without a distribution is said at once
        from allen_sr.api.models import uncertainty_calibration

        calibration = uncertainty_calibration(spec, opened, progress, log=print)
    inputs, targets, names = cut_pairs(paths, size, factor, channels, max_tiles or None, spec.seed, steps,
                                       input_size)
    if calibration is not None:
        from allen_sr.decoding.uncertainty import Recorder

        recorder = Recorder((calibration.temperature,), targets)
    print(f"evaluating {count(len(targets), 'tile')} of {size}x{size} px ({opened.model}, {opened.mode})", flush=True)
    start = time.perf_counter()
    kwargs = shared.decode_kwargs(spec, opened.mode, progress)
    predictions = opened.decoder.decode(inputs, **kwargs, **({"recorder": recorder} if recorder else {}))
    seconds = time.perf_counter() - start
    kind = getattr(opened.decoder, "name", "model")
    source = f"exported {spec.exported}" if spec.exported else spec.hparams_set
    note = (f"{len(targets)} tissue tiles of {size}x{size} from {images}; "
            + (f"inputs degraded ({format_fixed(steps)}: the whole image, before tiles were cut on a "
               "grid shifted 1-7 input px from JPEG's); " if steps else "")
            + f"model {opened.model} {source}, {kind} decoding, mode {opened.mode}"
            + (", mean of the 8 flips/rotations" if getattr(opened.decoder, "tta", False) else ""))
    # --seed picks the tiles (and the --degrade grid and noise), --max_tiles how many (null: every tile)
    extra = {"degrade": format_fixed(steps) if steps else None, "seed": spec.seed, "max_tiles": max_tiles or None}
    if recorder is not None:
        extra["uncertainty"] = write_uncertainty(out_dir, inputs, predictions, targets, recorder, calibration)
    summary = write_results(out_dir, inputs, targets, predictions, note, names=names,
                            baselines=metrics.METHODS, extra=extra)
    print(metrics.summary_to_text(summary))
    if recorder is not None:
        u = summary["uncertainty"]
        print(f"uncertainty (temperature {u['calibration']['temperature']:g}): coverage_50 {u['coverage_50']:.3f}, "
              f"coverage_90 {u['coverage_90']:.3f}, rmse_ratio_surest_half {u['rmse_ratio_surest_half']:.3f} "
              f"(oracle {u['rmse_ratio_surest_half_oracle']:.3f}); wrote reliability.png, uncertainty_grid.png")
    print(f"decoded {count(len(targets), 'tile')} in {seconds:.1f} s; "
          f"wrote {os.path.join(out_dir, 'metrics.json')}, metrics.md, "
          "metrics.csv, grid.png")
    return summary


def evaluate_whole(spec: shared.ModelSpec, images: str, out_dir: str | os.PathLike[str], progress: bool = True,
                   degrade: str | None = None) -> dict:
    """Score the model ``spec`` names on whole images as `allen-sr upscale` enlarges them; writes
    the results (one row per image, the grid showing each image's centre), returns the summary.

    Images without tissue (under the tile filter's tissue fraction, the whole image taken as one tile)
    are skipped with a warning: blank glass decides nothing but would score near the 100 dB cap."""
    from allen_sr.api.upscaler import Options, Upscaler
    from allen_sr.evaluation.results import write_results

    steps = parse_fixed(degrade) if degrade is not None else []
    check_ratio(spec, *shared.model_shape(spec)[:2], whole=True)
    inputs, targets, predictions, names, blank = [], [], [], [], []
    paths = collect_inputs(images, out_dir)
    image_names = example_names(paths)
    with Upscaler(spec, Options()) as up:
        factor = up.factor
        # SSIM's window after the luma's border crop; the smallest input the model enlarges
        smallest = max(metrics.SSIM_FILTER_SIZE + 2 * factor, up.min_input * factor)
        print(f"evaluating whole images of {images} ({up.describe})", flush=True)
        for index, path in enumerate(paths):
            try:
                image = load_image(path, smallest)
            except ImageSkipped as exc:
                warnings.warn(str(exc))
                continue
            if tiling.tissue_fraction(image[None])[0] < tiling.TISSUE_MIN_FRACTION:
                blank.append(image_names[index])
                continue
            target = image[:image.shape[0] // factor * factor, :image.shape[1] // factor * factor]
            target = to_grey(target) if up.channels == 1 else target
            small = degrade_image(target, factor, steps, seed=spec.seed * 1_000_003 + index)
            inputs.append(small)
            targets.append(target)
            predictions.append(up.predict(small, progress=progress))
            names.append(image_names[index])
        describe = up.describe
    without = (f"{count(len(blank), 'image')} without tissue (under {tiling.TISSUE_MIN_FRACTION:.0%} tissue "
               "pixels, the tile filter's test)") if blank else ""
    if blank:
        warnings.warn(f"skipped {without}: {', '.join(blank)}")
    if not names:
        raise InvalidInputError(f"no readable images of at least {smallest} px a side with tissue in {images}"
                                + (f" ({without} skipped)" if blank else ""))
    note = (f"{len(names)} whole images from {images}" + (f" ({without} skipped)" if blank else "")
            + f", each reduced {factor}x"
            + (f" and degraded ({format_fixed(steps)})" if steps else " by its area average")
            + f", enlarged whole as allen-sr upscale does ({describe}); PSNR and SSIM per image, averaged over images")
    extra = {"degrade": format_fixed(steps) if steps else None, "seed": spec.seed, "max_tiles": None,  # every image
             "unit": "images", "skipped_without_tissue": len(blank)}
    summary = write_results(out_dir, inputs, targets, predictions, note, names=names, baselines=metrics.METHODS,
                            extra=extra, grid_crop=32 * factor, unit="image")
    print(metrics.summary_to_text(summary))
    print(f"wrote {os.path.join(out_dir, 'metrics.json')}, metrics.md, metrics.csv, grid.png "
          "(the centre of each image)")
    return summary


def write_uncertainty(out_dir: str | os.PathLike[str], inputs: np.ndarray, predictions: np.ndarray,
                      targets: np.ndarray, recorder: Any, calibration: Any, per_example: bool = False) -> dict:
    """The metrics.json ``uncertainty`` section, reliability.png and uncertainty_grid.png (and with
    ``per_example`` a heat map uncertainty_NNN.png per example, on the grid's scale)."""
    from allen_sr.decoding.uncertainty import pixel_uncertainty, summarize
    from allen_sr.evaluation import pictures
    from allen_sr.evaluation.uncertainty_pictures import reliability_diagram, uncertainty_grid

    os.makedirs(out_dir, exist_ok=True)
    section = summarize(recorder, predictions, targets, calibration)
    reliability_diagram({f"temperature {calibration.temperature:g}": section["reliability"]},
                        os.path.join(out_dir, "reliability.png"))
    maps = pixel_uncertainty(recorder.shaped("std")[0])
    pictures.save_png(uncertainty_grid(inputs, predictions, targets, maps),
                      os.path.join(out_dir, "uncertainty_grid.png"))
    if per_example:
        from allen_sr.evaluation.uncertainty_pictures import heat, uncertainty_scale

        vmax = uncertainty_scale(maps)
        for i, values in enumerate(maps):
            pictures.save_png(heat(values, vmax), os.path.join(out_dir, f"uncertainty_{i:03d}.png"))
    return section


def evaluate_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        if args.whole and args.uncertainty:
            raise InvalidInputError("--uncertainty scores tiles, --whole whole images: give one of them")
        if args.whole and args.max_tiles is not None:
            raise InvalidInputError("--max_tiles counts tiles, --whole scores every image whole: give one of them")
        if args.max_tiles is None:
            args.max_tiles = 256
        if args.max_tiles < 0:
            raise InvalidInputError(f"--max_tiles must be >= 0 (0: every tile), got {args.max_tiles}")
        fileio.check_output_folder(args.out, "--out")
        if args.whole:
            evaluate_whole(shared.model_spec(args), args.images, args.out, not args.no_progress, args.degrade)
            return
        evaluate(shared.model_spec(args), args.images, args.out, args.max_tiles, not args.no_progress,
                 args.degrade, args.uncertainty)

    return shared.run_command("evaluate", body)


if __name__ == "__main__":
    sys.exit(evaluate_main())
