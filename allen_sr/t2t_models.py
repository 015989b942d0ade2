"""Image Transformer variant for super-resolution (registered as `img2img_transformer_sr`).

Identical to tensor2tensor's `img2img_transformer` except for one addition, switched by the
hparam `input_skip`: each target sub-pixel's decoder input also receives the embedding of the
low-resolution input pixel it lies in (same colour channel, nearest upsampling). The stock model
conditions on the input only through encoder-decoder attention, which a small model on a CPU
budget does not learn in time: it learns the autoregressive prior and greedy decoding collapses to
flat colour. With the skip, "copy the input colour, then refine" is available from the first step.
The skip depends on the inputs only, so causal decoding is unchanged.
"""
from __future__ import annotations

import copy

from allen_sr import t2t_compat

t2t_compat.apply()

import tensorflow.compat.v1 as tf  # noqa: E402
from tensor2tensor.layers import common_image_attention as cia  # noqa: E402
from tensor2tensor.layers import common_layers  # noqa: E402
from tensor2tensor.models import image_transformer_2d  # noqa: E402

from allen_sr import registration  # noqa: E402


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
