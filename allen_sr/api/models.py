"""Which trained model to run and how to decode it: :class:`ModelSpec`, built from a name or a
folder by :func:`resolve`, opened by :func:`open_model`.

A model is one of: a pretrained model shipped with allen-sr (`allen_sr.pretrained`, by name), an
export folder (`allen-sr export`: runs without TensorFlow), or a t2t-trainer run folder (or a
checkpoint prefix) with the problem and hparams set it was trained with (read from the run's
``flags.txt`` when not given). Nothing here imports TensorFlow until a checkpoint is opened.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allen_sr.decoding.modes import check_mode, check_sampling_options
from allen_sr.errors import InvalidInputError, MissingInputError, UnsupportedInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

    from allen_sr.decoding.batching import Decoder

__all__ = ["uncertainty_calibration", "ModelSpec", "OpenModel", "ModelNotFoundError", "resolve",
           "pretrained_spec", "run_flags", "model_shape", "open_model", "decode_kwargs",
           "describe_source", "trained_degradation", "no_distribution"]


class ModelNotFoundError(MissingInputError):
    """A model name or folder that is neither shipped, nor an export, nor a training run."""


@dataclass(frozen=True)
class ModelSpec:
    """A trained model and how to decode it."""

    problem: str = ""
    hparams_set: str = ""
    output_dir: str = ""
    model: str | None = None  # None: the model whose variables the checkpoint holds
    hparams: str = ""
    mode: str | None = None  # None: the hparams set's decode_mode (greedy if it names none)
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    decoder: str | None = None  # None: the model's default decoder
    exported: str | None = None  # an export folder instead of problem/hparams_set/output_dir
    pretrained: str | None = None  # the shipped model's name when ``exported`` is one


def run_flags(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The ``--name=value`` flags t2t-trainer recorded in a run folder's flags.txt ({} if none)."""
    path = Path(folder) / "flags.txt"
    if not path.is_file():
        return {}
    flags = {}
    for line in path.read_text(encoding="utf-8", errors="replace").split():
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            flags[key] = value
    return flags


def resolve(source: str | os.PathLike[str] | None = None, **decoding: Any) -> ModelSpec:
    """The :class:`ModelSpec` of ``source``: None (the default pretrained model), a pretrained
    model's name, an export folder, or a training run folder / checkpoint prefix.

    ``decoding`` sets the other :class:`ModelSpec` fields (``problem``, ``hparams_set``,
    ``hparams``, ``mode``, ``temperature``, ``seed``, ``batch_size``, ``decoder``, ``model``).
    A run folder's problem and hparams set come from its flags.txt unless given.
    """
    from allen_sr import pretrained
    from allen_sr.export.runtime import CONFIG_NAME

    unknown = set(decoding) - (set(ModelSpec.__dataclass_fields__) - {"output_dir", "exported", "pretrained"})
    if unknown:
        raise TypeError(f"unknown model options: {', '.join(sorted(unknown))}")
    if source is None:
        return pretrained_spec(pretrained.default_name(), **refuse_run_options(decoding, "the default model"))
    text = os.fspath(source)
    path = Path(text).expanduser()
    run = path if path.is_dir() else path.parent
    is_checkpoint = path.is_dir() and (path / "checkpoint").is_file() or Path(f"{path}.index").is_file()
    if (path / CONFIG_NAME).is_file():  # an export folder needs nothing of the shipped models' package data
        return ModelSpec(exported=str(path), **refuse_run_options(decoding, f"the export {text}"))
    shipped = {} if is_checkpoint else {m.name: m for m in pretrained.available()}
    # a folder of that name that is no model (say, outputs named after it) does not hide the shipped model
    if text in shipped:
        return pretrained_spec(text, **refuse_run_options(decoding, f"the shipped model {text}"))
    if not is_checkpoint and path.is_file() and (path.parent / CONFIG_NAME).is_file():
        raise ModelNotFoundError(f"{text} is a file of the export folder {path.parent}: open the folder")
    if not is_checkpoint:
        raise ModelNotFoundError(
            f"no model {text!r}: not a shipped model ({', '.join(shipped) or 'none shipped'}), not an "
            "export folder (no config.json) and not a training run (no checkpoint)")
    flags = run_flags(run)
    spec = ModelSpec(output_dir=str(path), problem=flags.get("problem", ""),
                     hparams_set=flags.get("hparams_set", ""), hparams=flags.get("hparams", ""),
                     model=flags.get("model"))
    spec = replace(spec, **decoding)
    missing = [k for k in ("problem", "hparams_set") if not getattr(spec, k)]
    if missing:
        raise InvalidInputError(f"training run {text}: its {' and '.join(missing)} are not recorded (no "
                        f"flags.txt of t2t-trainer); give {' and '.join(missing)} too")
    return spec


# What only a training run's checkpoint is built with: an export (and a shipped model) has its own.
RUN_OPTIONS = ("problem", "hparams_set", "hparams", "model", "decoder")


def refuse_run_options(decoding: dict[str, Any], what: str) -> dict[str, Any]:
    """``decoding``, or InvalidInputError naming the options that only a training run takes."""
    given = [k for k in RUN_OPTIONS if decoding.get(k) not in (None, "")]
    if given:
        raise InvalidInputError(f"{', '.join(f'{k}=' for k in given)}: {what} is exported, with its own "
                                "problem, hparams and decoder; these are for a training run's checkpoint, "
                                "leave them out")
    return decoding


def pretrained_spec(name: str, **decoding: Any) -> ModelSpec:
    """The :class:`ModelSpec` of the shipped model ``name`` (allen_sr.pretrained.UnknownModelError
    listing the shipped ones if there is none of that name)."""
    from allen_sr import pretrained

    return ModelSpec(exported=str(pretrained.find(name).folder), pretrained=name, **decoding)


def describe_source(spec: ModelSpec) -> str:
    """How a summary names the model: the shipped name, the export folder or the run."""
    if spec.pretrained:
        return f"pretrained {spec.pretrained}"
    if spec.exported:
        return f"exported {spec.exported}"
    return f"{spec.hparams_set} {spec.output_dir}"


def trained_degradation(spec: ModelSpec) -> str | None:
    """The `degradation` spec the model trained with ("none": clean inputs), as its export's
    config.json, the shipped models' index or the run's hparams.json records it; None where nothing
    records it (an export or a run made before the hparam existed)."""
    import json

    from allen_sr import pretrained
    from allen_sr.export.runtime import CONFIG_NAME

    recorded = pretrained.find(spec.pretrained).info.get("degradation") if spec.pretrained else None
    if recorded is None and spec.exported:
        config = json.loads((Path(spec.exported) / CONFIG_NAME).read_text(encoding="utf-8"))
        recorded = config.get("degradation", config.get("hparams", {}).get("degradation"))
    elif recorded is None:
        run = Path(spec.output_dir)
        path = (run if run.is_dir() else run.parent) / "hparams.json"
        recorded = json.loads(path.read_text(encoding="utf-8")).get("degradation") if path.is_file() else None
    return None if recorded is None else str(recorded)


@dataclass
class OpenModel:
    """A decoder ready to run, with what it was built from."""

    decoder: "Decoder"
    hparams: "HParams | None"  # None for an exported model
    model: str
    mode: str
    checkpoint: str


def require_tensorflow(spec: ModelSpec) -> None:
    """UnsupportedInputError, naming the run, where TensorFlow is not installed: a training run's
    checkpoint is read with it (the prediction-only install ended in a ModuleNotFoundError)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensor2tensor") is None:
        raise UnsupportedInputError(
            f"{spec.output_dir or spec.hparams_set}: a training run's checkpoint needs TensorFlow and tensor2tensor, "
            "which this install lacks (the prediction-only one runs pretrained models and `allen-sr export` "
            "folders): export the run with the full install and open the export, or use the full install")


def model_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(input size, target size, channels) of the model's problem (an export's config says it)."""
    if spec.exported is not None:
        from allen_sr.export.runtime import read_config

        config = read_config(spec.exported)
        return int(config["input_size"]), int(config["target_size"]), int(config["channels"])
    require_tensorflow(spec)
    from allen_sr.t2t.names import problem_shape

    return problem_shape(spec.problem)


def check_trained_problem(spec: ModelSpec) -> None:
    """InvalidInputError when the run of ``spec`` was trained on a problem of another shape than
    ``spec.problem`` (its flags.txt says which): its model cannot read these tiles."""
    from allen_sr.decoding.checkpoints import run_folder
    from allen_sr.t2t.names import UnknownNameError, problem_shape

    trained_on = run_flags(run_folder(spec.output_dir)).get("problem")
    if not trained_on or trained_on == spec.problem:
        return
    try:
        there, here = problem_shape(trained_on), problem_shape(spec.problem)
    except UnknownNameError:
        return  # a problem registered elsewhere: nothing to compare with
    if there != here:
        shape = "{0}x{0} -> {1}x{1}, {2} channels".format
        raise InvalidInputError(f"{spec.output_dir} was trained on --problem {trained_on} ({shape(*there)}), "
                                f"not {spec.problem} ({shape(*here)}): pass --problem {trained_on} "
                                f"(problem={trained_on!r}), or leave it out (the run's flags.txt names it)")


def check_trained_set(spec: ModelSpec) -> None:
    """InvalidInputError when the run of ``spec`` was trained with another hparams set than
    ``spec.hparams_set`` (its flags.txt says which): its hparams.json would decode it as trained,
    and every summary would name the wrong set."""
    from allen_sr.decoding.checkpoints import run_folder

    trained_with = run_flags(run_folder(spec.output_dir)).get("hparams_set")
    if trained_with and trained_with != spec.hparams_set:
        raise InvalidInputError(f"{spec.output_dir} was trained with --hparams_set {trained_with}, not "
                                f"{spec.hparams_set}: pass --hparams_set {trained_with} "
                                f"(hparams_set={trained_with!r}), or leave it out (the run's flags.txt names it)")


def check_trained_model(spec: ModelSpec, checkpoint: str) -> None:
    """InvalidInputError when ``spec.model`` is not the model whose variables ``checkpoint`` holds (else
    its flags.txt's --model): another model's decoder would fail on hparams or variables it lacks."""
    from allen_sr.decoding.checkpoints import checkpoint_model, run_folder

    if spec.model is None:
        return
    try:
        trained_with = checkpoint_model(checkpoint)
    except InvalidInputError:  # variables of several models: what the trainer was told
        trained_with = run_flags(run_folder(spec.output_dir)).get("model", spec.model)
    if trained_with != spec.model:
        raise InvalidInputError(f"{spec.output_dir} was trained with --model {trained_with}, not {spec.model}: "
                                f"pass --model {trained_with} (model={trained_with!r}), or leave it out "
                                "(its checkpoint says which)")


def open_model(spec: ModelSpec, target_shape: tuple[int, int] | None = None) -> OpenModel:
    """Restore the newest checkpoint of ``spec.output_dir`` into the decoder ``spec`` names.

    With ``spec.exported``: open that export folder instead (NumPy/onnxruntime, no TensorFlow).
    """
    if spec.exported is not None:
        from allen_sr.export.runtime import open_exported

        exported = open_exported(spec.exported)
        mode = spec.mode or exported.mode
        check_mode(mode, spec.temperature)
        check_sampling_options(mode, spec.temperature)
        return OpenModel(exported.decoder, None, exported.model, mode, str(exported.folder))
    require_tensorflow(spec)
    from allen_sr.decoding import checkpoints, registry
    from allen_sr.t2t.names import check_names

    if spec.model is not None:
        registry.decoder_kinds(spec.model)  # an unsupported model fails before anything is read
    check_names(problem=spec.problem, hparams_set=spec.hparams_set)
    check_trained_problem(spec)
    check_trained_set(spec)
    checkpoint = checkpoints.find_checkpoint(spec.output_dir)
    check_trained_model(spec, checkpoint)
    model = spec.model or checkpoints.checkpoint_model(checkpoint)
    registry.decoder_kinds(model)
    hparams = checkpoints.load_hparams(spec.hparams_set, spec.problem, spec.hparams, spec.output_dir)
    mode = spec.mode or getattr(hparams, "decode_mode", "") or "greedy"
    check_mode(mode, spec.temperature)
    check_sampling_options(mode, spec.temperature)
    size = int(hparams.img_len)
    decoder = registry.make_decoder(model, spec.decoder, hparams, checkpoint,
                                    target_shape=target_shape or (size, size))
    return OpenModel(decoder, hparams, model, mode, checkpoint)


def decode_kwargs(spec: ModelSpec, mode: str, progress: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``Decoder.decode`` that ``spec`` fixes."""
    return dict(mode=mode, temperature=spec.temperature, seed=spec.seed,
                batch_size=spec.batch_size, progress=progress)


def no_distribution(model: str, runs_only: bool = False) -> str:
    """The one-line error for ``model``, which predicts no distribution: what gives maps instead,
    the shipped models that do first (``runs_only``: for `decode`, which reads training runs only,
    the runs that do, then the shipped models with `evaluate`)."""
    from allen_sr import pretrained

    shipped = " or ".join(f"--pretrained {m.name}" for m in pretrained.available() if "uncertainty" in m.info)
    if runs_only:
        return (f"{model} predicts one value per sub-pixel, not a distribution: decode --uncertainty needs a "
                "run of an Image Transformer (img2img_transformer_sr) or of a conv model trained with "
                "--hparams=probabilistic=True" + (f" (a shipped model's: allen-sr evaluate {shipped} --uncertainty "
                                                  "--images DIR)" if shipped else ""))
    shipped += " (shipped; Upscaler.open(NAME) from Python)" if shipped else ""
    return (f"{model} predicts one value per sub-pixel, not a distribution: uncertainty maps need "
            f"{shipped + ', ' if shipped else ''}an Image Transformer (img2img_transformer_sr) "
            "or a conv model trained with the hparam probabilistic=True (its run folder, or its export)")


def uncertainty_calibration(spec: ModelSpec, opened: OpenModel, progress: bool = False,
                            log: Any = None, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The `allen_sr.decoding.uncertainty.Calibration` the uncertainty maps of ``opened`` use:
    an export's (from its config.json), or the run's, fitted on its dev split on first use (else on
    ``data_dir``'s: `decode`'s dataset). UserError for a model that predicts no distribution (a
    conv model without its probabilistic head, or its export)."""
    if not getattr(opened.decoder, "reports_distributions", False):
        raise InvalidInputError(no_distribution(opened.model))
    calibration = _calibration(spec, opened, progress, log, data_dir)
    if calibration.fitted_on.startswith("not fitted"):  # said where the maps are made, not only in metrics.json
        warnings.warn(f"uncertainty maps of the model's own spread, uncalibrated ({calibration.fitted_on}): their "
                      f"intervals may be too wide or too narrow{_fit_advice(spec, calibration.fitted_on, data_dir)}")
    return calibration


def _fit_advice(spec: ModelSpec, fitted_on: str, data_dir: Any) -> str:
    """How to fit the calibration of a run whose dev split was not found (flags that exist)."""
    if spec.exported is not None or "dev split" not in fitted_on:
        return ""
    if data_dir is not None:
        return (f"; to calibrate, run `allen-sr datagen --problem={spec.problem} --data_dir {data_dir}` "
                "(it writes the dev split)")
    return (f"; to calibrate on the dataset where it is now, run once `allen-sr decode --output_dir "
            f"{spec.output_dir} --data_dir DIR --uncertainty --out OUT` (kept in the run), or use "
            "`allen-sr export --data_dir DIR`")


def _calibration(spec: ModelSpec, opened: OpenModel, progress: bool, log: Any, data_dir: Any) -> Any:
    from allen_sr.decoding.calibration import calibration_mode, parse_calibration, run_calibration
    from allen_sr.decoding.uncertainty import Calibration

    if spec.exported is not None:
        from allen_sr.export.runtime import CONFIG_NAME, read_config

        stored = read_config(spec.exported).get("uncertainty")
        if not stored:
            return Calibration(1.0, "not fitted: the export carries no calibration")
        found = parse_calibration(stored)
        if found is None:
            return Calibration(1.0, f"not fitted: the 'uncertainty' of {os.path.join(spec.exported, CONFIG_NAME)} "
                                    "is not a calibration (no positive temperature, fitted_on and tiles)")
        mode = calibration_mode(opened.mode, opened.decoder)
        if found.mode and calibration_mode(found.mode, opened.decoder) != mode:  # one temperature per mode
            return Calibration(1.0, f"not fitted: the export's calibration is of --mode {found.mode}, "
                                    f"not {opened.mode}")
        return found
    return run_calibration(opened.decoder, opened.hparams, spec.problem, opened.checkpoint, opened.mode,
                           progress, log, data_dir)
