"""The degradation spec grammar and the fixed degradations `allen-sr evaluate --degrade` applies
(allen_sr.data.degrade, NumPy and Pillow only), each measured on known images."""
import io

import numpy as np
import pytest
from PIL import Image

from allen_sr.data import degrade, tiles
from conftest import tissue_image


# --- the grammar ------------------------------------------------------------------------------

def test_training_spec_parses_ranges_shares_and_kernels():
    spec = degrade.parse_training("clean=0.25; hed=0.05; permute=0.5; blur=0:2@0.5; kernel=area|bicubic; "
                                  "noise=1:4; shot=3; jpeg=60:95@0.7")
    assert spec.clean == 0.25 and spec.hed == 0.05 and spec.permute == 0.5
    assert spec.blur == degrade.Range(0.0, 2.0, 0.5)
    assert spec.kernels == ("area", "bicubic")
    assert spec.noise == degrade.Range(1.0, 4.0) and spec.shot == degrade.Range(3.0, 3.0)
    assert spec.jpeg == degrade.Range(60.0, 95.0, 0.7)
    # Its canonical text parses back to the same spec; commas work as well as semicolons.
    assert degrade.parse_training(str(spec)) == spec
    assert degrade.parse_training(str(spec).replace(";", ",")) == spec
    assert degrade.parse_training("none") is None and degrade.parse_training("") is None
    assert degrade.parse_training(degrade.REAL_INPUTS) is not None


def test_fixed_spec_keeps_the_order_given():
    steps = degrade.parse_fixed("blur=1.5,noise=3,jpeg=85")
    assert [(s.key, s.value) for s in steps] == [("blur", 1.5), ("noise", 3.0), ("jpeg", 85.0)]
    assert degrade.format_fixed(steps) == "blur=1.5,noise=3,jpeg=85"
    assert [s.key for s in degrade.parse_fixed("jpeg=75;noise=2")] == ["jpeg", "noise"]


@pytest.mark.parametrize("spec, words", [
    ("jpeg=75,sharpen=2", ["sharpen", "unknown key", "jpeg"]),
    ("jpeg=101", ["jpeg=101", "out of range", "100"]),
    ("jpeg=0", ["jpeg=0", "out of range"]),
    ("jpeg=80.5", ["jpeg=80.5", "whole number"]),
    ("noise=-1", ["noise=-1", "out of range"]),
    ("blur=abc", ["blur='abc'", "not a number"]),
    ("jpeg=60:90", ["jpeg='60:90'", "one value"]),
    ("jpeg", ["'jpeg'", "key=value"]),
    ("noise=2,jpeg=80,blur=1", ["blur=1", "before"]),
    ("jpeg=80,jpeg=70", ["jpeg", "more than once"]),
    ("kernel=lanczos", ["lanczos", "area"]),
    (" , ", ["empty", "leave it out"]),
    ("none", ["'none'", "key=value"]),
])
def test_a_malformed_fixed_spec_is_refused_in_one_line_naming_it(spec, words):
    with pytest.raises(degrade.DegradationSpecError) as caught:
        degrade.parse_fixed(spec)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--degrade")
    assert "none" not in message.replace("'none'", ""), message  # "none" is a training spec's word only
    for word in words:
        assert word in message, (spec, message)


@pytest.mark.parametrize("spec, words", [
    ("blur=2:1", ["blur=2:1", "low end"]),
    ("jpeg=60:95@2", ["jpeg=60:95@2", "share"]),
    ("clean=1.5", ["clean=1.5", "out of range"]),
    ("kernel=area|box", ["box"]),
    ("grain=3", ["grain", "unknown key"]),
])
def test_a_malformed_training_spec_is_refused_naming_the_item(spec, words):
    with pytest.raises(ValueError) as caught:
        degrade.parse_training(spec)
    for word in words:
        assert word in str(caught.value), (spec, str(caught.value))


# --- each fixed degradation does what it says ----------------------------------------------------

def test_blur_spreads_a_point_with_the_given_sigma():
    image = np.zeros((81, 81, 1))
    image[40, 40] = 1000.0
    for sigma in (0.8, 1.5, 3.0):
        out = degrade.blur(image, sigma)[..., 0]
        assert out.sum() == pytest.approx(1000.0)
        profile = out.sum(axis=0) / out.sum()
        x = np.arange(81) - 40
        assert np.sqrt((profile * x ** 2).sum()) == pytest.approx(sigma, rel=0.03)
    np.testing.assert_array_equal(degrade.blur(image, 0.0), image)


def test_no_steps_is_the_rounded_area_average():
    image = tissue_image(64, 96)
    np.testing.assert_array_equal(degrade.degrade_image(image, 4, []), tiles.area_downsample(image, 4))
    flat = np.full((32, 32, 3), 100, np.uint8)
    for kernel in degrade.KERNELS:  # every kernel keeps a flat image flat
        out = degrade.degrade_image(flat, 4, degrade.parse_fixed(f"kernel={kernel}"))
        assert out.shape == (8, 8, 3) and np.abs(out.astype(int) - 100).max() <= 1


def test_noise_has_the_given_standard_deviation_and_is_seeded():
    image = np.full((400, 400, 3), 128, np.uint8)
    steps = degrade.parse_fixed("noise=3")
    a = degrade.degrade_image(image, 4, steps, seed=1)
    assert a.astype(float).std() == pytest.approx(3.0, rel=0.05) and abs(a.mean() - 128) < 0.1
    np.testing.assert_array_equal(a, degrade.degrade_image(image, 4, steps, seed=1))
    assert not np.array_equal(a, degrade.degrade_image(image, 4, steps, seed=2))
    # Shot noise grows with the signal: S * sqrt(value / 255) grey levels, none at black.
    two = np.concatenate([np.zeros((200, 400, 3), np.uint8), np.full((200, 400, 3), 200, np.uint8)])
    shot = degrade.degrade_image(two, 4, degrade.parse_fixed("shot=6"), seed=0).astype(float)
    assert shot[:50].std() == 0 and shot[50:].std() == pytest.approx(6.0 * np.sqrt(200 / 255), rel=0.05)


def test_jpeg_is_a_pillow_round_trip_with_420_chroma():
    image = tissue_image(64, 64)
    out = degrade.jpeg_roundtrip(image, 75)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75, subsampling="4:2:0")
    np.testing.assert_array_equal(out, np.asarray(Image.open(buffer)))
    assert np.abs(out.astype(int) - image).mean() > 1.0
    low = degrade.jpeg_roundtrip(image, 20).astype(int)
    assert np.abs(low - image).mean() > np.abs(out.astype(int) - image).mean()  # lower quality, more error
