"""The shipped models on inputs worse than they trained on: gain over bicubic as JPEG quality falls
and noise and optical blur grow, on held-out tissue of three stains. Where each model helps, and
where it starts to do harm.

    python benchmarks/bench_shipped.py [--models conv-cpu,conv-fast,transformer-tiny,conv-probabilistic]
        [--tiles 256] [--it_tiles 64]
    python benchmarks/bench_shipped.py --models conv-cpu,RUN_DIR   # a trained run beside a shipped model

Protocol (also printed with the results):

1. Held-out sources and tiles as bench_real_inputs.py (brain `other_deepslice_GLTa_s094`; H&E
   `other_stardist_histo_HE` plus, with ../shared, the CMU-1 bands outside the shipped crop; IHC
   DAB `other_skimage_ihc_colon_DAB`, a stain the shipped models never trained on), cut by
   `allen-sr evaluate --degrade` (allen_sr.commands.evaluate.cut_pairs).
2. Inputs: clean, then one degradation at a time, from inside the range each model trained on (its
   recorded `degradation`; the default `allen_sr.data.degrade.REAL_INPUTS`: JPEG 50-95, noise 0-10
   grey levels, blur 0-2 px) to beyond it: the SWEEPS below.
3. Models: the shipped ones, opened as `allen-sr evaluate --pretrained NAME` opens them (the
   TF-free exports: onnxruntime, NumPy), with their default decoding; or any export or run folder
   (its column: the folder's name). An Image Transformer decodes a seeded random ``--it_tiles`` of
   each cell's tiles (it is slow), bicubic on the same.

Prints a markdown section (progress on stderr): the gain table, then per model and stain the worst
input of each sweep that still keeps every milder one >= 0 dB over bicubic; writes a plot of the
gains to docs/shipped_inputs.png (a canonical run: the default models and tile counts) or
`<work>/shipped_inputs.png` (with `--work`).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402
import bench_real_inputs as bri  # noqa: E402
from allen_sr.api.models import open_model, resolve, trained_degradation  # noqa: E402
from allen_sr.data.degrade import parse_training  # noqa: E402
from allen_sr.evaluation import metrics  # noqa: E402
from allen_sr.fileio import atomic_write_bytes  # noqa: E402

# sweep title -> (--degrade key, values from mild to harsh)
SWEEPS = {"JPEG quality": ("jpeg", (95, 90, 80, 70, 60, 50, 40, 30)),
          "noise (grey levels)": ("noise", (1, 2, 4, 6, 8, 12)),
          "blur (sigma, full-resolution px)": ("blur", (0.5, 1, 1.5, 2, 3, 4))}
MODELS = ("conv-cpu", "conv-fast", "transformer-tiny", "conv-probabilistic")


def spec(key: str, value: float) -> str:
    return f"{key}={value:g}"


def inputs() -> tuple[str, ...]:
    return ("clean", *(spec(key, v) for key, values in SWEEPS.values() for v in values))


def trained_ranges(spec: str | None) -> dict[str, tuple[float, float]]:
    """{sweep key: (lo, hi)} of the training spec ``spec``, for the keys it degrades."""
    parsed = parse_training(spec) if spec else None
    return {key: (r.lo, r.hi) for key, _ in SWEEPS.values()
            for r in [getattr(parsed, key, None)] if r is not None}


def describe_training(trained: dict[str, str | None]) -> str:
    """How the models' training ranges read in the text, models with one spec named together."""
    units = {"jpeg": ("JPEG ", ""), "noise": ("noise ", " grey levels"), "blur": ("blur ", " px")}
    groups: dict[str | None, list[str]] = {}
    for name, spec in trained.items():
        groups.setdefault(spec, []).append(name)
    parts = []
    for spec, names in groups.items():
        if spec is None:
            parts.append(f"{', '.join(names)}: not recorded")
            continue
        ranges = trained_ranges(spec)
        text = ", ".join(f"{units[k][0]}{lo:g}-{hi:g}{units[k][1]}" for k, (lo, hi) in ranges.items()) or "clean"
        parts.append(f"{', '.join(names)}: {text} (`degradation={spec}`)")
    return "; ".join(parts)


def decode_all(source: str, data: dict, it_tiles: int) -> tuple[dict, dict, int | None]:
    """({cell: tile indices}, {cell: predictions}, tiles limit) of ``source`` (a shipped model's name,
    an export or a run folder, as `allen_sr.Upscaler.open` takes it), opened once; an Image
    Transformer decodes ``it_tiles`` of each cell."""
    opened = open_model(resolve(source))
    limit = it_tiles if opened.model == "img2img_transformer_sr" else None
    index, picked = bri.subsets(data, limit)
    preds = {}
    for key, cell in picked.items():
        bl.log(f"{source}: decoding {len(cell['inputs'])} tiles of {key[0]}, {key[1]} ...")
        preds[key] = opened.decoder.decode(cell["inputs"], mode=opened.mode, batch_size=64, seed=0, progress=False)
    return index, preds, limit


def harmless_up_to(scores: dict, name: str, stain: str, key: str, values: tuple[float, ...]) -> str:
    """The harshest value of a sweep with it and every milder one (clean included) >= 0 dB."""
    last = None
    for value in ("clean", *values):
        if scores[stain, value if value == "clean" else spec(key, value)][name] < 0:
            break
        last = value
    if last is None:
        return "below bicubic even clean"
    return "every value tried" if last == values[-1] else ("clean only" if last == "clean" else f"{last:g}")


def envelope(scores: dict, names: list[str], stains: list[str]) -> list[str]:
    head = ["model", "held-out stain", *(f"{title}: no harm through" for title in SWEEPS)]
    lines = ["| " + " | ".join(head) + " |", "|:---|:---|" + "---:|" * len(SWEEPS)]
    for name in names:
        for stain in stains:
            cells = [harmless_up_to(scores, name, stain, key, values) for key, values in SWEEPS.values()]
            lines.append(f"| {name} | {stain} | " + " | ".join(cells) + " |")
    return lines


def plot(path: Path, scores: dict, names: list[str], stains: list[str], trained: dict[str, str | None]) -> None:
    """Stains in rows, sweeps in columns: each model's gain against the degradation, the ranges the
    models trained on shaded (one shade where they all trained on the same, else one per range,
    named in the axes' legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.2 * len(stains)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(stains), len(SWEEPS), squeeze=False)
    ranges = {name: trained_ranges(trained[name]) for name in names}
    for row, stain in enumerate(stains):
        for col, (title, (key, values)) in enumerate(SWEEPS.items()):
            ax = axes[row][col]
            clean_at = 104 if key == "jpeg" else 0  # clean input drawn left of the mildest value
            xs = [clean_at, *values]
            for i, name in enumerate(names):
                ys = [scores[stain, "clean"][name], *(scores[stain, spec(key, v)][name] for v in values)]
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
            ax.axhline(0.0, color="black", linewidth=0.8)
            spans: dict[tuple[float, float], list[str]] = {}  # trained range -> the models trained on it
            for name in names:
                span = ranges[name].get(key)
                if span:
                    spans.setdefault(span, []).append(name)
            shared = len(spans) == 1 and len(next(iter(spans.values()))) == len(names)
            for j, (span, owners) in enumerate(sorted(spans.items(), key=lambda item: -item[0][1])):
                ax.axvspan(*span, color="green" if shared else ("green", "grey", "purple")[j % 3], alpha=0.08,
                           label="trained range" if shared else f"trained: {', '.join(owners)}")
            if not shared and spans:
                ax.legend(handles=[h for h in ax.get_legend_handles_labels()[0] if h.get_label().startswith("trained")],
                          loc="best", fontsize="x-small")
            ax.set_xticks(xs, ["clean", *(f"{v:g}" for v in values)], fontsize="small")
            if key == "jpeg":
                ax.invert_xaxis()
            ax.set_xlabel(title)
            ax.set_ylabel("gain over bicubic (dB)")
            ax.set_title(stain)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(buffer.getvalue(), path)
    bl.log(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"shipped models, export or run folders (default {','.join(MODELS)})")
    p.add_argument("--tiles", type=int, default=256, help="tiles per held-out stain and input (default 256)")
    p.add_argument("--it_tiles", type=int, default=64,
                   help="the Image Transformer decodes a seeded random N of those (default 64; it is slow)")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = {Path(s).name: s for s in args.models.split(",")}  # column label -> model
    if len(sources) != len(args.models.split(",")):
        raise SystemExit(f"--models {args.models}: two models would share a column label (a folder's name)")
    names = list(sources)
    with bl.work_folder(args.work, "bench_shipped_") as work:
        files = bri.held_out_files(work)
        data = bri.cells(files, args.tiles, inputs())
        preds, index, limits = {}, {}, {}
        trained = {name: trained_degradation(resolve(sources[name])) for name in names}
        for name in names:
            index[name], preds[name], limits[name] = decode_all(sources[name], data, args.it_tiles)
        scores = bri.score_cells(data, preds, index)
        stains = list(files)
        canonical = bl.at_defaults(args, parse_args)
        picture = bl.picture_at(args, HERE.parent / "docs" / "shipped_inputs.png" if canonical else None,
                                work, "shipped_inputs.png")
        if picture:
            plot(picture, scores, names, stains, trained)
        table = bri.gain_table({n: n for n in names}, scores)
        tiles = ", ".join(f"{n}: " + (f"a seeded random {limits[n]} of them" if limits[n] else "all")
                          for n in names)
        text = "\n".join([
            "### The shipped models as inputs get worse: gain over bicubic (dB) on held-out stains", "",
            *table, "", "Where each model does no harm (gain >= 0 dB at that input and at every milder one "
            "of its sweep, clean included):", "", *envelope(scores, names, stains), "",
            "Models, opened as `allen_sr.Upscaler.open` opens them (a shipped model: its TF-free export), default "
            "decoding: " + ", ".join(n if n == sources[n] else f"{n} (`{sources[n]}`)" for n in names)
            + ". Training inputs of " + describe_training(trained) + ". "
            "Held-out: " + "; ".join(
                f"{stain}: {', '.join(Path(p).stem for p in paths)}" for stain, paths in files.items())
            + f". Up to {args.tiles} tiles per cell, the `tiles` column ({tiles}). Inputs as "
            f"`allen-sr evaluate --degrade` makes them. Metrics: {metrics.PROTOCOL}.", "",
            bl.picture_line(picture), ""])
        (work / "shipped_inputs.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
