"""Image Transformer variant for super-resolution (registered as `img2img_transformer_sr`).

Identical to tensor2tensor's `img2img_transformer` except for two additions, switched by hparams
(defined in hparams/image_transformer.py):

* ``input_skip``: each target sub-pixel's decoder input also receives the embedding of the
  low-resolution input pixel it lies in (same colour channel, nearest upsampling). It depends on
  the inputs only, so causal decoding is unchanged.
* ``normalize_inputs``: each input sub-pixel's embedding also receives a learned projection of its
  value normalized by the dataset's per-channel mean/std (`allen_sr.models.normalization`; stored
  in the checkpoint, so decoding needs no data_dir).

Why: docs/ARCHITECTURE.md ("The models").
"""
from __future__ import annotations

import copy

from allen_sr.t2t import compat as t2t_compat

t2t_compat.apply()

import tensorflow.compat.v1 as tf  # noqa: E402
from tensor2tensor.layers import common_image_attention as cia  # noqa: E402
from tensor2tensor.layers import common_layers  # noqa: E402
from tensor2tensor.models import image_transformer_2d  # noqa: E402

from allen_sr.models.normalization import input_statistics  # noqa: E402
from allen_sr.t2t import registration  # noqa: E402

MODEL_NAME = "img2img_transformer_sr"


def normalized_input_term(raw_inputs, hparams):
    """[B, h, w*C, H]: a learned projection of each input sub-pixel's normalized value."""
    mean, std = input_statistics(hparams, hparams.num_channels, MODEL_NAME)
    x = (tf.cast(raw_inputs, tf.float32) - mean) / std
    batch, h, w, c = common_layers.shape_list(x)
    x = tf.reshape(x, [batch, h, w * c, 1])
    return tf.layers.dense(x, hparams.hidden_size, name="normalized_inputs")


def upsample_input_embeddings(inputs, rows: int, cols: int, channels: int):
    """Nearest-upsample embedded inputs [B, h, w*C, H] to the decoder grid [B, rows, cols, H].

    Sub-pixel (r, c, ch) of the target receives input pixel (r // f, c // f), channel ch.
    """
    batch, h, wc, hidden = common_layers.shape_list(inputs)
    w = wc // channels
    factor = rows // h
    x = tf.reshape(inputs, [batch, h, 1, w, 1, channels, hidden])
    x = tf.tile(x, [1, 1, factor, 1, factor, 1, 1])
    return tf.reshape(x, [batch, rows, cols, hidden])


@registration.model
class Img2imgTransformerSr(image_transformer_2d.Img2imgTransformer):
    """img2img_transformer plus an optional input skip into the decoder (hparam input_skip)."""

    def body(self, features):
        hparams = copy.copy(self._hparams)
        inputs, targets = features["inputs"], features["targets"]
        if getattr(hparams, "normalize_inputs", False):
            inputs += normalized_input_term(features["inputs_raw"], hparams)
        encoder_input = cia.prepare_encoder(inputs, hparams)
        encoder_output = cia.transformer_encoder_layers(
            encoder_input, hparams.num_encoder_layers, hparams,
            attention_type=hparams.enc_attention_type, name="encoder")
        decoder_input, rows, cols = cia.prepare_decoder(targets, hparams)
        if getattr(hparams, "input_skip", False):
            decoder_input += upsample_input_embeddings(inputs, rows, cols, hparams.num_channels)
        decoder_output = cia.transformer_decoder_layers(
            decoder_input, encoder_output, hparams.num_decoder_layers, hparams,
            attention_type=hparams.dec_attention_type, name="decoder")
        return cia.create_output(decoder_output, rows, cols, targets, hparams)
