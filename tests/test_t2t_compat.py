"""Each shim in allen_sr.t2t_compat: what breaks without it (fresh interpreter), and that it fixes it."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.compat.v1.disable_eager_execution()
if sys.argv[1] == "shim":
    from allen_sr.t2t import compat as t2t_compat
    t2t_compat.apply()
"""

SLIM_IMAGE_DECODE = """
import io, numpy as np
from PIL import Image
import tf_slim
buf = io.BytesIO(); Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(buf, format="PNG")
ex = tf.train.Example(features=tf.train.Features(feature={
    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
    "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"]))}))
decoder = tf_slim.tfexample_decoder.TFExampleDecoder(
    {"image/encoded": tf.io.FixedLenFeature((), tf.string), "image/format": tf.io.FixedLenFeature((), tf.string)},
    {"image": tf_slim.tfexample_decoder.Image(channels=3)})
[image] = decoder.decode(tf.constant(ex.SerializeToString()), ["image"])
with tf.compat.v1.Session() as s:
    print("OK", int(s.run(image).sum()))
"""

SLIM_OPTIMIZE_LOSS = """
import tf_slim
w = tf.compat.v1.get_variable("w", initializer=1.0)
step = tf.compat.v1.train.get_or_create_global_step()
train_op = tf_slim.optimize_loss(w * w, step, learning_rate=0.1, optimizer="SGD")
with tf.compat.v1.Session() as s:
    s.run(tf.compat.v1.global_variables_initializer())
    s.run(train_op)
    print("OK", round(float(s.run(w)), 3))
"""

EMBEDDED_IMAGE_SUMMARY = """
embedded = tf.zeros([1, 4, 4, 64])  # what Img2imgTransformer.body summarizes: hidden size, not colours
op = tf.compat.v1.summary.image("inputs", embedded)
rgb = tf.compat.v1.summary.image("rgb", tf.zeros([1, 4, 4, 3]))
with tf.compat.v1.Session() as s:
    if op is not None:
        s.run(op)
    assert s.run(rgb)  # real images are still summarized
    print("OK", op is None)
"""

DENSE_SHARED_ACROSS_SHARDS = """
from tensor2tensor.layers import common_layers
x = tf.zeros([2, 3])
for shard in range(2):  # as t2t's data parallelism builds shards: new name scope, reused variables
    with tf.name_scope(f"parallel_{shard}"), tf.compat.v1.variable_scope("model", reuse=shard > 0):
        common_layers.dense(x, 4, name="q")
names = sorted(v.name for v in tf.compat.v1.trainable_variables())
assert names == ["model/q/bias:0", "model/q/kernel:0"], f"NOT SHARED: {names}"
print("OK", len(names))
"""

WARM_START = """
import tempfile
from tensor2tensor.utils import t2t_model
from tensor2tensor.utils.hparam import HParams
folder = tempfile.mkdtemp()
with tf.Graph().as_default():
    tf.compat.v1.get_variable("model/w", initializer=[1.0, 2.0])
    tf.compat.v1.get_variable("model/other", initializer=[3.0])
    with tf.compat.v1.Session() as s:
        s.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().save(s, folder + "/model.ckpt")
with tf.Graph().as_default():  # what t2t's model_fn does with --warm_start_from=folder
    w = tf.compat.v1.get_variable("model/w", initializer=[0.0, 0.0])
    fresh = tf.compat.v1.get_variable("model/new", initializer=[5.0])
    t2t_model.initialize_from_ckpt(folder, HParams(model_dir=tempfile.mkdtemp()))
    with tf.compat.v1.Session() as s:
        s.run(tf.compat.v1.global_variables_initializer())
        print("OK", s.run(w).tolist(), s.run(fresh).tolist())
"""


def run(code: str, shim: bool) -> subprocess.CompletedProcess:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, "shim" if shim else "plain"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("code, broken, fixed", [
    (SLIM_IMAGE_DECODE, "control_flow_ops' has no attribute", "OK 336"),
    (SLIM_OPTIMIZE_LOSS, "ops' has no attribute 'Tensor'", "OK 0.8"),
    (EMBEDDED_IMAGE_SUMMARY, "InvalidArgument", "OK True"),
    (DENSE_SHARED_ACROSS_SHARDS, "NOT SHARED", "OK 2"),
    (WARM_START, "has no attribute 'load_checkpoint'", "OK [1.0, 2.0] [5.0]"),
], ids=["tf_slim-image-decoder", "tf_slim-optimize_loss", "embedded-image-summary", "dense-shared", "warm-start"])
def test_shim_fixes_what_breaks_without_it(code, broken, fixed):
    without = run(code, shim=False)
    assert without.returncode != 0 and broken in without.stderr, without.stderr[-2000:]
    with_shim = run(code, shim=True)
    assert with_shim.returncode == 0, with_shim.stderr[-3000:]
    assert fixed in with_shim.stdout


ENTRY_POINTS = {
    "register_all": "from allen_sr.t2t.names import register_all; register_all()",
    "allen_sr.problems": "import allen_sr.problems",
    "t2t_usr_dir": (f"from tensor2tensor.utils import usr_dir; "
                    f"usr_dir.import_usr_dir({str(REPO / 'problems')!r})"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_applies_every_shim_once(entry):
    """Our commands (register_all), library users (allen_sr.problems) and tensor2tensor's tools
    (--t2t_usr_dir=problems) all get every shim; applying again changes nothing."""
    code = ENTRY_POINTS[entry] + """
from allen_sr.t2t import compat as t2t_compat
from tensor2tensor.layers import common_layers
summary_image = tf.compat.v1.summary.image
t2t_compat.apply(); t2t_compat.apply()
assert tf.compat.v1.summary.image is summary_image
assert getattr(summary_image, "_allen_sr_shim", False)
from tensorflow.python.ops import control_flow_ops
from tensorflow.python.framework import ops
assert control_flow_ops.case is tf.compat.v1.case and ops.Tensor is tf.Tensor
assert common_layers._cached_layers is tf.compat.v1.layers
from tensor2tensor.utils import t2t_model
assert getattr(t2t_model.initialize_from_ckpt, "_allen_sr_shim", False)
print("OK")
"""
    result = run(code, shim=False)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_the_shims_are_applied_in_one_place():
    """problems/__init__.py is the composition root (docs/ARCHITECTURE.md): no other module of the
    package, its registrations or its scripts calls compat.apply()."""
    callers = []
    for folder in ("allen_sr", "problems", "hparams", "scripts", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "apply" and isinstance(node.func.value, ast.Name)
                        and "compat" in node.func.value.id):
                    callers.append(str(path.relative_to(REPO)))
    assert callers == ["problems/__init__.py"]


def test_evaluation_writer_shim_adds_a_writer_to_every_estimator_evaluation(tmp_path):
    """apply_evaluation_writer: the estimator's own evaluation summary is still written, the added
    writer gets the same results, and applying it twice wraps once."""
    code = f"""
from allen_sr.t2t import compat as t2t_compat
from tensorflow_estimator.python.estimator import estimator
seen = []
assert t2t_compat.apply_evaluation_writer(lambda d, r, s: seen.append((d, dict(r), s)))
assert t2t_compat.apply_evaluation_writer(lambda d, r, s: seen.append("twice"))
estimator._write_dict_to_summary({str(tmp_path)!r}, {{"loss": 1.5, "global_step": 7}}, 7)
events = [f for f in os.listdir({str(tmp_path)!r}) if f.startswith("events.out")]
print("OK", seen == [({str(tmp_path)!r}, {{"loss": 1.5, "global_step": 7}}, 7)], len(events))
"""
    result = run(code, shim=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK True 1" in result.stdout


def test_a_warm_start_checkpoint_that_does_not_fit_is_refused_naming_it():
    """Another shape, none of the model's variables, or (for `allen-sr train --init_from`, strict)
    any variable missing: WarmStartError naming the checkpoint and the variables."""
    code = WARM_START.replace('print("OK"', 'print("fits"') + """
from allen_sr.t2t.compat import WarmStartError
for names, shapes, strict in ((["model/w"], [[3]], False), (["elsewhere/w"], [[2]], False),
                              (["model/w", "model/new"], [[2], [1]], True), (["model/w"], [[2]], True)):
    t2t_compat.warm_start_strict = strict
    with tf.Graph().as_default():
        for name, shape in zip(names, shapes):
            tf.compat.v1.get_variable(name, shape)
        try:
            t2t_model.initialize_from_ckpt(folder, HParams(model_dir=tempfile.mkdtemp()))
            print("LOADED", names, strict)
        except WarmStartError as exc:
            print("REFUSED", exc)
"""
    result = run(code, shim=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fits") and len(lines) == 5
    assert "1 variable(s) of another shape (model/w is [2] there, [3] here)" in lines[1]
    assert lines[2].startswith("REFUSED") and "1 of this model's variables are not there (elsewhere/w)" in lines[2]
    assert lines[3].startswith("REFUSED") and "(model/new)" in lines[3]
    assert lines[4] == "LOADED ['model/w'] True"
