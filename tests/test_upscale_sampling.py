"""`allen-sr upscale --mode sample` (the Image Transformer's draws): each tile samples from its own
random stream, keyed on the seed and where the tile sits in the image, so the output does not depend
on --batch_size and no two tiles repeat the same noise; a negative --seed is refused in one line.

The real shipped transformer-tiny model (8 px tiles), real small images.
"""
import numpy as np
import pytest
from PIL import Image

from allen_sr.api import Upscaler
from allen_sr.commands import evaluate, upscale
from allen_sr.decoding.modes import example_uniforms
from allen_sr.errors import InvalidInputError


def sampled(image, **options):
    with Upscaler.open("transformer-tiny", mode="sample", seed=5, **options) as up:
        return up.predict(image)


def test_sampled_tiles_do_not_depend_on_the_batch_size_nor_repeat_their_noise():
    flat = np.full((16, 16, 3), (150, 110, 90), np.uint8)  # 4 tiles of 8 px side by side, all alike
    default = sampled(flat, overlap=0)
    np.testing.assert_array_equal(sampled(flat, overlap=0, batch_tiles=1), default)
    quarters = [default[y:y + 32, x:x + 32] for y in (0, 32) for x in (0, 32)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(quarters) for b in quarters[i + 1:])


def test_sampled_overlapping_tiles_do_not_depend_on_the_batch_size_and_a_region_is_the_crop(tmp_path):
    """6 overlapping tiles (8 px, overlap 4), one at a time and all together; a region whose tiles
    sit where the whole image's do (multiples of 4 px) draws the same numbers: the crop exactly."""
    textured = np.random.default_rng(3).integers(60, 200, (12, 16, 3), dtype=np.uint8)
    whole = sampled(textured)
    np.testing.assert_array_equal(sampled(textured, batch_tiles=1), whole)
    Image.fromarray(textured).save(tmp_path / "t.png")
    with Upscaler.open("transformer-tiny", mode="sample", seed=5) as up:
        up.predict_file(tmp_path / "t.png", tmp_path / "r.png", region=(8, 0, 8, 12))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png")), whole[:, 32:])


def test_a_negative_seed_is_refused_in_one_line(tmp_path, capsys):
    image = tmp_path / "flat16.png"
    Image.new("RGB", (16, 16), (150, 110, 90)).save(image)
    for main, flags in ((upscale.upscale_main, [f"--image={image}", f"--out={tmp_path / 'x.png'}"]),
                        (evaluate.evaluate_main, [f"--images={image}", f"--out={tmp_path / 'ev'}"])):
        code = main(["--pretrained=transformer-tiny", "--mode=sample", "--seed=-1"] + flags)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "--seed -1" in err and "positive" in err, err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(InvalidInputError, match=r"seed=-1 from Python"):
        Upscaler.open("transformer-tiny", mode="sample", seed=-1)
    with pytest.raises(InvalidInputError, match="--seed -2"):
        example_uniforms(-2, [0], 4)
