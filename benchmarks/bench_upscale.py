"""Whole-image upscaling: output megapixels per second and peak memory vs image size.

Builds real checkpoints (a few training steps, t2t's estimator model_fn) of the conv model at
`img2img_conv_sr_cpu` size and of the Image Transformer (`img2img_allen_cpu_tiny`), then runs
`allen-sr upscale` end to end (PNG in, tiled pyramidal BigTIFF out) at three image sizes each, every run
in a fresh process whose peak RSS (ru_maxrss) is reported. Speed does not depend on what the
weights learned, so a few steps are enough. Also: the conv model's arithmetic rate (its FLOPs per
output pixel counted from the layer shapes) next to a plain float32 matrix multiply on this
machine.

Prints a markdown section on stdout; `python benchmarks/bench_upscale.py` (about 10 minutes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONV = ("img2img_local_dim8to32", "img2img_conv_sr", "img2img_conv_sr_cpu")
TRANSFORMER = ("img2img_allen_brain_dim8to32", "img2img_transformer_sr", "img2img_allen_cpu_tiny")
# (label, model, hparams overrides, input sides in px)
RUNS = (
    ("conv, single prediction", CONV, "decode_tta=False", (256, 512, 1024)),
    ("conv, 8-fold averaging", CONV, "decode_tta=True", (128, 192, 256)),
    ("Image Transformer (fast decoder, greedy)", TRANSFORMER, "", (16, 24, 32)),
)


def child(argv: list[str]) -> None:
    """Run one upscale in this process and print its summary with the peak RSS."""
    from allen_sr.commands import args as shared
    from allen_sr.commands import upscale

    parser = upscale.build_parser()
    a = parser.parse_args(argv)
    a.batch_size = a.batch_size or 1
    summary = upscale.upscale(shared.model_spec(a), a.image, a.out, progress=False,
                              options=upscale.Options(preview_size=0))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so
    # it would never read below the (TensorFlow-loaded) parent's size.
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    summary["peak_rss_mb"] = hwm / 1024
    print("RESULT " + json.dumps(summary), flush=True)


def conv_flops_per_output_px(hidden: int = 64, blocks: int = 6, up_width: int = 16, factor: int = 4) -> float:
    """Multiply-adds x 2 of img2img_conv_sr (pixel_shuffle) per output pixel."""
    per_input = 2 * 9 * (3 * hidden + (2 * blocks + 1) * hidden * hidden + hidden * factor * factor * up_width)
    per_output = 2 * 9 * up_width * 3
    return per_input / factor ** 2 + per_output


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
        for problem, model, hset in (CONV, TRANSFORMER):
            out = os.path.join(tmp, hset)
            hp = checkpoints.load_hparams(hset, problem, "")
            tiny_training.train_checkpoint(out, hp, steps=2, batch_size=2, model_name=model)
            ckpts[hset] = out
        for label, (problem, model, hset), hparams, sides in RUNS:
            for side in sides:
                image = os.path.join(tmp, f"in{side}.png")
                Image.fromarray(tissue_image(side, side, seed=side)).save(image)
                argv = [f"--problem={problem}", f"--model={model}", f"--hparams_set={hset}",
                        f"--output_dir={ckpts[hset]}", f"--image={image}", f"--out={tmp}/out.tif"]
                if hparams:
                    argv.append(f"--hparams={hparams}")
                if model == TRANSFORMER[1]:
                    argv.append("--mode=greedy")
                proc = subprocess.run([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    rows.append((label, side, None))
                    continue
                rows.append((label, side, json.loads(line[7:])))
                print(f"{label} {side}: {line}", file=sys.stderr, flush=True)
    mm = matmul_gflops()
    flops = conv_flops_per_output_px()
    print("Model sizes: conv = `img2img_conv_sr_cpu` (64 channels, 6 residual blocks, pixel shuffle, "
          "x4), default tiles 384 px with 50 px overlap; Image Transformer = `img2img_allen_cpu_tiny` "
          "(8x8 -> 32x32 tiles, overlap 4, batches of 256 tiles). PNG in, tiled pyramidal BigTIFF out; "
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
    single = [r for label, _, r in rows if r and label.startswith("conv, single")]
    if single:
        best = max(r["output_mp_per_s"] for r in single)
        print(f"\nConv model arithmetic: {flops / 1e3:.1f} kFLOP per output px (counted from the layer "
              f"shapes), so {best:.3f} output MP/s is {best * flops / 1e3:.1f} GFLOP/s (with the tile "
              f"overlap's recomputation excluded); a plain float32 2048x2048 matrix multiply (NumPy) runs "
              f"at {mm:.1f} GFLOP/s here. 10 output MP/s would need {10 * flops / 1e3:.0f} GFLOP/s.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
