"""The residual CNN `img2img_conv_sr`: real t2t training, its one-pass decoder and the CLI.

Checkpoints are made by a few real optimizer steps through tensor2tensor's estimator model_fn
(`tiny_training.train_checkpoint`, t2t-trainer's code path) or by `allen-sr train` itself, with a tiny
variant of the hparams sets (width 8, one residual block) so that every run takes seconds.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from allen_sr.commands import decode, evaluate
from allen_sr.decoding import batching, checkpoints, one_pass
from allen_sr.decoding.registry import decoder_kinds, make_decoder
from allen_sr.evaluation import metrics
from allen_sr.models import conv_net, conv_sr, normalization, schedule, variables
from allen_sr.testing import tiny_training
from allen_sr.t2t.names import register_all
from conftest import REPO, save_tissue_images, tissue_image

PROBLEM = "img2img_local_dim8to32"
MODEL = conv_sr.MODEL_NAME
CPU_SET = "img2img_conv_sr_cpu"
HYBRID_SET = "img2img_conv_sr_cpu_hybrid"
FAST_SET = "img2img_conv_sr_fast"
SMALL = "hidden_size=8,num_res_blocks=1"
# The tests compare single predictions (e.g. with t2t's own); test_tta covers the set's default.
TINY = f"{SMALL},decode_tta=False"
BIN = os.path.dirname(sys.executable)


def tiny_hparams(hparams_set: str = CPU_SET, extra: str = "", output_dir=None):
    """The hparams set at TINY size, with ``extra`` "k=v,..." overrides (which win)."""
    merged = dict(kv.split("=", 1) for kv in f"{TINY},{extra}".strip(",").split(","))
    overrides = ",".join(f"{k}={v}" for k, v in merged.items())
    return checkpoints.load_hparams(hparams_set, PROBLEM, overrides, output_dir)


def checkpoint_values(ckpt: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(ckpt)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(ckpt)}


def train_graph(hparams, model_dir, batch_size: int = 2, seed: int = 0):
    """(graph, EstimatorSpec) of the model's real TRAIN graph (t2t's estimator model_fn, as
    t2t-trainer builds it) on one fixed batch of synthetic examples; nothing is run."""
    from tensor2tensor.utils import hparams_lib, t2t_model, trainer_lib
    from tensorflow.python.autograph.core import ag_ctx

    hp = hparams_lib.copy_hparams(hparams)
    for key, value in (("model_dir", str(model_dir)), ("data_dir", ""), ("train_steps", 1), ("eval_steps", 1),
                       ("schedule", "train"), ("warm_start_from", None), ("std_server_protocol", "grpc"),
                       ("eval_freq_in_steps", 1), ("eval_timeout_mins", 1)):
        if not hasattr(hp, key):
            hp.add_hparam(key, value)
    inputs, targets = tiny_training.synthetic_examples(batch_size, 32, 4, seed=seed)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        config = trainer_lib.create_run_config(MODEL, model_dir=str(model_dir), num_gpus=0)
        features = {"inputs": tf.constant(inputs, tf.int64), "targets": tf.constant(targets, tf.int64)}
        model_fn = t2t_model.T2TModel.make_estimator_model_fn(MODEL, hp)
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):  # skip AutoGraph's slow rewrite
            spec = model_fn(features, None, tf.estimator.ModeKeys.TRAIN, config=config)
    return graph, spec


def upstream_updates(op) -> list:
    """The optimizer updates (Apply*/ResourceApply* ops) that ``op`` waits for, via inputs or control inputs."""
    seen, todo, found = set(), [op], []
    while todo:
        node = todo.pop()
        for before in [t.op for t in node.inputs] + list(node.control_inputs):
            if before.name not in seen:
                seen.add(before.name)
                todo.append(before)
                if "Apply" in before.type:
                    found.append(before)
    return found


def summarized(graph, tag: str):
    """The tensor a scalar summary ``tag`` (as TensorBoard shows it) of ``graph`` reports."""
    [op] = [op for op in graph.get_operations()
            if op.type == "ScalarSummary" and (op.name == tag or op.name.endswith("/" + tag))]
    return op.inputs[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """Our problem's real datagen on brightfield-like synthetic images (records + stats)."""
    from tensor2tensor.utils import registry

    register_all()  # the test may run alone (-k): nothing else registered the problems yet
    root = tmp_path_factory.mktemp("conv_data")
    images = save_tissue_images(root / "images", height=160, width=192)
    out = root / "data"
    registry.problem(PROBLEM).generate_data(str(out), str(images))
    return str(out)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("conv_run")
    tiny_training.train_checkpoint(out, tiny_hparams(), steps=3, batch_size=4, model_name=MODEL)
    return str(out)


@pytest.fixture(scope="module")
def decoder(ckpt_dir):
    dec = make_decoder(MODEL, None, tiny_hparams(output_dir=ckpt_dir), ckpt_dir, (32, 32))
    yield dec
    dec.close()


# --------------------------------------------------------------------------- hparams and errors


def test_hparams_sets_are_registered_with_docstrings():
    from tensor2tensor.utils import registry

    register_all()
    from allen_sr.hparams import conv_sr as sets

    for name in (CPU_SET, HYBRID_SET, "img2img_conv_sr_gpu", FAST_SET):
        assert name in registry.list_hparams() and getattr(sets, name).__doc__
    cpu, hybrid, gpu, fast = (checkpoints.load_hparams(n, PROBLEM)
                              for n in (CPU_SET, HYBRID_SET, "img2img_conv_sr_gpu", FAST_SET))
    assert (cpu.hidden_size, cpu.num_res_blocks, cpu.batch_size, cpu.gan_weight) == (64, 6, 64, 0.0)
    assert hybrid.gan_weight > 0 and hybrid.hidden_size == cpu.hidden_size
    assert cpu.decode_tta and not hybrid.decode_tta  # averaging would blur the adversarial texture
    assert gpu.hidden_size > cpu.hidden_size and gpu.num_res_blocks > cpu.num_res_blocks
    # The fast set: nothing at the output resolution, a fraction of the cpu set's width and depth.
    assert fast.upsample == "input_res" and not fast.decode_tta
    assert fast.hidden_size < cpu.hidden_size and fast.num_res_blocks < cpu.num_res_blocks
    for hp in (cpu, hybrid, gpu, fast):
        conv_sr.check_hparams(hp, conv_sr.scale_factor(hp))
    # Every hparam the model adds has a default and a one-line description, where it is defined.
    names = [name for name, _, _ in conv_sr.HPARAMS]
    assert len(set(names)) == len(names) == 21
    assert all(doc and "\n" not in doc for _, _, doc in conv_sr.HPARAMS)
    assert all(getattr(cpu, name) is not None for name in names)


def test_one_pass_is_the_models_only_decoder_and_imports_lightly():
    """The registry's table names the one-pass decoder; importing it loads no TensorFlow."""
    assert decoder_kinds(MODEL) == ["one_pass"]
    with pytest.raises(NotImplementedError, match="--decoder=fast is not available"):
        make_decoder(MODEL, "fast", None, "unused")
    code = ("import sys, allen_sr.decoding.one_pass\n"
            "print([m for m in ('tensorflow', 'tensor2tensor') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("override, message", [
    ("pixel_loss=huber", "pixel_loss must be one of"),
    ("gan_weight=-0.1", "gan_weight must be >= 0"),
    ("num_res_blocks=-1", "num_res_blocks must be >= 0"),
    ("mean_correction=-1", "mean_correction must be >= 0"),
    ("cosine_decay_min=2.0", "cosine_decay_min in"),
    ("train_budget_seconds=-1", "train_budget_seconds must be >= 0"),
    ("upsample=bilinear", "upsample must be one of"),
    ("upsample_width=0", "upsample_width must be >= 1"),
])
def test_bad_hparams_are_refused_by_name(override, message):
    with pytest.raises(ValueError, match=message):
        conv_sr.check_hparams(tiny_hparams(extra=override), 4)


def test_bad_scale_factors_and_foreign_hparams_are_refused():
    hp = checkpoints.load_hparams(CPU_SET, "img2img_allen_brain_dim48to64")
    with pytest.raises(ValueError, match="integer scale factor, got 48 -> 64"):
        conv_sr.scale_factor(hp)
    with pytest.raises(ValueError, match="x2_stages needs a power-of-2 scale factor, got 3"):
        conv_sr.check_hparams(tiny_hparams(extra="upsample=x2_stages"), 3)
    conv_sr.check_hparams(tiny_hparams(extra="upsample=pixel_shuffle"), 3)  # any integer factor
    with pytest.raises(ValueError, match="use an img2img_conv_sr_\\* hparams set"):
        conv_sr.check_hparams(checkpoints.load_hparams("img2img_allen_cpu_tiny", PROBLEM))


def test_normalization_without_stats_names_the_missing_file(tmp_path):
    hp = tiny_hparams(extra="normalize_inputs=True")
    with pytest.raises(ValueError, match="normalize_inputs=True .* no data_dir"):
        tiny_training.train_checkpoint(tmp_path / "a", hp, steps=1, batch_size=2, model_name=MODEL,
                                       synthetic_stats=False)
    hp.add_hparam("data_dir", str(tmp_path))
    expected = re.escape(str(tmp_path / f"{PROBLEM}-stats.json")) + ".*allen-sr datagen"
    with pytest.raises(FileNotFoundError, match=expected):
        tiny_training.train_checkpoint(tmp_path / "b", hp, steps=1, batch_size=2, model_name=MODEL,
                                       synthetic_stats=False)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_allen_sr_train_lowers_the_loss_checkpoints_and_evaluates(data_dir, tmp_path):
    """The real `allen-sr train` (t2t-trainer) with eval: the loss falls, eval reports PSNR."""
    out = tmp_path / "train"
    cmd = [os.path.join(BIN, "allen-sr"), "train", f"--problem={PROBLEM}", f"--model={MODEL}",
           f"--hparams_set={CPU_SET}", f"--data_dir={data_dir}", f"--output_dir={out}",
           "--train_steps=150", "--local_eval_frequency=150", "--eval_steps=1",
           "--log_step_count_steps=1", "--random_seed=1",
           # Clean inputs: the batch losses of randomly degraded examples (hed=0.5 stain jitter)
           # vary too much over 150 steps to show the fall; degradations have their own tests.
           f"--hparams={TINY},batch_size=16,learning_rate_constant=0.005,learning_rate_warmup_steps=1,"
           "degradation=none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert (out / "model.ckpt-150.index").exists()
    # Batch losses of every step; the untrained model is bicubic, so a fall means learning
    # (measured: ~0.030 over the first 20 steps, ~0.024 over the last 20).
    losses = [float(v) for v in re.findall(r"INFO:tensorflow:loss = ([0-9.e-]+), step = \d+", log)]
    assert len(losses) >= 140
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20]), losses
    # Our eval metrics replace the problem's logit metrics (accuracy would crash on an image).
    psnr = re.search(rf"metrics-{PROBLEM}/targets/psnr = ([0-9.]+)", log)
    assert psnr and 10 < float(psnr.group(1)) < 60
    assert "targets/accuracy" not in log
    # The run folder alone names the model: problem, set and hparams come from its flags.txt.
    from allen_sr import Upscaler

    with Upscaler.open(out) as up:
        assert up.spec.problem == PROBLEM and up.spec.hparams_set == CPU_SET
        big = up.predict(np.full((12, 20, 3), 150, np.uint8))
    assert big.shape == (48, 80, 3) and abs(float(big.mean()) - 150) < 20
    from PIL import Image

    from allen_sr.commands import upscale

    Image.fromarray(np.full((12, 20, 3), 150, np.uint8)).save(tmp_path / "in.png")
    assert upscale.upscale_main(["--output_dir", str(out), "--image", str(tmp_path / "in.png"),
                                 "--out", str(tmp_path / "out.png"), "--no_progress"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), big)


def test_train_budget_stops_training_and_checkpoints_its_clock(tmp_path):
    """train_budget_seconds ends training long before train_steps, within a step of the budget
    (1 s of slack here; a step takes milliseconds), with a final checkpoint that records the time
    trained (and decodes like any other). A restart resumes the clock without counting the time
    the job was down: with a 2 s budget it trains about one more second; once the budget is spent,
    a restart trains no further step."""
    steps = 5000  # far more than fit in the budget, but finite: a run that ignores the budget ends
    hp = tiny_hparams(extra="train_budget_seconds=1.0")
    ckpt = tiny_training.train_checkpoint(tmp_path, hp, steps=steps, batch_size=2, model_name=MODEL)
    values = checkpoint_values(ckpt)
    first_steps = int(values["global_step"])
    assert 2 <= first_steps < steps
    assert 1.0 <= values["train_clock/elapsed_seconds"] < 1.0 + 1.0
    assert ckpt.endswith(f"-{first_steps}")
    dec = make_decoder(MODEL, None, tiny_hparams(output_dir=str(tmp_path)), ckpt, (32, 32))
    try:
        assert dec.decode(np.full((1, 8, 8, 3), 128, np.uint8)).shape == (1, 32, 32, 3)
    finally:
        dec.close()

    time.sleep(1.5)  # down time (plus the next run's graph building): must not count
    hp = tiny_hparams(extra="train_budget_seconds=2.0")
    values = checkpoint_values(tiny_training.train_checkpoint(tmp_path, hp, steps=steps, batch_size=2,
                                                              model_name=MODEL))
    assert int(values["global_step"]) >= first_steps + 2
    assert 2.0 <= values["train_clock/elapsed_seconds"] < 2.0 + 1.0

    # Run again with the budget already spent: not one step more (`make demo` rerun).
    again = checkpoint_values(tiny_training.train_checkpoint(tmp_path, hp, steps=steps, batch_size=2,
                                                             model_name=MODEL))
    assert again["global_step"] == values["global_step"]
    assert again["train_clock/elapsed_seconds"] == values["train_clock/elapsed_seconds"]


def test_learning_rate_follows_the_training_clock_not_the_step(tmp_path):
    """With train_budget_seconds the real train graph's learning rate (t2t's `learning_rate`
    summary) is the cosine over elapsed training time, whatever the global step; the clock counts
    the time inside steps after the update, not the first step (slow here, as an input pipeline's
    warm-up makes it) nor the pauses between steps."""
    budget, floor, peak = 100.0, 0.02, 1e-3
    # img2img_conv_sr_cpu also decays over 15000 steps; with a budget the time must win.
    hp = tiny_hparams(extra=f"train_budget_seconds={budget},learning_rate_warmup_steps=1")
    assert (hp.cosine_decay_steps, hp.cosine_decay_min, hp.learning_rate_constant) == (15000, floor, peak)
    graph, spec = train_graph(hp, tmp_path)
    learning_rate = summarized(graph, "learning_rate")
    v1 = tf.compat.v1
    with graph.as_default(), v1.Session(graph=graph) as session:
        session.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
        [clock] = [v for v in v1.global_variables() if v.op.name == f"{schedule.CLOCK_SCOPE}/elapsed_seconds"]
        warm_up = v1.py_func(lambda: time.sleep(1.0) or 0.0, [], tf.float64, stateful=True)
        session.run([spec.train_op, warm_up])  # a first step of more than 1 s
        assert session.run(clock) == 0.0  # the first step only starts the clock
        time.sleep(1.0)
        session.run(spec.train_op)
        ticked = session.run(clock)
        assert 0.0 < ticked < 1.0  # a step of the tiny model, not the 2 s before it
        # The clock's last timestamp follows the optimizer's update; its first has no inputs (it runs
        # as the step starts).
        stamps = [op for op in graph.get_operations() if op.type == "Timestamp"]
        assert sorted(bool(upstream_updates(op)) for op in stamps) == [False, True], stamps
        assert [(list(op.inputs), op.control_inputs) for op in stamps if not upstream_updates(op)] == [([], [])]
        for step in (10, 5000, 20000):
            session.run(v1.train.get_global_step().assign(step))
            for seconds in (ticked, 25.0, 50.0, 100.0, 250.0):
                session.run(clock.assign(seconds))
                expected = peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(seconds / budget, 1.0))))
                np.testing.assert_allclose(session.run(learning_rate), expected, rtol=1e-5,
                                           err_msg=f"step {step}, {seconds} s")


def test_one_discriminator_step_lowers_its_loss_on_a_fixed_batch(tmp_path):
    """Hybrid set: each run of the real train op takes one DiscriminatorAdam step that lowers the
    discriminator's loss (the `losses/discriminator` summary) on the same batch. The generator's
    learning rate is 0 here, so the fakes stay fixed and the fall is the discriminator's own."""
    hp = tiny_hparams(HYBRID_SET, "gan_filters=4,learning_rate_constant=0.0")
    graph, spec = train_graph(hp, tmp_path)
    d_loss = summarized(graph, "losses/discriminator")
    v1 = tf.compat.v1
    with graph.as_default(), v1.Session(graph=graph) as session:
        session.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
        d_vars = conv_net.discriminator_variables()
        g_vars = [v for v in v1.trainable_variables() if all(v is not d for d in d_vars)]
        assert d_vars and g_vars
        before = session.run(d_vars + g_vars)
        losses = [session.run(d_loss)]
        for _ in range(3):
            session.run(spec.train_op)
            losses.append(session.run(d_loss))
        after = session.run(d_vars + g_vars)
    # Measured: about -7e-4 per step (Adam's first steps move every weight by ~the learning rate).
    assert all(b - a > 1e-4 for a, b in zip(losses[1:], losses[:-1])), losses
    moved = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert all(moved[:len(d_vars)]) and not any(moved[len(d_vars):])


def test_generator_adversarial_loss_uses_real_labels_and_the_discriminator_real_vs_fake():
    """adversarial_losses: the generator's term is -log D(G(x)) (labelled "real": minimizing it
    makes the discriminator call the prediction real), the discriminator's the cross-entropy of
    targets as real and predictions as fake, with both images scaled to [-1, 1]."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 256, (2, 32, 32, 3))
    prediction = np.clip(targets + rng.normal(0, 20, targets.shape), 0, 255)
    condition = rng.uniform(-1, 1, (2, 32, 32, 3))
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        pred = v1.placeholder(tf.float32, [2, 32, 32, 3])
        cond = tf.constant(condition, tf.float32)
        with v1.variable_scope("model"):
            g_loss, d_loss = conv_net.adversarial_losses(cond, tf.constant(targets), pred, 4)
        with v1.variable_scope("model", reuse=True), v1.variable_scope(conv_net.DISCRIMINATOR_SCOPE):
            real = conv_net.patch_discriminator(cond, tf.constant(targets / 127.5 - 1.0, tf.float32), 4)
            fake = conv_net.patch_discriminator(cond, pred / 127.5 - 1.0, 4)
        assert len(conv_net.discriminator_variables()) == 8  # the logits above reuse the loss's weights
        g_grad = tf.gradients(g_loss, pred)[0]
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            feed = {pred: prediction}
            g, d, r, f, grad = session.run([g_loss, d_loss, real, fake, g_grad], feed)
            softplus = lambda x: np.logaddexp(0.0, x)  # -log sigmoid(-x)  # noqa: E731
            np.testing.assert_allclose(g, softplus(-f).mean(), rtol=1e-5)  # label 1: "real"
            np.testing.assert_allclose(d, softplus(-r).mean() + softplus(f).mean(), rtol=1e-5)
            # A small generator step down the adversarial term raises the discriminator's score
            # of the prediction (half a grey level at most per sub-pixel).
            stepped = session.run(fake, {pred: prediction - 0.5 * grad / np.abs(grad).max()})
            assert stepped.mean() > f.mean() + 1e-4, (stepped.mean(), f.mean())



def test_training_with_normalization_stores_and_uses_the_dataset_stats(tmp_path):
    stats = {"mean": [180.0, 120.0, 140.0], "std": [40.0, 60.0, 50.0]}
    (tmp_path / f"{PROBLEM}-stats.json").write_text(json.dumps(stats))
    # Warm-up 1: two full-rate steps move the zero-initialized output conv off 0, so the
    # prediction depends on the (normalized) inputs and not only on bicubic.
    hp = tiny_hparams(extra="normalize_inputs=True,learning_rate_warmup_steps=1")
    hp.add_hparam("data_dir", str(tmp_path))
    ckpt = tiny_training.train_checkpoint(tmp_path / "run", hp, steps=2, batch_size=2, model_name=MODEL)
    values = checkpoint_values(ckpt)
    names = {checkpoints.canonical_variable_name(n): n for n in values}
    mean = values[names[f"{MODEL}/body/{normalization.NORMALIZATION_SCOPE}/mean"]]
    std = values[names[f"{MODEL}/body/{normalization.NORMALIZATION_SCOPE}/std"]]
    np.testing.assert_allclose(mean, stats["mean"])
    np.testing.assert_allclose(std, stats["std"])

    # Decoding reads the statistics from the checkpoint (no data_dir): other stats there give
    # another prediction from the same weights.
    inputs, _ = tiny_training.synthetic_examples(4, 32, 4, seed=3)
    dec_hp = tiny_hparams(extra="normalize_inputs=True", output_dir=tmp_path / "run")
    before = one_pass.OnePassDecoder(dec_hp, ckpt).predict(inputs)
    changed = str(tmp_path / "changed" / "model.ckpt")
    # (The mean, not the std: a ReLU network with ~0 biases is homogeneous, f(x / 2) * 2 = f(x),
    # so scaling the std alone would barely change it.)
    rewrite_checkpoint(ckpt, changed, {names[f"{MODEL}/body/{normalization.NORMALIZATION_SCOPE}/mean"]: mean - 60})
    after = one_pass.OnePassDecoder(dec_hp, changed).predict(inputs)
    assert np.abs(after - before).max() > 0.1


def rewrite_checkpoint(src: str, dst: str, replace: dict[str, np.ndarray]) -> None:
    """Copy checkpoint ``src`` to prefix ``dst`` with some variables' values replaced."""
    v1 = tf.compat.v1
    values = checkpoint_values(src)
    values.update(replace)
    with tf.Graph().as_default():
        variables = {n: v1.Variable(v, name=n.replace("/", "_")) for n, v in values.items()}
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            v1.train.Saver(var_list=variables).save(session, dst)


def test_hybrid_loss_updates_both_networks_each_with_its_own_optimizer(tmp_path):
    out = tmp_path / "hybrid"
    hp = tiny_hparams(HYBRID_SET, "gan_filters=4,learning_rate_warmup_steps=1")
    first = checkpoint_values(tiny_training.train_checkpoint(out, hp, steps=1, batch_size=2, model_name=MODEL))
    last = checkpoint_values(tiny_training.train_checkpoint(out, hp, steps=3, batch_size=2, model_name=MODEL))
    assert last["global_step"] == 3  # the discriminator's step does not advance it

    def weights(values, discriminator):
        return {n: v for n, v in values.items() if n.startswith(f"{MODEL}/") and n.endswith(("kernel", "bias"))
                and (f"/{conv_net.DISCRIMINATOR_SCOPE}/" in n) == discriminator}

    for discriminator in (True, False):
        before, after = weights(first, discriminator), weights(last, discriminator)
        assert before and before.keys() == after.keys()
        changed = [n for n in before if not np.array_equal(before[n], after[n])]
        assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    # Each optimizer holds slots for its own network only: t2t's (LazyAdam, "training/...") for
    # the generator, DiscriminatorAdam for the discriminator.
    g_slots = [n for n in last if n.startswith("training/LazyAdam/") and n.endswith("/m")]
    d_slots = [n for n in last if n.endswith("/DiscriminatorAdam")]
    assert g_slots and not any(conv_net.DISCRIMINATOR_SCOPE in n for n in g_slots)
    assert d_slots and all(f"/{conv_net.DISCRIMINATOR_SCOPE}/" in n for n in d_slots)


def test_weight_average_is_checkpointed_and_used_by_the_decoder(tmp_path):
    """weight_ema_decay: each step updates <var>/ExponentialMovingAverage with decay
    min(d, (1 + step) / (10 + step)) after the step, and the decoder predicts with the averages."""
    out = tmp_path / "ema"
    hp = tiny_hparams(extra="weight_ema_decay=0.2,learning_rate_warmup_steps=1")
    values = [checkpoint_values(tiny_training.train_checkpoint(out, hp, steps=k, batch_size=2, model_name=MODEL))
              for k in (1, 2, 3)]  # each call resumes the run one step further
    name = next(n for n in values[0] if n.endswith("conv_in/kernel"))  # not its slots or average
    average = next(n for n in values[0] if n.endswith(f"{name}/{variables.EMA_NAME}"))
    for step in (2, 3):
        decay = min(0.2, (1 + step) / (10 + step))
        expected = decay * values[step - 2][average] + (1 - decay) * values[step - 1][name]
        np.testing.assert_allclose(values[step - 1][average], expected, atol=1e-6)
    assert np.abs(values[2][average] - values[2][name]).max() > 1e-4  # not just the weights

    def restored(hparams):
        dec = make_decoder(MODEL, None, hparams, str(out), (32, 32))
        try:
            var = next(v for v in dec._graph.get_collection("variables") if v.op.name.endswith("conv_in/kernel"))
            return dec._session.run(var)
        finally:
            dec.close()

    np.testing.assert_array_equal(restored(tiny_hparams(output_dir=out)), values[2][average])
    raw = tiny_hparams(extra="weight_ema_decay=0.0", output_dir=out)
    np.testing.assert_array_equal(restored(raw), values[2][name])


@pytest.mark.parametrize("upsample, layers", [
    ("x2_stages", {"upsample_0/kernel": [3, 3, 8, 32], "upsample_1/kernel": [3, 3, 8, 32]}),
    ("pixel_shuffle", {"upsample_pixel_shuffle/kernel": [3, 3, 8, 4 * 4 * 5]}),
    ("input_res", {"upsample_input_res/kernel": [3, 3, 8, 4 * 4 * 3]}),
])
def test_upsamplers_train_and_decode_with_their_own_layers(tmp_path, upsample, layers):
    """Each upsampler: its conv layers (width 8, x4: two x2 stages of 4 * 8 channels, one of
    4 * 4 * upsample_width, or input_res's one of 4 * 4 * 3 sub-pixels), a trained step that moves
    them, and a decoder that keeps the block means. A checkpoint of one is refused by another's
    graph, naming the hparam. (Without ``mean_correction``, which moves the means: the next test.)"""
    extra = f"upsample={upsample},upsample_width=5,learning_rate_warmup_steps=1,mean_correction=0"
    steps = [checkpoint_values(tiny_training.train_checkpoint(
        tmp_path, tiny_hparams(extra=extra), steps=k, batch_size=2, model_name=MODEL)) for k in (1, 3)]
    kernels = {n: v for n, v in steps[1].items() if n.endswith("/kernel") and "upsample" in n}
    assert {n.split("/")[-2] + "/kernel": list(v.shape) for n, v in kernels.items()} == layers
    # Step 2 at the latest moves the output conv off 0 (the bicubic start), the next one trains the
    # upsampler. (Not always step 1: under TF 2, t2t's warm-up reads the global step racing its
    # increment, so the first step's learning rate is 0 or the full rate, run by run.)
    for name, value in kernels.items():
        assert np.abs(value - steps[0][name]).max() > 0, name
    ckpt = checkpoints.find_checkpoint(tmp_path)
    dec = make_decoder(MODEL, None, tiny_hparams(output_dir=str(tmp_path)), ckpt, (32, 32))
    try:
        inputs, _ = tiny_training.synthetic_examples(2, 32, 4, seed=3)
        pred = dec.predict(inputs)
        np.testing.assert_allclose(pred.reshape(2, 8, 4, 8, 4, 3).mean(axis=(2, 4)), inputs, atol=1e-3)
    finally:
        dec.close()
    other = "x2_stages" if upsample == "pixel_shuffle" else "pixel_shuffle"
    with pytest.raises(ValueError, match="lacks .* upsample"):
        make_decoder(MODEL, None, tiny_hparams(extra=f"upsample={other}"), ckpt, (32, 32))


@pytest.mark.parametrize("upsample", ["pixel_shuffle", "input_res"])
def test_mean_correction_moves_block_means_within_its_bound(tmp_path, upsample):
    """``mean_correction``: a learned shift of each block's mean after the projection, within
    +-bound grey levels, in the prediction and in the rounded decode alike; trained on ideal
    inputs (``degradation=none``) the model has no such head and keeps the means exactly."""
    bound = 0.05
    for name, extra in (("degraded", ""), ("clean", ",degradation=none")):
        run = tmp_path / name
        overrides = f"upsample={upsample},learning_rate_warmup_steps=1,mean_correction={bound}{extra}"
        values = checkpoint_values(tiny_training.train_checkpoint(
            run, tiny_hparams(extra=overrides), steps=3, batch_size=2, model_name=MODEL))
        kernels = [v for n, v in values.items() if n.endswith("mean_correction/kernel")]
        dec = make_decoder(MODEL, None, tiny_hparams(output_dir=str(run)), checkpoints.find_checkpoint(run), (32, 32))
        try:
            inputs, _ = tiny_training.synthetic_examples(4, 32, 4, seed=3)
            pred = dec.predict(inputs)
            np.testing.assert_array_equal(dec.decode(inputs), np.clip(np.rint(pred), 0, 255))
        finally:
            dec.close()
        moved = np.abs(pred.reshape(4, 8, 4, 8, 4, 3).mean(axis=(2, 4)) - inputs)
        if name == "clean":
            assert not kernels and moved.max() < 1e-3
        else:
            assert len(kernels) == 1 and np.abs(kernels[0]).max() > 0
            assert 1e-3 < moved.max() <= bound + 1e-3


def test_a_run_from_before_mean_correction_is_read_without_it(tmp_path):
    """A run whose hparams.json does not name ``mean_correction`` (trained before the sets turned
    it on) is decoded without the head it never had; an explicit override still wins."""
    tiny_training.train_checkpoint(tmp_path, tiny_hparams(extra="mean_correction=0"), steps=1, batch_size=2,
                                   model_name=MODEL)
    recorded = json.loads((tmp_path / "hparams.json").read_text())
    del recorded["mean_correction"]
    (tmp_path / "hparams.json").write_text(json.dumps(recorded))
    assert tiny_hparams().mean_correction > 0  # what the set says now
    assert tiny_hparams(output_dir=str(tmp_path)).mean_correction == 0
    assert tiny_hparams(extra="mean_correction=2", output_dir=str(tmp_path)).mean_correction == 2
    dec = make_decoder(MODEL, None, tiny_hparams(output_dir=str(tmp_path)), checkpoints.find_checkpoint(tmp_path),
                       (32, 32))
    try:
        inputs, _ = tiny_training.synthetic_examples(2, 32, 4, seed=3)
        pred = dec.predict(inputs)
    finally:
        dec.close()
    np.testing.assert_allclose(pred.reshape(2, 8, 4, 8, 4, 3).mean(axis=(2, 4)), inputs, atol=1e-3)


def test_cosine_decay_is_clamped_over_steps_and_over_training_time():
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        elapsed = v1.placeholder(tf.float64, [])
        by_steps = schedule.cosine_decay(tf.constant(2.0), 0.1, decay_steps=10)
        by_time = schedule.cosine_decay(tf.constant(2.0), 0.1, budget_seconds=4.0, elapsed=elapsed)
        assert schedule.cosine_decay(tf.constant(2.0), 0.1).op.type == "Const"  # no decay
        with v1.Session() as session:
            for value, expected in ((0, 2.0), (5, 2.0 * (0.1 + 0.9 * 0.5)), (10, 0.2), (30, 0.2)):
                session.run(step.assign(value))
                np.testing.assert_allclose(session.run(by_steps), expected, rtol=1e-6)
            for seconds, expected in ((0.0, 2.0), (2.0, 1.1), (4.0, 0.2), (100.0, 0.2)):
                np.testing.assert_allclose(session.run(by_time, {elapsed: seconds}), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the clock"):
        schedule.cosine_decay(2.0, 0.1, budget_seconds=4.0)


def test_pixel_shuffle_upsamples_by_any_integer_factor():
    with tf.Graph().as_default():
        out = conv_net.generator_residual(tf.zeros([2, 5, 7, 3]), 4, 1, 3, 3, "pixel_shuffle", 2)
        assert out.shape.as_list() == [2, 15, 21, 3]


def test_pixel_losses_match_their_definitions():
    rng = np.random.default_rng(0)
    pred, target = rng.uniform(0, 255, (2, 4, 8, 8, 3))
    diff = (pred - target) / 255.0
    expected = {"l1": np.abs(diff).mean(), "l2": np.square(diff).mean(),
                "charbonnier": np.sqrt(np.square(diff) + 1e-6).mean(),
                "psnr": np.mean(10 * np.log10(np.square(diff).mean(axis=(1, 2, 3)) + conv_net.PSNR_LOSS_MSE_FLOOR))}
    # psnr is minus the mean per-example PSNR the benchmark reports (up to the 50 dB floor).
    assert abs(expected["psnr"] + metrics.psnr_batch(pred, target).mean()) < 1e-3
    for kind in conv_net.PIXEL_LOSSES:
        got = conv_net.pixel_loss(tf.constant(pred, tf.float32), tf.constant(target, tf.float32), kind, 1e-3)
        np.testing.assert_allclose(float(got), expected[kind], rtol=1e-5, err_msg=kind)


def test_pixel_loss_only_builds_no_discriminator(ckpt_dir):
    names = [n for n, _ in tf.train.list_variables(checkpoints.find_checkpoint(ckpt_dir))]
    assert any(n.endswith("conv_in/kernel") for n in names)
    assert not any(conv_net.DISCRIMINATOR_SCOPE in n for n in names)


# --------------------------------------------------------------------------- decoding


def test_decoder_equals_t2t_estimator_predict(ckpt_dir, decoder):
    """The one-pass decoder against tensor2tensor's own PREDICT path (estimator + infer)."""
    from tensor2tensor.utils import t2t_model, trainer_lib
    from tensorflow.python.autograph.core import ag_ctx

    hp = tiny_hparams(output_dir=ckpt_dir)
    inputs, _ = tiny_training.synthetic_examples(5, 32, 4, seed=7)
    config = trainer_lib.create_run_config(MODEL, model_dir=ckpt_dir, num_gpus=0)
    t2t_fn = t2t_model.T2TModel.make_estimator_model_fn(MODEL, hp)

    def model_fn(features, labels, mode, params=None, config=None):
        # The same graph without AutoGraph's slow rewrite of t2t's Python control flow.
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            return t2t_fn(features, labels, mode, params=params, config=config)

    estimator = tf.estimator.Estimator(model_fn, model_dir=ckpt_dir, config=config)

    def input_fn():
        return tf.data.Dataset.from_tensor_slices({"inputs": inputs.astype(np.int32)}).batch(5)

    expected = np.stack([p["outputs"] for p in estimator.predict(input_fn)])
    assert expected.shape == (5, 32, 32, 3) and expected.dtype == np.float32  # continuous
    got = decoder.predict(inputs, batch_size=2)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    decoded = decoder.decode(inputs, mode="greedy")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.clip(np.rint(got), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(decoder.decode(inputs, mode="mean"), decoded)


def cubic_convolution(images: np.ndarray, factor: int, a: float, half_pixel: bool) -> np.ndarray:
    """NumPy bicubic enlargement of [N, h, w, C] by ``factor``: separable cubic convolution with
    parameter ``a``, edge pixels repeated. Output pixel i samples the input at (i + 0.5) / f - 0.5
    with half-pixel centres (Pillow, TF 2), else at i / f (TF 1's resize_bicubic)."""
    def weights(n):
        w = np.zeros((n * factor, n))
        for i in range(n * factor):
            x = (i + 0.5) / factor - 0.5 if half_pixel else i / factor
            for j in range(int(np.floor(x)) - 1, int(np.floor(x)) + 3):
                d = abs(x - j)
                if d <= 1:
                    k = ((a + 2) * d - (a + 3)) * d * d + 1
                else:
                    k = a * (((d - 5) * d + 8) * d - 4) if d < 2 else 0.0
                w[i, min(max(j, 0), n - 1)] += k
        return w
    rows, cols = weights(images.shape[1]), weights(images.shape[2])
    return np.einsum("ij,njkc,lk->nilc", rows, images.astype(np.float64), cols)


@pytest.mark.parametrize("upsample, last_conv", [("pixel_shuffle", "conv_out"), ("input_res", "upsample_input_res")])
def test_untrained_model_is_tf1_bicubic_and_keeps_block_means(tmp_path, upsample, last_conv):
    """At its initial weights (learning rate 0: the output conv is 0) the prediction is the bicubic
    enlargement of the input, then each 4x4 block shifted to its input pixel's value; input_res
    computes both as one fixed convolution at the input resolution (conv_net.bicubic_phase_kernel).

    That bicubic is TF 1's resize_bicubic (a = -0.75, output pixel i at input i / 4, no half-pixel
    centres: conv_net.bicubic_upsample calls tf.compat.v1's resize), not the half-pixel bicubic of
    Pillow (the baselines) and TF 2: its grid sits (4 - 1) / 2 = 1.5 output px up-left of theirs.
    """
    hp = tiny_hparams(extra=f"learning_rate_constant=0.0,upsample={upsample}")
    ckpt = tiny_training.train_checkpoint(tmp_path, hp, steps=1, batch_size=2, model_name=MODEL)
    assert not checkpoint_values(ckpt)[f"{MODEL}/body/{last_conv}/kernel"].any()
    inputs, _ = tiny_training.synthetic_examples(3, 32, 4, seed=2)
    bicubic = cubic_convolution(inputs, 4, a=-0.75, half_pixel=False)
    means = bicubic.reshape(3, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    projected = bicubic + (inputs - means).repeat(4, axis=1).repeat(4, axis=2)
    for projection, expected in ((False, bicubic), (True, projected)):
        hparams = tiny_hparams(extra=f"block_mean_projection={projection},upsample={upsample}",
                               output_dir=tmp_path)
        dec = make_decoder(MODEL, None, hparams, ckpt, (32, 32))
        try:
            pred = dec.predict(inputs)
        finally:
            dec.close()
        np.testing.assert_allclose(pred, expected, atol=1e-3, err_msg=f"block_mean_projection={projection}")
    block_means = pred.reshape(3, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(block_means, inputs, atol=1e-3)  # block-mean projection


def test_tta_of_large_tiles_runs_a_few_transforms_at_a_time(ckpt_dir, monkeypatch):
    """The 8 transforms of a tile larger than batching.TTA_PIXELS_PER_RUN run in several
    session runs (bounded memory) and average to the same prediction, square or not."""
    hp = tiny_hparams(extra="decode_tta=True", output_dir=ckpt_dir)
    tta = make_decoder(MODEL, None, hp, ckpt_dir, (None, None))
    try:
        rng = np.random.default_rng(3)
        for shape in ((2, 12, 12, 3), (1, 8, 12, 3)):
            inputs = rng.integers(0, 256, shape)
            runs = []
            original = tta._session.run
            monkeypatch.setattr(tta._session, "run", lambda *a, **k: runs.append(1) or original(*a, **k))
            together = tta.predict(inputs)
            assert len(runs) == (1 if shape[1] == shape[2] else 2)
            monkeypatch.setattr(batching, "TTA_PIXELS_PER_RUN", inputs[..., 0].size * 3)
            runs.clear()
            apart = tta.predict(inputs)
            assert len(runs) == (3 if shape[1] == shape[2] else 4)  # groups of 3: 3+3+2, or 3+1 twice
            np.testing.assert_allclose(apart, together, atol=1e-4)
            monkeypatch.undo()
    finally:
        tta.close()


def test_tta_averages_the_eight_flips_and_rotations(ckpt_dir):
    hp = tiny_hparams(extra="decode_tta=True", output_dir=ckpt_dir)
    tta = make_decoder(MODEL, None, hp, ckpt_dir, (32, 32))
    plain = make_decoder(MODEL, None, tiny_hparams(output_dir=ckpt_dir), ckpt_dir, (32, 32))
    inputs, _ = tiny_training.synthetic_examples(2, 32, 4, seed=5)
    manual = np.mean([np.rot90(plain.predict(np.rot90(inputs, k, (1, 2))), -k, (1, 2)) for k in range(4)]
                     + [np.rot90(plain.predict(np.rot90(inputs[:, :, ::-1], k, (1, 2))), -k, (1, 2))[:, :, ::-1]
                        for k in range(4)], axis=0)
    np.testing.assert_allclose(tta.predict(inputs), manual, atol=1e-3)
    # Averaging over the group makes the prediction exactly equivariant to it.
    np.testing.assert_allclose(tta.predict(np.rot90(inputs, 1, (1, 2))),
                               np.rot90(tta.predict(inputs), 1, (1, 2)), atol=1e-3)
    # img2img_conv_sr_cpu decodes this way unless told decode_tta=False.
    default = make_decoder(MODEL, None, checkpoints.load_hparams(CPU_SET, PROBLEM, SMALL), ckpt_dir, (32, 32))
    try:
        assert default.tta
        np.testing.assert_allclose(default.predict(inputs), tta.predict(inputs), atol=1e-5)
    finally:
        for dec in (default, tta, plain):
            dec.close()


def test_decode_says_what_it_did_not_do_and_refuses_what_a_conv_run_lacks(data_dir, ckpt_dir, tmp_path, capsys):
    """A split smaller than --num_examples is said; a mode, uncertainty, hparams set or model the run does
    not have is refused in one line, with what to do instead."""
    import shutil

    common = [f"--problem={PROBLEM}", f"--model={MODEL}", f"--hparams={TINY}", f"--data_dir={data_dir}",
              "--no_progress"]
    run = [f"--hparams_set={CPU_SET}", f"--output_dir={ckpt_dir}"]
    assert decode.decode_main(common + run + ["--num_examples=1000", f"--out={tmp_path / 'all'}"]) == 0
    n = json.loads((tmp_path / "all" / "metrics.json").read_text())["tiles"]
    assert 1 < n < 1000
    note = f"note: the dev split has {n} examples: decoded all of them, not --num_examples 1000"
    assert note in capsys.readouterr().out

    # No datagen writes a test split: it was offered, then "no test examples ... run `allen-sr datagen`".
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        decode.decode_main(common + run + ["--dataset_split=test", f"--out={tmp_path / 't'}"])
    err = capsys.readouterr().err
    assert usage.value.code == 2
    assert "--dataset_split: invalid choice: 'test' (choose from 'dev', 'eval', 'train')" in err, err

    assert decode.decode_main(common + run + ["--mode=mean_bicubic", f"--out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "--mode mean_bicubic is not available for img2img_conv_sr" in err and "use --mode greedy" in err

    assert decode.decode_main(common + run + ["--uncertainty", f"--out={tmp_path / 'u'}"]) == 2
    err = capsys.readouterr().err
    assert "decode --uncertainty needs a run of an Image Transformer" in err and "--pretrained" not in err.split(
        "(a shipped model's:")[0]

    trained = tmp_path / "run"  # a run t2t-trainer made records its set in flags.txt
    shutil.copytree(ckpt_dir, trained)
    (trained / "flags.txt").write_text(f"--problem={PROBLEM}\n--hparams_set={CPU_SET}\n")
    assert decode.decode_main(common + [f"--hparams_set={FAST_SET}", f"--output_dir={trained}",
                                        f"--out={tmp_path / 's'}"]) == 2
    assert (f"{trained} was trained with --hparams_set {CPU_SET}, not {FAST_SET}: pass --hparams_set {CPU_SET}"
            in capsys.readouterr().err)
    # Another --model: "dec_attention_type=None cannot be decoded", as if the run's hparams were wrong.
    other = [a.replace(MODEL, "img2img_transformer_sr") if a.startswith("--model") else a for a in common]
    assert decode.decode_main(other + run + [f"--out={tmp_path / 'm'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (f"{ckpt_dir} was trained with --model {MODEL}, not img2img_transformer_sr: pass --model {MODEL}" in err
            and "\n" not in err), err


def test_decoder_refuses_sampling_bad_inputs_and_mismatched_checkpoints(ckpt_dir, decoder):
    inputs, _ = tiny_training.synthetic_examples(1, 32, 4)
    with pytest.raises(ValueError, match="sample is not available for img2img_conv_sr"):
        decoder.decode(inputs, mode="sample")
    with pytest.raises(ValueError, match=r"inputs must be \[N, 8, 8, 3\]"):
        decoder.decode(inputs[:, :4])
    # Trained without the probabilistic head: no distribution to report.
    assert not decoder.reports_distributions
    with pytest.raises(ValueError, match="one value per sub-pixel, not a distribution: train it with"):
        decoder.predict_uncertain(inputs)
    with pytest.raises(ValueError, match="lacks .* variable"):
        make_decoder(MODEL, None, tiny_hparams(extra="num_res_blocks=2"), ckpt_dir, (32, 32))


def test_decode_evaluate_and_upscale_commands(data_dir, ckpt_dir, tmp_path, capsys):
    common = [f"--problem={PROBLEM}", f"--model={MODEL}", f"--hparams_set={CPU_SET}",
              f"--hparams={TINY}", f"--output_dir={ckpt_dir}"]
    out = tmp_path / "decoded"
    assert decode.decode_main(common + [f"--data_dir={data_dir}", "--num_examples=3",
                                          f"--out={out}", "--no_progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tiles"] == 3 and set(summary["methods"]) == {"bicubic", "model"}
    assert sorted(p.name for p in out.glob("example_*.png")) == [f"example_00{i}.png" for i in range(3)]

    assert decode.decode_main(common + [f"--data_dir={data_dir}", "--mode=sample", f"--out={out}"]) == 2
    assert "not available for img2img_conv_sr" in capsys.readouterr().err

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(tissue_image(96, 96, seed=11)).save(images / "held_out.png")
    assert evaluate.evaluate_main(common + [f"--images={images}", "--max_tiles=4", f"--out={tmp_path / 'ev'}"]) == 0
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(summary["methods"]) == {"nearest", "bilinear", "bicubic", "model"} and MODEL in summary["protocol"]

    from allen_sr.commands import upscale

    assert upscale.upscale_main(common + [f"--image={images / 'held_out.png'}", "--left=16", "--top=16",
                                          "--width=16", "--height=16", f"--out={tmp_path / 'up.png'}"]) == 0
    assert np.asarray(Image.open(tmp_path / "up.png")).shape == (64, 64, 3)
