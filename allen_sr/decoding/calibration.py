"""One softmax temperature that makes the Image Transformer's reported distributions calibrated,
fitted on the training data's dev split only, kept beside the checkpoint.

`allen-sr decode/evaluate/upscale --uncertainty` on a training run reads
``<run>/uncertainty_calibration.json`` (one entry per checkpoint, decoding mode and decode_tta:
each mode conditions the distributions on other values, and 8 views mix 8 distributions; a model
with one value per sub-pixel decodes greedy and mean alike, kept as greedy). An entry names a hash
of the checkpoint's .index file (which holds each tensor's checksum): another model written to the
same checkpoint name is fitted anew. When the run's newest checkpoint has none, it is fitted once,
on first use, from the run's own dev split (the data folder t2t-trainer recorded in the run's
hparams; `decode` offers its --data_dir when that one is not readable), and written there. A
malformed file or entry is fitted again, said in one line. `allen-sr export` copies it
into the export's config.json. The images `evaluate` and `upscale` score are never used to fit it;
`decode --uncertainty` on the run's own dev split decodes the first dev tiles, the ones it was
fitted on, and says how many of them were (:func:`fitted_tiles`: on screen and in metrics.json).

The fit: decode :data:`FIT_TILES` dev tiles in the model's decoding mode, record each
sub-pixel's distribution at every temperature of
`allen_sr.decoding.uncertainty.TEMPERATURE_GRID`, and keep the temperature whose reliability
diagram is closest to the diagonal. Only the reported distributions change; the decoded values
never do.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from allen_sr.decoding.uncertainty import TEMPERATURE_GRID, Calibration, Recorder, fit_temperature, reliability
from allen_sr.errors import count
from allen_sr.fileio import write_json_atomic

CALIBRATION_NAME = "uncertainty_calibration.json"
FIT_TILES = 64

__all__ = ["CALIBRATION_NAME", "FIT_TILES", "stored_calibration", "fit_calibration", "run_calibration",
           "fitted_tiles", "calibration_mode", "parse_calibration"]


def _file(checkpoint: str) -> Path:
    return Path(checkpoint).parent / CALIBRATION_NAME


def _read(checkpoint: str) -> dict[str, Any]:
    """The run's calibration file: {checkpoint name: {mode key: entry}}; {} if unreadable or not
    of that shape (said in one line: it is fitted again)."""
    path = _file(checkpoint)
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if isinstance(found, dict):
        return found
    warnings.warn(f"{path} is not a calibration file (a JSON {type(found).__name__}, not an object): "
                  "fitting the uncertainty calibration again")
    return {}


def _by_mode(entries: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """{mode key: entry} of ``checkpoint`` in ``entries`` (a file of :func:`_read`)."""
    found = entries.get(Path(checkpoint).name)
    # A file written before calibrations were kept per mode holds one flat entry: fitted again.
    return found if isinstance(found, dict) and "temperature" not in found else {}


def calibration_mode(mode: str, decoder: Any) -> str:
    """The mode a calibration of ``decoder`` in ``mode`` is kept under: a model with one value per
    sub-pixel (the conv model, its export) decodes greedy and mean alike, its prediction."""
    from allen_sr.decoding.laplace import LaplaceViews

    return "greedy" if mode == "mean" and isinstance(decoder, LaplaceViews) else mode


def _key(mode: str, tta: bool) -> str:
    return f"{mode}+tta" if tta else mode


def checkpoint_fingerprint(checkpoint: str) -> str | None:
    """sha256 of ``checkpoint``'s .index file (it holds every tensor's checksum), None if unreadable."""
    try:
        return hashlib.sha256(Path(f"{checkpoint}.index").read_bytes()).hexdigest()
    except OSError:
        return None


def parse_calibration(entry: Any, mode: str = "") -> Calibration | None:
    """The :class:`Calibration` a stored ``entry`` (a calibration file's or an export's) holds, or
    None when it is not one (no positive finite temperature, no fitted_on, a negative tile count)."""
    if not isinstance(entry, dict):
        return None
    temperature, fitted_on, tiles = entry.get("temperature"), entry.get("fitted_on"), entry.get("tiles", 0)
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not (math.isfinite(temperature) and temperature > 0) or not isinstance(fitted_on, str)
            or isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 0):
        return None
    return Calibration(float(temperature), fitted_on, tiles, str(entry.get("mode") or mode))


def stored_calibration(checkpoint: str, mode: str, tta: bool = False) -> Calibration | None:
    """The calibration fitted for ``checkpoint`` (a prefix) decoded in ``mode`` (with 8 views:
    ``tta``), or None: none, malformed (said), fitted without the decode_tta or checkpoint hash it
    is kept with now, or of another model written to the same checkpoint name."""
    key = _key(mode, tta)
    entry = _by_mode(_read(checkpoint), checkpoint).get(key)
    if entry is None:
        return None
    calibration = parse_calibration(entry, mode)
    if calibration is None:
        warnings.warn(f"{_file(checkpoint)}: the entry of {Path(checkpoint).name} {key} is not a calibration "
                      "(no positive temperature, fitted_on and tiles): fitting it again")
        return None
    if entry.get("tta") is not bool(tta) or entry.get("checkpoint_sha256") != checkpoint_fingerprint(checkpoint):
        return None
    return calibration


def recorded_data_dir(run: Path) -> str | None:
    """The --data_dir a t2t-trainer run was trained on: its hparams.json, else its flags.txt."""
    try:
        found = json.loads((run / "hparams.json").read_text(encoding="utf-8")).get("data_dir")
        if found:
            return str(found)
    except (OSError, json.JSONDecodeError):
        pass
    try:
        for line in (run / "flags.txt").read_text(encoding="utf-8").split():
            if line.startswith("--data_dir="):
                return line.split("=", 1)[1]
    except OSError:
        pass
    return None


def fit_where(problem: str, data_dir: str | os.PathLike[str]) -> str:
    """The ``fitted_on`` of a calibration fitted on the dev split of ``problem`` in ``data_dir``."""
    return f"dev split of {problem} in {os.fspath(data_dir)}"


def fitted_tiles(calibration: Calibration, problem: str, data_dir: str | os.PathLike[str], split: str,
                 decoded: int) -> int:
    """How many of the first ``decoded`` tiles of ``split`` in ``data_dir`` ``calibration`` was
    fitted on: the first ``calibration.tiles`` dev tiles of the folder it names (0 for others)."""
    from allen_sr.decoding.examples import SPLITS

    prefix = fit_where(problem, "")
    if not calibration.tiles or SPLITS.get(split) != SPLITS["dev"] or not calibration.fitted_on.startswith(prefix):
        return 0
    fitted_dir = calibration.fitted_on[len(prefix):]
    same = os.path.realpath(fitted_dir) == os.path.realpath(os.fspath(data_dir))
    return min(decoded, calibration.tiles) if same else 0


def fit_calibration(decoder: Any, inputs: Any, targets: Any, mode: str, where: str,
                    progress: bool = False) -> tuple[Calibration, dict[str, Any]]:
    """Fit the temperature on ``inputs``/``targets`` (dev tiles); (calibration, a report with the
    reliability at the model's own temperature and at the fitted one)."""
    recorder = Recorder(TEMPERATURE_GRID, targets)
    decoder.decode(inputs, mode=mode, seed=0, progress=progress, recorder=recorder)
    temperature, _ = fit_temperature(recorder)
    own = min(range(len(TEMPERATURE_GRID)), key=lambda i: abs(TEMPERATURE_GRID[i] - 1.0))
    fitted = TEMPERATURE_GRID.index(temperature)
    report = {"reliability_uncalibrated": reliability(recorder.pit_lo[own], recorder.pit_hi[own]),
              "reliability_calibrated": reliability(recorder.pit_lo[fitted], recorder.pit_hi[fitted])}
    return Calibration(temperature, where, len(inputs), mode), report


def _dev_split(hparams: Any, problem: str, data_dir: Any) -> tuple[Any, str]:
    """((inputs, targets) of the first dev tiles in ``data_dir``, "") or (None, why not)."""
    if not data_dir or not os.path.isdir(os.fspath(data_dir)):
        return None, f"the run's dev split ({data_dir or 'no data_dir in its hparams'}) is not readable here"
    from allen_sr.decoding.examples import read_examples
    from allen_sr.errors import MissingInputError

    try:
        return read_examples(problem, data_dir, FIT_TILES, hparams, split="dev"), ""
    except MissingInputError:
        return None, f"no dev split of {problem} in {data_dir}"
    except (ValueError, OSError) as exc:  # t2t/tf-slim say "No data files found in ..." this way
        return None, f"no readable dev split in {data_dir} ({str(exc).splitlines()[0]})"


def run_calibration(decoder: Any, hparams: Any, problem: str, checkpoint: str, mode: str,
                    progress: bool = False, log: Any = None,
                    data_dir: str | os.PathLike[str] | None = None) -> Calibration:
    """The stored calibration of ``checkpoint`` in ``mode``, or one fitted now on its run's dev
    split (else on ``data_dir``'s, the dataset `decode` reads) and stored; the model's own
    distributions (temperature 1, said so) when no dev split is readable."""
    mode = calibration_mode(mode, decoder)
    tta = bool(getattr(decoder, "tta", False))
    found = stored_calibration(checkpoint, mode, tta)
    if found is not None:
        return found
    recorded = getattr(hparams, "data_dir", None) or recorded_data_dir(Path(checkpoint).parent)
    examples, why = _dev_split(hparams, problem, recorded)
    fit_dir = recorded
    if examples is None and data_dir is not None and os.fspath(data_dir) != os.fspath(recorded or ""):
        examples, also = _dev_split(hparams, problem, data_dir)
        why, fit_dir = f"{why}; {also}" if examples is None else why, data_dir
    if examples is None:  # an entry written before entries named their decode_tta and checkpoint: kept
        legacy = _by_mode(_read(checkpoint), checkpoint).get(_key(mode, tta))
        old = parse_calibration(legacy, mode) if isinstance(legacy, dict) and "tta" not in legacy else None
        return old or Calibration(1.0, f"not fitted: {why}")
    inputs, targets = examples
    if log is not None:
        log(f"fitting the uncertainty calibration on {count(len(inputs), 'dev tile')} of {fit_dir} "
            "(once per checkpoint and decoding mode)")
    where = fit_dir if "://" in os.fspath(fit_dir) else os.path.abspath(fit_dir)  # as found from here
    calibration, report = fit_calibration(decoder, inputs, targets, mode, fit_where(problem, where), progress)
    entries = _read(checkpoint)
    entries[Path(checkpoint).name] = {**_by_mode(entries, checkpoint), _key(mode, tta): {
        **calibration.as_dict(), **report, "tta": tta, "checkpoint_sha256": checkpoint_fingerprint(checkpoint)}}
    try:
        write_json_atomic(entries, _file(checkpoint))
    except OSError:
        pass  # a read-only run folder: fitted again next time
    return calibration
