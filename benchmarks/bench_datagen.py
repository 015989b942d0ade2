"""Datagen throughput: our tile dataset builder vs tensor2tensor's stock Allen generator.

Both run on the same local JPEGs in one run, each in a fresh Python process (`--child`). The
stock problem downloads `<index>.jpg` files into tmp_dir and skips the download when they exist,
so naming the local images 0.jpg .. N-1.jpg points its download step at local files. Tiles/s
counts records written to TFRecord shards.

Each generator is timed twice over: with cold memory (what a fresh process gets) and with warm
memory (the child touches and frees a block just before timing). On a VM that backs guest memory
lazily the two differ a lot; docs/ARCHITECTURE.md ("The data side") explains why.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_images(folder: str, count: int, size: int) -> None:
    """`count` JPEG crops (size x size) cut from the shipped sample slides (allen_sr/sample_data)."""
    samples = sorted(glob.glob(os.path.join(REPO, "allen_sr", "sample_data", "*")))
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in samples if p.endswith((".png", ".jpg"))]
    rng = np.random.default_rng(0)
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        s = min(size, h, w)
        top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(src[top:top + s, left:left + s]).resize((size, size), Image.BICUBIC)
        crop.save(os.path.join(folder, f"{i}.jpg"), quality=95)


def warm_memory(gib: float) -> None:
    """Touch `gib` GiB of fresh memory once and free it, just before the timed run.

    Only memory touched moments before the run is warm on a VM with free page reporting (see
    docs/ARCHITECTURE.md ("The data side")); datagen writes through the page cache, so this matters to its timing.
    """
    block = np.ones(int(gib * 2**30), np.uint8)
    del block


def count_records(pattern: str) -> int:
    import tensorflow as tf

    return sum(1 for f in glob.glob(pattern) for _ in tf.compat.v1.io.tf_record_iterator(f))


def child(kind: str, tmp_dir: str, data_dir: str, warm_gib: float) -> None:
    """One generator run in this fresh process, as `t2t-datagen` / `allen-sr datagen` would run it:
    TensorFlow and tensor2tensor imported, then the problem's generate_data timed."""
    from allen_sr.t2t.names import register_all

    register_all()  # the shims, as both tools get them
    if kind == "stock":
        from tensor2tensor.data_generators import allen_brain
    else:
        from allen_sr.problems import allen_brain  # ours, registered under the same name
    problem = allen_brain.Img2imgAllenBrainDim8to32()
    os.makedirs(data_dir)  # the stock generator expects it to exist
    if warm_gib > 0:
        warm_memory(warm_gib)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        problem.generate_data(data_dir, tmp_dir)
    seconds = time.perf_counter() - start
    count = sum(count_records(os.path.join(data_dir, f"img2img_allen_brain-{split}-*")) for split in ("train", "dev"))
    print("RESULT " + json.dumps({"seconds": seconds, "tiles": count}))


def run(kind: str, tmp_dir: str, data_dir: str, warm_gib: float) -> tuple[float, int]:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, tmp_dir, data_dir,
                           str(warm_gib)], capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        raise RuntimeError(f"{kind} generator failed:\n{proc.stderr[-3000:]}")
    result = json.loads(found[0][len("RESULT "):])
    return result["seconds"], result["tiles"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100, help="local images (the stock list has 100)")
    ap.add_argument("--size", type=int, default=1024, help="image side in px")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each generator per memory state, alternating; best kept (default 3)")
    ap.add_argument("--warm_gib", type=float, default=2.0,
                    help="GiB of memory touched just before the warm runs (see warm_memory)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "TMP_DIR", "DATA_DIR", "WARM_GIB"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1 (got {args.repeats}): the best of its runs is reported")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        kind, tmp_dir, data_dir, warm_gib = args.child
        child(kind, tmp_dir, data_dir, float(warm_gib))
        return 0
    if args.images < 100:
        ap.error("--images must be at least 100: the stock generator downloads whichever of its 100 "
                 "image ids is missing from tmp_dir (no network here)")
    work = tempfile.mkdtemp(prefix="bench_datagen_")
    try:
        images = os.path.join(work, "images")
        os.makedirs(images)
        make_images(images, args.images, args.size)
        best: dict[tuple[str, str], tuple[float, int]] = {}
        for memory, warm_gib in (("cold", 0.0), ("warm", args.warm_gib)):
            for k in range(args.repeats):
                for name in ("stock", "ours"):
                    out = os.path.join(work, f"{name}-{memory}-{k}")
                    result = run(name, images, out, warm_gib)
                    best[name, memory] = min(best.get((name, memory), result), result)
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("### Datagen throughput\n")
    print(f"{args.images} local JPEGs of {args.size}x{args.size} px cut from allen_sr/sample_data, "
          f"same run. Each generator runs in a fresh Python process as `t2t-datagen` / `allen-sr datagen` "
          "would (TensorFlow and tensor2tensor imported, then the problem's generate_data timed); best "
          f"of {args.repeats} alternating runs each, each run's output deleted once counted; cold: "
          f"nothing done first, warm: {args.warm_gib:g} GiB of memory touched and freed just before "
          "timing (this VM's first-touch cost, see warm_memory). Stock keeps tiles with max >= 230 "
          "(background included) as 63x63 JPEG; ours keeps 64x64 tissue tiles as lossless raw bytes "
          "and shuffles for real (two passes, both in one worker process per core).\n")
    print("| generator | tiles written | seconds, cold | tiles/s, cold | seconds, warm | tiles/s, warm | lossless |")
    print("|---|---:|---:|---:|---:|---:|---|")
    labels = {"stock": ("tensor2tensor stock (`allen_brain.Img2imgAllenBrainDim8to32`)", "no (JPEG)"),
              "ours": ("allen-sr (`img2img_allen_brain_dim8to32`, datagen.build_tile_dataset)", "yes (raw)")}
    for name, (label, lossless) in labels.items():
        (cold_s, n), (warm_s, _) = best[name, "cold"], best[name, "warm"]
        print(f"| {label} | {n} | {cold_s:.2f} | {n / cold_s:.0f} | {warm_s:.2f} | {n / warm_s:.0f} | {lossless} |")
    print()
    for memory in ("cold", "warm"):
        (stock_s, stock_n), (ours_s, ours_n) = best["stock", memory], best["ours", memory]
        ratio = (ours_n / ours_s) / (stock_n / stock_s)
        print(f"ours vs stock tiles/s, {memory} memory: **{ratio:.1f}x**. Goal: at least 3x while writing "
              f"lossless records: **{'met' if ratio >= 3 else 'NOT met'}**.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
