"""What `upscale --uncertainty` writes and says: the map as the model predicts it (no cap), the
refusals of --check and of modes the conv model has not, and the heat map's colour bar.

The real shipped models (conv-fast, conv-probabilistic), real files, the command in-process or in a
subprocess that is killed."""
import numpy as np
import pytest
from PIL import Image

from allen_sr.api import Upscaler
from allen_sr.commands import upscale
from allen_sr.errors import InvalidInputError
from allen_sr.evaluation.uncertainty_pictures import heat_map_with_bar


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


def test_the_bar_top_of_a_low_spread_map_says_it_is_the_floor():
    """A map of 0.09-0.26 grey levels was labelled "1+" and captioned "bar top: 99th percentile";
    1.4 was labelled "1"."""
    from allen_sr.evaluation.uncertainty_pictures import bar_top, level_text

    low = np.linspace(0.09, 0.26, 64 * 64).reshape(64, 64)
    top, label, note = bar_top(low)
    assert top == 1.0 and label == "1" and note == "bar top: 1, the floor (99th percentile 0.26)"
    top, label, note = bar_top(np.linspace(0, 1.4, 1000))
    assert label == f"{level_text(top)}+" and label.startswith("1.4") and note == "bar top: 99th percentile"
    assert [level_text(v) for v in (0.0042, 0.26, 1.0, 9.5, 37.2, 255.0)] == ["0.0042", "0.26", "1", "9.5", "37",
                                                                                "255"]


def test_a_low_spread_maps_heat_map_is_captioned_with_its_floor(tmp_path):
    """The caption of a map below the floor is the longer one that gives its 99th percentile."""
    low = np.linspace(0.09, 0.26, 32 * 32).reshape(32, 32)
    pictures = [np.asarray(Image.open(heat_map_with_bar(values, tmp_path / f"{i}.png", label="sd")).convert("L"))
                for i, values in enumerate((low, low * 40))]
    inked = [np.flatnonzero((p[-16:] < 128).any(axis=0))[-1] for p in pictures]
    assert inked[0] > inked[1]  # "...the floor (99th percentile 0.26)" against "...99th percentile"


def test_a_mode_of_the_image_transformer_is_refused_in_the_probabilistic_conv_models_words(tmp_path, capsys):
    """conv-probabilistic --mode sample was refused because "it predicts one value per sub-pixel and
    sample draws from a distribution": this model predicts a distribution (a Laplace scale)."""
    src = tmp_path / "small.png"
    Image.fromarray(noise(16, 16)).save(src)
    for mode in ("sample", "mean_bicubic"):
        code, err = error_of(capsys, ["--pretrained", "conv-probabilistic", f"--image={src}", f"--mode={mode}",
                                      "--uncertainty", f"--out={tmp_path / 'o.png'}", "--no_progress"])
        assert code == 2 and len(err.splitlines()) == 1, err  # the mode first: no calibration warning before it
        assert f"--mode {mode} is not available" in err and "Image Transformer modes" in err, err
        assert "Laplace scale" in err and "draws from a distribution" not in err, err
    code, err = error_of(capsys, ["--pretrained", "conv-fast", f"--image={src}", "--mode=sample",
                                  f"--out={tmp_path / 'o.png'}", "--no_progress"])
    assert code == 2 and "it predicts one value per sub-pixel and sample draws from a distribution" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]
    with pytest.raises(InvalidInputError, match="Laplace scale"):
        Upscaler.open("conv-probabilistic", mode="sample")
