"""`allen-sr demo` (what `make demo` runs): the whole pipeline on the sample images, no network.

1. datagen: tile the sample images (allen_sr/sample_data) into lossless TFRecords (problem img2img_local_dim8to32)
2. train:   a short CPU run of the Image Transformer through t2t-trainer (img2img_allen_cpu_tiny)
3. decode:  autoregressive decoding of dev tiles (the set's decode_mode), PSNR/SSIM against bicubic
4. plot:    the training loss curve

Writes into --out: predictions.png, metrics.json, loss.png (plus data/, train/, decode/ and
train.log). Every step resumes: rerunning reuses the dataset and continues training from the last
checkpoint.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

from allen_sr.sample_data import sample_folder

PROBLEM = "img2img_local_dim8to32"
MODEL = "img2img_transformer_sr"  # img2img_transformer + input skip (allen_sr/models/image_transformer.py)
STEP_RE = re.compile(r"loss = ([0-9.eE+-]+), step = (\d+)")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="allen-sr demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--images", default=sample_folder(),
                   help="folder of tissue images to tile (default: the sample images shipped in the package)")
    p.add_argument("--hparams_set", default="img2img_allen_cpu_tiny")
    p.add_argument("--train_steps", type=int, default=700,
                   help="training steps (default 700: about 8 minutes on 2 CPU cores)")
    p.add_argument("--num_examples", type=int, default=8, help="dev tiles to decode (default 8)")
    p.add_argument("--model", default=MODEL, help="t2t model (default %(default)s)")
    p.add_argument("--mode", default=None, choices=("greedy", "sample", "mean"),
                   help="decoding mode (default: the hparams set's decode_mode, as `allen-sr "
                        "decode` without --mode)")
    return p.parse_args(argv)


def banner(i: int, text: str) -> None:
    print(f"\n[{i}/4] {text}", flush=True)


def has_hparam(hparams_set: str, name: str) -> bool:
    """Whether the registered ``hparams_set`` defines ``name`` (stock t2t sets lack ours)."""
    from allen_sr.t2t.names import register_all

    register_all()
    from tensor2tensor.utils import registry

    return hasattr(registry.hparams(hparams_set), name)


def train(args, data_dir: str, train_dir: str, log_path: str) -> None:
    """Run `allen-sr train` in a subprocess, turning its log into a progress bar."""
    from tqdm import tqdm

    cmd = [sys.executable, "-m", "allen_sr.cli", "train",
           f"--problem={PROBLEM}", f"--model={args.model}", f"--hparams_set={args.hparams_set}",
           f"--data_dir={data_dir}", f"--output_dir={train_dir}",
           f"--train_steps={args.train_steps}", "--schedule=train",
           "--log_step_count_steps=10", "--save_checkpoints_secs=120", "--keep_checkpoint_max=2"]
    if has_hparam(args.hparams_set, "cosine_decay_steps"):
        # Our sets: the learning rate's clamped cosine decay runs over the demo's steps.
        cmd.append(f"--hparams=cosine_decay_steps={args.train_steps}")
    print("  " + " ".join(cmd[2:]), flush=True)
    with open(log_path, "a") as log, tqdm(total=args.train_steps, desc="  training", unit="step") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = STEP_RE.search(line)
            if m and line.startswith("INFO:tensorflow"):
                step = int(m.group(2))
                bar.update(max(0, step - bar.n))
                bar.set_postfix(loss=f"{float(m.group(1)):.3f}")
        code = proc.wait()
        if code == 0:
            bar.update(bar.total - bar.n)
    if code:
        raise SystemExit(f"training failed (exit {code}); see {log_path}")


def demo_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = os.path.abspath(args.out)
    data_dir, train_dir, decode_dir = (os.path.join(out, d) for d in ("data", "train", "decode"))
    os.makedirs(out, exist_ok=True)

    banner(1, f"datagen: tiling {args.images} -> {data_dir}")
    from allen_sr.t2t.names import register_all

    register_all()
    from tensor2tensor.utils import registry

    registry.problem(PROBLEM).generate_data(data_dir, args.images)

    banner(2, f"train: {args.model} / {args.hparams_set}, {args.train_steps} steps on CPU -> {train_dir}")
    train(args, data_dir, train_dir, os.path.join(out, "train.log"))

    banner(3, f"decode: {args.num_examples} dev tiles ({args.mode or 'decode_mode of the set'}) -> {decode_dir}")
    from allen_sr.commands.args import ModelSpec, run_command
    from allen_sr.commands.decode import run_decode

    spec = ModelSpec(problem=PROBLEM, hparams_set=args.hparams_set, output_dir=train_dir,
                     model=args.model, mode=args.mode, batch_size=16)

    def decode() -> None:
        from allen_sr.evaluation import metrics

        result = run_decode(spec, data_dir, decode_dir, "dev", args.num_examples)
        print(metrics.summary_to_text(result.summary), end="")

    code = run_command("demo", decode)
    if code:
        return code
    shutil.copyfile(os.path.join(decode_dir, "grid.png"), os.path.join(out, "predictions.png"))
    shutil.copyfile(os.path.join(decode_dir, "metrics.json"), os.path.join(out, "metrics.json"))

    banner(4, "plot: training loss")
    from allen_sr.evaluation.plots import plot_loss_curves

    plot_loss_curves([train_dir], os.path.join(out, "loss.png"), labels=[args.hparams_set])

    minutes = (time.time() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Open these:")
    for name, what in (("predictions.png", "rows: 8x8 input (nearest), bicubic, model, target"),
                       ("metrics.json", "mean PSNR/SSIM of the model and of bicubic"),
                       ("loss.png", "training loss curve")):
        print(f"  {os.path.join(out, name)}  ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(demo_main())
