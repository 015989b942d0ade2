"""Autoregressive decoding: the fast NumPy decoder against the real t2t graph, on a real checkpoint.

A tiny `img2img_allen_cpu_tiny` variant (hidden 32, 1 encoder / 2 decoder layers) is trained for a
few real optimizer steps through tensor2tensor's estimator model_fn (t2t-trainer's code path, so
the checkpoint has t2t-trainer's variable names) once per module. Every comparison then restores
that checkpoint into the t2t model graph (NaiveDecoder) and into the NumPy decoder (FastDecoder).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from allen_sr.decoding import checkpoints, examples, modes, registry, support
from allen_sr.testing import tiny_training
from allen_sr.commands.decode import decode_main
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.reference import NaiveDecoder
from allen_sr.decoding.support import UnsupportedHParamsError
from allen_sr.errors import InvalidInputError
from allen_sr.evaluation.bicubic import bicubic_centres

PROBLEM = "img2img_allen_brain_dim8to32"
HPARAMS_SET = "img2img_allen_cpu_tiny"
# Smaller and faster than the set itself. Warm-up 1 and a learning rate of ~2e-3 make 5 Adam
# steps move every weight by ~1e-2 (layer norms away from 1/0, biases away from 0) while the
# random initialisation still dominates; a larger rate would learn the mean colour and make
# every greedy sub-pixel the same value, a weak test of decoding.
TRAIN_OVERRIDES = ("hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,"
                   "num_decoder_layers=2,learning_rate_warmup_steps=1,learning_rate_constant=0.016")
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny_run")
    hparams = checkpoints.load_hparams(HPARAMS_SET, PROBLEM, TRAIN_OVERRIDES)
    tiny_training.train_checkpoint(out, hparams, steps=5, batch_size=4, seed=0)
    return str(out)


def hparams_for(ckpt_dir: str, overrides: str = ""):
    """Hparams as `allen-sr decode` builds them: the set, the run's hparams.json, then overrides."""
    return checkpoints.load_hparams(HPARAMS_SET, PROBLEM, overrides, output_dir=ckpt_dir)


@pytest.fixture(scope="module")
def fast(ckpt_dir) -> FastDecoder:
    return FastDecoder.from_checkpoint(hparams_for(ckpt_dir), ckpt_dir)


@pytest.fixture(scope="module")
def naive(ckpt_dir):
    decoder = NaiveDecoder(hparams_for(ckpt_dir), checkpoints.find_checkpoint(ckpt_dir))
    yield decoder
    decoder.close()


def random_pair(batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (batch, size // 4, size // 4, 3)),
            rng.integers(0, 256, (batch, size, size, 3)))


def assert_same_or_tie(naive_dec: NaiveDecoder, inputs, naive_out, fast_out, steps: int) -> None:
    """Outputs agree on the first ``steps`` sub-pixels, or first differ at a (near) tie.

    After the first difference the canvases diverge, so only that position can be judged: there
    the naive model's logits of the two chosen values must be within LOGIT_TOL.
    """
    a = naive_out.reshape(len(naive_out), -1)[:, :steps]
    b = fast_out.reshape(len(fast_out), -1)[:, :steps]
    for i in range(len(a)):
        diff = np.flatnonzero(a[i] != b[i])
        if diff.size == 0:
            continue
        p = int(diff[0])
        canvas = naive_out[i:i + 1].astype(np.int32).copy()
        canvas.reshape(-1)[p:] = 0  # the naive decoder's canvas just before it chose position p
        logits = naive_dec.step_logits(np.asarray(inputs)[i:i + 1], canvas, p)[0]
        gap = abs(float(logits[a[i, p]]) - float(logits[b[i, p]]))
        assert gap < LOGIT_TOL, f"example {i}: first difference at sub-pixel {p} is no tie (logit gap {gap})"


# --------------------------------------------------------------------------- the checkpoint


def test_checkpoint_is_real_and_trained(ckpt_dir):
    """The fixture's checkpoint has t2t-trainer's names and weights moved by training."""
    import tensorflow as tf

    ckpt = checkpoints.find_checkpoint(ckpt_dir)
    assert ckpt.endswith("model.ckpt-5")
    names = dict(tf.train.list_variables(ckpt))
    assert "global_step" in names
    # One copy of each weight, named by variable scope (allen_sr.t2t.compat shares t2t's layers).
    assert any(n.startswith("img2img_transformer/body/") and n.endswith("self_attention/q/kernel")
               for n in names)
    assert not any("/parallel_" in n for n in names)
    reader = tf.train.load_checkpoint(ckpt)
    scale = reader.get_tensor("img2img_transformer/body/layer_prepostprocess_1/layer_norm/layer_norm_scale")
    bias = reader.get_tensor("img2img_transformer/body/output_conv/bias")
    assert np.abs(scale - 1).max() > 2e-3 and np.abs(bias).max() > 2e-3
    assert json.loads(Path(ckpt_dir, "hparams.json").read_text())["hidden_size"] == 32


def test_train_checkpoint_starts_from_the_seeds_weights(tmp_path):
    """Same seed, same initial weights (the Keras layers inside t2t seed from Python's random);
    other seed, other weights. A zero learning rate keeps the initial weights: trained ones may
    differ in last bits from run to run (threaded float sums; Adam's first steps amplify signs)."""
    import tensorflow as tf

    frozen = TRAIN_OVERRIDES.replace("learning_rate_constant=0.016", "learning_rate_constant=0.0")
    hparams = checkpoints.load_hparams(HPARAMS_SET, PROBLEM, frozen)
    kernels = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        reader = tf.train.load_checkpoint(
            tiny_training.train_checkpoint(tmp_path / name, hparams, steps=1, batch_size=2, seed=seed))
        key = next(k for k in reader.get_variable_to_shape_map() if k.endswith("self_attention/q/kernel"))
        kernels.append(reader.get_tensor(key))
    assert np.array_equal(kernels[0], kernels[1])
    assert np.abs(kernels[0] - kernels[2]).max() > 1e-2


def test_canonical_variable_name():
    name = ("img2img_transformer/parallel_0_4/img2img_transformer/img2img_transformer/body/"
            "decoder_layer_0/ffn/conv1/kernel:0")
    assert checkpoints.canonical_variable_name(name) == "img2img_transformer/body/decoder_layer_0/ffn/conv1/kernel"
    plain = "img2img_transformer/body/output_conv/bias"
    assert checkpoints.canonical_variable_name(plain) == plain
    slot = "training/LazyAdam/img2img_transformer/body/output_conv/bias/m"
    assert checkpoints.canonical_variable_name(slot) == slot


# --------------------------------------------------------------------------- (a) logits


@pytest.mark.parametrize("block_length, size", [(128, 32), (32, 32), (100, 32), (128, 8)])
def test_fast_logits_equal_t2t_graph(ckpt_dir, block_length, size):
    """Teacher-forced logits of the incremental decoder == one forward pass of the t2t graph.

    block_length changes no variable, only the attention window: on 32x32x3 (3072 sub-pixels)
    128 (the set's: 24 blocks), 32 (96 blocks) and 100 (does not divide 3072: t2t pads the last
    block); on 8x8x3, 192 < 2 * 128, so t2t uses a single causal block of the whole length (the
    decoder's single-buffer path).
    """
    hparams = hparams_for(ckpt_dir, f"block_length={block_length}")
    naive_dec = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_dir), target_shape=(size, size))
    try:
        inputs, targets = random_pair(2, size, seed=block_length)
        expected = naive_dec.logits(inputs, targets)
        zero_canvas = naive_dec.logits(inputs, np.zeros_like(targets))
    finally:
        naive_dec.close()
    fast_dec = FastDecoder.from_checkpoint(hparams, ckpt_dir, target_shape=(size, size))
    got = fast_dec.logits(inputs, targets)
    assert got.shape == expected.shape == (2, size, size, 3, 256)
    # Non-trivial logits, which depend on the canvas (so teacher forcing is really exercised).
    assert expected.std() > 0.05
    assert np.abs(expected - zero_canvas).max() > 0.05
    assert np.abs(got - expected).max() < LOGIT_TOL


@pytest.mark.parametrize("input_skip, normalize, prior, patch",
                         [(True, False, False, 0), (False, False, False, 0), (True, True, False, 0),
                          (True, False, True, 0), (True, True, True, 1), (False, False, False, 2)])
def test_input_skip_model_fast_logits_equal_t2t_graph(tmp_path, input_skip, normalize, prior, patch):
    """img2img_transformer_sr (allen_sr.models.image_transformer): the fast decoder adds the same
    upsampled input embeddings (and normalized-input term, bicubic prior, input_patch maps) as the
    t2t graph; with all off it is the plain model.

    The prior's logits reach -0.5 * (255 / sigma)^2 far from its centre, so there the tolerance is
    relative (float32 carries ~7 digits); near the centre, where the probability is, it is 1e-4."""
    model = support.SKIP_MODEL
    hparams = checkpoints.load_hparams(
        HPARAMS_SET, PROBLEM,
        TRAIN_OVERRIDES + f",input_skip={input_skip},normalize_inputs={normalize},bicubic_prior={prior},"
        f"input_patch={patch}")
    if normalize or patch:  # the statistics datagen writes; training reads them from data_dir
        stats_dir = tmp_path / "data"
        stats_dir.mkdir()
        (stats_dir / "img2img_allen_brain-stats.json").write_text(
            json.dumps({"mean": [200.0, 150.0, 170.0], "std": [30.0, 50.0, 40.0]}))
        if hasattr(hparams, "data_dir"):
            hparams.data_dir = str(stats_dir)
        else:
            hparams.add_hparam("data_dir", str(stats_dir))
    run_dir = tmp_path / "run"
    tiny_training.train_checkpoint(run_dir, hparams, steps=3, batch_size=2, seed=1, model_name=model)
    hparams = checkpoints.load_hparams(HPARAMS_SET, PROBLEM, output_dir=run_dir)
    assert hparams.input_skip == input_skip and hparams.normalize_inputs == normalize
    assert hparams.input_patch == patch
    if normalize or patch:  # the statistics travel in the checkpoint
        import tensorflow as tf

        reader = tf.train.load_checkpoint(checkpoints.find_checkpoint(run_dir))
        mean = [v for v in reader.get_variable_to_shape_map() if v.endswith("input_normalization/mean")]
        assert mean and reader.get_tensor(mean[0]).tolist() == [200.0, 150.0, 170.0]
    inputs, targets = random_pair(2, 32, seed=7)
    naive_dec = NaiveDecoder(hparams, checkpoints.find_checkpoint(run_dir), model_name=model)
    try:
        expected = naive_dec.logits(inputs, targets)
        other_inputs = naive_dec.logits(inputs[::-1], targets)
    finally:
        naive_dec.close()
    got = FastDecoder.from_checkpoint(hparams, str(run_dir), model_name=model).logits(inputs, targets)
    np.testing.assert_allclose(got, expected, rtol=LOGIT_TOL, atol=LOGIT_TOL)
    if prior:  # the prior is there: a Gaussian around each sub-pixel's bicubic value
        centres = bicubic_centres(inputs, 4).reshape(-1)
        peaks = expected.reshape(-1, 256).argmax(axis=-1)
        assert np.abs(peaks - centres).mean() < 4.0, np.abs(peaks - centres).mean()
        assert expected.min() < -100
    if input_skip or patch:  # the skip conditions every position on its input pixel from the first step
        assert np.abs(expected - other_inputs).max() > 0.05


def test_float64_logits_equal_t2t_graph(ckpt_dir, naive):
    inputs, targets = random_pair(1, 32, seed=7)
    fast64 = FastDecoder.from_checkpoint(hparams_for(ckpt_dir), ckpt_dir, dtype="float64")
    assert np.abs(fast64.logits(inputs, targets) - naive.logits(inputs, targets)).max() < LOGIT_TOL


def test_t2t_graph_is_causal(naive):
    """What both decoders rely on: logits at p depend only on sub-pixels before p."""
    inputs, targets = random_pair(1, 32, seed=3)
    before = naive.logits(inputs, targets).reshape(-1, 256)
    p = 1000
    changed = targets.copy()
    changed.reshape(-1)[p] = (changed.reshape(-1)[p] + 128) % 256
    after = naive.logits(inputs, changed).reshape(-1, 256)
    assert np.abs(after[:p + 1] - before[:p + 1]).max() == 0
    assert np.abs(after[p + 1] - before[p + 1]).max() > 1e-3


# --------------------------------------------------------------------------- (b) greedy decoding


def test_greedy_fast_equals_naive_full_small_canvas(ckpt_dir):
    """Whole images on an 8x8x3 canvas (2x2 inputs), 12 attention blocks of 16: every step compared."""
    hparams = hparams_for(ckpt_dir, "block_length=16")
    naive_dec = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_dir), target_shape=(8, 8))
    try:
        inputs, _ = random_pair(2, 8, seed=11)
        fast_dec = FastDecoder.from_checkpoint(hparams, ckpt_dir, target_shape=(8, 8))
        fast_out = fast_dec.decode(inputs)
        naive_out = naive_dec.decode(inputs)
        assert fast_out.shape == naive_out.shape == (2, 8, 8, 3)
        assert_same_or_tie(naive_dec, inputs, naive_out, fast_out, 8 * 8 * 3)
        # A real decode, not a constant canvas (greedy decoding of a barely trained model does
        # repeat itself a lot, so only ask for a few distinct values).
        assert len(np.unique(fast_out)) >= 3
    finally:
        naive_dec.close()


def test_greedy_fast_equals_naive_32x32_prefix(ckpt_dir):
    """Full-size canvas, block 32: the first 100 sub-pixels cross three block boundaries."""
    steps = 100
    hparams = hparams_for(ckpt_dir, "block_length=32")
    naive_dec = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_dir))
    try:
        inputs, _ = random_pair(2, 32, seed=5)
        fast_out = FastDecoder.from_checkpoint(hparams, ckpt_dir).decode(inputs)
        naive_out = naive_dec.decode(inputs, max_steps=steps)
        assert np.all(naive_out.reshape(2, -1)[:, steps:] == 0)
        assert_same_or_tie(naive_dec, inputs, naive_out, fast_out, steps)
    finally:
        naive_dec.close()


def test_greedy_output_is_argmax_of_its_own_logits(fast):
    """Self-consistency on the full 3072 steps: teacher-forcing the greedy output reproduces it."""
    inputs, _ = random_pair(2, 32, seed=13)
    out = fast.decode(inputs)
    logits = fast.logits(inputs, out)
    chosen = np.take_along_axis(logits, out[..., None].astype(np.int64), -1)[..., 0]
    # Chosen value's logit is the maximum (exactly, or within a tie tolerance).
    assert np.all(logits.max(-1) - chosen < LOGIT_TOL)


# --------------------------------------------------------------------------- (c) mean and sample


def expected_values(logits: np.ndarray) -> np.ndarray:
    """Each sub-pixel's expected value under softmax(``logits``) [..., 256]."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ np.arange(256)


def test_mean_mode_feeds_back_rounded_expectation(fast):
    inputs, _ = random_pair(2, 32, seed=17)
    out = fast.decode(inputs, mode="mean")
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3)
    expected = expected_values(fast.logits(inputs, out))
    # Each value is the rounded mean of the distribution conditioned on the values before it.
    assert np.all(np.abs(out - expected) <= 0.5 + 1e-3)


def test_mean_bicubic_is_the_expectation_given_the_bicubic_context(fast, naive):
    """``mean_bicubic`` outputs each sub-pixel's expected value given the rounded bicubic values
    before it (the training context), and records those distributions; nothing is fed back."""
    from allen_sr.decoding.uncertainty import Recorder

    inputs, targets = random_pair(3, 32, seed=23)
    recorder = Recorder((1.0,), targets)
    out = fast.decode(inputs, mode="mean_bicubic", batch_size=2, recorder=recorder)
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32, 3)
    context = np.rint(bicubic_centres(inputs, 4)).astype(np.int64)
    expected = expected_values(naive.logits(inputs, context))  # one pass of the t2t graph
    assert np.all(np.abs(out - expected) <= 0.5 + 1e-3)
    np.testing.assert_allclose(recorder.shaped("mean")[0], expected, atol=1e-2)
    # Not the mean mode, whose context is its own output.
    assert np.mean(out != fast.decode(inputs, mode="mean")) > 0.01


def test_sample_is_reproducible_and_batch_independent(fast):
    inputs, _ = random_pair(3, 32, seed=19)
    a = fast.decode(inputs, mode="sample", seed=1, max_steps=300)
    b = fast.decode(inputs, mode="sample", seed=1, max_steps=300, batch_size=2)
    c = fast.decode(inputs, mode="sample", seed=2, max_steps=300)
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a.reshape(3, -1)[:, :300] != c.reshape(3, -1)[:, :300]) > 0.5
    # Sampling draws from the model: values spread over many levels at temperature 1.
    assert len(np.unique(a.reshape(3, -1)[:, :300])) > 50


def test_cold_sampling_is_greedy(fast):
    """Sampling at temperature 1e-4 picks the argmax, except where two logits nearly tie: there
    a value whose logit is g below the best is still drawn with probability ~exp(-g / 1e-4)."""
    inputs, _ = random_pair(2, 32, seed=23)
    greedy = fast.decode(inputs, max_steps=200)
    cold = fast.decode(inputs, mode="sample", temperature=1e-4, seed=0, max_steps=200)
    for i in range(len(inputs)):
        diff = np.flatnonzero(cold[i].reshape(-1) != greedy[i].reshape(-1))
        if diff.size == 0:
            continue
        p = int(diff[0])  # both canvases agree before p, so greedy's logits there are cold's too
        logits = fast.logits(inputs[i:i + 1], greedy[i:i + 1]).reshape(-1, 256)[p]
        gap = float(logits[greedy[i].reshape(-1)[p]] - logits[cold[i].reshape(-1)[p]])
        assert 0 <= gap < 2e-3, f"example {i}: cold sample differs at sub-pixel {p} with logit gap {gap}"


@pytest.mark.parametrize("mode, tta", [("mean", False), ("sample", False), ("mean", True)])
def test_naive_and_fast_agree_in_other_modes(ckpt_dir, mode, tta):
    hparams = hparams_for(ckpt_dir, f"block_length=16,decode_tta={tta}")
    naive_dec = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_dir), target_shape=(8, 8))
    try:
        inputs, _ = random_pair(2, 8, seed=29)
        fast_dec = FastDecoder.from_checkpoint(hparams, ckpt_dir, target_shape=(8, 8))
        kwargs = dict(mode=mode, seed=4, temperature=0.8, max_steps=60)
        np.testing.assert_array_equal(fast_dec.decode(inputs, **kwargs), naive_dec.decode(inputs, **kwargs))
    finally:
        naive_dec.close()


def flipped(images: np.ndarray, k: int) -> np.ndarray:
    """Transform k of [N, H, W, C] images: k quarter turns, then a left-right mirror if k >= 4."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return np.flip(out, axis=2) if k >= 4 else out


def unflipped(images: np.ndarray, k: int) -> np.ndarray:
    out = np.flip(images, axis=2) if k >= 4 else images
    return np.rot90(out, 4 - k % 4, axes=(1, 2))


@pytest.mark.parametrize("shape, ks", [((8, 8), range(8)), ((8, 16), (0, 2, 4, 6))])
def test_tta_is_the_mean_of_the_decodes_of_each_flip_and_rotation(ckpt_dir, shape, ks):
    """decode_tta=True: each input's flips/rotations decoded by the plain decoder, turned back,
    averaged and rounded (only the shape-keeping four for a non-square output)."""
    rng = np.random.default_rng(37)
    inputs = rng.integers(0, 256, (3, shape[0] // 4, shape[1] // 4, 3))
    averaging = FastDecoder.from_checkpoint(hparams_for(ckpt_dir, "decode_tta=True"), ckpt_dir,
                                            target_shape=shape)
    got = averaging.decode(inputs, mode="mean", batch_size=2)
    decodes = []
    for k in ks:
        plain = FastDecoder.from_checkpoint(hparams_for(ckpt_dir), ckpt_dir,
                                            target_shape=shape[::-1] if k % 2 else shape)
        decodes.append(unflipped(plain.decode(flipped(inputs, k), mode="mean"), k).astype(float))
    assert got.dtype == np.uint8 and got.shape == (3, *shape, 3)
    np.testing.assert_array_equal(got, np.rint(np.mean(decodes, axis=0)))
    # The causal order is not symmetric: the decodes differ, so the mean is none of them.
    assert all(not np.array_equal(got, d) for d in decodes)
    # Sampling streams stay per example: the same samples whatever the batch size.
    np.testing.assert_array_equal(averaging.decode(inputs, mode="sample", seed=3, max_steps=40),
                                  averaging.decode(inputs, mode="sample", seed=3, max_steps=40, batch_size=1))
    # Streams keyed on the tiles' places (as upscale keys them): a tile draws the same decoded with others or alone.
    keys = [(0, 8), (4, 0), (4, 8)]
    keyed = averaging.decode(inputs, mode="sample", seed=3, max_steps=40, batch_size=2, keys=keys)
    np.testing.assert_array_equal(keyed[1:], averaging.decode(inputs[1:], mode="sample", seed=3, max_steps=40,
                                                              batch_size=1, keys=keys[1:]))


def test_choose_values():
    logits = np.full((3, 256), -50.0)
    logits[0, 7] = 10.0
    logits[1, [100, 200]] = 10.0  # two equally likely values: mean 150
    logits[2, 255] = 10.0
    np.testing.assert_array_equal(modes.choose_values(logits, "greedy"), [7, 100, 255])
    np.testing.assert_array_equal(modes.choose_values(logits, "mean"), [7, 150, 255])
    low = modes.choose_values(logits, "sample", uniforms=np.array([0.1, 0.1, 0.999999]))
    high = modes.choose_values(logits, "sample", uniforms=np.array([0.9, 0.9, 1e-3]))
    np.testing.assert_array_equal(low, [7, 100, 255])
    np.testing.assert_array_equal(high, [7, 200, 255])
    with pytest.raises(ValueError, match="temperature"):
        modes.choose_values(logits, "sample", temperature=0.0, uniforms=np.zeros(3))
    with pytest.raises(ValueError, match="unknown mode"):
        modes.choose_values(logits, "beam")


# --------------------------------------------------------------------------- (d) unsupported hparams


@pytest.mark.parametrize("name, value, supported", [
    ("dec_attention_type", "rel_local_1d", "'local_1d' or 'local_2d'"),
    ("q_filter_width", 3, "1"),
    ("kv_filter_width", 3, "1"),
    ("ffn_layer", "normed_conv_hidden_relu", "'conv_hidden_relu'"),
    ("enc_attention_type", "local_1d", "'global'"),
    ("pos", "emb", "'timing'"),
    ("layer_postprocess_sequence", "dz", "'none' or letters"),
])
def test_unsupported_hparams_are_refused(ckpt_dir, name, value, supported):
    """What only the fast decoder lacks: the message names the hparam, its value and what works,
    and points to the naive decoder, which accepts these hparams."""
    hparams = hparams_for(ckpt_dir)
    if hasattr(hparams, name):
        setattr(hparams, name, value)
    else:
        hparams.add_hparam(name, value)
    with pytest.raises(UnsupportedHParamsError, match=name) as info:
        FastDecoder.from_checkpoint(hparams, ckpt_dir)
    assert supported in str(info.value) and repr(value) in str(info.value)
    assert "--decoder naive" in str(info.value)
    with pytest.raises(UnsupportedHParamsError):
        support.check_supported(hparams)
    support.check_decodable(hparams)  # the naive decoder's own check passes


@pytest.mark.parametrize("name, value, why", [
    ("dec_attention_type", "global", "causal in no order"),
    ("dec_attention_type", "global_local", "causal in no order"),
    ("dec_attention_type", "local_1d_noncausal", "causal in no order"),
    ("dec_attention_type", "dilated", "not implemented"),
    ("likelihood", "dmol", "likelihood='cat'"),
])
def test_no_decoder_takes_what_no_order_decodes(ckpt_dir, name, value, why):
    """Both decoders refuse, naming the hparam and value, and the fast decoder's message does not
    send the user to the naive decoder, which refuses too."""
    hparams = hparams_for(ckpt_dir)
    if hasattr(hparams, name):
        setattr(hparams, name, value)
    else:
        hparams.add_hparam(name, value)
    with pytest.raises(UnsupportedHParamsError, match=f"{name}={value!r}") as naive_info:
        NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_dir))
    with pytest.raises(UnsupportedHParamsError, match=f"{name}={value!r}") as fast_info:
        FastDecoder.from_checkpoint(hparams, ckpt_dir)
    for info in (naive_info, fast_info):
        assert why in str(info.value)
        assert "naive" not in str(info.value)
    if name == "dec_attention_type":
        assert "'local_2d' (block-raster order" in str(fast_info.value)  # what works


def test_hparams_that_do_not_match_the_checkpoint_are_refused(ckpt_dir):
    """In one line naming the checkpoint and the variable (a KeyError's traceback before)."""
    with pytest.raises(InvalidInputError, match="does not hold the model these hparams describe .*unused"):
        FastDecoder.from_checkpoint(hparams_for(ckpt_dir, "num_decoder_layers=1"), ckpt_dir)
    with pytest.raises(InvalidInputError, match=r"\(variable .*decoder_layer_2.* not in the checkpoint\)"):
        FastDecoder.from_checkpoint(hparams_for(ckpt_dir, "num_decoder_layers=3"), ckpt_dir)


def test_the_real_hparams_sets_are_supported():
    for name in ("img2img_allen_cpu_tiny", "img2img_allen_base", "img2img_allen_multigpu"):
        support.check_supported(checkpoints.load_hparams(name, PROBLEM))


# --------------------------------------------------------------------------- reading examples and the CLI


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> str:
    """The problem's own datagen on the shipped sample images (real records, real dev split)."""
    from tensor2tensor.utils import registry

    from allen_sr.sample_data import sample_folder
    from allen_sr.t2t.names import register_all

    register_all()
    sample = sample_folder()
    data_dir = tmp_path_factory.mktemp("data")
    registry.problem("img2img_local_dim8to32").generate_data(str(data_dir), str(sample))
    return str(data_dir)


def test_read_examples_through_the_problem_pipeline(local_data, ckpt_dir):
    hparams = checkpoints.load_hparams(HPARAMS_SET, "img2img_local_dim8to32", "", ckpt_dir)
    inputs, targets = examples.read_examples("img2img_local_dim8to32", local_data, 4, hparams)
    assert inputs.shape == (4, 8, 8, 3) and targets.shape == (4, 32, 32, 3)
    assert inputs.dtype == targets.dtype == np.uint8
    again, _ = examples.read_examples("img2img_local_dim8to32", local_data, 4, hparams)
    np.testing.assert_array_equal(inputs, again)  # same dev examples every time
    # The problem's input is the area downsampling of its target (rounded).
    area = targets.reshape(4, 8, 4, 8, 4, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(inputs - area).max() <= 0.5 + 1e-6
    assert len({t.tobytes() for t in targets}) == 4


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_record_file_is_named_with_what_to_do(damage, local_data, ckpt_dir, tmp_path, capsys):
    """A dev shard cut short, or altered in place, is one line naming it and saying to run
    datagen again (it was tensorflow's DataLossError and a long traceback)."""
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(local_data, data_dir)
    shard = next(data_dir.glob("img2img_local_dim8to32-dev-*"))
    size = shard.stat().st_size
    if damage == "truncated":
        os.truncate(shard, size // 2)
    else:
        with open(shard, "r+b") as f:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    hparams = checkpoints.load_hparams(HPARAMS_SET, "img2img_local_dim8to32", "", ckpt_dir)
    with pytest.raises(InvalidInputError, match=rf"{re.escape(str(shard))} is damaged \({damage} record at \d+\): "
                                                rf"run `allen-sr datagen` again with "
                                                rf"--data_dir {re.escape(str(data_dir))}"):
        examples.read_examples("img2img_local_dim8to32", str(data_dir), 100_000, hparams)
    argv = ["--problem", "img2img_local_dim8to32", "--hparams_set", HPARAMS_SET, "--output_dir", ckpt_dir,
            "--data_dir", str(data_dir), "--num_examples", "100000", "--out", str(tmp_path / "o"), "--no_progress"]
    assert decode_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(shard) in err[0] and "allen-sr datagen" in err[0], err


def test_decode_cli_end_to_end(local_data, ckpt_dir, tmp_path, capsys):
    out = tmp_path / "decoded"
    argv = ["--problem", "img2img_local_dim8to32", "--hparams_set", HPARAMS_SET,
            "--output_dir", ckpt_dir, "--data_dir", local_data, "--num_examples", "3",
            "--batch_size", "2", "--mode", "greedy", "--out", str(out), "--no_progress"]
    assert decode_main(argv) == 0
    printed = capsys.readouterr().out
    assert "bicubic" in printed and "model" in printed and str(out) in printed
    from PIL import Image

    pngs = sorted(p.name for p in out.glob("example_*.png"))
    assert pngs == ["example_000.png", "example_001.png", "example_002.png"]
    assert Image.open(out / "example_000.png").size == (32, 32)
    assert (out / "grid.png").stat().st_size > 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tiles"] == 3 and set(summary["methods"]) == {"bicubic", "model"}
    assert "fast decoding, mode greedy" in summary["protocol"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "example,method,psnr,ssim" and len(rows) == 1 + 3 * 2
    # The PNGs are the decoder's greedy output for those dev examples.
    hparams = checkpoints.load_hparams(HPARAMS_SET, "img2img_local_dim8to32", "", ckpt_dir)
    inputs, _ = examples.read_examples("img2img_local_dim8to32", local_data, 3, hparams)
    expected = FastDecoder.from_checkpoint(hparams, ckpt_dir).decode(inputs)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "example_002.png")), expected[2])


def test_decode_cli_refuses_other_models(tmp_path, capsys):
    argv = ["--problem", PROBLEM, "--model", "transformer", "--hparams_set", HPARAMS_SET,
            "--output_dir", str(tmp_path), "--data_dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert decode_main(argv) == 2
    assert "not supported" in capsys.readouterr().err
    # a shipped model or no run at all: one message saying what decode reads (it said "leave out
    # --problem", then another refusal, or named a --pretrained conv-cpu nobody typed)
    data = ["--data_dir", str(tmp_path), "--out", str(tmp_path / "o")]
    for given, said in ((["--pretrained", "transformer-tiny", "--problem", PROBLEM], "--pretrained transformer-tiny"),
                        ([], "no --output_dir")):
        assert decode_main(given + data) == 2
        assert f"{said}: decode reads a dataset's TFRecords with a training run" in capsys.readouterr().err
    from allen_sr.commands.decode import build_parser

    assert "--pretrained" not in build_parser().format_help() and "--exported" not in build_parser().format_help()


def test_decoder_registry_dispatch(ckpt_dir):
    hparams = hparams_for(ckpt_dir)
    assert isinstance(registry.make_decoder("img2img_transformer", "fast", hparams, ckpt_dir), FastDecoder)
    with pytest.raises(NotImplementedError, match="not supported"):
        registry.make_decoder("some_other_model", "fast", hparams, ckpt_dir)


def test_a_taken_decoder_name_is_refused_unless_replaced(monkeypatch):
    monkeypatch.setattr(registry, "DECODERS", {m: dict(k) for m, k in registry.DECODERS.items()})
    with pytest.raises(ValueError, match="'fast' decoder of model 'img2img_transformer' is registered already"):
        registry.register_decoder("img2img_transformer", "fast", "my_plugin:Decoder")
    assert registry.DECODERS["img2img_transformer"]["fast"] == "allen_sr.decoding.fast:FastDecoder.from_checkpoint"
    registry.register_decoder("img2img_transformer", "fast", "my_plugin:Decoder", replace=True)
    registry.register_decoder("my_model", "one_pass", "my_plugin:OnePass")
    assert registry.DECODERS["img2img_transformer"]["fast"] == "my_plugin:Decoder"
    assert registry.decoder_kinds("my_model") == ["one_pass"]


def test_import_is_cheap():
    """Importing the decode command and the NumPy decoders must not pull in TensorFlow."""
    import subprocess
    import sys

    code = ("import sys, allen_sr.commands.decode, allen_sr.decoding.fast, allen_sr.decoding.registry; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.stdout.strip() == "False"
