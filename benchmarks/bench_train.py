"""Benchmark: training throughput of each hparams set on this machine's CPU.

Run: ``python benchmarks/bench_train.py`` (about 5 minutes on 2 busy cores, mostly start-up and
graph building). Prints a markdown section to stdout.

A small dataset is tiled from synthetic tissue-like images in a temporary folder; then each hparams
set trains with ``allen-sr train --schedule=train --worker_gpu=0`` (one data shard, CPU) in a fresh
output folder. The estimator logs ``global_step/sec`` after every step (``--log_step_count_steps=1``);
the first steps (graph optimisation, input pipeline warm-up) are dropped and the next ones timed.
steps/s is the timed steps over their total time; examples/s multiplies by the batch.

``img2img_allen_base`` and ``img2img_allen_multigpu`` are GPU sets (batch 8, and 18 per GPU on 8
GPUs): on a CPU they run with a batch of 2 and 1 so they finish at all. Their rows tell you whether a
CPU is of any use for them (it is not), not what a GPU does.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ALLEN_SR = str(Path(sys.executable).parent / "allen-sr")
PROBLEM = "img2img_local_dim8to32"

# (hparams set, batch override or None for the set's own, warm-up steps dropped, steps timed)
RUNS = [
    ("img2img_allen_cpu_tiny", None, 5, 15),
    ("img2img_allen_base", 2, 2, 5),
    ("img2img_allen_multigpu", 1, 2, 3),
]
DEFAULT_BATCH = {"img2img_allen_cpu_tiny": 8, "img2img_allen_base": 8, "img2img_allen_multigpu": 18}
RATE = re.compile(r"INFO:tensorflow:global_step/sec: ([0-9.e+-]+)")
PARAMS = re.compile(r"INFO:tensorflow:Trainable Variables Total size: (\d+)")


def _tissue_image(height: int, width: int, seed: int) -> np.ndarray:
    """White glass with a stained, textured blob: enough tissue for the tile filter to keep."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 < 1
    img = np.full((height, width, 3), 245.0)
    stain = np.stack([120 + 40 * np.sin(xx / 3.0), 60 + 30 * np.cos(yy / 4.0), 150 + 0 * xx], -1)
    img[blob] = stain[blob]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_dataset(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    for k in range(10):
        Image.fromarray(_tissue_image(192, 256, seed=k)).save(images / f"slide_{k}.png")
    data = root / "data"
    _run([ALLEN_SR, "datagen", f"--problem={PROBLEM}", f"--data_dir={data}", f"--tmp_dir={images}"])
    return data


def measure(data: Path, root: Path, hparams_set: str, batch: int | None, warmup: int, timed: int) -> dict:
    """Train warmup + timed steps; steps/s over the timed ones, from the estimator's own log."""
    out = root / f"train-{hparams_set}"
    cmd = [ALLEN_SR, "train", f"--problem={PROBLEM}", "--model=img2img_transformer",
           f"--hparams_set={hparams_set}", f"--data_dir={data}", f"--output_dir={out}",
           "--schedule=train", "--worker_gpu=0", f"--train_steps={warmup + timed + 1}",
           "--log_step_count_steps=1"]
    if batch is not None:
        cmd.append(f"--hparams=batch_size={batch}")
    started = time.perf_counter()
    proc = _run(cmd)
    wall = time.perf_counter() - started
    rates = [float(r) for r in RATE.findall(proc.stderr)]
    if len(rates) < warmup + timed:
        raise SystemExit(f"{hparams_set}: expected {warmup + timed} global_step/sec lines, got "
                         f"{len(rates)}:\n{proc.stderr[-3000:]}")
    seconds = sum(1.0 / r for r in rates[warmup:warmup + timed])
    batch = batch or DEFAULT_BATCH[hparams_set]
    params = PARAMS.search(proc.stderr)
    return {"set": hparams_set, "batch": batch, "timed": timed, "steps_per_s": timed / seconds,
            "examples_per_s": timed * batch / seconds, "params": int(params.group(1)) if params else None,
            "wall": wall}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        data = make_dataset(root)
        rows = []
        for hparams_set, batch, warmup, timed in RUNS:
            print(f"  {hparams_set} ...", file=sys.stderr, flush=True)
            rows.append(measure(data, root, hparams_set, batch, warmup, timed))
    print("### Training throughput\n")
    print(f"`allen-sr train --worker_gpu=0` on {os.cpu_count()} CPU cores, one data shard, problem "
          f"`{PROBLEM}` (8x8 -> 32x32 RGB). steps/s over the timed steps after the warm-up steps, "
          "from the estimator's `global_step/sec` log; wall time includes start-up and graph building.\n")
    print("| hparams set | parameters | batch | steps timed | steps/s | examples/s | wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        params = f"{r['params'] / 1e6:.2f} M" if r["params"] else "?"
        batch = str(r["batch"]) + ("" if r["batch"] == DEFAULT_BATCH[r["set"]] else
                                   f" (set: {DEFAULT_BATCH[r['set']]})")
        print(f"| `{r['set']}` | {params} | {batch} | {r['timed']} | {r['steps_per_s']:.2f} | "
              f"{r['examples_per_s']:.1f} | {r['wall']:.0f} s |")
    print("\nThe GPU sets run here with a reduced batch only so that they run at all; "
          "multigpu's batch is per GPU (x8 on its intended 8 GPUs).")
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help; it takes no options
    sys.exit(main())
