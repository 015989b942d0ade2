"""`allen-sr export`: a trained model in files that run without TensorFlow or tensor2tensor.

img2img_conv_sr -> OUT/saved_model/ (TensorFlow SavedModel, signature serving_default: uint8
image [N, H, W, C] -> uint8 upscaled [N, 4H, 4W, C]), OUT/model.onnx (the same graph, through
tf2onnx, dynamic N/H/W), OUT/rdf.yaml with what it names (a bioimage.io model package: napari,
Fiji/deepImageJ) and OUT/config.json; a model trained with hparam probabilistic=True also
OUT/distribution.onnx (its prediction and Laplace scale: uncertainty maps) and its calibration.
Image Transformers (img2img_transformer, img2img_transformer_sr) -> OUT/weights.npz and
OUT/config.json, decoded by the NumPy fast decoder.
`allen-sr upscale/evaluate --exported OUT` run either without TensorFlow (README: "Use a trained
model elsewhere"). OUT appears complete or not at all.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from allen_sr.commands import args as shared
from allen_sr.export import runtime
from allen_sr.errors import InvalidInputError, MissingInputError, UnsupportedInputError
from allen_sr.fileio import folder_trouble, remove_orphans

# Hparams t2t-trainer adds to every run's hparams.json, whatever the set.
RUN_KEYS = {"data_dir", "eval_freq_in_steps", "eval_steps", "eval_timeout_mins", "model_dir",
            "schedule", "std_server_protocol", "train_steps", "warm_start_from", "use_tpu"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", default=None,
                   help="registered problem the model was trained on (default: the run's, from its flags.txt)")
    p.add_argument("--model", default=None, help="t2t model (default: the one whose variables the checkpoint holds)")
    p.add_argument("--hparams_set", default=None,
                   help="hparams set the model was trained with (default: the run's, from its flags.txt)")
    p.add_argument("--hparams", default="", help='hparams overrides "k=v,..." as given to t2t-trainer')
    p.add_argument("--data_dir", default=None,
                   help="the run's dataset, if it has moved since training: its dev split fits the uncertainty "
                        "calibration (default: the run's data_dir)")
    p.add_argument("--output_dir", required=True,
                   help="t2t-trainer output dir (its newest checkpoint is used) or a checkpoint prefix")
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    p.add_argument("--author", default="allen-sr", help="author named in the bioimage.io package")
    p.add_argument("--no_bioimageio", action="store_true", help="conv model: no rdf.yaml package")
    return p


def check_trained_set(output_dir: str, hparams: Any, hparams_set: str, problem: str | None = None) -> None:
    """Refuse a --hparams_set (or --problem) other than the one the run in ``output_dir`` was trained with.

    t2t-trainer writes every hparam of the run to hparams.json (and its flags to flags.txt): a
    hparam the named set does not have, or another --hparams_set or --problem in flags.txt, names
    the mistake (the export's metadata describes the problem: it must be the run's).
    """
    from allen_sr.api.models import run_flags
    from allen_sr.decoding.checkpoints import run_folder

    folder = run_folder(output_dir)
    flags = run_flags(folder)
    trained_with = flags.get("hparams_set", hparams_set)
    if trained_with != hparams_set:
        raise InvalidInputError(f"--output_dir {output_dir} was trained with --hparams_set={trained_with}, "
                                f"not {hparams_set}: pass that set")
    trained_on = flags.get("problem", problem)
    if problem is not None and trained_on != problem:
        raise InvalidInputError(f"--output_dir {output_dir} was trained on --problem {trained_on}, not {problem}: "
                                "pass that problem (or leave --problem out)")
    path = os.path.join(folder, "hparams.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = set(json.load(handle))
        foreign = sorted(saved - set(hparams.values()) - RUN_KEYS)
        if foreign:
            raise InvalidInputError(f"--output_dir {output_dir} was trained with hparams that --hparams_set "
                                    f"{hparams_set} does not have ({', '.join(foreign[:5])}"
                                    f"{', ...' if len(foreign) > 5 else ''}): pass the set it was trained with")


def check_out(out: Path) -> None:
    """Before any work: ``out`` is missing or an empty folder, and a folder can be created beside it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"--out {out} exists and is not an empty folder: remove it or choose another")
    if not out.parent.is_dir():
        raise MissingInputError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    why = folder_trouble(out.parent)
    if why:
        raise InvalidInputError(f"--out {out}: cannot create the folder ({why}); choose another --out")


def remove_stale_tmp(out: Path) -> None:
    """Remove the hidden ``.OUT.<pid>.<hex>.tmp`` folders of an earlier export to ``out`` whose
    process has ended without cleaning up (killed: SIGTERM, SIGKILL, a power cut)."""
    remove_orphans(out.parent, rf"\.{re.escape(out.name)}\.(?P<pid>\d+)\.[0-9a-f]{{8}}\.tmp")


def run_overrides(output_dir: str, overrides: str) -> str:
    """The run's training --hparams (its flags.txt) followed by the export's own ``overrides``."""
    from allen_sr.api.models import run_flags
    from allen_sr.decoding.checkpoints import run_folder

    trained = run_flags(run_folder(output_dir)).get("hparams", "")
    return ",".join(part for part in (trained, overrides) if part)


def global_step(checkpoint: str) -> int | None:
    import tensorflow as tf

    try:
        return int(tf.train.load_variable(checkpoint, "global_step"))
    except (ValueError, KeyError, tf.errors.OpError):  # a checkpoint without one
        return None


def export(problem: str, hparams_set: str, output_dir: str, out: str | os.PathLike[str],
           model: str | None = None, overrides: str = "", author: str = "allen-sr",
           bioimageio: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """Export the newest checkpoint of ``output_dir`` to the new folder ``out``; returns config.json.

    ``data_dir``: the run's dataset where it is now (default: where the run read it), whose dev split
    fits the uncertainty calibration; a UserWarning says when none could be fitted."""
    from allen_sr.decoding import checkpoints
    from allen_sr.decoding.support import TRANSFORMER_MODELS
    from allen_sr.t2t.names import check_names, problem_shape

    out = Path(os.path.abspath(out))  # "--out ." has no name to build the hidden temporary folder's from
    check_out(out)
    check_names(problem=problem, hparams_set=hparams_set)
    checkpoint = checkpoints.find_checkpoint(output_dir)
    written_by = checkpoints.checkpoint_model(checkpoint)
    if model is not None and model != written_by:
        raise InvalidInputError(f"checkpoint {checkpoint} was written by model {written_by}, not --model "
                                f"{model}: pass --model {written_by} (or leave --model out)")
    if written_by != runtime.CONV_MODEL and written_by not in TRANSFORMER_MODELS:
        raise UnsupportedInputError(f"exporting model {written_by} is not supported (supported: "
                                    f"{runtime.CONV_MODEL}, {', '.join(TRANSFORMER_MODELS)})")
    hparams = checkpoints.load_hparams(hparams_set, problem, overrides, output_dir)
    check_trained_set(output_dir, hparams, hparams_set, problem)
    if data_dir is not None:
        import tensorflow as tf

        if not tf.io.gfile.isdir(data_dir):  # gs:// too, as training reads it
            raise MissingInputError(f"--data_dir {data_dir}: no such folder; pass the folder of the run's dataset")
        if hasattr(hparams, "data_dir"):
            hparams.data_dir = data_dir
        else:
            hparams.add_hparam("data_dir", data_dir)
    input_size, target_size, channels = problem_shape(problem)
    factor = target_size // input_size
    config: dict[str, Any] = {
        "format": runtime.FORMAT, "format_version": runtime.FORMAT_VERSION,
        "name": f"allen-sr {written_by} {hparams_set} x{factor}",
        "model": written_by, "problem": problem, "hparams_set": hparams_set,
        "hparams_overrides": run_overrides(output_dir, overrides), "checkpoint": checkpoint,
        "input_size": input_size, "target_size": target_size, "channels": channels,
        "decode_mode": getattr(hparams, "decode_mode", "") or "greedy",
    }
    step = global_step(checkpoint)
    if step is not None:
        config["global_step"] = step
    if hasattr(hparams, "degradation"):  # the training inputs' spec, as the run trained with it
        config["degradation"] = str(hparams.degradation)
    remove_stale_tmp(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        if written_by == runtime.CONV_MODEL:
            import tensorflow as tf

            from allen_sr.decoding.one_pass import receptive_radius
            from allen_sr.export import conv
            from allen_sr.models.conv_sr import check_hparams

            check_hparams(hparams, factor)
            tta = bool(getattr(hparams, "decode_tta", False))
            graph_def = conv.frozen_graph(hparams, checkpoint, written_by, tta)
            conv.write_saved_model(graph_def, tmp / runtime.SAVED_MODEL_NAME)
            conv.write_onnx(graph_def, tmp / runtime.ONNX_NAME, factor, channels)
            config.update(radius=receptive_radius(hparams, factor), tta=tta, decode_mode="greedy",
                          onnx=runtime.ONNX_NAME, saved_model=runtime.SAVED_MODEL_NAME,
                          tensorflow_version=tf.__version__, input_name=conv.INPUT_NAME,
                          output_name=conv.OUTPUT_NAME)
            if getattr(hparams, "probabilistic", False):
                dist_def = conv.frozen_graph(hparams, checkpoint, written_by, False, distribution=True)
                conv.write_onnx(dist_def, tmp / runtime.DISTRIBUTION_NAME, factor, channels,
                                conv.DISTRIBUTION_OUTPUTS)
                config["distribution"] = runtime.DISTRIBUTION_NAME
                config["uncertainty"] = export_calibration(hparams, problem, checkpoint, written_by, "greedy")
            if bioimageio:
                from allen_sr.export.bioimageio import write_package

                write_package(tmp, config, runtime.ONNX_NAME, runtime.SAVED_MODEL_NAME, author)
                config["bioimageio"] = runtime.RDF_NAME
        else:
            from allen_sr.export.transformer import write_weights

            config.update(write_weights(hparams, checkpoint, written_by, tmp, runtime.WEIGHTS_NAME))
            config["uncertainty"] = export_calibration(hparams, problem, checkpoint, written_by, config["decode_mode"])
        warn_uncalibrated(config)
        (tmp / runtime.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        try:
            if out.exists():
                out.rmdir()  # empty (check_out)
            os.replace(tmp, out)
        except OSError as exc:  # created or protected since check_out
            raise InvalidInputError(f"--out {out}: cannot put the export there ({exc.strerror or exc}); "
                                    "export again to another --out") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def warn_uncalibrated(config: dict[str, Any]) -> None:
    """Warn in one line when the export's uncertainty maps will use an unfitted calibration."""
    fitted_on = str(config.get("uncertainty", {}).get("fitted_on", ""))
    if fitted_on.startswith("not fitted"):
        warnings.warn(f"the export's uncertainty maps are uncalibrated ({fitted_on}): export again with "
                      "--data_dir pointing at the run's dataset", stacklevel=3)


def export_calibration(hparams: Any, problem: str, checkpoint: str, model: str, mode: str) -> dict[str, Any]:
    """The run's uncertainty calibration for config.json (fitted now on the run's dev split if it
    has none yet; `allen_sr.decoding.calibration`)."""
    from allen_sr.decoding.calibration import run_calibration

    if model == runtime.CONV_MODEL:
        from allen_sr.decoding.one_pass import OnePassDecoder

        decoder: Any = OnePassDecoder(hparams, checkpoint, model)
    else:
        from allen_sr.decoding.fast import FastDecoder

        decoder = FastDecoder.from_checkpoint(hparams, checkpoint, model)
    try:
        return run_calibration(decoder, hparams, problem, checkpoint, mode).as_dict()
    finally:
        getattr(decoder, "close", lambda: None)()


def export_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        if not (args.problem and args.hparams_set):  # the run's flags.txt names them, as decode reads them
            from allen_sr.api.models import resolve

            given = {k: getattr(args, k) for k in ("problem", "hparams_set") if getattr(args, k)}
            spec = resolve(args.output_dir, **given)
            if spec.exported:
                raise InvalidInputError(f"--output_dir {args.output_dir} is an exported model already: export "
                                        "a training run (its folder or a checkpoint)")
            args.problem, args.hparams_set = spec.problem, spec.hparams_set
        config = export(args.problem, args.hparams_set, args.output_dir, args.out, args.model,
                        args.hparams, args.author, not args.no_bioimageio, args.data_dir)
        files = sorted(p.name for p in Path(args.out).iterdir())
        print(f"exported {config['model']} ({config['checkpoint']}) to {args.out}: {', '.join(files)}")

    return shared.run_command("export", body)


if __name__ == "__main__":
    sys.exit(export_main())
