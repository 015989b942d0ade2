"""Many images with one model: `allen-sr upscale --images DIR|GLOB --out_dir DIR`.

Each input gets exactly one output in the output folder, under its own name (inputs whose type
cannot be written, such as .svs, become ``NAME.tif``). An output that exists is finished (outputs
appear only when complete) and is skipped on a rerun; an image interrupted half-way resumes from
its saved rows (`Upscaler.predict_file`). A hidden record beside each output
(``.NAME.allen-sr.json``) says what made it: outputs of another model are refused before any work
(a folder of one model's outputs is not silently completed by another), and an output whose input
changed since (its size or modification time), or was enlarged at another --level or --region, is
enlarged again. An input that cannot be read is named and skipped while the others go on;
:class:`FolderReport` says what happened to each. The output folder may be a URL
(``gs://bucket/out``: `allen_sr.api.remote`).
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from allen_sr.api.outputs import compare_path, uncertainty_paths
from allen_sr.api.remote import RemoteFile, in_folder, is_url, make_parent, predict_to, write_whole
from allen_sr.data.images import ImageSkipped, file_or_broken_link, list_images
from allen_sr.errors import UserError, first_line
from allen_sr.inference import writers

if TYPE_CHECKING:  # pragma: no cover - typing only
    from allen_sr.api.upscaler import Upscaler

__all__ = ["FolderReport", "collect_images", "plan_outputs", "plan_states", "enlarge", "output_state",
           "upscale_folder", "INPUT_ERRORS"]

# What a bad input file raises (its message names the file); anything else is a bug and stops the run.
INPUT_ERRORS = (UserError, ImageSkipped, OSError, ValueError)
RECORD = ".allen-sr.json"  # the record of what made an output: .NAME.allen-sr.json beside it


def collect_images(spec: str) -> list[str]:
    """A folder's images or a glob pattern's files, sorted (``~`` expanded in both, as a quoted
    argument reaches us); UserError when nothing matches."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        paths = list_images(path)
    elif os.path.isfile(path):  # named as it is: '[1]' in a file's path is no glob character class
        paths = [path]
    else:
        paths = sorted(p for p in glob.glob(path) if file_or_broken_link(p))
    if not paths:
        raise UserError(f"images {spec!r}: no image files there; pass a folder or a glob like 'slides/*.png'")
    return paths


def output_name(src: str) -> str:
    """The output's file name for input ``src``: the same, or ``STEM.tif`` for unwritable types."""
    name = os.path.basename(src)
    try:
        writers.output_kind(name)
        return name
    except writers.OutputError:
        return os.path.splitext(name)[0] + ".tif"


Output = Path | RemoteFile


def finished(dst: Output, uncertainty: bool = False) -> bool:
    """Whether an earlier run finished output ``dst``: a non-empty file (outputs are written whole
    under their name, never empty), and with ``uncertainty`` its two maps beside it too (an image
    enlarged without them, or stopped between the output and its maps, is done again). A folder or
    an empty file there is not a finished output."""
    if uncertainty and not all(finished(extra) for extra in beside(dst, uncertainty_paths(Path(dst.name)))):
        return False
    if isinstance(dst, Path):
        return dst.is_file() and dst.stat().st_size > 0
    return dst.finished()


def beside(dst: Output, names: Iterable[Path]) -> list[Output]:
    """The files of ``names`` in the folder of output ``dst`` (local, or at the same URL)."""
    return [dst.with_name(n.name) for n in names]


def record_file(dst: Output) -> Output:
    """The hidden record beside output ``dst`` of what made it."""
    return beside(dst, [Path(f".{dst.name}{RECORD}")])[0]


def wanted(made_by: dict[str, Any], src: str, file_options: dict[str, Any]) -> dict[str, Any]:
    """The record of the output this run makes of ``src``: the model (`Upscaler.made_by`), the
    input's name, size and modification time, and the level and region enlarged."""
    from allen_sr.api.upscaler import as_region

    st = os.stat(src)
    region = as_region(file_options.get("region"))
    return {"model": made_by, "input": {"name": os.path.basename(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
            "level": file_options.get("level", 0), "region": [region.left, region.top, region.width, region.height]}


def read_record(dst: Output) -> dict[str, Any] | None:
    """The record beside ``dst``; None where there is none or it cannot be read."""
    rec = record_file(dst)
    try:
        record = json.loads(rec.read_bytes())
    except (OSError, ValueError):  # none (FileNotFoundError), unreadable or not JSON
        return None
    return record if isinstance(record, dict) else None


def _model_part(made_by: Any) -> Any:
    """A record's model without its ``source`` (a path may differ between machines). A record
    written before the decoder was described without its source says "MODEL pretrained NAME" for
    a shipped conv model opened by name: it ran as any export folder does, "MODEL onnx"."""
    if not isinstance(made_by, dict):
        return made_by
    part = {k: v for k, v in made_by.items() if k != "source"}
    if isinstance(part.get("decoder"), str):
        part["decoder"] = re.sub(r"^(\S+) pretrained \S+", r"\1 onnx", part["decoder"])
    return part


def output_state(dst: Output, uncertainty: bool, want: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """(state, record) of output ``dst`` for a run that would record ``want``: ``todo`` (not
    finished), ``done``, ``changed`` (made from another version of its input, or at another level
    or region: enlarge it again) or ``other`` (made by another model). A finished output without a
    record (written before records were kept, or stopped between the output and its record) is done."""
    if not finished(dst, uncertainty):
        return "todo", None
    record = read_record(dst)
    if record is None:
        return "done", None
    if _model_part(record.get("model")) != _model_part(want["model"]):
        return "other", record
    same = all(record.get(key) == want[key] for key in ("input", "level", "region"))
    return ("done" if same else "changed"), record


def plan_states(pairs: list[tuple[str, Output]], made_by: dict[str, Any],
                file_options: dict[str, Any]) -> dict[str, str]:
    """The state of every output (:func:`output_state`), by ``str(dst)``; UserError, before any
    work, if another model made some of them."""
    uncertainty = file_options.get("uncertainty", False)
    states, others = {}, []
    for src, dst in pairs:
        states[str(dst)], record = output_state(dst, uncertainty, wanted(made_by, src, file_options))
        if states[str(dst)] == "other":
            others.append((dst, record or {}))
    if others:
        names = ", ".join(dst.name for dst, _ in others[:3]) + (", ..." if len(others) > 3 else "")
        dst, record = others[0]
        model = record.get("model")
        theirs = model.get("source", "?") if isinstance(model, dict) else "?"
        raise UserError(f"output folder {dst.parent}: {len(others)} of its outputs ({names}) were made by another "
                        f"model ({theirs}) than this run's ({made_by['source']}); choose another --out_dir for "
                        "this model, or remove those outputs to enlarge their inputs again")
    return states


def enlarge(upscaler: "Upscaler", src: str, dst: Output, **kwargs: Any) -> dict[str, Any]:
    """:func:`predict_to` with the output's record: an old record goes first, the new one is
    written once the output is whole."""
    record = wanted(upscaler.made_by, src, kwargs)
    rec = record_file(dst)
    rec.unlink(missing_ok=True)
    summary = predict_to(upscaler, src, dst, **kwargs)
    write_whole((json.dumps(record, indent=1) + "\n").encode(), rec)
    return summary


def _where(file: Output) -> str:
    """What names the file ``file`` is, for comparing files (a file:// URL is its local file)."""
    local = file if isinstance(file, Path) else file.local_path
    return str(local.resolve()) if local is not None else str(file)


def _clash(src: str, what: str, other: str, theirs: str, file: Output) -> UserError:
    """Two inputs' files at one name, in the words the user needs."""
    leave = ", or leave --preview_dir out" if "compare picture" in (what, theirs) else ""
    if what == theirs == "output":
        return UserError(f"{src} and {other} would both be written as {file}; rename one")
    if what == theirs:  # an input has one compare picture and two maps
        kind = "uncertainty maps" if what == "uncertainty map" else what
        return UserError(f"{src} and {other} would both have their {kind} at {file}; rename one{leave}")
    return UserError(f"{src}'s {what} and {other}'s {theirs} would both be {file}; rename one{leave}")


def plan_outputs(inputs: list[str], out_dir: str | os.PathLike[str],
                 preview_dir: str | os.PathLike[str] | None = None,
                 uncertainty: bool = False) -> list[tuple[str, Output]]:
    """(input, output) per input (a RemoteFile when ``out_dir`` is a URL); UserError if two
    inputs would write one file (an output, a compare picture in ``preview_dir``, or with
    ``uncertainty`` a map beside the outputs: x.uncertainty.png's output is x.png's heat map) or a
    file would replace an input."""
    remote = is_url(out_dir)
    pairs: list[tuple[str, Output]] = []
    files: dict[str, tuple[str, str]] = {}  # every file the run writes -> (its input, what it is)
    sources = {str(Path(src).resolve()): src for src in inputs}
    for src in inputs:
        name = output_name(src)
        dst = in_folder(os.fspath(out_dir), name) if remote else Path(out_dir) / name
        mine: list[tuple[Output, str]] = [(dst, "output")]
        if uncertainty:
            mine += [(extra, "uncertainty map") for extra in beside(dst, uncertainty_paths(Path(name)))]
        if preview_dir is not None:
            mine.append((Path(preview_dir) / compare_path(Path(name)).name, "compare picture"))
        for file, what in mine:
            where = _where(file)
            if sources.get(where) == src:
                raise UserError(f"output folder {out_dir} holds the input {src}: the output would replace it; "
                                "choose another output folder")
            if where in sources:
                raise UserError(f"{src}'s {what} {file} would replace the input {sources[where]}; "
                                "choose another output folder")
            if where in files:
                raise _clash(src, what, *files[where], file)
        files.update((_where(file), (src, what)) for file, what in mine)
        pairs.append((src, dst))
    return pairs


def failure(src: str, why: str) -> str:
    """``src: why``, once: most reasons already start with the file's name."""
    return why if why.startswith(src) else f"{src}: {why}"


@dataclass
class FolderReport:
    """What a folder run did: outputs written and skipped, inputs that failed (with why)."""

    written: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)  # of ``written``: replaced, their input or region changed
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    warned: dict[str, list[str]] = field(default_factory=dict)  # input -> its input check's warnings

    def summary(self) -> str:
        again = f" ({len(self.redone)} again: input, --level or --region changed)" if self.redone else ""
        line = (f"{len(self.written)} written{again}, {len(self.skipped)} already done (skipped), "
                f"{len(self.failed)} failed in {self.seconds:.1f} s")
        if self.warned:
            line += f"; {len(self.warned)} beyond the inputs the model trained on (warnings below)"
        return "\n".join([line] + [f"  failed: {failure(src, why)}" for src, why in self.failed.items()]
                         + [f"  warning: {text}" for texts in self.warned.values() for text in texts])


def upscale_folder(upscaler: "Upscaler", pairs: list[tuple[str, Output]], progress: bool = True,
                   preview_dir: str | os.PathLike[str] | None = None, log: Callable[[str], None] | None = None,
                   **file_options: Any) -> FolderReport:
    """Enlarge every (input, output) of ``pairs`` not yet done; ``file_options`` go to
    :meth:`Upscaler.predict_file` (region, level, restart, compression, ...). With ``preview_dir``
    each image's compare picture goes there (``NAME.compare.png``), never into the output folder."""
    from tqdm import tqdm

    report = FolderReport()
    start = time.perf_counter()
    states = plan_states(pairs, upscaler.made_by, file_options)
    if pairs:
        make_parent(pairs[0][1])
    preview: dict[str, Any] = {}
    if preview_dir is not None:
        writers.make_folder(Path(preview_dir), "the preview folder")
        preview = {"preview_size": upscaler.options.preview_size, "preview_to": Path(preview_dir)}
        for _, dst in pairs:  # finished without the compare picture asked for now: made again, with it
            compare = Path(preview_dir) / compare_path(Path(dst.name)).name
            if states[str(dst)] == "done" and upscaler.options.preview_size and not compare.is_file():
                states[str(dst)] = "no preview"
    bar = tqdm(pairs, desc="images", unit="image", disable=not progress)
    for src, dst in bar:
        bar.set_postfix_str(os.path.basename(src))
        if states[str(dst)] == "done":
            report.skipped.append(str(dst))
            continue
        if states[str(dst)] == "changed" and log:
            log(f"enlarging {src} again: it, --level or --region changed since {dst} was made")
        if states[str(dst)] == "no preview" and log:
            log(f"enlarging {src} again: {dst} has no compare picture in {preview_dir}")
        try:
            summary = enlarge(upscaler, src, dst, progress=False, log=log, **preview, **file_options)
        except INPUT_ERRORS as exc:
            report.failed[src] = first_line(exc)
            if log:
                log(f"skipped {failure(src, report.failed[src])}")
            continue
        report.written.append(str(dst))
        if states[str(dst)] == "changed":
            report.redone.append(str(dst))
        if summary["input_check"]["warnings"]:
            report.warned[src] = summary["input_check"]["warnings"]
    report.seconds = time.perf_counter() - start
    return report
