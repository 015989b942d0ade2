"""`allen-sr plot`: loss curves of one or several runs on one figure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from allen_sr.commands.args import expand_home
from allen_sr.errors import InvalidInputError, count
from allen_sr.evaluation.plots import plot_loss_curves
from allen_sr.inference import writers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allen-sr plot",
        description="Plot a TensorBoard scalar (default: the training loss) of one or more runs "
        "against step and against wall time.",
    )
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR",
                        help="training output dirs (holding events.out.tfevents.* files)")
    parser.add_argument("--out", required=True, help="PNG file to write (NAME.png)")
    parser.add_argument("--tag", default="loss", help="scalar tag to plot (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="legend labels, one per run (default: the run folder names)")
    parser.add_argument("--eval", action="store_true",
                        help="plot the evaluation summaries in RUN_DIR/eval*/ instead")
    parser.add_argument("--smoothing", type=float, default=0.6,
                        help="TensorBoard-style smoothing in [0, 1) (default: %(default)s)")
    return parser


def plot_main(argv: Sequence[str] | None = None) -> int:
    """``allen-sr plot --runs RUN_DIR... --out loss.png [--tag loss]``; returns the exit code."""
    parser = build_parser()
    args = expand_home(parser.parse_args(argv))
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels has {len(args.labels)} entries for {len(args.runs)} runs")
    try:
        writers.check_writable(Path(args.out))
        if Path(args.out).suffix.lower() != ".png":
            raise InvalidInputError(f"--out {args.out}: the plot is written as a PNG; name it .png")
        path = plot_loss_curves(
            args.runs, args.out, tag=args.tag, labels=args.labels,
            subdir="eval*" if args.eval else None, smoothing=args.smoothing,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({count(len(args.runs), 'run')}, tag {args.tag!r})")
    return 0
