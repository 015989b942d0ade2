"""Fine-tuning a shipped model on a stain it never saw (`allen-sr train --init_from conv-cpu`)
against training the same set from scratch on the same images for the same time, and against the
shipped model as it is.

    python benchmarks/bench_fine_tune.py [--minutes 5] [--work DIR]

Protocol (also printed with the results):

1. Images: `other_skimage_ihc_colon_DAB` (512x512 px, IHC DAB, a stain no shipped model trained
   on) from `allen_sr/sample_data/`, cut by rows: 0-191 to train, 192-255 to the dev split (the
   evaluation t2t runs while training), 256-511 held out. The two training files are named so
   that `allen-sr datagen --problem=img2img_local_dim8to32` puts them in those splits.
2. Runs, side by side (all at once, so each gets a share of the cores), `img2img_conv_sr_cpu` with
   its default `degradation`, each `--minutes` of training time (`train_budget_seconds`): from
   scratch; `--init_from conv-cpu` at the set's learning rate; the same at a fifth of it
   (`learning_rate_constant=2e-4`).
3. Scores: `allen-sr evaluate` on every tissue tile of the held-out rows (8-fold averaging), clean
   (the exact area average) and `--degrade jpeg=75`, gain over bicubic from the same input; the
   shipped `conv-cpu` beside them. What fine-tuning costs on the stain it came from: the same on
   the held-out brain section `other_deepslice_GLTa_s094`, clean.

Prints a markdown section (progress on stderr) and writes it with a JSON copy to `<work>/`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from allen_sr.data.images import load_image  # noqa: E402
from allen_sr.data.tiles import split_of  # noqa: E402
from allen_sr.sample_data import sample_folder  # noqa: E402

SAMPLE_DIR = Path(sample_folder())

ALLEN_SR = str(Path(sys.executable).parent / "allen-sr")
PROBLEM = "img2img_local_dim8to32"
SET = "img2img_conv_sr_cpu"
IHC = "other_skimage_ihc_colon_DAB.png"
BRAIN = "other_deepslice_GLTa_s094.png"
ROWS = {"train": (0, 192), "dev": (192, 256), "held_out": (256, 512)}
DEV_FRACTION = 0.2  # img2img_local_dim8to32's
# label -> (extra flags, extra hparams)
RUNS = {"from scratch": ([], ""),
        "`--init_from conv-cpu`": (["--init_from", "conv-cpu"], ""),
        "`--init_from conv-cpu`, learning rate / 5": (["--init_from", "conv-cpu"], "learning_rate_constant=2e-4")}
INPUTS = {"IHC clean": (IHC, None), "IHC JPEG 75": (IHC, "jpeg=75"), "brain clean": (BRAIN, None)}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def named_for(split: str, stem: str) -> str:
    """A file name that the local problem's datagen puts in ``split`` (its hash of the name)."""
    for i in range(1000):
        if split_of(f"{stem}_{i}", DEV_FRACTION) == split:
            return f"{stem}_{i}"
    raise RuntimeError(f"no name for {split}")


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    """The training dataset and the held-out images (IHC rows 256-511, the brain section)."""
    image = load_image(str(SAMPLE_DIR / IHC))
    images, held = work / "images", work / "held_out"
    images.mkdir(parents=True, exist_ok=True)
    held.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        top, bottom = ROWS[split]
        Image.fromarray(image[top:bottom]).save(images / f"{named_for(split, 'ihc_' + split)}.png")
    top, bottom = ROWS["held_out"]
    Image.fromarray(image[top:bottom]).save(held / IHC)
    data = work / "data"
    if not list(data.glob("*-train-*")):
        made = subprocess.run([ALLEN_SR, "datagen", f"--problem={PROBLEM}", f"--data_dir={data}",
                               f"--tmp_dir={images}"], check=True, capture_output=True, text=True)
        say(next(line for line in made.stdout.splitlines() if line.startswith("tiles kept")))
    return data, {IHC: held / IHC, BRAIN: SAMPLE_DIR / BRAIN}


def train_all(data: Path, work: Path, seconds: int) -> dict[str, Path]:
    """Start every run at once; wait for all; {label: run folder}."""
    folders, procs = {}, []
    for i, (label, (flags, extra)) in enumerate(RUNS.items()):
        folder = work / f"run{i}"
        folders[label] = folder
        hparams = ",".join(h for h in (f"train_budget_seconds={seconds}", extra) if h)
        log = open(work / f"run{i}.log", "w")
        procs.append((label, log, subprocess.Popen(
            [ALLEN_SR, "train", f"--problem={PROBLEM}", "--model=img2img_conv_sr", f"--hparams_set={SET}",
             f"--hparams={hparams}", f"--data_dir={data}", f"--output_dir={folder}", "--train_steps=1000000",
             "--eval_steps=4", *flags], stdout=log, stderr=subprocess.STDOUT)))
    for label, log, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"training {label!r} failed: see {log.name}")
        log.close()
    return folders


def steps(folder: Path) -> int:
    import tensorflow as tf

    return int(tf.train.load_checkpoint(str(folder)).get_tensor("global_step"))


def evaluate(model: list[str], image: Path, degrade: str | None, out: Path) -> tuple[float, int]:
    """(gain over bicubic in dB, tiles) of ``model`` (its flags) on every tissue tile of ``image``."""
    flags = ["--degrade", degrade] if degrade else []
    subprocess.run([ALLEN_SR, "evaluate", *model, "--images", str(image), "--max_tiles", "0", "--out", str(out),
                    "--no_progress", *flags], check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["methods"]["model"]["psnr"] - metrics["methods"]["bicubic"]["psnr"], metrics["tiles"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training time per run (default 5)")
    p.add_argument("--work", help="where to keep the dataset and runs (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fine_tune_"))
    start = time.time()
    data, held = prepare(work)
    say(f"training {len(RUNS)} runs side by side for {args.minutes:g} minutes each in {work}")
    folders = train_all(data, work, int(args.minutes * 60))
    models = {"`conv-cpu` as shipped": ["--pretrained", "conv-cpu"]}
    models.update({f"{label} ({steps(folder)} steps)": ["--output_dir", str(folder)]
                   for label, folder in folders.items()})
    gains: dict[str, dict[str, float]] = {}
    tiles: dict[str, int] = {}
    for m, (name, flags) in enumerate(models.items()):
        for c, (cell, (image, degrade)) in enumerate(INPUTS.items()):
            say(f"evaluating {name} on {cell}")
            gains.setdefault(name, {})[cell], tiles[cell] = evaluate(flags, held[image], degrade, work / f"eval{m}_{c}")
    lines = [
        "### Fine-tuning `conv-cpu` on a stain it never saw", "",
        f"IHC DAB rows 0-191 to train, 192-255 dev, 256-511 held out; `{SET}`, its default `degradation`, "
        f"{args.minutes:g} minutes of training per run, all runs side by side; gain over bicubic (dB) on every "
        "tissue tile of the held-out rows and of the held-out brain section, 8-fold averaging.", "",
        "| model | " + " | ".join(f"{cell} ({tiles[cell]} tiles)" for cell in INPUTS) + " |",
        "|:---|" + "---:|" * len(INPUTS)]
    lines += [f"| {name} | " + " | ".join(f"{gains[name][cell]:+.2f}" for cell in INPUTS) + " |" for name in gains]
    lines += ["", f"Took {(time.time() - start) / 60:.0f} minutes."]
    text = "\n".join(lines)
    print(text)
    (work / "bench_fine_tune.md").write_text(text + "\n")
    (work / "bench_fine_tune.json").write_text(json.dumps(gains, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
