"""The `degradation` hparam in graph (allen_sr.t2t.degradation): each degradation measured on known
images, seeded, against the NumPy version `allen-sr evaluate --degrade` uses; the JPEG block grid's
offset varies; the clean share; every allen-sr set trains with it by default."""
import numpy as np
import pytest

from allen_sr.data import degrade, tiles
from allen_sr.t2t.names import register_all
from conftest import tissue_image

register_all()

import tensorflow.compat.v1 as tf  # noqa: E402

from allen_sr.t2t import degradation  # noqa: E402


def draw(spec_text: str, target: np.ndarray, n: int, size: int = 8, seed: int = 0):
    """``n`` (target, input) pairs of one fixed ``target`` under ``spec_text``, seeded."""
    spec = degrade.parse_training(spec_text)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        pair = degradation.degrade_pair(tf.constant(target), spec, size)
        with tf.Session(graph=graph) as session:
            out = [session.run(pair) for _ in range(n)]
    return np.stack([t for t, _ in out]), np.stack([x for _, x in out])


@pytest.fixture(scope="module")
def target():
    return tissue_image(96, 96, seed=3)[32:64, 32:64]


def test_none_and_a_clean_share_of_one_reproduce_the_clean_input_exactly(target):
    clean = tiles.area_downsample(target, 4)
    for text in ("none", "clean=1;jpeg=30;noise=10"):
        targets, inputs = draw(text, target, 5)
        assert (targets == target).all() and (inputs == clean).all()


def test_draws_are_repeatable_with_a_seed(target):
    spec = "blur=0:2;noise=0:5;jpeg=50:95"
    a, b, c = (draw(spec, target, 6, seed=s)[1] for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_blur_matches_the_numpy_blur_before_the_area_average(target):
    _, inputs = draw("blur=1.5", target, 1)
    expected = degrade.degrade_image(target, 4, degrade.parse_fixed("blur=1.5"))
    assert np.abs(inputs[0].astype(int) - expected).max() <= 1
    assert np.abs(expected.astype(int) - tiles.area_downsample(target, 4)).max() >= 3  # it did blur


def test_noise_has_the_drawn_standard_deviation():
    flat = np.full((32, 32, 3), 200, np.uint8)
    _, inputs = draw("noise=4", flat, 40)
    assert inputs.astype(float).std() == pytest.approx(4.0, rel=0.08)
    _, shot = draw("shot=6", flat, 40)
    assert shot.astype(float).std() == pytest.approx(6.0 * np.sqrt(200 / 255), rel=0.08)
    _, ranged = draw("noise=0:8", flat, 60)  # per example sd ~ U(0, 8): varies between examples
    sds = ranged.reshape(60, -1).astype(float).std(axis=1)
    assert sds.min() < 2.0 and sds.max() > 6.0


def test_kernels_downsample_as_named(target):
    flat = np.full((32, 32, 3), 90, np.uint8)
    for kernel in degrade.KERNELS:
        assert (draw(f"kernel={kernel}", flat, 1)[1] == 90).all()
    _, area = draw("kernel=area", target, 1)
    _, cubic = draw("kernel=bicubic", target, 1)
    np.testing.assert_array_equal(area[0], tiles.area_downsample(target, 4))
    reference = degrade.degrade_image(target, 4, degrade.parse_fixed("kernel=bicubic"))
    assert not np.array_equal(cubic[0], area[0]) and np.abs(cubic[0].astype(int) - reference).mean() < 2.0


def test_jpeg_round_trip_matches_pillow_at_each_block_grid_offset(target):
    """The input mirrored outwards and cut with the 8x8 grid `offset` px before it, encoded like
    Pillow (4:2:0): TensorFlow's libjpeg and Pillow's agree within a few grey levels."""
    small = tiles.area_downsample(target, 4)
    graph = tf.Graph()
    with graph.as_default():
        offsets = tf.placeholder(tf.int32, [2])
        coded = degradation.jpeg_offset_roundtrip(tf.constant(small), tf.constant(60), offsets[0], offsets[1])
        with tf.Session(graph=graph) as session:
            outputs = {}
            for oy, ox in ((0, 0), (3, 5), (8, 1), (15, 12)):
                out = session.run(coded, {offsets: [oy, ox]})
                wide = np.pad(small, ((16, 16), (16, 16), (0, 0)), mode="symmetric")
                window = wide[16 - oy:16 - oy + 24, 16 - ox:16 - ox + 24]
                expected = degrade.jpeg_roundtrip(window, 60)[oy:oy + 8, ox:ox + 8]
                assert np.abs(out.astype(int) - expected).max() <= 4, (oy, ox)
                assert np.abs(out.astype(int) - small).mean() > 1.0
                outputs[oy, ox] = out
    assert len({o.tobytes() for o in outputs.values()}) == 4  # the grid's place changes the result


def test_the_block_grid_offset_varies_between_examples(target):
    _, inputs = draw("jpeg=70", target, 40)  # one quality: only the offset differs
    assert len({x.tobytes() for x in inputs}) >= 20


def test_shares_clean_and_at_p(target):
    clean = tiles.area_downsample(target, 4)
    for text, share in (("clean=0.5;noise=3", 0.5), ("noise=3@0.3", 0.7)):
        _, inputs = draw(text, target, 200)
        kept = np.mean([np.array_equal(x, clean) for x in inputs])
        assert kept == pytest.approx(share, abs=0.1), (text, kept)


def test_hed_jitter_changes_the_stain_and_the_input_follows_the_target(target):
    targets, inputs = draw("hed=0.2", target, 10)
    assert len({t.tobytes() for t in targets}) == 10
    assert np.abs(targets.astype(int) - target).mean() > 3
    for t, x in zip(targets, inputs):
        np.testing.assert_array_equal(x, tiles.area_downsample(t, 4))
    kept, _ = draw("hed=0", target, 1)
    assert np.abs(kept[0].astype(int) - target).max() <= 1


def test_permute_puts_the_colour_channels_in_random_orders(target):
    targets, inputs = draw("permute=1", target, 30)
    orders = set()
    for t, x in zip(targets, inputs):
        order = next(o for o in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                     if np.array_equal(t, target[..., list(o)]))
        orders.add(order)
        np.testing.assert_array_equal(x, tiles.area_downsample(t, 4))
    assert len(orders) >= 4, orders
    targets, _ = draw("permute=0;noise=1", target, 3)
    assert (targets == target).all()


def test_every_allen_sr_set_trains_with_real_inputs_and_none_turns_it_off():
    from tensor2tensor.utils import registry

    from allen_sr.decoding import checkpoints

    ours = [name for name in registry.list_hparams() if name.startswith(("img2img_conv_sr", "img2img_allen_"))]
    assert len(ours) >= 7, ours
    for name in ours:
        hparams = checkpoints.load_hparams(name, "img2img_local_dim8to32")
        assert hparams.degradation == degrade.REAL_INPUTS, name
        assert degradation.training_degradation(hparams) is not None
    # tensor2tensor's --hparams splits on commas: `;` joins the items inside it.
    hparams = checkpoints.load_hparams("img2img_conv_sr_cpu", "img2img_local_dim8to32",
                                       "degradation=blur=0:1;jpeg=80:90,decode_tta=False")
    assert degradation.training_degradation(hparams) == degrade.parse_training("blur=0:1;jpeg=80:90")
    assert hparams.decode_tta is False
    off = checkpoints.load_hparams("img2img_allen_cpu_tiny", "img2img_local_dim8to32", "degradation=none")
    assert degradation.training_degradation(off) is None
    stock = checkpoints.load_hparams("img2img_transformer2d_tiny", "img2img_local_dim8to32")
    assert degradation.training_degradation(stock) is None  # a stock set trains on clean inputs
    bad = checkpoints.load_hparams("img2img_conv_sr_cpu", "img2img_local_dim8to32", "degradation=jpeg=500")
    with pytest.raises(ValueError, match="jpeg=500"):
        degradation.training_degradation(bad)
