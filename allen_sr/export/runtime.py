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
import re
import types
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allen_sr.decoding.batching import predict_in_chunks
from allen_sr.decoding.checkpoints import ADDED_LATER
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.laplace import LaplaceViews
from allen_sr.decoding.modes import check_one_value_mode
from allen_sr.decoding.support import TRANSFORMER_MODELS
from allen_sr.errors import InvalidInputError, MissingInputError, UserError, first_line
from allen_sr.models.transformer_options import DEFAULTS as TRANSFORMER_DEFAULTS

CONFIG_NAME = "config.json"
ONNX_NAME = "model.onnx"
DISTRIBUTION_NAME = "distribution.onnx"
WEIGHTS_NAME = "weights.npz"
SAVED_MODEL_NAME = "saved_model"
RDF_NAME = "rdf.yaml"
FORMAT = "allen-sr-export"
FORMAT_VERSION = 1
CONV_MODEL = "img2img_conv_sr"  # allen_sr.models.conv_sr.MODEL_NAME
EXPORT_AGAIN = "export again with `allen-sr export`"

__all__ = ["CONFIG_NAME", "ONNX_NAME", "DISTRIBUTION_NAME", "WEIGHTS_NAME", "SAVED_MODEL_NAME", "RDF_NAME", "FORMAT",
           "FORMAT_VERSION", "CONV_MODEL", "ExportedModel", "OnnxDecoder",
           "read_config", "open_exported", "check_distribution"]


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of an export folder; FileNotFoundError/ValueError naming the folder.

    Checked here: what every export's config.json holds and its readers use (the model, one this
    allen-sr runs, and the problem's sizes); `open_exported` checks what its model's kind adds."""
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
    model = config.get("model")
    if model != CONV_MODEL and model not in TRANSFORMER_MODELS:
        named = f"names model {model!r}" if "model" in config else "names no model"
        raise InvalidInputError(f"export folder {folder}: {CONFIG_NAME} {named} (this allen-sr runs "
                                f"{', '.join((CONV_MODEL, *TRANSFORMER_MODELS))}); {EXPORT_AGAIN}")
    for key in ("input_size", "target_size", "channels"):
        config_value(folder, config, key, int)
    return config


def config_value(folder: Path, config: dict[str, Any], key: str, kind: type) -> Any:
    """``config[key]``, an int (at least 1), bool, str or dict as ``kind`` says; InvalidInputError
    naming the folder and the key when config.json lacks it or holds something else."""
    value = config.get(key)
    if kind is int:
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        fits = isinstance(value, kind) and (kind is not str or bool(value))
    if not fits:
        found = f"{key}={value!r}" if key in config else f"no {key!r}"
        wanted = {int: "a whole number of at least 1", bool: "true or false", str: "a file name",
                  dict: "a mapping"}[kind]
        raise InvalidInputError(f"export folder {folder}: {CONFIG_NAME} has {found} ({wanted} expected); "
                                f"{EXPORT_AGAIN}")
    return value


def export_file(folder: Path, config: dict[str, Any], key: str, default: str) -> Path:
    """The file config.json names under ``key`` (else ``default``); MissingInputError when it is not there."""
    path = folder / (config_value(folder, config, key, str) if key in config else default)
    if not path.is_file():
        raise MissingInputError(f"export folder {folder}: {path.name} is missing; export again")
    return path


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime session of the graph ``path`` of an export folder; MissingInputError when the
    file is not there, InvalidInputError naming it when onnxruntime cannot load it (a truncated or
    damaged copy)."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"export folder {path.parent}: {path.name} is missing; export again")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    # Idle threads sleep instead of spinning: on a machine shared with other jobs (2 cores
    # here) spinning cost time, and alone it made no measurable difference.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except (OSError, state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf,
            state.NoSuchFile, state.NotImplemented, state.RuntimeException) as exc:
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:WHY" -> WHY
        detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .* failed:)?", "", first_line(exc))
        raise InvalidInputError(f"export folder {path.parent}: {path.name} is unreadable "
                                f"({type(exc).__name__}: {detail}); {EXPORT_AGAIN}") from None


class OnnxDecoder(LaplaceViews):
    """``img2img_conv_sr`` exported as ONNX: uint8 [N, h, w, C] in, uint8 [N, fh, fw, C] out.

    The same interface as `allen_sr.decoding.one_pass.OnePassDecoder` where tiled prediction and
    `evaluate` use it (``predict``, ``decode``, ``radius``, ``tta``, ``close``; with the export's
    ``distribution`` graph also ``predict_uncertain`` and ``decode(..., recorder=...)``); the
    prediction is rounded inside the graph, so ``predict`` returns the uint8 values as float32.
    The distribution graph is loaded on its first use: a prediction alone needs only ``path``.
    """

    name = "onnx"
    no_distribution = ("this export holds no distribution.onnx; train with the hparam probabilistic=True "
                       "and export again for uncertainty maps")

    def __init__(self, path: str | os.PathLike[str], channels: int, factor: int, radius: int,
                 tta: bool, model_name: str = CONV_MODEL,
                 distribution: str | os.PathLike[str] | None = None) -> None:
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.distribution_path = None if distribution is None else Path(distribution)
        self.distribution: Any = None  # its session, once the distributions are asked for
        self.channels, self.factor, self.radius, self.tta = channels, factor, radius, tta
        self.model_name = model_name

    @property
    def reports_distributions(self) -> bool:
        """True when the export holds the probabilistic head's graph (``distribution.onnx``)."""
        return self.distribution_path is not None

    def load_distribution(self) -> None:
        """Load the distribution graph now (once): a missing or damaged distribution.onnx is said
        before any image is read (UserError naming the file), not blamed on each image in turn."""
        if self.distribution is None and self.distribution_path is not None:
            self.distribution = onnx_session(self.distribution_path)

    def _mean_scale(self, x: np.ndarray) -> list[np.ndarray]:
        """The prediction and the Laplace scale of one view of a batch (`laplace.LaplaceViews`)."""
        self.load_distribution()
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
        check_one_value_mode(mode, self.model_name, self.reports_distributions)
        if recorder is not None:
            return self._laplace_decode(self._distribution_inputs(inputs), recorder, batch_size, progress)
        return predict_in_chunks(inputs, self.run, self.factor, self.channels, batch_size, progress,
                                 f"{self.model_name} onnx", dtype=np.uint8)

    def close(self) -> None:
        self.session = self.distribution = self.distribution_path = None


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
        path = export_file(folder, config, "onnx", ONNX_NAME)
        radius, tta = config_value(folder, config, "radius", int), config_value(folder, config, "tta", bool)
        # distribution.onnx is read when the distributions are asked for (OnnxDecoder._mean_scale).
        distribution = config_value(folder, config, "distribution", str) if config.get("distribution") else None
        decoder: Any = OnnxDecoder(path, channels, factor, radius, tta, config["model"],
                                   folder / distribution if distribution else None)
    else:
        path = export_file(folder, config, "weights", WEIGHTS_NAME)
        hparams = types.SimpleNamespace(**exported_hparams(config_value(folder, config, "hparams", dict)))
        weights = read_weights(path)
        try:
            # Checked by FastDecoder when the export was written; the check needs tensor2tensor.
            decoder = FastDecoder(hparams, weights, config["model"], (target_size, target_size), check=False)
        except UserError:
            raise
        except (KeyError, ValueError) as exc:  # a variable missing or of another shape than the hparams say
            detail = str(exc.args[0] if exc.args else exc).split("; ")[0]
            raise InvalidInputError(f"export folder {folder}: {path.name} does not hold the model {CONFIG_NAME} "
                                    f"describes ({detail}); {EXPORT_AGAIN}") from None
    return ExportedModel(decoder, config, folder)


def check_distribution(folder: str | os.PathLike[str]) -> None:
    """UserError naming the distribution.onnx a conv export folder's config.json names when it is
    missing or onnxruntime cannot load it (what its uncertainty maps need), without opening the model."""
    folder = Path(folder)
    config = read_config(folder)
    if config["model"] == CONV_MODEL and config.get("distribution"):
        onnx_session(folder / config_value(folder, config, "distribution", str)).get_inputs()


def exported_hparams(recorded: dict[str, Any]) -> dict[str, Any]:
    """config.json's hparams, with each option of `checkpoints.ADDED_LATER` that an export of one of
    our Image Transformer sets (its hparams name our options) does not record turned off, as
    `checkpoints.load_hparams` does for a run: the export was made before the option existed."""
    hparams = dict(recorded)
    if any(name in hparams for name in TRANSFORMER_DEFAULTS):
        for name, off in ADDED_LATER.items():
            if name in TRANSFORMER_DEFAULTS:
                hparams.setdefault(name, off)
    return hparams


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an export's weights.npz; InvalidInputError naming it when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInputError(f"export folder {path.parent}: {path.name} is unreadable "
                                f"({type(exc).__name__}: {first_line(exc)}); {EXPORT_AGAIN}") from None
