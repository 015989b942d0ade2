"""A TF-free virtual environment (requirements/predict.txt) on another Python, for tests.

:func:`find_python` is the one place that looks for an interpreter of a given version: on PATH
(``python3.12``), then in pyenv's versions folder. :func:`predict_venv` builds the environment
once per Python version and requirements file into a cache folder (pip, from the package index)
and installs this checkout into it (``pip install --no-deps``, as the README tells users).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["find_python", "predict_venv", "cache_root"]


def find_python(version: str) -> str | None:
    """Path of a ``python<version>`` (e.g. "3.12"): PATH first, then ~/.pyenv/versions/<version>.*."""
    def ok(path: str) -> bool:
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and out.stdout.strip() == version

    found = shutil.which(f"python{version}")
    if found and ok(found):
        return found
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for folder in sorted(root.glob(f"{version}.*"), reverse=True):
        candidate = folder / "bin" / f"python{version}"
        if candidate.is_file() and ok(str(candidate)):
            return str(candidate)
    return None


def cache_root() -> Path:
    """Where built environments are kept (ALLEN_SR_CACHE, else ~/.cache/allen-sr)."""
    return Path(os.environ.get("ALLEN_SR_CACHE", Path.home() / ".cache" / "allen-sr"))


def run(cmd: list[str], what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{tail}")


def predict_venv(python: str, repo: str | os.PathLike[str]) -> Path:
    """A venv of ``python`` with requirements/predict.txt and this checkout; returns its python.

    The environment is kept under :func:`cache_root`, keyed by the Python version and the
    requirements file, and built in a temporary folder first, so a failed build leaves none.
    allen-sr itself is reinstalled on every call (the checkout changes between runs).
    """
    repo = Path(repo)
    requirements = repo / "requirements" / "predict.txt"
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(requirements.read_bytes() + version.encode()).hexdigest()[:12]
    venv = cache_root() / f"predict-py{version}-{key}"
    bin_python = venv / "bin" / "python"
    if not bin_python.exists():
        tmp = venv.with_name(f".{venv.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        run([python, "-m", "venv", str(tmp)], "creating the venv")
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        run(pip + ["install", "-r", str(requirements)], "installing requirements/predict.txt")
        # Renamed into place: a venv works from its new folder through `bin/python` (the
        # requirements' own scripts keep the old path in their #! line; none is used here).
        os.replace(tmp, venv)
    pip = [str(bin_python), "-m", "pip", "--disable-pip-version-check", "-q"]
    # setuptools builds in the checkout's build/ and packs whatever an earlier build left in
    # build/lib: a file since dropped from the package data would still be installed.
    shutil.rmtree(repo / "build", ignore_errors=True)
    run(pip + ["install", "--no-deps", "--force-reinstall", str(repo)], "installing allen-sr")
    return bin_python


if __name__ == "__main__":  # pragma: no cover - manual use: python -m allen_sr.testing.predict_venv 3.12
    found = find_python(sys.argv[1] if len(sys.argv) > 1 else "3.12")
    print(predict_venv(found, Path(__file__).resolve().parents[2]) if found else "not found")
