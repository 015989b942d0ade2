"""Checking images before enlarging them: `allen-sr upscale --check`.

Reads each image's JPEG quality from its file and estimates its noise
(`allen_sr.inference.input_check`), and compares both with the `degradation` the model recorded,
without loading the model or writing an output: which of a folder of slides lie beyond what the
model trained on is known before hours go into enlarging them. A file that cannot be read is
named and the others go on. :meth:`CheckReport.write` keeps the table as CSV or JSON.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from allen_sr.api.folders import INPUT_ERRORS, failure
from allen_sr.errors import InvalidInputError, count, first_line
from allen_sr.fileio import atomic_write_text, write_json_atomic
from allen_sr.inference import writers
from allen_sr.inference.input_check import InputCheck, check_file

__all__ = ["CheckReport", "check_files", "check_report_path", "REPORT_TYPES"]

REPORT_TYPES = (".csv", ".json")
COLUMNS = ("image", "jpeg_quality", "noise", "within_training", "warnings")


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a report file: .csv or .json, in a folder that can be created; InvalidInputError
    naming it otherwise (checked before any image is read)."""
    path = Path(path)
    if path.suffix.lower() not in REPORT_TYPES:
        raise InvalidInputError(f"--report {path}: give a .csv or .json file name")
    if path.is_dir():
        raise InvalidInputError(f"--report {path} is a folder: give a .csv or .json file name")
    try:
        writers.check_writable(path)
    except writers.OutputError as exc:
        raise InvalidInputError(f"--report {path}: the folder {path.parent} is not writable; choose another") from exc
    return path


@dataclass
class CheckReport:
    """What the check found: one :class:`InputCheck` per readable image, and why the others failed."""

    model: str
    trained: str | None  # the model's recorded `degradation`; None: not recorded
    checked: list[InputCheck] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def beyond(self) -> list[InputCheck]:
        """The images with a warning: beyond the inputs the model trained on."""
        return [c for c in self.checked if c.warnings]

    def lines(self) -> list[str]:
        """One line per image (JPEG quality, estimated noise, verdict), its warnings, a total."""
        out = [f"{self.model} trained on: "
               + (self.trained if self.trained is not None else "not recorded (numbers only, no verdict)")]
        for c in self.checked:
            jpeg = f"JPEG {c.jpeg_quality}" if c.jpeg_quality is not None else "not JPEG"
            noise = f"noise ~{c.noise:.1f}" if c.noise is not None else "noise unknown"
            verdict = "beyond" if c.warnings else ("within" if self.trained is not None else "-")
            out.append(f"  {verdict:<7} {jpeg:<9} {noise:<16} {c.name}")
            out += [f"    warning: {text}" for text in c.warnings]
        out += [f"  failed: {failure(src, why)}" for src, why in self.failed.items()]
        out.append(f"{len(self.beyond)} of {count(len(self.checked) + len(self.failed), 'image')} beyond the inputs "
                   f"the model trained on, {len(self.failed)} unreadable")
        return out

    def rows(self) -> list[dict[str, object]]:
        """The report's table: one row per image, failed ones with their reason as the warning."""
        rows: list[dict[str, object]] = [
            {"image": c.name, "jpeg_quality": c.jpeg_quality,
             "noise": None if c.noise is None else round(c.noise, 2),
             "within_training": None if self.trained is None else not c.warnings,
             "warnings": list(c.warnings)} for c in self.checked]
        rows += [{"image": src, "jpeg_quality": None, "noise": None, "within_training": None,
                  "warnings": [f"unreadable: {why}"]} for src, why in self.failed.items()]
        return rows

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path`` (.csv: one row per image, warnings joined by " | "; .json:
        the rows with the model and its recorded degradation), atomically."""
        path = check_report_path(path)
        if path.suffix.lower() == ".json":
            return write_json_atomic({"model": self.model, "trained_degradation": self.trained,
                                      "images": self.rows()}, path)
        text = io.StringIO()
        table = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        table.writeheader()
        for row in self.rows():
            table.writerow({**{k: "" if v is None else v for k, v in row.items()},
                            "warnings": " | ".join(row["warnings"])})  # type: ignore[arg-type]
        return atomic_write_text(text.getvalue(), path)


def check_files(paths: list[str], trained: str | None, model: str, level: int = 0,
                region: tuple[int, int, int | None, int | None] = (0, 0, None, None),
                progress: bool = True, min_side: int = 1) -> CheckReport:
    """Check every image of ``paths`` (at pyramid ``level``; the ``region`` (left, top, width,
    height) of each, as `upscale` would enlarge it) against ``trained``, the model's recorded
    `degradation`; ``model`` names it in the report. An image smaller than ``min_side`` px (the
    model's smallest input) fails, as `upscale` would refuse it."""
    from tqdm import tqdm

    report = CheckReport(model, trained)
    for path in tqdm(paths, desc="checking", unit="image", disable=not progress or len(paths) < 2):
        try:
            report.checked.append(check_file(path, trained, level, region, min_side))
        except INPUT_ERRORS as exc:
            report.failed[path] = first_line(exc)
    return report
