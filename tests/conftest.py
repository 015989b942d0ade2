"""Shared fixtures: small real images made in the test, and the real dev images when present."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allen_stand_in import AllenStandIn
from shared_data import shared_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(REPO, "allen_sr", "sample_data")

# Test files by how long they take (seconds summed over their tests on 2 cores, `--durations=0`,
# 2026-12-08), the longest first. `make test` hands whole files to its two workers in collection
# order (--dist loadfile --no-loadscope-reorder), so the long files start first and the short ones
# fill the end: ordered by name, a long file started last and the other worker sat idle for minutes.
LONGEST_FIRST = {
    "test_decoding_2d.py": 510, "test_training.py": 484, "test_t2t_tools.py": 478, "test_fine_tune.py": 365,
    "test_decoding.py": 283, "test_launch_tune.py": 279, "test_pretrained.py": 209, "test_t2t_compat.py": 202,
    "test_demo.py": 198, "test_upscale_dask.py": 181, "test_uncertainty.py": 159, "test_conv_sr.py": 157,
    "test_export.py": 143, "test_launch.py": 118, "test_upscale_folder.py": 81, "test_upscale.py": 77,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long test files first (LONGEST_FIRST); the rest keep their order, after them."""
    items.sort(key=lambda item: -LONGEST_FIRST.get(item.path.name, 0))


def tissue_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A brightfield-like RGB image: white glass with a stained, textured blob in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 < 1
    img = np.full((height, width, 3), 245, np.float64)
    stain = np.stack([120 + 40 * np.sin(xx / 3.0), 60 + 30 * np.cos(yy / 4.0), 150 + 0 * xx], -1)
    img[blob] = stain[blob]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def folder_listing(*outputs: str) -> list[str]:
    """What a folder run leaves in its --out_dir for ``outputs``: each with the hidden record of
    what made it (``.NAME.allen-sr.json``), sorted."""
    return sorted(list(outputs) + [f".{name}.allen-sr.json" for name in outputs])


def kill_upscale_once_rows_are_saved(argv: list[str], saved: Path, timeout: float = 120) -> None:
    """Run `allen-sr upscale ARGV` in a subprocess and SIGKILL it as soon as its resume folder
    ``saved`` holds a band of rows (an interruption mid-image); AssertionError if it ended first."""
    import signal
    import subprocess
    import sys
    import time

    code = f"import sys; from allen_sr.commands.upscale import upscale_main; sys.exit(upscale_main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not list(saved.glob("rows-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def save_tissue_images(folder, count: int = 10, height: int = 192, width: int = 256):
    """Create `folder` with slide_0.png .. slide_<count-1>.png made by tissue_image; returns it.

    By the hash split slide_9 is dev at 10% and 20%.
    """
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(tissue_image(height, width, seed=k)).save(folder / f"slide_{k}.png")
    return folder


class FullDisk:
    """A real temp file on a disk that is full: writing fails, and so does close()'s flush (wraps
    allen_sr.data.download.create_temp_file's answer)."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.handle.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.fixture
def image_folder(tmp_path):
    """A folder of 10 synthetic tissue images (save_tissue_images)."""
    return save_tissue_images(tmp_path / "images")


@pytest.fixture
def dev_images():
    """The real dev slides in ../shared/data/dev-images (the test is skipped without them)."""
    return str(shared_path("data", "dev-images"))


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not intercept requests meant for the local stand-in.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    """A running Allen API stand-in on 127.0.0.1 (tests/allen_stand_in.py)."""
    with AllenStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory) -> str:
    """The data folder of `img2img_local_dim8to32` made by its real datagen from the shipped sample
    images (train and dev split, statistics): what a run's calibration reads as its dev split."""
    from tensor2tensor.utils import registry

    from allen_sr.t2t.names import register_all

    register_all()
    out = tmp_path_factory.mktemp("data")
    registry.problem("img2img_local_dim8to32").generate_data(str(out), SAMPLE_IMAGES)
    return str(out)


@pytest.fixture(scope="module")
def py312():
    """The python of a TF-free venv (requirements/predict.txt + `pip install --no-deps .`, not
    editable) on Python 3.12; skipped where no python3.12 is found."""
    from allen_sr.testing.predict_venv import find_python, predict_venv

    python = find_python("3.12")
    if python is None:
        pytest.skip("no python3.12 on PATH or in ~/.pyenv/versions: the TF-free install test needs one")
    return predict_venv(python, REPO)


def run_in(python, *args: str):
    """Run ``python ARGS`` from / without the test's PYTHONPATH; the completed process (exit 0 asserted)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd="/", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out
