"""What `upscale --uncertainty` writes and says: the map as the model predicts it (no cap), the
refusals of --check and of modes the conv model has not, and the heat map's colour bar.

The real shipped models (conv-fast, conv-probabilistic), real files, the command in-process or in a
subprocess that is killed."""
import numpy as np
import pytest
from PIL import Image

from allen_sr.commands import upscale


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def error_of(capsys, flags):
    code = upscale.upscale_main(flags)
    return code, capsys.readouterr().err.strip()


def test_check_refuses_uncertainty_of_a_model_without_a_distribution(tmp_path, capsys):
    """--check --uncertainty with conv-fast said nothing of --uncertainty and exited 0; the run then failed."""
    src = tmp_path / "small.png"
    Image.fromarray(noise(16, 16)).save(src)
    code, err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--uncertainty", "--check",
                                  "--no_progress"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "conv-fast predicts one value per sub-pixel, not a distribution" in err and "conv-probabilistic" in err
    real, real_err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--uncertainty",
                                       f"--out={tmp_path / 'o.png'}", "--no_progress"])
    assert real == 2 and real_err.split(" predicts ")[1] == err.split(" predicts ")[1]  # what the run says
    for model in ("conv-probabilistic", "transformer-tiny"):
        assert upscale.upscale_main(["--pretrained", model, f"--image={src}", "--uncertainty", "--check",
                                     "--no_progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]
