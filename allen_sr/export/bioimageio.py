"""The bioimage.io model package of an exported ``img2img_conv_sr`` (``rdf.yaml``, format 0.5).

What napari's bioimageio plugin, Fiji's deepImageJ and bioimageio.core open: the ONNX weights
(and the SavedModel, zipped, as TensorFlow weights), a test input with the output the ONNX model
gives for it, a cover picture, a README and the citations. Axes are [batch, y, x, channel] uint8
in and out, the output 4x (the problem's factor) the input along y and x, with a halo of the
model's receptive radius for tiled prediction.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from allen_sr.export.conv import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME
from allen_sr.export.runtime import OnnxDecoder

__all__ = ["FORMAT_VERSION", "CITATIONS", "training_data", "write_package", "subject", "tags"]

FORMAT_VERSION = "0.5.4"
CITATIONS = [
    {"text": "Parmar, Vaswani, Uszkoreit, Kaiser, Shazeer, Ku, Tran. Image Transformer. ICML 2018.",
     "doi": "10.48550/arXiv.1802.05751"},
    {"text": "Vaswani et al. Tensor2Tensor for Neural Machine Translation. AMTA 2018 (tensor2tensor).",
     "doi": "10.48550/arXiv.1803.07416"},
]
ALLEN_ATLAS = {
    "name": "Allen Mouse Brain Atlas",
    "text": "Lein et al. Genome-wide atlas of gene expression in the adult mouse brain. Nature 445, 2007.",
    "doi": "10.1038/nature05453",
    "url": "https://mouse.brain-map.org",
}
TEST_INPUT = "test_input.npy"
TEST_OUTPUT = "test_output.npy"
COVER = "cover.png"
README = "README.md"
SAVED_MODEL_ZIP = "saved_model.zip"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_data(problem: str) -> str:
    """One sentence naming the images ``problem`` is made from."""
    if is_allen(problem):
        return (f"{ALLEN_ATLAS['name']} section images ({ALLEN_ATLAS['url']}), tiled by the "
                f"allen-sr problem {problem}; cite: {ALLEN_ATLAS['text']}")
    return f"the images given to the allen-sr problem {problem} (not the {ALLEN_ATLAS['name']})"


def is_allen(problem: str) -> bool:
    """Whether ``problem`` is made of Allen Mouse Brain Atlas sections (else the user's own images)."""
    return problem.startswith("img2img_allen_brain")


def colour(config: dict[str, Any]) -> str:
    """"greyscale" for a model of 1 channel, else "RGB"."""
    return "greyscale" if int(config["channels"]) == 1 else "RGB"


def subject(config: dict[str, Any]) -> str:
    """What the model enlarges, from its problem: "RGB brightfield mouse brain sections" for the
    Allen problems, brightfield images like its training images for the others (the user's own)."""
    if is_allen(config["problem"]):
        return f"{colour(config)} brightfield mouse brain sections"
    return f"{colour(config)} brightfield microscopy images like the ones it was trained on ({config['problem']})"


def tags(problem: str) -> list[str]:
    """The rdf's tags: mouse and brain only for a model trained on the Allen sections."""
    species = ["mouse", "brain"] if is_allen(problem) else []
    return ["super-resolution", "brightfield", "histology", *species, "2d", "onnx"]


def training_data_field(problem: str) -> dict[str, Any]:
    """The rdf's ``training_data``: the Allen Mouse Brain Atlas described inline (a bioimage.io
    dataset id would need the network to resolve); nothing for images we cannot name."""
    if not is_allen(problem):
        return {}
    return {"training_data": {
        "type": "dataset", "format_version": "0.3.0", "name": ALLEN_ATLAS["name"],
        "description": (f"Brightfield section images of the adult mouse brain ({ALLEN_ATLAS['url']}), "
                        f"tiled by allen-sr's {problem}"),
        "cite": [{"text": ALLEN_ATLAS["text"], "doi": ALLEN_ATLAS["doi"]}],
        "license": "other",
    }}


def test_image(size: int) -> np.ndarray:
    """A ``size`` px square of real tissue from the shipped sample images (uint8 RGB)."""
    from allen_sr.data.images import list_images, load_image
    from allen_sr.data.tiles import tissue_tiles
    from allen_sr.sample_data import sample_folder

    for path in list_images(sample_folder()):
        kept, _, _ = tissue_tiles(load_image(path, size), size)
        if len(kept):
            return kept[len(kept) // 2]
    raise FileNotFoundError(f"no {size} px tissue tile in the sample images of {sample_folder()}")


def training_inputs(config: dict[str, Any]) -> str:
    """The readme's sentence on what the inputs looked like in training ("" if not recorded)."""
    spec = config.get("degradation")
    if spec is None:
        return ""
    if spec == "none":
        return " Trained on exact 4x area averages of clean images (`degradation=none`)."
    return (" Its training inputs were made like real ones (stain variation, blur, noise and JPEG "
            f"on a share of them): `degradation={spec}`.")


def averaged(config: dict[str, Any]) -> str:
    """The README's words for a model that averages the 8 flips/rotations of its input ("" if not)."""
    return ", and the prediction is the mean of the 8 flips/rotations of the input" if config["tta"] else ""


def readme(config: dict[str, Any]) -> str:
    f = config["target_size"] // config["input_size"]
    return f"""# {config['name']}

x{f} super-resolution of {subject(config)} (8-bit), a residual CNN
(`img2img_conv_sr`, hparams set `{config['hparams_set']}`) trained with tensor2tensor by
[allen-sr](https://github.com/allen-sr/allen-sr) on {config['input_size']} px -> {config['target_size']} px
tiles of problem `{config['problem']}`.

Input: uint8 `[batch, y, x, channel]` {colour(config)} of any size. Output: uint8 `[batch, {f}y, {f}x, channel]`.
The input normalization is part of the model{averaged(config)}.
An output pixel depends on input pixels up to {config['radius']} px away: tile with at least that much
overlap (the halo) and the tiles join without seams; inputs need at least {2 * config['radius'] + 1} px per side.

Training data: {training_data(config['problem'])}.{training_inputs(config)}

Checkpoint: `{config['checkpoint']}` (global step {config.get('global_step', 'unknown')}).

Use: open this folder's `rdf.yaml` in napari (bioimageio plugin), Fiji (deepImageJ) or
bioimageio.core, or run `model.onnx` with onnxruntime, or `allen-sr upscale --exported` on it.

# Validation

`allen-sr export` ran `test_input.npy` (the area-downsampled centre of a tissue tile from
allen-sr's sample images) through `model.onnx` with onnxruntime: `test_output.npy` is the result.
allen-sr's tests check that the ONNX model and the SavedModel give the values the checkpoint's
own decoder gives, and that `allen-sr evaluate --exported` reproduces the checkpoint's PSNR.
Measure the PSNR on your own held-out images with `allen-sr evaluate --exported`.

# Citation

Cite the Image Transformer (Parmar et al. 2018), which this project's models build on, and
tensor2tensor (Vaswani et al. 2018).
"""


def write_package(folder: str | os.PathLike[str], config: dict[str, Any], onnx_name: str,
                  saved_model: str | None, author: str) -> Path:
    """Write rdf.yaml and what it names into ``folder`` (beside ``onnx_name``); returns rdf.yaml."""
    folder = Path(folder)
    factor = config["target_size"] // config["input_size"]
    channels = int(config["channels"])
    tile = test_image(64 * factor)
    small = tile.reshape(64, factor, 64, factor, 3).mean(axis=(1, 3))
    x = np.rint(small).astype(np.uint8)[None]
    if channels == 1:
        from allen_sr.data.stats import LUMA

        x = np.clip(np.rint(x.astype(np.float64) @ LUMA), 0, 255).astype(np.uint8)[..., None]
    decoder = OnnxDecoder(folder / onnx_name, channels, factor, config["radius"], config["tta"])
    y = decoder.run(x)
    decoder.close()
    np.save(folder / TEST_INPUT, x)
    np.save(folder / TEST_OUTPUT, y)
    show_in = np.repeat(np.repeat(x[0], factor, 0), factor, 1)
    cover = np.concatenate([show_in, y[0]], axis=1)
    Image.fromarray(cover[..., 0] if channels == 1 else cover).save(folder / COVER)
    (folder / README).write_text(readme(config), encoding="utf-8")
    names = ["r", "g", "b"] if channels == 3 else ["grey"]
    halo = int(config["radius"]) * factor
    weights: dict[str, Any] = {
        "onnx": {"source": onnx_name, "sha256": sha256(folder / onnx_name), "opset_version": ONNX_OPSET},
    }
    if saved_model is not None:
        archive = shutil.make_archive(str(folder / Path(SAVED_MODEL_ZIP).stem), "zip", folder / saved_model)
        weights["tensorflow_saved_model_bundle"] = {
            "source": SAVED_MODEL_ZIP, "sha256": sha256(Path(archive)),
            "tensorflow_version": config.get("tensorflow_version", "2.15.1")}
        weights["onnx"]["parent"] = "tensorflow_saved_model_bundle"  # converted from its graph
    rdf = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": config["name"],
        "description": f"x{factor} super-resolution of {subject(config)} ({config['model']}, {config['hparams_set']})",
        "authors": [{"name": author}],
        "cite": CITATIONS + [{"text": ALLEN_ATLAS["text"], "doi": ALLEN_ATLAS["doi"]}]
        if is_allen(config["problem"]) else CITATIONS,
        "license": "Apache-2.0",
        "tags": tags(config["problem"]),
        "documentation": README,
        "covers": [COVER],
        "git_repo": "https://github.com/allen-sr/allen-sr",
        "version": "0.1.0",
        "inputs": [{
            "id": INPUT_NAME,
            "description": f"uint8 {colour(config)} image (values 0-255)",
            "axes": [{"type": "batch"},
                     {"type": "space", "id": "y", "size": {"min": 2 * int(config["radius"]) + 1, "step": 1}},
                     {"type": "space", "id": "x", "size": {"min": 2 * int(config["radius"]) + 1, "step": 1}},
                     {"type": "channel", "channel_names": names}],
            "test_tensor": {"source": TEST_INPUT, "sha256": sha256(folder / TEST_INPUT)},
            "data": {"type": "uint8"},
        }],
        "outputs": [{
            "id": OUTPUT_NAME,
            "description": f"uint8 {colour(config)} image {factor}x the input's size",
            "axes": [{"type": "batch"},
                     {"type": "space", "id": "y", "scale": 1.0 / factor, "halo": halo,
                      "size": {"tensor_id": INPUT_NAME, "axis_id": "y"}},
                     {"type": "space", "id": "x", "scale": 1.0 / factor, "halo": halo,
                      "size": {"tensor_id": INPUT_NAME, "axis_id": "x"}},
                     {"type": "channel", "channel_names": names}],
            "test_tensor": {"source": TEST_OUTPUT, "sha256": sha256(folder / TEST_OUTPUT)},
            "data": {"type": "uint8"},
        }],
        "weights": weights,
        **training_data_field(config["problem"]),
        "config": {"allen_sr": {"problem": config["problem"], "model": config["model"],
                                "hparams_set": config["hparams_set"],
                                "training_data": training_data(config["problem"])}},
    }
    path = folder / "rdf.yaml"
    path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
