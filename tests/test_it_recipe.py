"""The Image Transformer's training recipe (img2img_transformer_sr): the training clock and its
time-driven learning rate, the stop at train_budget_seconds, the training-only options (smooth
embedding init and penalty, noisy conditioning, colour augmentation) leaving the decoded network
exact, and each hparams set's default decoding mode.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import tensorflow as tf

from allen_sr.decoding import checkpoints
from allen_sr.decoding.registry import make_decoder
from allen_sr.models import image_transformer
from allen_sr.t2t import problems
from allen_sr.testing import tiny_training

PROBLEM = "img2img_local_dim8to32"
MODEL = image_transformer.MODEL_NAME
IT_SETS = ("img2img_allen_cpu_tiny", "img2img_allen_base", "img2img_allen_multigpu")
SMALL = ("hidden_size=16,filter_size=32,num_heads=2,num_encoder_layers=1,num_decoder_layers=1,"
         "block_length=32,batch_size=2")


def small_hparams(extra: str = "", output_dir=None):
    return checkpoints.load_hparams("img2img_allen_cpu_tiny", PROBLEM, ",".join(x for x in (SMALL, extra) if x),
                                    output_dir)


def test_every_it_set_has_the_clock_and_a_default_decoding_mode():
    for name in IT_SETS:
        hp = checkpoints.load_hparams(name, PROBLEM)
        assert hp.train_budget_seconds == 0.0
        assert hp.decode_mode in ("greedy", "sample", "mean")
        assert hp.color_augment == hp.color_augment.strip()
        hp = checkpoints.load_hparams(name, PROBLEM, "train_budget_seconds=900,decode_mode=greedy")
        assert hp.train_budget_seconds == 900.0 and hp.decode_mode == "greedy"


def test_options_are_declared_once_and_a_stock_set_gets_their_documented_defaults():
    """allen_sr.models.transformer_options is the one declaration: our sets start from it, the
    model completes a stock set's hparams from it, and the NumPy decoders read the same values."""
    import ast
    from pathlib import Path

    from allen_sr.models import transformer_options as options

    names = [name for name, _, _ in options.TRANSFORMER_HPARAMS]
    assert len(names) == len(set(names)) and all(doc for _, _, doc in options.TRANSFORMER_HPARAMS)
    base = checkpoints.load_hparams("img2img_allen_base", PROBLEM)
    for name in names:
        assert getattr(base, name) == options.DEFAULTS[name], name  # the base set overrides none
    stock = checkpoints.load_hparams("img2img_transformer2d_tiny", PROBLEM)
    assert not any(hasattr(stock, name) for name in names)
    model = image_transformer.Img2imgTransformerSr(stock, tf.estimator.ModeKeys.TRAIN)
    assert {name: getattr(model.hparams, name) for name in names} == options.DEFAULTS
    assert {name: options.option(stock, name) for name in names} == options.DEFAULTS
    # Nothing reads an option with a fallback of its own any more (decode_mode and decode_tta are
    # every model's: the commands read them for the conv model too).
    checked = [name for name in names if not name.startswith("decode_")]
    root = Path(image_transformer.__file__).parents[1]
    readers = [root / "models" / "image_transformer.py", *sorted((root / "decoding").glob("*.py"))]
    for path in readers:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr"
                    and len(node.args) == 3 and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value not in checked, f"{path.name}:{node.lineno} getattr {node.args[1].value}"


def test_open_model_decodes_with_the_sets_mode_unless_told(tmp_path):
    from allen_sr.commands.args import ModelSpec, open_model

    tiny_training.train_checkpoint(tmp_path, small_hparams(), steps=1, batch_size=2, model_name=MODEL)
    spec = ModelSpec(problem=PROBLEM, hparams_set="img2img_allen_cpu_tiny", output_dir=str(tmp_path),
                     model=MODEL, hparams=SMALL)
    default = checkpoints.load_hparams("img2img_allen_cpu_tiny", PROBLEM).decode_mode
    assert open_model(spec).mode == default
    import dataclasses

    assert open_model(dataclasses.replace(spec, mode="sample")).mode == "sample"


def test_learning_rate_follows_the_training_clock():
    """With train_budget_seconds the learning rate is t2t's schedule times a clamped half cosine
    of the elapsed training time (not of the step)."""
    hp = small_hparams("train_budget_seconds=100,cosine_decay_min=0.1")
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        model = image_transformer.Img2imgTransformerSr(hp, tf.estimator.ModeKeys.TRAIN)
        step = v1.train.get_or_create_global_step()
        lr = model._learning_rate(1)
        elapsed = model._clock[0]
        with v1.Session() as session:
            session.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
            session.run(step.assign(500))
            base = session.run(lr)
            for seconds, factor in ((0, 1.0), (25, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
                                    (50, 0.55), (100, 0.1), (1000, 0.1)):
                session.run(elapsed.assign(float(seconds)))
                np.testing.assert_allclose(session.run(lr), base * factor, rtol=1e-5)
            # After its short warm-up the tiny set's own schedule is flat: the step alone does
            # not move the rate, only the clock does.
            session.run(elapsed.assign(50.0))
            at_500 = session.run(lr)
            session.run(step.assign(2000))
            np.testing.assert_allclose(session.run(lr), at_500, rtol=1e-6)
            np.testing.assert_allclose(base, 0.024 / math.sqrt(16), rtol=1e-5)  # hidden 16


def test_train_budget_stops_training_with_a_final_checkpoint(tmp_path):
    hp = small_hparams("train_budget_seconds=2.0")
    started = time.monotonic()
    ckpt = tiny_training.train_checkpoint(tmp_path, hp, steps=10 ** 6, batch_size=2, model_name=MODEL)
    wall = time.monotonic() - started
    reader = tf.train.load_checkpoint(ckpt)
    steps = int(reader.get_tensor("global_step"))
    clock = float(reader.get_tensor("train_clock/elapsed_seconds"))
    assert 2 <= steps < 10 ** 6
    assert ckpt.endswith(f"-{steps}")
    # Stops at the first step at or past the budget: past it by at most one (slow, shared) step.
    assert 2.0 <= clock < 2.0 + 10.0
    assert wall < 300  # graph building (slow on a shared machine) + 2 s of training + the final checkpoint


@pytest.fixture(scope="module")
def trained_with_every_training_option(tmp_path_factory):
    out = tmp_path_factory.mktemp("it_recipe")
    extra = ("embedding_init=smooth,embedding_smoothness=0.1,target_noise=3,input_skip=True,"
             "context_bicubic=0.5,self_condition=0.5,ev_loss_weight=1.0,learning_rate_warmup_steps=1")
    ckpt = tiny_training.train_checkpoint(out, small_hparams(extra), steps=3, batch_size=2, model_name=MODEL)
    return out, ckpt, extra


def test_training_only_options_leave_the_decoders_exact(trained_with_every_training_option):
    """The fast decoder's logits equal the t2t graph's for a model trained with the smooth
    embedding init, its penalty, noisy and bicubic conditioning, the expected-value loss (they
    change training, not the network)."""
    out, ckpt, extra = trained_with_every_training_option
    hp = small_hparams(extra, output_dir=out)
    inputs, targets = tiny_training.synthetic_examples(2, 32, 4, seed=5)
    fast = make_decoder(MODEL, "fast", hp, ckpt, (32, 32))
    naive = make_decoder(MODEL, "naive", hp, ckpt, (32, 32))
    try:
        # rtol: the bicubic prior's logits are large far from its centre (see test_decoding).
        np.testing.assert_allclose(fast.logits(inputs, targets), naive.logits(inputs, targets),
                                   rtol=1e-4, atol=1e-4)
    finally:
        naive.close()


def test_smooth_embeddings_start_smooth_and_the_penalty_is_their_neighbour_difference():
    hp = small_hparams("embedding_init=smooth")
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        init = image_transformer.smooth_embedding_initializer(None, 3)
        emb = init([768, 16])
        penalty = image_transformer.embedding_smoothness_penalty(emb, 3)
        rough = v1.random_normal([768, 16], stddev=16 ** -0.5)
        with v1.Session() as session:
            e, p, r = session.run([emb, penalty, rough])
    np.testing.assert_allclose(e.std(), 16 ** -0.5, rtol=0.2)
    e3 = e.reshape(3, 256, 16)
    np.testing.assert_allclose(p, np.mean(np.sum(np.diff(e3, axis=1) ** 2, axis=-1)), rtol=1e-5)
    assert np.abs(np.diff(e3, axis=1)).mean() < 0.1 * np.abs(np.diff(r.reshape(3, 256, 16), axis=1)).mean()
    assert hp.embedding_init == "smooth"


def test_expected_value_error_is_the_l1_of_the_distributions_means():
    """``ev_loss_weight``'s term: |E[v] - target| averaged, in ``unit`` grey levels."""
    values = np.arange(256, dtype=np.float32)
    peaked = -0.5 * ((values - 100.0) / 0.5) ** 2  # mean 100
    flat = np.zeros(256, np.float32)  # mean 127.5
    logits = np.stack([peaked, flat])[None]  # [1, 2, 256]
    targets = np.array([[[104], [127]]], np.int64)  # one more axis, as t2t's targets
    with tf.Graph().as_default():
        error = image_transformer.expected_value_error(tf.constant(logits), tf.constant(targets), 8.0)
        with tf.compat.v1.Session() as session:
            got = session.run(error)
    np.testing.assert_allclose(got, (4.0 + 0.5) / 2 / 8.0, rtol=1e-4)


def test_noisy_targets_stay_in_range_and_within_the_amplitude():
    with tf.Graph().as_default():
        t = tf.constant(np.array([0, 1, 128, 254, 255] * 200, np.int64))
        noisy = image_transformer.noisy_targets(t, 3)
        with tf.compat.v1.Session() as session:
            a, b = session.run([t, noisy])
    assert b.min() >= 0 and b.max() <= 255 and np.abs(a - b).max() <= 3 and (a != b).any()


def test_color_augment_keeps_white_and_permutes_channels():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    tile[:8] = 255
    with tf.Graph().as_default():
        x = tf.constant(tile)
        od = problems.color_augment(x, "od")
        perm = problems.color_augment(x, "permute")
        both = problems.color_augment(x, "od+brightness+permute")
        with tf.compat.v1.Session() as session:
            outs = [session.run([od, perm, both]) for _ in range(4)]
    for o, p, b in outs:
        assert o.dtype == p.dtype == b.dtype == np.uint8 and b.shape == tile.shape
        assert (o[:8] == 255).all()  # white glass stays white under a stain change
        assert sorted(p.reshape(-1, 3)[:50].T.tolist()) == sorted(tile.reshape(-1, 3)[:50].T.tolist())
    assert any((o != tile).any() for o, _, _ in outs)
    with pytest.raises(ValueError, match="unknown part"):
        problems.color_augment(tf.constant(tile), "hue")


def test_the_bicubic_prior_starts_at_bicubic(tmp_path):
    """With ``bicubic_prior`` and no free logits, a model whose prior head is still at its zero
    initialisation predicts each sub-pixel's bicubic value whatever the rest of the network does:
    greedy decoding (the Gaussian's mode) gives the rounded centres exactly, which are Pillow's
    bicubic upscale to within a grey level (Pillow rounds its 8-bit intermediate)."""
    from allen_sr.evaluation import metrics
    from allen_sr.evaluation.bicubic import bicubic_centres

    extra = "bicubic_prior=True,free_logit_scale=0.0,learning_rate_constant=0.0"
    ckpt = tiny_training.train_checkpoint(tmp_path, small_hparams(extra), steps=1, batch_size=2, model_name=MODEL)
    hp = small_hparams(extra, output_dir=tmp_path)
    inputs, _ = tiny_training.synthetic_examples(3, 32, 4, seed=2)
    decoded = make_decoder(MODEL, "fast", hp, ckpt, (32, 32)).decode(inputs, mode="greedy", progress=False)
    np.testing.assert_array_equal(decoded, np.rint(bicubic_centres(inputs, 4)).astype(np.uint8))
    pillow = np.stack([metrics.upscale(x.astype(np.uint8), 4, "bicubic") for x in inputs])
    assert np.abs(decoded.astype(int) - pillow.astype(int)).max() <= 1
    assert pillow.std() > 10  # a real picture, not a flat one that any constant would match


def test_bicubic_context_replaces_about_that_share_of_the_conditioning():
    inputs, targets = tiny_training.synthetic_examples(4, 32, 4, seed=3)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        mixed = session.run(image_transformer.bicubic_context(
            tf.constant(inputs, tf.int32), tf.constant(targets, tf.int32), 0.5))
    from allen_sr.evaluation.bicubic import bicubic_centres

    bicubic = np.rint(bicubic_centres(inputs, 4)).astype(int)
    from_targets, from_bicubic = mixed == targets, mixed == bicubic
    assert (from_targets | from_bicubic).all()
    share = (from_bicubic & ~from_targets).sum() / (bicubic != targets).sum()
    assert 0.4 < share < 0.6, share
