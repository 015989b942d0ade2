"""Resumable tiled prediction: finished output rows kept on disk until the output is written.

While `allen-sr upscale` runs, every band of output rows that is final is also saved
in a hidden folder next to the output (``.<name>.resume/``), beside a ``key.json`` naming what
decides those rows: the input file (path, size, modification time), the level and region, the
model's checkpoint (path and modification time), the tiling and the decoding options. A rerun of
the same command after an interruption (Ctrl-C, SIGKILL, a full disk) reads those rows back and
predicts only the rest; a rerun with anything in the key changed starts afresh. The folder is
removed once the output is complete. Each band is written under a temporary name and renamed, so
a kill while saving loses at most that band; one a machine crash damaged is found by its CRC when
the run resumes, and it and the bands after it are predicted again. Bands are the raw uint8 rows, their CRC-32 in the
name: LZ4 saved only a quarter of the bytes of an upscaled tissue image (0.74 of them) for 0.65
CPU-s per 100 output MP, 5% of a whole run on 2 cores (zstd and zlib cost more still); this copy
is deleted at the end, so only its time counts. It takes as much disk as the uncompressed output
(3 bytes per RGB pixel) while the run lasts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from allen_sr.fileio import atomic_write_bytes, atomic_write_text
from allen_sr.errors import InvalidInputError

__all__ = ["RowStore", "file_stamp", "weights_digest"]

BAND = re.compile(r"^rows-(\d{9})-(\d{9})-([0-9a-f]{8})\.u8$")  # first row, stop, CRC-32


def file_stamp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a file's content cheaply: its absolute path, size and modification time."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def weights_digest(weights: str | os.PathLike[str]) -> str:
    """The sha256 of a model's weights as stored, the same on every machine: an export folder's
    files (its model card aside), or a checkpoint's index, which holds the CRC-32C of every tensor."""
    path = Path(weights)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "MODEL_CARD.md")
    else:
        files = [Path(f"{weights}.index")]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class RowStore:
    """The finished output rows of one upscale run, by band, in ``.<out name>.resume/``."""

    def __init__(self, out: Path, key: dict[str, Any], width: int, channels: int) -> None:
        self.folder = out.with_name(f".{out.name}.resume")
        self.key = json.loads(json.dumps(key))  # as it reads back from key.json
        self.row_bytes = width * channels
        self.width, self.channels = width, channels
        self.bands: list[tuple[int, int, int, Path]] = []  # first row, stop, CRC-32, file

    def open(self) -> int:
        """Rows 0..N-1 saved by an earlier run with the same key: returns N (0 if none).

        A folder of another run (or with an unreadable key) is removed, and so is a damaged band (its
        size or CRC-32 wrong: a machine crash while saving) with every band after it; the rows
        before it are kept. The folder is made again when this run saves its first band.
        """
        try:
            same = json.loads((self.folder / "key.json").read_text()) == self.key
        except (OSError, ValueError):
            same = False
        if not same:
            self.discard()
            return 0
        found = {}
        for p in self.folder.iterdir():
            m = BAND.match(p.name)
            if m:
                found[int(m.group(1))] = (int(m.group(2)), int(m.group(3), 16), p)
        done = 0
        while done in found and found[done][0] > done and self._intact(done, *found[done]):
            stop, crc, path = found.pop(done)
            self.bands.append((done, stop, crc, path))
            done = stop
        for _, _, path in found.values():  # damaged, or after a gap or a damaged band: not usable
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return done

    def _intact(self, start: int, stop: int, crc: int, path: Path) -> bool:
        try:
            data = path.read_bytes()
        except OSError:
            return False
        return len(data) == (stop - start) * self.row_bytes and zlib.crc32(data) == crc

    def replay(self) -> Iterator[np.ndarray]:
        """The saved rows, band by band (a damaged band raises ValueError naming the folder)."""
        for start, stop, crc, path in self.bands:
            data = path.read_bytes()
            if len(data) != (stop - start) * self.row_bytes or zlib.crc32(data) != crc:  # damaged since open()
                raise InvalidInputError(f"{path}: a saved band of an earlier run is damaged; delete "
                                        f"{self.folder} (or pass --restart) and run again")
            yield np.frombuffer(data, np.uint8).reshape(stop - start, self.width, self.channels)

    def record(self, bands: Iterable[np.ndarray], first_row: int) -> Iterator[np.ndarray]:
        """Pass ``bands`` (rows from ``first_row`` on) through, saving each before it is used."""
        y = first_row
        for band in bands:
            if not (self.folder / "key.json").exists():  # the first band of a run from the top
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(json.dumps(self.key, indent=1, sort_keys=True), self.folder / "key.json")
            stop = y + band.shape[0]
            data = memoryview(np.ascontiguousarray(band)).cast("B")  # the bytes as they are, no copy
            crc = zlib.crc32(data)
            path = self.folder / f"rows-{y:09d}-{stop:09d}-{crc:08x}.u8"
            # No fsync: a band lost to a machine crash (empty, or zeros) fails its CRC in replay().
            atomic_write_bytes(data, path, durable=False)
            self.bands.append((y, stop, crc, path))  # replay() then reads every row, saved or recorded
            y = stop
            yield band

    def discard(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
