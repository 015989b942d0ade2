"""`allen-sr demo` (what `make demo` runs): the whole pipeline on the sample images, no network.

1. datagen: tile the sample images (allen_sr/sample_data) into lossless TFRecords (problem img2img_local_dim8to32)
2. train:   a short CPU run of the Image Transformer through t2t-trainer (img2img_allen_cpu_tiny),
            for --train_minutes of training time (graph building excluded), or --train_steps
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
from typing import NamedTuple

from allen_sr import fileio
from allen_sr.errors import MissingInputError
from allen_sr.commands.args import expand_home, run_command
from allen_sr.decoding.modes import MODES
from allen_sr.sample_data import sample_folder

PROBLEM = "img2img_local_dim8to32"
MODEL = "img2img_transformer_sr"  # img2img_transformer + input skip (allen_sr/models/image_transformer.py)
DEFAULT_MINUTES = 7.0
STOCK_STEPS = 700  # a stock t2t set has no train_budget_seconds
CAP_STEPS = 100_000_000
STEP_RE = re.compile(r"loss = ([0-9.eE+-]+), step = (\d+)")


def positive(kind):
    """An argparse type: a ``kind`` number > 0."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" error
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--images", default=sample_folder(),
                   help="folder of tissue images to tile (default: the sample images shipped in the package)")
    p.add_argument("--hparams_set", default="img2img_allen_cpu_tiny")
    p.add_argument("--train_minutes", type=positive(float), default=DEFAULT_MINUTES,
                   help="minutes of training (default %(default)g, so that `make demo` takes at most "
                        "15 minutes on 2 cores, environment included): the set's "
                        "train_budget_seconds, whose clock also drives the learning rate's decay. "
                        "A faster machine trains more steps in it.")
    p.add_argument("--train_steps", type=positive(int), default=None,
                   help="train this many steps instead of for --train_minutes (the only choice for "
                        f"a stock t2t set, which has no training clock: default {STOCK_STEPS} there)")
    p.add_argument("--num_examples", type=positive(int), default=8, help="dev tiles to decode (default 8)")
    p.add_argument("--model", default=MODEL, help="t2t model (default %(default)s)")
    p.add_argument("--mode", default=None, choices=MODES,
                   help="decoding mode (default: the hparams set's decode_mode, as `allen-sr "
                        "decode` without --mode)")
    return p


def parse_args(argv):
    return expand_home(build_parser().parse_args(argv))


def banner(i: int, text: str) -> None:
    print(f"\n[{i}/4] {text}", flush=True)


def has_hparam(hparams_set: str, name: str) -> bool:
    """Whether the registered ``hparams_set`` defines ``name`` (stock t2t sets lack ours)."""
    from allen_sr.t2t.names import register_all

    register_all()
    from tensor2tensor.utils import registry

    return hasattr(registry.hparams(hparams_set), name)


class TrainingPlan(NamedTuple):
    """How long the demo trains: ``seconds`` of the set's clock, or else ``steps``."""

    flags: list[str]  # the trainer's step and hparams flags
    seconds: int | None
    steps: int | None

    def __str__(self) -> str:
        return f"{self.seconds / 60:g} minutes of training" if self.seconds else f"{self.steps} steps"


def training_plan(args) -> TrainingPlan:
    if args.train_steps is None and has_hparam(args.hparams_set, "train_budget_seconds"):
        seconds = max(1, round(args.train_minutes * 60))  # 0 would mean no budget at all
        # The clock stops the run at the budget; the step count is only a cap that is never met.
        return TrainingPlan([f"--train_steps={CAP_STEPS}", f"--hparams=train_budget_seconds={seconds}"],
                            seconds, None)
    steps = args.train_steps if args.train_steps is not None else STOCK_STEPS
    overrides = []
    if has_hparam(args.hparams_set, "cosine_decay_steps"):
        # Our sets: the learning rate's clamped cosine decay runs over the demo's steps, and no time
        # budget stops them (a rerun after a timed demo would keep the budget its run recorded).
        overrides = [f"cosine_decay_steps={steps}", "train_budget_seconds=0"]
    return TrainingPlan([f"--train_steps={steps}"] + [f"--hparams={','.join(overrides)}"] * bool(overrides),
                        None, steps)


def train(args, plan: TrainingPlan, data_dir: str, train_dir: str, log_path: str) -> None:
    """Run `allen-sr train` in a subprocess, turning its log into a progress bar (of steps, or of
    seconds of training for a timed run)."""
    from tqdm import tqdm

    flags, seconds, steps = plan
    cmd = [sys.executable, "-m", "allen_sr.cli", "train",
           f"--problem={PROBLEM}", f"--model={args.model}", f"--hparams_set={args.hparams_set}",
           f"--data_dir={data_dir}", f"--output_dir={train_dir}", *flags, "--schedule=train",
           "--log_step_count_steps=10", "--save_checkpoints_secs=120", "--keep_checkpoint_max=2"]
    print("  " + " ".join(cmd[2:]), flush=True)
    first_step_at = None
    # A timed run's bar counts seconds of training (its rate would say nothing).
    style = dict(bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s [{elapsed}{postfix}]"
                 ) if seconds else dict(unit="step")
    with open(log_path, "a") as log, tqdm(total=seconds or steps, desc="  training", **style) as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = STEP_RE.search(line)
            if m and line.startswith("INFO:tensorflow"):
                step = int(m.group(2))
                if seconds:  # seconds since the first logged step, as the model's clock counts
                    first_step_at = first_step_at or time.time()
                    done = min(seconds, int(time.time() - first_step_at))
                else:
                    done = step
                bar.update(max(0, done - bar.n))
                bar.set_postfix(loss=f"{float(m.group(1)):.3f}", step=step)
        code = proc.wait()
        if code == 0:
            bar.update(bar.total - bar.n)
    if code:
        raise SystemExit(f"training failed (exit {code}); see {log_path}")


def check_args(args, out: str) -> None:
    """What the demo can refuse before any work: the output folder, the names, the image folder."""
    from allen_sr.t2t.names import check_names

    fileio.check_output_folder(out, "--out")
    check_names(hparams_set=args.hparams_set, model=args.model)
    if not os.path.isdir(args.images):
        raise MissingInputError(f"--images {args.images} is not a folder: pass a folder of tissue images")


def demo_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = os.path.abspath(args.out)
    data_dir, train_dir, decode_dir = (os.path.join(out, d) for d in ("data", "train", "decode"))
    code = run_command("demo", lambda: check_args(args, out))  # mistakes: one line, exit 2, before any work
    if code:
        return code
    os.makedirs(out, exist_ok=True)

    banner(1, f"datagen: tiling {args.images} -> {data_dir}")
    from tensor2tensor.utils import registry

    code = run_command("demo", lambda: registry.problem(PROBLEM).generate_data(data_dir, args.images))
    if code:
        return code

    plan = training_plan(args)
    banner(2, f"train: {args.model} / {args.hparams_set}, {plan} on CPU -> {train_dir}")
    from allen_sr.t2t.tuning import checkpoint_step

    reached = checkpoint_step(train_dir) if plan.steps else 0
    if plan.steps and reached >= plan.steps:  # a rerun: train refuses steps a run has reached
        print(f"  {train_dir} is at step {reached}: trained already (a larger --train_steps trains on)", flush=True)
    else:
        train(args, plan, data_dir, train_dir, os.path.join(out, "train.log"))

    banner(3, f"decode: {args.num_examples} dev tiles ({args.mode or 'decode_mode of the set'}) -> {decode_dir}")
    from allen_sr.commands.args import ModelSpec
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
