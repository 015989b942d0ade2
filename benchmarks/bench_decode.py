"""Decode speed: the naive reference decoder vs the fast incremental one, side by side.

For each hparams set below, builds a real checkpoint (a few training steps through t2t's estimator
model_fn, in a temporary folder), then measures seconds per 32x32x3 image of greedy decoding:

* naive: the t2t graph, one full forward pass per sub-pixel. A whole image is 3072 passes (about
  ten minutes for a batch of 8 even with the tiny set), so a fixed number of steps is timed and
  extrapolated to 3072;
* fast: the NumPy decoder with cached keys/values, a full decode of the batch.

It also checks that both decoders chose the same values on the steps the naive one ran. Prints a
markdown section on stdout (logs go to stderr); `python benchmarks/bench_decode.py`, 1-2 minutes.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from allen_sr import decoding, tiny_training  # noqa: E402

PROBLEM = "img2img_allen_brain_dim8to32"
BATCH = 8
# (hparams set, timed naive steps): the tiny set is what the >= 100x goal is about; the base
# set shows what decoding a real-size model costs.
SETS = (("img2img_allen_cpu_tiny", 24), ("img2img_allen_base", 4))
GOAL = 100.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(hparams_set: str, naive_steps: int, inputs: np.ndarray) -> dict:
    """Seconds per image of both decoders for one hparams set, and whether they agreed."""
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as run_dir:
        log(f"{hparams_set}: training 1 step to get a real checkpoint ...")
        checkpoint = tiny_training.train_checkpoint(
            run_dir, decoding.load_hparams(hparams_set, PROBLEM), steps=1, batch_size=2)
        hparams = decoding.load_hparams(hparams_set, PROBLEM, output_dir=run_dir)
        sub_pixels = hparams.img_len * hparams.img_len * hparams.num_channels

        log(f"{hparams_set}: naive decoder, {naive_steps} steps ...")
        naive = decoding.NaiveDecoder(hparams, checkpoint)
        naive.decode(inputs, max_steps=1)  # warm-up: the first session run is slower
        start = time.perf_counter()
        naive_out = naive.decode(inputs, max_steps=naive_steps)
        naive_step = (time.perf_counter() - start) / naive_steps
        naive.close()

        log(f"{hparams_set}: fast decoder, full images ...")
        fast = decoding.FastDecoder.from_checkpoint(hparams, checkpoint)
        fast.decode(inputs[:1], max_steps=8)  # warm-up
        start = time.perf_counter()
        fast_out = fast.decode(inputs)
        fast_seconds = time.perf_counter() - start
    return {
        "hparams": hparams,
        "sub_pixels": sub_pixels,
        "naive_steps": naive_steps,
        "naive_step": naive_step,
        "naive_per_image": naive_step * sub_pixels / len(inputs),
        "fast_per_image": fast_seconds / len(inputs),
        "same": np.array_equal(naive_out.reshape(len(inputs), -1)[:, :naive_steps],
                               fast_out.reshape(len(inputs), -1)[:, :naive_steps]),
    }


def main() -> int:
    inputs, _ = tiny_training.synthetic_examples(BATCH, 32, 4, seed=1)
    results = {name: measure(name, steps, inputs) for name, steps in SETS}
    print("### Decode speed\n")
    print(f"Greedy decoding of 32x32x3 images (3072 sub-pixels), batch {BATCH}, "
          f"{os.cpu_count()} CPU cores. Naive: the t2t graph, one forward pass per sub-pixel, "
          "timed over a few steps and extrapolated to 3072; fast: NumPy with cached keys/values, "
          "full decode.\n")
    print("| hparams set | decoder | batch | seconds/image | measured |")
    print("|:---|:---|---:|---:|:---|")
    for name, r in results.items():
        hp = r["hparams"]
        desc = (f"`{name}` (hidden {hp.hidden_size}, {hp.num_encoder_layers}+{hp.num_decoder_layers} "
                f"layers, block {hp.block_length})")
        print(f"| {desc} | naive | {BATCH} | {r['naive_per_image']:.1f} | {r['naive_steps']} steps "
              f"({r['naive_step'] * 1000:.0f} ms each) extrapolated to {r['sub_pixels']} |")
        print(f"| {desc} | fast | {BATCH} | {r['fast_per_image']:.3f} | full decode of {BATCH} images |")
    print()
    for name, r in results.items():
        ratio = r["naive_per_image"] / r["fast_per_image"]
        verdict = "met" if ratio >= GOAL else "NOT met"
        print(f"- `{name}`: speed-up **{ratio:.0f}x** (goal >= {GOAL:.0f}x: {verdict}); same greedy "
              f"values on the {r['naive_steps']} steps both ran: {'yes' if r['same'] else 'NO'}")
    return 0 if all(r["same"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
