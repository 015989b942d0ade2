"""Exported models: what `allen-sr export` writes and how `--exported DIR` runs it without TensorFlow.

`runtime` (NumPy, onnxruntime; no TensorFlow, no tensor2tensor) opens an export folder;
`conv` (SavedModel, ONNX), `transformer` (weights.npz + config.json) and `bioimageio`
(rdf.yaml package) write one from a `t2t-trainer` checkpoint.
"""
