"""Benchmark: how much parallel workers speed up downloads from a slow-ish server.

Run: ``python benchmarks/bench_download.py`` (about 15 s). Prints a markdown section to stdout.

The stand-in Allen API (tests/allen_stand_in.py) runs as a separate process, so the server does
not compete with the downloader for the GIL, with 50 ms added latency per request and a simulated
per-connection bandwidth. The same images are downloaded into a fresh folder with 1 and with 8
workers, rate limit off; each is measured twice and the faster run is reported. A third row shows
the default polite rate limit (4 requests/s shared by all workers) for context.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from allen_sr.data.download import download_images  # noqa: E402

IMAGES = 24
WIDTH, HEIGHT = 320, 240  # ~44 kB JPEGs
LATENCY = 0.05  # seconds added to every request
BANDWIDTH = 500_000  # bytes/s per connection
REPEATS = 2
GOAL = 5.0
POLITE_RATE = 4.0  # the downloader's default --rate, for context


def _start_stand_in() -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "allen_stand_in.py"), "--port", "0",
         "--images", str(IMAGES), "--width", str(WIDTH), "--height", str(HEIGHT),
         "--latency", str(LATENCY), "--bandwidth", str(BANDWIDTH)],
        stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise SystemExit("the stand-in server did not start")
    return process, json.loads(line)


def _time_download(info: dict, workers: int, rate: float | None, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-download-") as folder:
            started = time.perf_counter()
            report = download_images(info["image_ids"], folder, api_base=info["api_base"],
                                     workers=workers, rate=rate, timeout=(5.0, 10.0))
            seconds = time.perf_counter() - started
            if not report.ok:
                raise SystemExit(f"benchmark download failed:\n{report.summary()}")
        best = min(best, seconds)
    return best


def main() -> int:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    process, info = _start_stand_in()
    try:
        one = _time_download(info, 1, None)
        eight = _time_download(info, 8, None)
        polite = _time_download(info, 8, POLITE_RATE, repeats=1)  # its time is set by the limiter
    finally:
        process.terminate()
        process.wait(timeout=10)
    ratio = one / eight
    met = "met" if ratio >= GOAL else "NOT met"
    print("### Download rate\n")
    print(f"Stand-in Allen API on 127.0.0.1 (separate process), {LATENCY * 1000:.0f} ms added "
          f"latency per request, {BANDWIDTH / 1000:.0f} kB/s per connection; {IMAGES} JPEGs of "
          f"{WIDTH}x{HEIGHT} px; fresh folder per run; best of {REPEATS} runs (one for the "
          f"rate-limited row). Each image is "
          f"streamed to a temp file, fully decoded with Pillow, fsynced and renamed.\n")
    print("| workers | rate limit | images | seconds | images/s |")
    print("|---:|---:|---:|---:|---:|")
    for workers, rate, seconds in ((1, "off", one), (8, "off", eight),
                                   (8, f"{POLITE_RATE:g}/s (default)", polite)):
        print(f"| {workers} | {rate} | {IMAGES} | {seconds:.2f} | {IMAGES / seconds:.1f} |")
    print(f"\n8 workers vs 1 (rate limit off): **{ratio:.1f}x**. Goal: 8 workers at least "
          f"{GOAL:g}x one: **{met}**. With the default polite rate limit the shared limiter "
          f"caps all workers together at {POLITE_RATE:g} requests/s.\n")
    # A missed goal is reported in the table, not as a failure: `make bench` collects every
    # benchmark's output and should not stop at the first slow machine.
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help; it takes no options
    sys.exit(main())
