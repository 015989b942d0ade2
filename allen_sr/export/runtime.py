"""Run an exported model (`allen-sr export`) with NumPy and onnxruntime only.

Nothing here imports TensorFlow or tensor2tensor, at import time or later: this is the code path
of ``allen-sr upscale/evaluate --exported DIR`` in the TF-free install (requirements/predict.txt,
Python 3.12 and 3.13). An export folder holds ``config.json`` (what the model is, the problem's
shape, the decoding defaults) and either ``model.onnx`` (``img2img_conv_sr``; normalization and
the 8-fold averaging are inside the graph; a probabilistic conv model adds ``distribution.onnx``,
its prediction and Laplace scale for one view) or ``weights.npz`` (the Image Transformers, decoded by
the NumPy fast decoder with the hparams stored in ``config.json``).
"""
from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr.decoding.batching import predict_in_chunks
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.laplace import LaplaceViews
from allen_sr.decoding.modes import check_one_value_mode
from allen_sr.errors import InvalidInputError, MissingInputError

CONFIG_NAME = "config.json"
ONNX_NAME = "model.onnx"
DISTRIBUTION_NAME = "distribution.onnx"
WEIGHTS_NAME = "weights.npz"
SAVED_MODEL_NAME = "saved_model"
RDF_NAME = "rdf.yaml"
FORMAT = "allen-sr-export"
FORMAT_VERSION = 1
CONV_MODEL = "img2img_conv_sr"  # allen_sr.models.conv_sr.MODEL_NAME

__all__ = ["CONFIG_NAME", "ONNX_NAME", "DISTRIBUTION_NAME", "WEIGHTS_NAME", "SAVED_MODEL_NAME", "RDF_NAME", "FORMAT",
           "FORMAT_VERSION", "CONV_MODEL", "ExportedModel", "OnnxDecoder",
           "read_config", "open_exported"]


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of an export folder; FileNotFoundError/ValueError naming the folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise MissingInputError(f"export folder {folder}: no such folder; pass a folder written by "
                                "`allen-sr export`")
    if not path.is_file():
        raise MissingInputError(f"{folder}: not an export folder (no {CONFIG_NAME}); "
                                "pass a folder written by `allen-sr export`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"export folder {folder}: {CONFIG_NAME} is unreadable ({exc}); export again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InvalidInputError(f"export folder {folder}: {CONFIG_NAME} is not an allen-sr export; export again")
    if config.get("format_version") != FORMAT_VERSION:
        raise InvalidInputError(f"export folder {folder}: format_version {config.get('format_version')!r} "
                                f"(this allen-sr reads {FORMAT_VERSION}); export again with this version")
    return config


def onnx_session(path: str | os.PathLike[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    # Idle threads sleep instead of spinning: on a machine shared with other jobs (2 cores
    # here) spinning cost time, and alone it made no measurable difference.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


class OnnxDecoder(LaplaceViews):
    """``img2img_conv_sr`` exported as ONNX: uint8 [N, h, w, C] in, uint8 [N, fh, fw, C] out.

    The same interface as `allen_sr.decoding.one_pass.OnePassDecoder` where tiled prediction and
    `evaluate` use it (``predict``, ``decode``, ``radius``, ``tta``, ``close``; with the export's
    ``distribution`` graph also ``predict_uncertain`` and ``decode(..., recorder=...)``); the
    prediction is rounded inside the graph, so ``predict`` returns the uint8 values as float32.
    """

    name = "onnx"
    no_distribution = ("this export holds no distribution.onnx; train with the hparam probabilistic=True "
                       "and export again for uncertainty maps")

    def __init__(self, path: str | os.PathLike[str], channels: int, factor: int, radius: int,
                 tta: bool, model_name: str = CONV_MODEL,
                 distribution: str | os.PathLike[str] | None = None) -> None:
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.distribution = None if distribution is None else onnx_session(distribution)
        self.channels, self.factor, self.radius, self.tta = channels, factor, radius, tta
        self.model_name = model_name

    @property
    def reports_distributions(self) -> bool:
        """True when the export holds the probabilistic head's graph (``distribution.onnx``)."""
        return self.distribution is not None

    def _mean_scale(self, x: np.ndarray) -> list[np.ndarray]:
        """The prediction and the Laplace scale of one view of a batch (`laplace.LaplaceViews`)."""
        return self.distribution.run(None, {self.input_name: np.ascontiguousarray(x, np.uint8)})

    def _checked(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs)
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise InvalidInputError(f"inputs must be [N, h, w, {self.channels}], got shape {x.shape}")
        return x

    def run(self, x: np.ndarray) -> np.ndarray:
        """uint8 predictions of uint8 [N, h, w, C] inputs, in one call."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.uint8)})[0]

    def predict(self, inputs: np.ndarray, batch_size: int | None = None,
                progress: bool = False) -> np.ndarray:
        return predict_in_chunks(inputs, self.run, self.factor, self.channels, batch_size, progress,
                                 f"{self.model_name} onnx")

    def decode(self, inputs: np.ndarray, mode: str = "greedy", temperature: float = 1.0,
               seed: int | None = None, batch_size: int | None = None,
               max_steps: int | None = None, progress: bool = False, recorder: Any = None) -> np.ndarray:
        """The batching.Decoder protocol; ``mode`` greedy or mean (the same here). ``recorder``
        (exports with a distribution) gets each sub-pixel's distribution."""
        del temperature, seed, max_steps
        check_one_value_mode(mode, self.model_name)
        if recorder is not None:
            return self._laplace_decode(self._distribution_inputs(inputs), recorder, batch_size, progress)
        return predict_in_chunks(inputs, self.run, self.factor, self.channels, batch_size, progress,
                                 f"{self.model_name} onnx", dtype=np.uint8)

    def close(self) -> None:
        self.session = self.distribution = None


@dataclass
class ExportedModel:
    """An opened export folder: its decoder and what config.json says."""

    decoder: Any
    config: dict[str, Any]
    folder: Path

    @property
    def model(self) -> str:
        return str(self.config["model"])

    @property
    def mode(self) -> str:
        return str(self.config.get("decode_mode") or "greedy")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(input size, target size, channels) of the problem the model was trained on."""
        c = self.config
        return int(c["input_size"]), int(c["target_size"]), int(c["channels"])

    def close(self) -> None:
        getattr(self.decoder, "close", lambda: None)()


def open_exported(folder: str | os.PathLike[str]) -> ExportedModel:
    """Open an export folder; errors name the folder and the file that is missing or wrong."""
    folder = Path(folder)
    config = read_config(folder)
    input_size, target_size, channels = (int(config[k]) for k in ("input_size", "target_size", "channels"))
    factor = target_size // input_size
    if config["model"] == CONV_MODEL:
        path = folder / config.get("onnx", ONNX_NAME)
        if not path.is_file():
            raise MissingInputError(f"export folder {folder}: {path.name} is missing; export again")
        distribution = config.get("distribution")
        if distribution and not (folder / distribution).is_file():
            raise MissingInputError(f"export folder {folder}: {distribution} is missing; export again")
        decoder: Any = OnnxDecoder(path, channels, factor, int(config["radius"]), bool(config["tta"]),
                                   config["model"], folder / distribution if distribution else None)
    else:
        path = folder / config.get("weights", WEIGHTS_NAME)
        if not path.is_file():
            raise MissingInputError(f"export folder {folder}: {path.name} is missing; export again")
        with np.load(path, allow_pickle=False) as data:
            weights = {name: data[name] for name in data.files}
        hparams = types.SimpleNamespace(**config["hparams"])
        # Checked by FastDecoder when the export was written; the check needs tensor2tensor.
        decoder = FastDecoder(hparams, weights, config["model"], (target_size, target_size), check=False)
    return ExportedModel(decoder, config, folder)

