"""`img2img_conv_sr` as a TensorFlow SavedModel and as ONNX.

One graph, built from the model's own PREDICT code (`Img2imgConvSr.infer`) and restored from the
checkpoint as `allen_sr.decoding.one_pass.OnePassDecoder` restores it (the weights' moving
averages when the hparams average weights), then frozen: uint8 ``image`` [N, H, W, C] of any
size in, uint8 ``upscaled`` [N, fH, fW, C] out. Normalization is part of the model; with
``tta`` the continuous predictions of the 8 flips/rotations are averaged in the graph (two model
runs, four transforms each: the 90-degree ones transpose a non-square input) before rounding.
The SavedModel serves it as ``serving_default``; tf2onnx converts the same frozen graph.

A model trained with hparam ``probabilistic`` also gets a second graph (``distribution``): one view,
uint8 ``image`` in, float32 ``mean`` (the continuous prediction) and ``scale`` (each sub-pixel's
Laplace scale b, grey levels) out; `allen_sr.export.runtime.OnnxDecoder` runs the 8 views and
reads the distributions as `allen_sr.decoding.laplace` does for a checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allen_sr.decoding.checkpoints import match_variables, restore
from allen_sr.decoding.one_pass import VARIABLE_HINT
from allen_sr.evaluation.bicubic import tf1_phase_taps
from allen_sr.t2t.names import register_all

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "DISTRIBUTION_OUTPUTS", "ONNX_OPSET", "frozen_graph",
           "write_saved_model", "write_onnx", "bicubic_as_conv"]

INPUT_NAME = "image"
OUTPUT_NAME = "upscaled"
DISTRIBUTION_OUTPUTS = ("mean", "scale")  # the distribution graph's outputs
ONNX_OPSET = 17  # onnxruntime >= 1.11 runs it; Fiji's deepImageJ and bioimageio.core too


def dihedral(tf: Any, images: Any, k: int) -> Any:
    """The k-th flip/rotation, as `allen_sr.decoding.one_pass.dihedral` (np.rot90 = tf.image.rot90)."""
    out = tf.image.rot90(images, k % 4)
    return tf.reverse(out, [2]) if k >= 4 else out


def undo_dihedral(tf: Any, images: Any, k: int) -> Any:
    out = tf.reverse(images, [2]) if k >= 4 else images
    return tf.image.rot90(out, (4 - k % 4) % 4)


def frozen_graph(hparams: "HParams", checkpoint: str, model_name: str, tta: bool,
                 distribution: bool = False) -> Any:
    """The model as a frozen GraphDef: ``image:0`` uint8 [N, H, W, C] -> ``upscaled:0`` uint8.

    With ``distribution`` (a model trained with hparam ``probabilistic``; ``tta`` must be False):
    ``image:0`` -> ``mean:0`` and ``scale:0``, float32 [N, fH, fW, C] each.
    """
    register_all()
    import tensorflow.compat.v1 as tf
    from tensor2tensor.utils import registry
    from tensorflow.python.autograph.core import ag_ctx

    from allen_sr.models import conv_net

    channels = int(hparams.num_channels)
    graph = tf.Graph()
    with graph.as_default():
        model = registry.model(model_name)(hparams, tf.estimator.ModeKeys.PREDICT)
        image = tf.placeholder(tf.uint8, [None, None, None, channels], INPUT_NAME)
        x = tf.cast(image, tf.int32)

        def run(batch: Any) -> Any:
            return model.infer({"inputs": batch})["outputs"]

        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            if not tta:
                prediction = run(x)
            else:
                total = None
                for ks in ((0, 2, 4, 6), (1, 3, 5, 7)):
                    preds = tf.split(run(tf.concat([dihedral(tf, x, k) for k in ks], 0)), 4)
                    part = tf.add_n([undo_dihedral(tf, p, k) for k, p in zip(ks, preds)])
                    total = part if total is None else total + part
                prediction = total / 8.0
        if distribution:
            if tta:
                raise ValueError("the distribution graph is one view: the runtime averages the views")
            tf.identity(tf.cast(prediction, tf.float32), DISTRIBUTION_OUTPUTS[0])
            tf.identity(tf.exp(tf.get_collection(conv_net.LAPLACE_LOG_SCALE)[0]), DISTRIBUTION_OUTPUTS[1])
            outputs = list(DISTRIBUTION_OUTPUTS)
        else:
            rounded = tf.clip_by_value(tf.round(prediction), 0.0, 255.0)
            tf.identity(tf.cast(rounded, tf.uint8), OUTPUT_NAME)
            outputs = [OUTPUT_NAME]
        ema = float(getattr(hparams, "weight_ema_decay", 0.0)) > 0
        averaged = tf.trainable_variables() if ema else []
        names = match_variables(tf.global_variables(), checkpoint, model_name, averaged, hint=VARIABLE_HINT)
        with tf.Session(graph=graph) as session:
            restore(tf.train.Saver(var_list=names), session, checkpoint)
            return tf.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), outputs)


def write_saved_model(graph_def: Any, folder: str | os.PathLike[str]) -> Path:
    """A SavedModel of ``graph_def`` with the serving signature ``serving_default`` (image -> upscaled)."""
    import tensorflow.compat.v1 as tf

    folder = Path(folder)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        image = graph.get_tensor_by_name(f"{INPUT_NAME}:0")
        upscaled = graph.get_tensor_by_name(f"{OUTPUT_NAME}:0")
        signature = tf.saved_model.signature_def_utils.predict_signature_def(
            inputs={INPUT_NAME: image}, outputs={OUTPUT_NAME: upscaled})
        builder = tf.saved_model.Builder(os.fspath(folder))
        with tf.Session(graph=graph) as session:
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature}, strip_default_attrs=True)
        builder.save()
    return folder


def bicubic_as_conv(model_proto: Any, factor: int, channels: int) -> int:
    """Replace tf2onnx's bicubic Resize nodes by edge padding, a grouped 4x4 conv and
    DepthToSpace computing TF 1's resize_bicubic; returns how many were replaced.

    Two reasons. tf2onnx 1.17 writes TF 1's ResizeBicubic (no half-pixel centres: ONNX's
    "asymmetric" coordinates) with TF 2's kernel (a = -0.5, ``exclude_outside=1``), which changed
    2 of 3 output values by up to 10 levels; and onnxruntime's cubic Resize was 45% of the whole
    model's time. An integer-factor bicubic resize is ``factor**2`` fixed 4x4 filters per channel
    (one per output phase) followed by a pixel shuffle, which onnxruntime runs fast.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    taps = tf1_phase_taps(factor)  # [phase, tap]
    # Output channel c * f^2 + py * f + px of group c: taps[py] (rows) x taps[px] (columns).
    kernel = np.einsum("yi,xj->yxij", taps, taps).reshape(factor * factor, 1, 4, 4)
    kernel = np.tile(kernel, (channels, 1, 1, 1)).astype(np.float32)
    graph = model_proto.graph
    replaced, nodes = 0, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not (node.op_type == "Resize" and attrs.get("mode") == b"cubic"
                and attrs.get("coordinate_transformation_mode") == b"asymmetric"):
            nodes.append(node)
            continue
        tag = f"bicubic_as_conv_{replaced}"
        source, out = node.input[0], node.output[0]  # NCHW (tf2onnx transposes around Resize)
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 2, 2], np.int64), f"{tag}_pads"),
            numpy_helper.from_array(kernel, f"{tag}_kernel")])
        nodes += [
            helper.make_node("Pad", [source, f"{tag}_pads"], [f"{tag}_padded"], mode="edge", name=f"{tag}_pad"),
            helper.make_node("Conv", [f"{tag}_padded", f"{tag}_kernel"], [f"{tag}_phases"],
                             group=channels, kernel_shape=[4, 4], name=f"{tag}_conv"),
            helper.make_node("DepthToSpace", [f"{tag}_phases"], [out], blocksize=factor, mode="CRD",
                             name=f"{tag}_shuffle"),
        ]
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def write_onnx(graph_def: Any, path: str | os.PathLike[str], factor: int, channels: int,
               outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> Path:
    """``graph_def`` converted by tf2onnx: one uint8 input, the named outputs, dynamic N, H, W."""
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[f"{INPUT_NAME}:0"], output_names=[f"{name}:0" for name in outputs],
        opset=ONNX_OPSET)
    # tf2onnx keeps TF's tensor names ("image:0"); tools show the plain names.
    renames = {f"{name}:0": name for name in (INPUT_NAME, *outputs)}
    for node in model_proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        value.name = renames.get(value.name, value.name)
    bicubic_as_conv(model_proto, factor, channels)
    shapes = [(model_proto.graph.input[0], ("batch", "height", "width"))]
    shapes += [(value, ("batch", "out_height", "out_width")) for value in model_proto.graph.output]
    for value, names in shapes:
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            dim.dim_param = name
    path = Path(path)
    path.write_bytes(model_proto.SerializeToString())
    return path
