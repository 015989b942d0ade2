"""Decoding tensor2tensor's stock 2-D sets: block-raster order on the real t2t graph, and the fast
decoder's local 2-D caches against it, on real few-step checkpoints.

`img2img_transformer2d_tiny` (n / da sequences) and `img2img_transformer2d_q3` (none / dan) are
trained for a few real optimizer steps through tensor2tensor's estimator model_fn, made small
(hidden 32, 1 encoder / 2 decoder layers) to keep the tests fast. ``query_shape``,
``memory_flange`` and ``num_heads`` change no variable, only the attention, so one checkpoint is
decoded with the shapes of every stock 2-D set through ``--hparams``-style overrides.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from allen_sr.decoding import checkpoints, orders, registry, support
from allen_sr.decoding.fast import FastDecoder
from allen_sr.decoding.reference import NaiveDecoder
from allen_sr.decoding.support import UnsupportedHParamsError
from allen_sr.testing import tiny_training

PROBLEM = "img2img_allen_brain_dim8to32"
SET_2D = "img2img_transformer2d_tiny"
# Warm-up 1 and learning_rate 0.0005 give t2t's legacy noam schedule a rate of ~6e-4 at hidden
# 32: 5 Adam steps move every weight by ~2e-3 while the random initialisation still dominates (4x
# that rate already makes greedy decoding of an 8x8 canvas repeat one value).
SMALL = ("hidden_size=32,filter_size=64,num_heads=4,num_encoder_layers=1,num_decoder_layers=2,"
         "learning_rate_warmup_steps=1,learning_rate=0.0005")
LOGIT_TOL = 1e-4
STOCK_2D = ("img2img_transformer2d_tiny", "img2img_transformer2d_base", "img2img_transformer2d_q1",
            "img2img_transformer2d_q2", "img2img_transformer2d_q3", "img2img_transformer2d_n3",
            "img2img_transformer2d_n31", "img2img_transformer2d_n24", "img2img_transformer2d_n44",
            "img2img_transformer2d_n103", "img2img_transformer_tiny")


def train(out, hparams_set: str, overrides: str = SMALL, model: str = support.DEFAULT_MODEL, steps: int = 5,
          hparams_hook=None) -> str:
    hparams = checkpoints.load_hparams(hparams_set, PROBLEM, overrides)
    if hparams_hook is not None:
        hparams_hook(hparams)
    tiny_training.train_checkpoint(out, hparams, steps=steps, batch_size=4, seed=0, model_name=model)
    return str(out)


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory) -> str:
    return train(tmp_path_factory.mktemp("run_2d"), SET_2D)


def hparams_for(run: str, overrides: str = "", hparams_set: str = SET_2D):
    """As `allen-sr decode --hparams_set ... --hparams ...` builds them (the run's hparams.json too)."""
    return checkpoints.load_hparams(hparams_set, PROBLEM, overrides, output_dir=run)


def shapes(query_shape, memory_flange, heads: int = 4) -> str:
    return (f"query_shape=[{query_shape[0]},{query_shape[1]}],"
            f"memory_flange=[{memory_flange[0]},{memory_flange[1]}],num_heads={heads}")


def random_pair(batch: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (batch, size // 4, size // 4, 3)),
            rng.integers(0, 256, (batch, size, size, 3)))


def in_order(logits: np.ndarray, order: orders.ScanOrder) -> np.ndarray:
    """[B, rows, cols, C, 256] -> [B, steps, 256] in decoding order."""
    return logits.reshape(len(logits), -1, 256)[:, order.positions]


# --------------------------------------------------------------------------- the order itself


def test_block_raster_order_and_flange_on_a_small_grid():
    """2x3 blocks on a 4x6 grid: blocks in raster order, raster inside; each block's first
    position and positions after padding get a zero decoder input (-1)."""
    o = orders.block_raster_order(4, 6, (2, 3), (1, 1))
    assert o.positions.tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11,
                                    12, 13, 14, 18, 19, 20, 15, 16, 17, 21, 22, 23]
    assert o.previous.tolist() == [-1, 0, 1, 2, 6, 7, -1, 3, 4, 5, 9, 10,
                                   -1, 12, 13, 14, 18, 19, -1, 15, 16, 17, 21, 22]
    # Block (1, 1): the row above from one column left to one right (the right one is outside),
    # then the column left of it in its own rows.
    assert orders.flange_cells(o, 1, 1).tolist() == [8, 9, 10, 11, 14, 20]
    padded = orders.block_raster_order(3, 5, (2, 3))  # padded to 4x6: 15 real positions
    assert padded.positions.tolist() == [0, 1, 2, 5, 6, 7, 3, 4, 8, 9, 10, 11, 12, 13, 14]
    assert padded.previous.tolist() == [-1, 0, 1, 2, 5, 6, -1, 3, -1, 8, -1, 10, 11, -1, 13]
    raster = orders.raster_order(2, 3)
    assert raster.positions.tolist() == list(range(6)) and raster.previous.tolist() == [-1, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("query_shape, memory_flange", [((16, 16), (16, 32)), ((12, 20), (8, 16))])
def test_t2t_graph_is_causal_in_block_raster_order(ckpt_2d, query_shape, memory_flange):
    """On the real t2t graph: the logits at step t do not change (exactly) when every later
    position in block-raster order changes, and do change when an earlier one changes, including
    one that raster order puts later (a lower row of the left flange). (12, 20) does not divide
    the 32x96 grid: t2t pads, and the order skips the padding."""
    hparams = hparams_for(ckpt_2d, shapes(query_shape, memory_flange))
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_2d))
    try:
        order = naive.order
        assert order.kind == "block_raster" and sorted(order.positions) == list(range(3072))
        rng = np.random.default_rng(0)
        inputs, targets = random_pair(1, 32, seed=1)
        base = in_order(naive.logits(inputs, targets), order)
        qh, qw = query_shape
        per_block = qh * qw
        block_start = 3 * per_block  # the 4th block's first step (the first 4 blocks are whole)
        for t in (0, per_block - 1, block_start, block_start + 2 * qw + 5, 1500, 3070):
            later = targets.copy().reshape(-1)
            later[order.positions[t + 1:]] = (later[order.positions[t + 1:]]
                                              + rng.integers(1, 256, 3071 - t)) % 256
            after = in_order(naive.logits(inputs, later.reshape(targets.shape)), order)
            assert np.array_equal(after[:, :t + 1], base[:, :t + 1]), f"step {t} saw a later position"
            if t + 2 < len(order):  # (a step's own value never changes its own logits)
                assert np.abs(after[:, t + 2:] - base[:, t + 2:]).max() > 1e-3
        assert order.previous[block_start] == -1
        # An earlier position that raster order puts later: in the left flange's bottom row (the
        # second-to-last position of the block on the left: the last one's value is never an
        # input, see below, but the last one's key is in the flange and holds this value).
        t = block_start  # first position of a block with a block to its left
        width = order.width
        r, g = divmod(int(order.positions[t]), width)
        assert g >= memory_flange[1] >= 2  # the block has a left flange
        flange_cell = (r + qh - 1) * width + g - 2
        assert flange_cell > order.positions[t]  # later in raster order ...
        assert order.steps_of()[flange_cell] < t  # ... earlier in block-raster order
        changed = targets.copy().reshape(-1)
        changed[flange_cell] = (changed[flange_cell] + 128) % 256
        after = in_order(naive.logits(inputs, changed.reshape(targets.shape)), order)
        # Unchanged logits are bitwise equal (above), so any difference is the dependence.
        assert np.abs(after[:, t] - base[:, t]).max() > 1e-6
        # The decoder input of a position is its in-block predecessor's value.
        t2 = block_start + 1
        changed = targets.copy().reshape(-1)
        changed[order.previous[t2]] = (changed[order.previous[t2]] + 128) % 256
        after = in_order(naive.logits(inputs, changed.reshape(targets.shape)), order)
        assert np.abs(after[:, t2] - base[:, t2]).max() > 1e-3
        # t2t's right_shift_blockwise drops the last position of every block: its value is never
        # an input, so nothing depends on it.
        last = int(order.positions[block_start - 1])
        assert last not in set(order.previous.tolist())
        changed = targets.copy().reshape(-1)
        changed[last] = (changed[last] + 128) % 256
        after = in_order(naive.logits(inputs, changed.reshape(targets.shape)), order)
        assert np.array_equal(after, base)
    finally:
        naive.close()


def test_block_raster_scan_does_not_change_the_trained_network(ckpt_2d):
    """block_raster_scan (True in the stock 2-D sets) only reshapes t2t's own PREDICT-mode canvas."""
    inputs, targets = random_pair(1, 32, seed=2)
    got = []
    for flag in (True, False):
        naive = NaiveDecoder(hparams_for(ckpt_2d, f"block_raster_scan={flag}"), checkpoints.find_checkpoint(ckpt_2d))
        got.append(naive.logits(inputs, targets))
        naive.close()
    assert np.array_equal(got[0], got[1])


# --------------------------------------------------------------------------- fast == t2t graph


@pytest.mark.parametrize("query_shape, memory_flange, heads, size", [
    ((16, 16), (16, 32), 4, 32),  # img2img_transformer2d_tiny, _base, _q2
    ((16, 16), (16, 64), 4, 32),  # _q1
    ((8, 16), (8, 32), 4, 32),    # _q3, _n24, _n44
    ((16, 32), (16, 16), 4, 32),  # _n3
    ((8, 32), (8, 64), 4, 32),    # _n103 (and _n31's (16, 32) blocks)
    ((16, 16), (16, 32), 1, 32),  # img2img_transformer_tiny: one head
    ((4, 12), (0, 8), 4, 32),     # no top flange
    ((8, 8), (4, 0), 4, 32),      # no left flange
    ((12, 20), (8, 16), 4, 32),   # padded blocks on both axes
    ((16, 16), (16, 32), 4, 8),   # 8x8x3 canvas (grid 8x24) inside one padded block row
])
def test_fast_logits_equal_t2t_graph(ckpt_2d, query_shape, memory_flange, heads, size):
    """Teacher-forced logits of the incremental 2-D decoder == one forward pass of the t2t graph,
    at every position."""
    hparams = hparams_for(ckpt_2d, shapes(query_shape, memory_flange, heads))
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_2d), target_shape=(size, size))
    try:
        inputs, targets = random_pair(2, size, seed=sum(query_shape) + heads)
        expected = naive.logits(inputs, targets)
        zero_canvas = naive.logits(inputs, np.zeros_like(targets))
    finally:
        naive.close()
    fast = FastDecoder.from_checkpoint(hparams, ckpt_2d, target_shape=(size, size))
    assert fast.order.kind == "block_raster"
    got = fast.logits(inputs, targets)
    assert got.shape == expected.shape == (2, size, size, 3, 256)
    assert expected.std() > 0.05 and np.abs(expected - zero_canvas).max() > 0.05
    assert np.abs(got - expected).max() < LOGIT_TOL


def test_fast_logits_equal_t2t_graph_none_dan_sequences(tmp_path):
    """img2img_transformer2d_q3's sequences: no preprocess, dropout-add-norm after each layer."""
    run = train(tmp_path / "q3", "img2img_transformer2d_q3", steps=3)
    hparams = hparams_for(run, hparams_set="img2img_transformer2d_q3")
    assert (hparams.layer_preprocess_sequence, hparams.layer_postprocess_sequence) == ("none", "dan")
    inputs, targets = random_pair(2, 32, seed=3)
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(run))
    try:
        expected = naive.logits(inputs, targets)
    finally:
        naive.close()
    got = FastDecoder.from_checkpoint(hparams, run).logits(inputs, targets)
    assert np.abs(got - expected).max() < LOGIT_TOL


def test_input_skip_model_with_local_2d(tmp_path):
    """img2img_transformer_sr with our set switched to local 2-D attention by --hparams."""
    overrides = ("dec_attention_type=local_2d,query_shape=[8,16],memory_flange=[8,32],hidden_size=32,"
                 "filter_size=64,num_encoder_layers=1,num_decoder_layers=2,learning_rate_warmup_steps=1,"
                 "learning_rate_constant=0.016")
    run = train(tmp_path / "sr", "img2img_allen_cpu_tiny", overrides, model=support.SKIP_MODEL, steps=3)
    hparams = hparams_for(run, hparams_set="img2img_allen_cpu_tiny")
    assert hparams.input_skip and hparams.dec_attention_type == "local_2d"
    inputs, targets = random_pair(2, 32, seed=4)
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(run), model_name=support.SKIP_MODEL)
    try:
        expected = naive.logits(inputs, targets)
    finally:
        naive.close()
    fast = FastDecoder.from_checkpoint(hparams, run, model_name=support.SKIP_MODEL)
    # Our set has the bicubic prior, whose logits reach -0.5 * (255 / sigma)^2 far from its
    # centre: there float32 carries ~7 digits, so the tolerance is relative (as test_decoding's).
    np.testing.assert_allclose(fast.logits(inputs, targets), expected, rtol=LOGIT_TOL, atol=LOGIT_TOL)


# --------------------------------------------------------------------------- decoding


def assert_same_or_tie(naive, inputs, naive_out, fast_out, steps: int) -> None:
    """Outputs agree on the first ``steps`` steps of the order, or first differ at a (near) tie."""
    positions = naive.order.positions
    a = naive_out.reshape(len(naive_out), -1)[:, positions[:steps]]
    b = fast_out.reshape(len(fast_out), -1)[:, positions[:steps]]
    for i in range(len(a)):
        diff = np.flatnonzero(a[i] != b[i])
        if diff.size == 0:
            continue
        t = int(diff[0])
        canvas = naive_out[i:i + 1].astype(np.int32).copy()
        canvas.reshape(-1)[positions[t:]] = 0  # the naive canvas just before it chose step t
        logits = naive.step_logits(np.asarray(inputs)[i:i + 1], canvas, int(positions[t]))[0]
        gap = abs(float(logits[a[i, t]]) - float(logits[b[i, t]]))
        assert gap < LOGIT_TOL, f"example {i}: first difference at step {t} is no tie (logit gap {gap})"


@pytest.fixture(scope="module")
def small_canvas(ckpt_2d):
    """8x8x3 canvas (grid 8x24) in 8 query blocks of 4x6 with a (2, 6) flange: every part of the
    window (top, left, centre, image edges) within 192 steps."""
    hparams = hparams_for(ckpt_2d, shapes((4, 6), (2, 6)))
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(ckpt_2d), target_shape=(8, 8))
    yield naive, FastDecoder.from_checkpoint(hparams, ckpt_2d, target_shape=(8, 8))
    naive.close()


def test_greedy_fast_equals_naive_whole_images(small_canvas):
    naive, fast = small_canvas
    inputs, _ = random_pair(2, 8, seed=11)
    fast_out, naive_out = fast.decode(inputs), naive.decode(inputs)
    assert fast_out.shape == naive_out.shape == (2, 8, 8, 3)
    assert_same_or_tie(naive, inputs, naive_out, fast_out, 8 * 8 * 3)
    assert len(np.unique(fast_out)) >= 3


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_fast_and_naive_agree_in_other_modes(small_canvas, mode):
    naive, fast = small_canvas
    inputs, _ = random_pair(2, 8, seed=29)
    kwargs = dict(mode=mode, seed=4, temperature=0.8, max_steps=60)
    out = fast.decode(inputs, **kwargs)
    np.testing.assert_array_equal(out, naive.decode(inputs, **kwargs))
    # max_steps counts steps of the block-raster order: exactly those positions are filled.
    filled = np.zeros(8 * 8 * 3, bool)
    filled[fast.order.positions[:60]] = True
    assert not out.reshape(2, -1)[:, ~filled].any()


# --------------------------------------------------------------------------- the stock sets


def stock_img2img_sets() -> list[str]:
    from tensor2tensor.utils import registry as t2t_registry

    from allen_sr.t2t.names import register_all

    register_all()
    return sorted(n for n in t2t_registry.list_hparams() if n.startswith("img2img_transformer"))


def test_every_stock_img2img_set_is_decoded_or_refused_by_name():
    """The 2-D sets (and img2img_transformer_tiny, built on the 2-D base) go to the fast decoder,
    in block-raster order. The 1-D sets name no inputs bottom, so on these problems t2t feeds raw
    pixels to the encoder and cannot build the model (next test): refused naming bottom['inputs'],
    without pointing to the naive decoder, which refuses them too. _dilated names its attention."""
    names = stock_img2img_sets()
    assert set(STOCK_2D) <= set(names) and "img2img_transformer_b3" in names
    for name in names:
        hparams = checkpoints.load_hparams(name, PROBLEM)
        if name in STOCK_2D:
            support.check_supported(hparams)
            assert orders.causal_order(hparams, 32, 32, 3).kind == "block_raster", name
            continue
        with pytest.raises(UnsupportedHParamsError) as fast_info:
            support.check_supported(hparams)
        with pytest.raises(UnsupportedHParamsError) as naive_info:
            support.check_decodable(hparams)
        expected = "dec_attention_type='dilated'" if name.endswith("dilated") else "bottom['inputs']=identity_bottom"
        for info in (fast_info, naive_info):
            assert expected in str(info.value), name
            assert "naive" not in str(info.value), name
        assert "image_channel_embeddings_bottom" in str(fast_info.value) or "decodable:" in str(fast_info.value)


def test_hparams_overrides_of_the_2d_sets():
    """--hparams overrides as t2t-trainer parses them: other shapes and layer counts decode; a
    query_shape that is no pair of positive integers is refused by name."""
    hparams = checkpoints.load_hparams(
        SET_2D, PROBLEM, "query_shape=[8,32],memory_flange=[8,0],num_decoder_layers=3,num_heads=8")
    support.check_supported(hparams)
    order = orders.causal_order(hparams, 32, 32, 3)
    assert (order.query_shape, order.memory_flange) == ((8, 32), (8, 0))
    for bad in ("query_shape=[0,16]", "memory_flange=[-1,16]", "query_shape=[8]"):
        with pytest.raises(UnsupportedHParamsError, match=bad.split("=")[0]):
            support.check_decodable(checkpoints.load_hparams(SET_2D, PROBLEM, bad))


def test_t2t_cannot_build_the_1d_stock_sets_on_these_problems():
    """Why they are refused: t2t's own graph fails on the raw [h, w, 3] input pixels."""
    from allen_sr.t2t.names import register_all

    register_all()
    import tensorflow as tf
    from tensor2tensor.utils import registry as t2t_registry

    hparams = checkpoints.load_hparams("img2img_transformer_b3", PROBLEM, "hidden_size=32,num_heads=4")
    with tf.Graph().as_default():
        model = t2t_registry.model("img2img_transformer")(hparams, tf.estimator.ModeKeys.EVAL)
        features = {"inputs": tf.zeros([1, 8, 8, 3], tf.int32), "targets": tf.zeros([1, 32, 32, 3], tf.int32)}
        with pytest.raises(ValueError, match="Cannot reshape"):
            model(features)


def test_1d_stock_sequences_decode_exactly_given_embedded_inputs(tmp_path):
    """The rest of the 1-D stock sets (img2img_transformer_b3: none / dan, block 128, local_1d)
    decodes exactly once the inputs are embedded, as a problem with that modality would do."""
    from tensor2tensor.layers import modalities

    def embed_inputs(hparams):
        hparams.bottom["inputs"] = modalities.image_channel_embeddings_bottom

    run = train(tmp_path / "b3", "img2img_transformer_b3", steps=3, hparams_hook=embed_inputs)
    hparams = hparams_for(run, hparams_set="img2img_transformer_b3")
    embed_inputs(hparams)
    support.check_supported(hparams)
    inputs, targets = random_pair(2, 32, seed=6)
    naive = NaiveDecoder(hparams, checkpoints.find_checkpoint(run))
    try:
        expected = naive.logits(inputs, targets)
    finally:
        naive.close()
    fast = FastDecoder.from_checkpoint(hparams, run)
    assert fast.order.kind == "raster"
    assert np.abs(fast.logits(inputs, targets) - expected).max() < LOGIT_TOL


# --------------------------------------------------------------------------- registry and commands


def test_default_decoder_is_the_fast_one(ckpt_2d):
    decoder = registry.make_decoder(support.DEFAULT_MODEL, None, hparams_for(ckpt_2d), ckpt_2d)
    assert isinstance(decoder, FastDecoder) and decoder.order.kind == "block_raster"


def test_default_falls_back_to_a_decoder_that_accepts_the_hparams(monkeypatch, ckpt_2d):
    """When the default (fast) refuses, the next kind that accepts is used, with a warning; an
    explicit --decoder is never replaced; if none accepts, the default's error is raised."""
    def refuses(*args, **kwargs):
        raise UnsupportedHParamsError("the fast decoder does not support x=1")

    accepted = object()
    monkeypatch.setitem(registry.DECODERS, "some_model", {"fast": refuses, "naive": lambda *a, **k: accepted})
    with pytest.warns(UserWarning, match="x=1; decoding with --decoder naive"):
        assert registry.make_decoder("some_model", None, None, ckpt_2d) is accepted
    with pytest.raises(UnsupportedHParamsError, match="x=1"):
        registry.make_decoder("some_model", "fast", None, ckpt_2d)
    monkeypatch.setitem(registry.DECODERS, "some_model", {"fast": refuses, "naive": refuses})
    with pytest.raises(UnsupportedHParamsError, match="x=1"):
        registry.make_decoder("some_model", None, None, ckpt_2d)


def test_evaluate_and_upscale_commands(ckpt_2d, tmp_path):
    """The commands decode a 2-D checkpoint with the fast decoder by default (`decode` itself:
    the demo test below)."""
    from PIL import Image

    from allen_sr.commands import evaluate, upscale
    from conftest import tissue_image

    flags = [f"--problem={PROBLEM}", f"--hparams_set={SET_2D}", f"--output_dir={ckpt_2d}", "--no_progress"]
    images = tmp_path / "imgs"
    images.mkdir()
    src = images / "s.png"
    Image.fromarray(tissue_image(96, 128, seed=1)).save(src)
    assert evaluate.evaluate_main(flags + [f"--images={images}", "--max_tiles=2", f"--out={tmp_path / 'eval'}"]) == 0
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["tiles"] == 2 and "fast" in summary["protocol"]
    out = tmp_path / "up.png"
    assert upscale.upscale_main(flags + [f"--image={src}", "--left=40", "--top=40", "--width=16",
                                         "--height=8", "--overlap=0", f"--out={out}"]) == 0
    tile = np.asarray(Image.open(src))[40:48, 48:56][None]
    expected = FastDecoder.from_checkpoint(hparams_for(ckpt_2d), ckpt_2d).decode(tile)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out))[:, 32:], expected)


@pytest.mark.slow
def test_demo_with_the_original_experiments_hparams_set(tmp_path):
    """`allen-sr demo --hparams_set img2img_transformer2d_tiny --model img2img_transformer`:
    the stock set trains through t2t-trainer and decodes (fast decoder, block-raster order)."""
    from conftest import REPO

    out = tmp_path / "demo"
    cmd = [os.path.join(os.path.dirname(sys.executable), "allen-sr"), "demo", f"--out={out}",
           "--hparams_set=img2img_transformer2d_tiny", "--model=img2img_transformer",
           "--train_steps=3", "--num_examples=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"] == 4
    assert "img2img_transformer img2img_transformer2d_tiny" in metrics["protocol"]
    assert "fast decoding" in metrics["protocol"]
    assert os.path.exists(out / "train" / "model.ckpt-3.index")
    assert json.loads((out / "train" / "hparams.json").read_text())["query_shape"] == [16, 16]
