"""Whole-image prediction: image sources read region by region (PNG, JPEG, TIFF, BigTIFF,
OME-TIFF, pyramidal slides), overlapping tiles blended with smooth weights, streaming writers
(PNG/JPEG, tiled pyramidal BigTIFF). No TensorFlow: the model comes in as a function."""
