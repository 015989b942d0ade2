"""`allen-sr decode`: decode examples of a problem's split with a trained model.

Reads the split through the problem's own input pipeline, decodes it with the model's decoder
(autoregressive for the Image Transformer, one pass for the conv model) and writes one PNG per
example plus the shared results (grid.png, metrics.csv/.json/.md: PSNR/SSIM of the model and of
bicubic).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from allen_sr import fileio
from allen_sr.commands import args as shared
from allen_sr.decoding.examples import SPLITS
from allen_sr.errors import InvalidInputError, UserError, count


@dataclass
class DecodeResult:
    """What :func:`run_decode` produced."""

    inputs: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    summary: dict[str, Any]
    seconds: float
    out_dir: Path
    mode: str
    decoder: str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p, shipped=False)
    p.add_argument("--data_dir", required=True, help="t2t data dir with the problem's records")
    p.add_argument("--dataset_split", default="dev", choices=sorted(SPLITS), help="default %(default)s")
    p.add_argument("--num_examples", type=int, default=8, help="default %(default)s")
    p.add_argument("--uncertainty", action="store_true",
                   help="Image Transformers and probabilistic conv models: also score the calibrated "
                        "per-pixel uncertainty (metrics.json 'uncertainty', reliability.png, "
                        "uncertainty_grid.png, uncertainty_NNN.png)")
    p.add_argument("--out", required=True, help="folder for the PNGs and metrics")
    return p


TRAINING_RUN_ONLY = ("decode reads a dataset's TFRecords with a training run (--problem, --hparams_set, "
                     "--output_dir); score an exported or pretrained model on image files with `allen-sr evaluate`")


def run_decode(spec: shared.ModelSpec, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               split: str = "dev", num_examples: int = 8, progress: bool = True,
               uncertainty: bool = False) -> DecodeResult:
    """Everything `allen-sr decode` does, as a function (used by the CLI and the demo)."""
    from allen_sr.decoding.examples import read_examples
    from allen_sr.evaluation.results import write_results

    if num_examples < 1:
        raise InvalidInputError(f"--num_examples must be >= 1, got {num_examples}")
    if spec.exported is not None:
        model = f"--pretrained {spec.pretrained}" if spec.pretrained else f"--exported {spec.exported}"
        raise InvalidInputError(f"{model}: {TRAINING_RUN_ONLY}")
    opened = shared.open_model(spec)
    inputs, targets = read_examples(spec.problem, data_dir, num_examples, opened.hparams, split)
    if tuple(targets.shape[1:3]) != tuple(opened.decoder.target_shape):
        opened = shared.open_model(spec, target_shape=tuple(targets.shape[1:3]))
    recorder = calibration = None
    fitted = 0
    if uncertainty:
        from allen_sr.api.models import no_distribution, uncertainty_calibration
        from allen_sr.decoding.calibration import fitted_tiles
        from allen_sr.decoding.uncertainty import Recorder

        if not getattr(opened.decoder, "reports_distributions", False):
            raise UserError(no_distribution(opened.model, runs_only=True))
        calibration = uncertainty_calibration(spec, opened, progress, log=print, data_dir=data_dir)
        recorder = Recorder((calibration.temperature,), targets)
        fitted = fitted_tiles(calibration, spec.problem, data_dir, split, len(inputs))
    start = time.perf_counter()
    kwargs = shared.decode_kwargs(spec, opened.mode, progress)
    predictions = opened.decoder.decode(inputs, **kwargs, **({"recorder": recorder} if recorder else {}))
    seconds = time.perf_counter() - start
    kind = getattr(opened.decoder, "name", "model")
    note = (f"model = {opened.model} {spec.hparams_set} checkpoint {os.path.basename(opened.checkpoint)}, "
            f"{kind} decoding, mode {opened.mode}"
            + (", mean of the 8 flips/rotations" if getattr(opened.decoder, "tta", False) else "")
            + (f" (temperature {spec.temperature}, seed {spec.seed})" if opened.mode == "sample" else "")
            + f", {split} split")
    extra = {}
    if recorder is not None:
        from allen_sr.commands.evaluate import write_uncertainty

        extra["uncertainty"] = write_uncertainty(out_dir, inputs, predictions, targets, recorder, calibration,
                                                 per_example=True)
        extra["uncertainty"]["tiles_used_to_fit"] = fitted
        if fitted:
            extra["uncertainty"]["held_out"] = (f"no: the temperature was fitted on {fitted} of these "
                                                f"{len(inputs)} tiles (the first dev tiles of {data_dir})")
    summary = write_results(out_dir, inputs, targets, predictions, note, example_pngs=True, extra=extra)
    return DecodeResult(inputs, targets, predictions, summary, seconds, Path(out_dir), opened.mode, kind)


def decode_main(argv: Sequence[str] | None = None) -> int:
    """`allen-sr decode ...`: returns the process exit code."""
    args = shared.parse(build_parser(), argv)

    def body() -> int:
        from allen_sr.evaluation import metrics

        fileio.check_output_folder(args.out, "--out")
        if args.pretrained or args.exported or not args.output_dir:  # said before model_spec's other advice
            given = f"--pretrained {args.pretrained}" if args.pretrained else (
                f"--exported {args.exported}" if args.exported else "no --output_dir")
            raise InvalidInputError(f"{given}: {TRAINING_RUN_ONLY}")
        result = run_decode(shared.model_spec(args), args.data_dir, args.out, args.dataset_split,
                            args.num_examples, progress=not args.no_progress, uncertainty=args.uncertainty)
        n = len(result.predictions)
        print(metrics.summary_to_text(result.summary), end="")
        if n < args.num_examples:
            print(f"note: the {args.dataset_split} split has {count(n, 'example')}: decoded all of them, "
                  f"not --num_examples {args.num_examples}")
        print(f"decoded {count(n, 'example')} in {result.seconds:.1f} s ({result.seconds / n:.2f} s/image, "
              f"{result.decoder} decoder, mode {result.mode})")
        print(f"wrote {result.out_dir / 'example_000.png'} .. example_{n - 1:03d}.png, grid.png, "
              "metrics.csv, metrics.json, metrics.md")
        if "uncertainty" in result.summary:
            u = result.summary["uncertainty"]
            print(f"uncertainty (temperature {u['calibration']['temperature']:g}): coverage_50 "
                  f"{u['coverage_50']:.3f}, coverage_90 {u['coverage_90']:.3f}, rmse_ratio_surest_half "
                  f"{u['rmse_ratio_surest_half']:.3f}; wrote uncertainty_000.png .., reliability.png, "
                  "uncertainty_grid.png")
            if u.get("held_out"):
                print(f"note: not held out: {u['held_out'].split(': ', 1)[1]}; score the uncertainty on other "
                      "images with `allen-sr evaluate --uncertainty`")
        return 0

    return shared.run_command("decode", body)


if __name__ == "__main__":
    sys.exit(decode_main())
