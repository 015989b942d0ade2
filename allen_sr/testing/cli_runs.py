"""Run `allen-sr` in a subprocess with its output in a log file (benchmarks, `make pretrained`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_logged(args: list[str], log_path: str | os.PathLike[str], append: bool = False) -> None:
    """Run ``allen-sr ARGS`` from the repository with stdout and stderr into ``log_path``
    (appended to with ``append``); RuntimeError naming the log when it fails."""
    with open(log_path, "a" if append else "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "allen_sr.cli", *args], stdout=handle,
                              stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"allen-sr {args[0]} failed (exit {proc.returncode}); see {log_path}")
