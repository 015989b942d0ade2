"""Whole-image upscaling: output megapixels per second and peak memory vs image size.

Builds real checkpoints (a few training steps, t2t's estimator model_fn) of the conv model at
`img2img_conv_sr_cpu` size and at `img2img_conv_sr_fast` size (everything at the input
resolution), and of the Image Transformer (`img2img_allen_cpu_tiny`), then runs `allen-sr upscale`
end to end (PNG in, tiled pyramidal BigTIFF out) at three image sizes each, every run in a fresh
process whose peak RSS (VmHWM) is reported. Speed does not depend on what the weights learned, so
a few steps are enough. The largest conv runs write a 100-megapixel output. A near-free conv
model (the fast layout with 1 channel and no residual block) at 100 MP shows what the rest of
the pipeline (reading, tiling, blending, compressing, writing) allows, and so each model's own
share. The fast set's 100-megapixel runs are repeated (three fresh processes per codec, one after
the other) and its 10 MP/s goal counts as met only if the slowest reaches it. Also: each model's
arithmetic rate (FLOPs counted from the layer shapes) next to plain float32 matrix multiplies on
this machine: a large one for the conv models, and for the Image Transformer the products of one
decoding step at the same batch size, on one thread as its decoder runs them.

Prints a markdown section on stdout; `python benchmarks/bench_upscale.py` (7-15 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONV = ("img2img_local_dim8to32", "img2img_conv_sr", "img2img_conv_sr_cpu")
FAST = ("img2img_local_dim8to32", "img2img_conv_sr", "img2img_conv_sr_fast")
TRANSFORMER = ("img2img_allen_brain_dim8to32", "img2img_transformer_sr", "img2img_allen_cpu_tiny")
# A conv model that costs almost nothing (the fast set's layout with 1 channel and no residual
# block: little more than bicubic): what reading, blending, compressing and writing allow.
CEILING = "hidden_size=1,num_res_blocks=0"
# (label, model, architecture overrides (its own checkpoint), decoding overrides, input sides in px)
RUNS = (
    ("conv, single prediction", CONV, "", "decode_tta=False", (256, 1024, 2500)),
    ("fast conv set, single prediction", FAST, "", "", (256, 1024, 2500)),
    ("fast conv set, single prediction, zstd TIFF", FAST, "", "", (1024, 2500)),
    ("conv, 8-fold averaging", CONV, "", "decode_tta=True", (128, 192, 256)),
    ("near-free conv (1 channel, no blocks): the pipeline's ceiling", FAST, CEILING, "", (2500,)),
    ("near-free conv (1 channel, no blocks): the pipeline's ceiling, zstd TIFF", FAST, CEILING, "", (2500,)),
    ("Image Transformer (fast decoder, greedy)", TRANSFORMER, "", "decode_tta=False", (16, 32, 64)),
)
# The rows that can reach the 10 MP/s goal run their largest image this many times, each in a
# fresh process, one after the other: the goal counts as met only if every run reaches it.
REPEATS = {"fast conv set, single prediction": 3, "fast conv set, single prediction, zstd TIFF": 3}
IT_BATCH = 256  # allen_sr.api.upscaler.TRANSFORMER_BATCH: tiles decoded together


def child(argv: list[str]) -> None:
    """Run one upscale in this process and print its summary with the peak RSS."""
    from allen_sr.api import Upscaler
    from allen_sr.commands import args as shared
    from allen_sr.commands import upscale

    parser = upscale.build_parser()
    a = parser.parse_args(argv)
    a.batch_size = a.batch_size or 1
    with Upscaler(shared.model_spec(a)) as up:
        summary = up.predict_file(a.image, a.out, compression=a.compression)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so
    # it would never read below the (TensorFlow-loaded) parent's size.
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    summary["peak_rss_mb"] = hwm / 1024
    print("RESULT " + json.dumps(summary), flush=True)


def conv_set_shape(hparams_set: str) -> dict[str, Any]:
    """The sizes of a benchmarked conv set, as registered now."""
    from allen_sr.decoding import checkpoints

    hp = checkpoints.load_hparams(hparams_set, CONV[0], "")
    if hp.upsample not in ("pixel_shuffle", "input_res"):
        raise SystemExit(f"{hparams_set} upsamples by {hp.upsample!r}: conv_flops_per_output_px counts "
                         "pixel_shuffle and input_res only")
    return dict(hidden=int(hp.hidden_size), blocks=int(hp.num_res_blocks), up_width=int(hp.upsample_width),
                upsample=hp.upsample)


def conv_flops_per_output_px(hidden: int, blocks: int, up_width: int, upsample: str, factor: int = 4,
                             channels: int = 3) -> float:
    """Multiply-adds x 2 of img2img_conv_sr per output pixel: the convs at the input resolution
    (conv in, the blocks, conv body out, the sub-pixel conv), then for pixel_shuffle the 3x3 conv
    out at the output resolution, for input_res the fixed 4x4 bicubic conv at the input's."""
    subpixels = factor * factor * (channels if upsample == "input_res" else up_width)
    per_input = 2 * 9 * (channels * hidden + (2 * blocks + 1) * hidden * hidden + hidden * subpixels)
    if upsample == "input_res":
        return (per_input + 2 * 16 * channels * factor * factor * channels) / factor ** 2
    return per_input / factor ** 2 + 2 * 9 * up_width * channels


def it_set_shape() -> dict[str, int]:
    """The sizes of the benchmarked Image Transformer set, as registered now."""
    from allen_sr.decoding import checkpoints

    hp = checkpoints.load_hparams(TRANSFORMER[2], TRANSFORMER[0], "")
    return dict(hidden=int(hp.hidden_size), filter_size=int(hp.filter_size), heads=int(hp.num_heads),
                layers=int(hp.num_decoder_layers), block=int(hp.block_length))


def it_step_products(hidden: int, filter_size: int, heads: int, layers: int, block: int,
                     encoder_length: int = 8 * 8 * 3) -> list[tuple[str, int, int]]:
    """(kind, k, n) of the products of one decoding step of the Image Transformer per example:
    "dense" [1, k] @ [k, n]; "attention" one head's [1, k] @ [k, n] over n positions (its
    scores; the weighted sum of the values is the same size). Self-attention sees 1.5 blocks on
    average (its own block so far and the previous one)."""
    dk = hidden // heads
    window = block * 3 // 2
    per_layer = [("dense", hidden, 3 * hidden), ("attention", dk, window), ("attention", dk, window),
                 ("dense", hidden, hidden), ("dense", hidden, hidden),
                 ("attention", dk, encoder_length), ("attention", dk, encoder_length),
                 ("dense", hidden, hidden), ("dense", hidden, filter_size), ("dense", filter_size, hidden)]
    heads_of = {"dense": 1, "attention": heads}
    return [(kind, k, n) for kind, k, n in per_layer * layers for _ in range(heads_of[kind])] + [
        ("dense", hidden, 2)]  # the bicubic prior's offset and width (no free logits in the set)


def it_flops_per_subpixel(shape: dict[str, int]) -> float:
    return float(sum(2 * k * n for _, k, n in it_step_products(**shape)))


def it_step_gflops(shape: dict[str, int], batch: int = IT_BATCH, repeats: int = 200) -> float:
    """GFLOP/s of one decoding step's products at ``batch`` examples, NumPy on one thread."""
    from allen_sr.decoding.batching import single_threaded_blas

    rng = np.random.default_rng(0)
    products = it_step_products(**shape)
    dense = [(rng.random((batch, k), np.float32), rng.random((k, n), np.float32))
             for kind, k, n in products if kind == "dense"]
    att = [(rng.random((batch, 1, k), np.float32), rng.random((batch, k, n), np.float32))
           for kind, k, n in products if kind == "attention"]
    with single_threaded_blas():
        start = time.perf_counter()
        for _ in range(repeats):
            for a, b in dense:
                a @ b
            for a, b in att:
                a @ b
        seconds = time.perf_counter() - start
    return repeats * batch * it_flops_per_subpixel(shape) / seconds / 1e9


def matmul_gflops(n: int = 2048) -> float:
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * n ** 3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    from PIL import Image

    from allen_sr.decoding import checkpoints
    from allen_sr.testing import tiny_training

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from conftest import tissue_image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for _, (problem, model, hset), arch, _, _ in RUNS:
            if (hset, arch) not in ckpts:
                out = os.path.join(tmp, f"{hset}-{len(ckpts)}")
                hp = checkpoints.load_hparams(hset, problem, arch)
                tiny_training.train_checkpoint(out, hp, steps=2, batch_size=2, model_name=model)
                ckpts[hset, arch] = out
        for label, (problem, model, hset), arch, hparams, sides in RUNS:
            for side in sides[:-1] + (sides[-1],) * REPEATS.get(label, 1):
                image = os.path.join(tmp, f"in{side}.png")
                Image.fromarray(tissue_image(side, side, seed=side)).save(image)
                argv = [f"--problem={problem}", f"--model={model}", f"--hparams_set={hset}",
                        f"--output_dir={ckpts[hset, arch]}", f"--image={image}", f"--out={tmp}/out.tif"]
                if arch or hparams:
                    argv.append(f"--hparams={','.join(x for x in (arch, hparams) if x)}")
                if model == TRANSFORMER[1]:
                    argv.append("--mode=greedy")
                if label.endswith("zstd TIFF"):
                    argv.append("--compression=zstd")
                proc = subprocess.run([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    rows.append((label, side, None))
                    continue
                rows.append((label, side, json.loads(line[7:])))
                print(f"{label} {side}: {line}", file=sys.stderr, flush=True)
    mm = matmul_gflops()
    it = it_set_shape()
    sets = [(hset, label, conv_set_shape(hset)) for label, (_, _, hset), arch, _, _ in RUNS
            if not arch and "single prediction" in label]  # each with its own output codec row
    described = "; ".join(dict.fromkeys(f"`{hset}` ({c['hidden']} channels, {c['blocks']} residual blocks, "
                                        f"{c['upsample'].replace('_', ' ')})" for hset, _, c in sets))
    print(f"Model sizes: conv = {described}; x4, default tiles 384 px overlapping by twice the model's "
          f"context + 16 px; Image Transformer = `{TRANSFORMER[2]}` "
          f"(hidden {it['hidden']}, {it['heads']} heads, {it['layers']} decoder layers, blocks of "
          f"{it['block']} sub-pixels; 8x8 -> 32x32 tiles, overlap 4, batches of 256 tiles). PNG in, tiled "
          "pyramidal BigTIFF out (deflate unless the row says zstd); "
          "time includes reading, blending, compression and writing, not model loading. Peak RSS of the "
          "whole process (TensorFlow included).\n")
    print("| model | input px | output MP | tiles | seconds | output MP/s | peak RSS MB |")
    print("|:---|---:|---:|---:|---:|---:|---:|")
    for label, side, r in rows:
        if r is None:
            print(f"| {label} | {side}x{side} | - | - | failed | - | - |")
            continue
        mp = r["width"] * r["height"] / 1e6
        print(f"| {label} | {side}x{side} | {mp:.3f} | {r['tiles']} | {r['seconds']:.2f} | "
              f"{r['output_mp_per_s']:.3f} | {r['peak_rss_mb']:.0f} |")

    def codec(label: str) -> str:
        return "zstd" if label.endswith("zstd TIFF") else "deflate"

    ceilings = {codec(label): r for label, _, r in rows if r and label.startswith("near-free")}
    for name, ceiling in ceilings.items():
        print(f"\nThe near-free model (the same reading, tiling, blending, compression and writing, almost no "
              f"arithmetic) makes {ceiling['output_mp_per_s']:.2f} output MP/s at "
              f"{ceiling['width']}x{ceiling['height']} px with {name}: the ceiling for any model here.")
    for hset, set_label, shape in sets:
        single = [r for label, _, r in rows if r and label == set_label]
        if not single:
            continue
        flops = conv_flops_per_output_px(**shape)
        big = max(r["width"] * r["height"] for r in single)
        largest = [r for r in single if r["width"] * r["height"] == big]
        worst = min(largest, key=lambda r: r["output_mp_per_s"])
        peak = max(r["peak_rss_mb"] for r in largest)
        rates = ", ".join(f"{r['output_mp_per_s']:.2f}" for r in largest)
        runs_text = (f"each of {len(largest)} runs, one after the other: {rates} MP/s" if len(largest) > 1
                     else f"{rates} MP/s")
        text = (f"\n{set_label} (`{hset}`): {flops / 1e3:.1f} kFLOP per output px (counted from the layer shapes, the "
                f"tile overlap's recomputation excluded). Largest output: {worst['width']}x{worst['height']} "
                f"px ({big / 1e6:.0f} MP) in {worst['seconds']:.0f} s at the slowest, peak RSS "
                f"{peak:.0f} MB (goal: at most 2048 MB for 100 MP: "
                f"{'met' if peak <= 2048 and big >= 1e8 else 'NOT met'}). "
                f"Goal 10 output MP/s end to end, single prediction, at {big / 1e6:.0f} MP: "
                f"**{'met' if worst['output_mp_per_s'] >= 10 else 'NOT met'}** ({runs_text}).")
        ceiling = ceilings.get(codec(set_label))
        sized = sorted((r for r in single if ceiling and r["width"] == ceiling["width"]), key=lambda r: r["seconds"])
        same = sized[len(sized) // 2] if sized else None  # the median run where it was repeated
        if same and same["seconds"] > ceiling["seconds"]:
            mp = same["width"] * same["height"] / 1e6
            model_seconds = same["seconds"] - ceiling["seconds"]
            text += (f" At {same['width']}x{same['height']} px out it took {same['seconds']:.2f} s against the "
                     f"near-free model's {ceiling['seconds']:.2f} s: its own part, {model_seconds:.2f} s, is "
                     f"{mp / model_seconds:.2f} MP/s or {mp * flops / 1e3 / model_seconds:.0f} GFLOP/s (a plain "
                     f"float32 2048x2048 matrix multiply, NumPy: {mm:.1f} GFLOP/s).")
        print(text)
    it_rows = [r for label, _, r in rows if r and label.startswith("Image Transformer")]
    if it_rows:
        r = max(it_rows, key=lambda r: r["tiles"])
        it_flops = it_flops_per_subpixel(it)
        reached = r["tiles"] * 32 * 32 * 3 * it_flops / r["seconds"] / 1e9
        bound = it_step_gflops(it, min(r["tiles"], IT_BATCH))
        print(f"\nImage Transformer arithmetic: {it_flops / 1e3:.0f} kFLOP per decoded sub-pixel (one "
              f"decoding step, counted from the layer shapes; the encoder, once per tile, excluded), so "
              f"{r['tiles']} tiles in {r['seconds']:.1f} s is {reached:.2f} GFLOP/s; the same products "
              f"alone at batch {min(r['tiles'], IT_BATCH)} (NumPy, one thread, as the decoder runs them) "
              f"reach {bound:.2f} GFLOP/s: the decoder reaches {reached / bound:.0%} of that, the rest "
              "is the per-step work around the products (layer norms, softmax, the cache windows, "
              "Python).")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        argparse.ArgumentParser(description=__doc__).parse_args()  # --help; it takes no options
        main()
