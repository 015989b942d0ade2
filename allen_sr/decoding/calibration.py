"""One softmax temperature that makes the Image Transformer's reported distributions calibrated,
fitted on the training data's dev split only, kept beside the checkpoint.

`allen-sr decode/evaluate/upscale --uncertainty` on a training run reads
``<run>/uncertainty_calibration.json`` (one entry per checkpoint and decoding mode: each mode
conditions the distributions on other values); when the run's newest checkpoint has none for the
mode, it is fitted once, on first use, from the run's own dev split (the data folder t2t-trainer
recorded in the run's hparams), and written there. `allen-sr export` copies it
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

import json
import os
from pathlib import Path
from typing import Any

from allen_sr.decoding.uncertainty import TEMPERATURE_GRID, Calibration, Recorder, fit_temperature, reliability
from allen_sr.errors import count
from allen_sr.fileio import write_json_atomic

CALIBRATION_NAME = "uncertainty_calibration.json"
FIT_TILES = 64

__all__ = ["CALIBRATION_NAME", "FIT_TILES", "stored_calibration", "fit_calibration", "run_calibration",
           "fitted_tiles"]


def _file(checkpoint: str) -> Path:
    return Path(checkpoint).parent / CALIBRATION_NAME


def _read(checkpoint: str) -> dict[str, Any]:
    """The run's calibration file: {checkpoint name: {decoding mode: entry}}; {} if unreadable."""
    try:
        return json.loads(_file(checkpoint).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _by_mode(entries: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """{decoding mode: entry} of ``checkpoint`` in ``entries`` (a file of :func:`_read`)."""
    found = entries.get(Path(checkpoint).name)
    # A file written before calibrations were kept per mode holds one flat entry: fitted again.
    return found if isinstance(found, dict) and "temperature" not in found else {}


def stored_calibration(checkpoint: str, mode: str) -> Calibration | None:
    """The calibration fitted for ``checkpoint`` (a prefix) decoded in ``mode``, or None."""
    entry = _by_mode(_read(checkpoint), checkpoint).get(mode)
    if not entry:
        return None
    return Calibration(float(entry["temperature"]), str(entry["fitted_on"]), int(entry["tiles"]), mode)


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


def run_calibration(decoder: Any, hparams: Any, problem: str, checkpoint: str, mode: str,
                    progress: bool = False, log: Any = None) -> Calibration:
    """The stored calibration of ``checkpoint`` in ``mode``, or one fitted now on its run's dev
    split and stored; the model's own distributions (temperature 1, said so) when the dev split is
    not readable."""
    found = stored_calibration(checkpoint, mode)
    if found is not None:
        return found
    data_dir = getattr(hparams, "data_dir", None) or recorded_data_dir(Path(checkpoint).parent)
    if not data_dir or not os.path.isdir(os.fspath(data_dir)):
        return Calibration(1.0, f"not fitted: the run's dev split ({data_dir or 'no data_dir in its hparams'}) "
                                "is not readable here")
    from allen_sr.decoding.examples import read_examples

    try:
        inputs, targets = read_examples(problem, data_dir, FIT_TILES, hparams, split="dev")
    except (ValueError, OSError) as exc:  # t2t/tf-slim say "No data files found in ..." this way
        return Calibration(1.0, f"not fitted: no readable dev split in {data_dir} "
                                f"({str(exc).splitlines()[0]})")
    if log is not None:
        log(f"fitting the uncertainty calibration on {count(len(inputs), 'dev tile')} of {data_dir} "
            "(once per checkpoint and decoding mode)")
    where = data_dir if "://" in os.fspath(data_dir) else os.path.abspath(data_dir)  # as found from here
    calibration, report = fit_calibration(decoder, inputs, targets, mode, fit_where(problem, where), progress)
    entries = _read(checkpoint)
    entries[Path(checkpoint).name] = {**_by_mode(entries, checkpoint), mode: {**calibration.as_dict(), **report}}
    try:
        write_json_atomic(entries, _file(checkpoint))
    except OSError:
        pass  # a read-only run folder: fitted again next time
    return calibration
