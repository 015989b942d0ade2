"""Folder runs on a Dask cluster: sections per minute in-process and with 1 and 2 local workers.

A folder of N copies of a 1024x1024 px section (made from a shipped sample image, each copy its
own file) is enlarged by `allen-sr upscale --images DIR --out_dir DIR --pretrained conv-fast`
into 4096x4096 px tiled BigTIFFs: once in-process, once with ``--dask local:1`` and once with
``--dask local:2`` (worker processes of one thread each, started by the command). Each run is a
fresh process into an empty output folder, timed end to end: opening the model, starting the
cluster and each worker opening its own model count, as a user waits for them. The outputs of
the cluster runs are checked to equal the in-process ones.

Prints a markdown section on stdout; `python benchmarks/bench_dask.py` (about 30 s on 2 cores;
``--images 4`` about 15 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDE = 1024  # input px of each section
SAMPLE = REPO / "allen_sr" / "sample_data" / "other_deepslice_GLTa_s094.png"
MODEL = "conv-fast"
RUNS = (("in-process", None), ("--dask local:1", "local:1"), ("--dask local:2", "local:2"))


def section(side: int = SIDE) -> np.ndarray:
    """A ``side`` x ``side`` px RGB section: the sample image, mirrored to fill the square."""
    from allen_sr.data.images import load_image

    image = load_image(str(SAMPLE))[..., :3]
    reps = (-(-side // image.shape[0]) + 1, -(-side // image.shape[1]) + 1)
    return np.pad(image, ((0, image.shape[0] * reps[0]), (0, image.shape[1] * reps[1]), (0, 0)),
                  mode="symmetric")[:side, :side]


def empty_folder(folder: Path) -> Path:
    """``folder``, emptied: a rerun with the same --work must not find the last run's files."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def make_folder(folder: Path, count: int) -> None:
    """``count`` TIFF copies of :func:`section` in ``folder``, emptied first."""
    import tifffile

    empty_folder(folder)
    image = section()
    for k in range(count):
        tifffile.imwrite(folder / f"section_{k:02d}.tif", image)


def run(images: Path, out: Path, dask: str | None, count: int) -> float:
    """Seconds of one `allen-sr upscale --images` process; exits if it did not write every image."""
    argv = [sys.executable, "-m", "allen_sr.commands.upscale", "--images", str(images), "--out_dir", str(out),
            "--pretrained", MODEL, "--no_progress"] + ([] if dask is None else ["--dask", dask])
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode or f"{count} written, 0 already done (skipped), 0 failed" not in proc.stdout:
        raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def outputs(folder: Path) -> list[str]:
    """The enlarged images of an output folder: not the hidden records a folder run keeps beside them."""
    return sorted(p.name for p in folder.glob("*.tif") if not p.name.startswith("."))


def same_outputs(first: Path, other: Path) -> bool:
    """Whether two output folders hold the same pixels, file by file."""
    import tifffile

    names = outputs(first)
    return names == outputs(other) and all(
        np.array_equal(tifffile.imread(first / n), tifffile.imread(other / n)) for n in names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="sections in the folder (default %(default)s)")
    p.add_argument("--work", help="keep the inputs and outputs here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        work = Path(args.work or tmp)
        make_folder(work / "in", args.images)
        seconds = {label: run(work / "in", empty_folder(work / f"out_{k}"), dask, args.images)
                   for k, (label, dask) in enumerate(RUNS)}
        same = all(same_outputs(work / "out_0", work / f"out_{k}") for k in range(1, len(RUNS)))
    base = seconds[RUNS[0][0]]
    print("### Folder runs on a Dask cluster\n")
    print(f"{args.images} sections of {SIDE}x{SIDE} px -> {4 * SIDE}x{4 * SIDE} px tiled BigTIFFs (deflate), "
          f"`allen-sr upscale --images DIR --pretrained {MODEL}`; each run a fresh process timed end to end "
          f"(model opening, cluster start and each worker's model included); {os.cpu_count()} cores.\n")
    print("| run | seconds | sections/min | vs in-process |")
    print("|:---|---:|---:|---:|")
    for label, _ in RUNS:
        print(f"| {label} | {seconds[label]:.1f} | {60 * args.images / seconds[label]:.1f} | "
              f"{base / seconds[label]:.2f}x |")
    print(f"\nCluster outputs equal to the in-process ones: {'yes' if same else '**no**'}.")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
