"""The bicubic operator behind the Image Transformer's prior (allen_sr.evaluation.bicubic): Pillow's
own weights, Pillow's result to within a grey level, and the TensorFlow twin the model builds."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from allen_sr.evaluation.bicubic import bicubic_centres, pillow_bicubic_matrix


def impulse_matrix(size: int, scale: int) -> np.ndarray:
    """Pillow's bicubic weights read off by resizing unit impulses of a float image."""
    matrix = np.zeros((size * scale, size))
    for j in range(size):
        impulse = np.zeros((1, size), np.float32)
        impulse[0, j] = 1.0
        matrix[:, j] = np.asarray(Image.fromarray(impulse, "F").resize((size * scale, 1), Image.Resampling.BICUBIC))[0]
    return matrix


@pytest.mark.parametrize("size, scale", [(8, 4), (5, 3), (16, 2), (2, 4), (1, 4), (13, 4)])
def test_matrix_is_pillows(size, scale):
    np.testing.assert_allclose(pillow_bicubic_matrix(size, scale), impulse_matrix(size, scale), atol=1e-6)


def test_centres_are_pillows_upscale_within_a_grey_level():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 11, 3)).astype(np.uint8)  # noise: the worst case for clipping
    ours = bicubic_centres(images, 4)
    assert ours.shape == (4, 32, 44, 3) and ours.dtype == np.float32
    for image, centre in zip(images, ours):
        pillow = np.asarray(Image.fromarray(image).resize((44, 32), Image.Resampling.BICUBIC), np.float64)
        assert np.abs(centre - pillow).max() <= 1.1  # Pillow rounds its 8-bit intermediate
        assert np.abs(centre - pillow).mean() < 0.4


def test_tensorflow_twin_equals_numpy_for_sizes_known_only_at_run_time():
    tf = pytest.importorskip("tensorflow")
    from allen_sr.models.image_transformer import bicubic_tf

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 6, 9, 3)).astype(np.int32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.int32, [None, None, None, 3])
        got = session.run(bicubic_tf(x, 24, 36), {x: images})
    np.testing.assert_allclose(got, bicubic_centres(images, 4), atol=2e-4)
