"""The Image Transformer's network in NumPy: its weights read by name, its encoder, and the pieces
of a decoder layer that the incremental decoder (:mod:`allen_sr.decoding.fast`) runs one sub-pixel
at a time.

It is the network `img2img_transformer` (and `img2img_transformer_sr`) builds for the hparams
:func:`allen_sr.decoding.support.check_supported` accepts:

* bottoms: per-channel embeddings (256*C rows, scaled by sqrt(hidden)), giving [B, h, w*C, H] for
  the inputs and [B, rows, cols*C, H] for the targets (`image_channel_embeddings_bottom`);
* the 2-D timing signal (`add_timing_signal_nd`) on the encoder's [h, w*C] and the decoder's
  [rows, cols*C] grid;
* each layer: preprocess -> attention -> postprocess (the residual), encoder-decoder attention
  likewise in the decoder, then the FFN; a final preprocess; `output_conv` to 256 logits.

No TensorFlow here: importing this module must stay cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from allen_sr.decoding.checkpoints import canonical_variable_name
from allen_sr.decoding.modes import VOCAB
from allen_sr.decoding.support import DEFAULT_MODEL, SKIP_MODEL, UnsupportedHParamsError
from allen_sr.models.transformer_options import option
from allen_sr.evaluation.bicubic import PRIOR_SIGMA_RANGE, bicubic_centres

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

# dec_attention_type -> the variable scope of the decoder's self-attention in each layer.
SELF_ATTENTION_SCOPES = {"local_1d": "local_1d_self_att/self_attention",
                         "local_2d": "local_2d_self_att/self_attention"}


def timing_signal_2d(rows: int, cols: int, channels: int, dtype: Any = np.float32) -> np.ndarray:
    """t2t's `add_timing_signal_nd` signal for a [rows, cols] grid: [rows, cols, channels].

    Computed in float32 with the same operations as TF (timescales from exp of a float32 range),
    so it matches TF's signal to float32 rounding of sin/cos.
    """
    num_dims = 2
    num_timescales = channels // (num_dims * 2)
    increment = np.float32(math.log(1.0e4 / 1.0)) / (np.float32(num_timescales) - np.float32(1))
    inv = np.exp(np.arange(num_timescales, dtype=np.float32) * -np.float32(increment)).astype(np.float32)
    signal = np.zeros((rows, cols, channels), np.float32)
    for dim, length in enumerate((rows, cols)):
        scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
        part = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)  # [length, 2*nt]
        lo = dim * 2 * num_timescales
        if dim == 0:
            signal[:, :, lo:lo + 2 * num_timescales] += part[:, None, :]
        else:
            signal[:, :, lo:lo + 2 * num_timescales] += part[None, :, :]
    return signal.astype(dtype)


class ScopeNamer:
    """Reproduces TF's unique names for `variable_scope(None, default_name=...)` within a scope."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, scope: str, base: str) -> str:
        n = self.counts.get((scope, base), 0)
        self.counts[(scope, base)] = n + 1
        return f"{scope}/{base}" if n == 0 else f"{scope}/{base}_{n}"


@dataclass
class PrePost:
    """One `layer_prepostprocess` call: its sequence and the layer norms it uses, in order."""

    sequence: str
    norms: list[tuple[np.ndarray, np.ndarray]]


@dataclass
class Attention:
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    w_qkv: np.ndarray  # [H, 2*key_depth + value_depth]: q, k, v in one matmul per step


@dataclass
class Ffn:
    w1: np.ndarray | None
    b1: np.ndarray | None
    w2: np.ndarray | None
    b2: np.ndarray | None


@dataclass
class EncoderLayer:
    """Self-attention and FFN, each wrapped in pre/postprocess."""

    self_pre: PrePost
    self_att: Attention
    self_post: PrePost
    ffn_pre: PrePost
    ffn: Ffn
    ffn_post: PrePost


@dataclass
class DecoderLayer(EncoderLayer):
    """A decoder layer adds encoder-decoder attention between self-attention and FFN."""

    encdec_pre: PrePost
    encdec_att: Attention
    encdec_post: PrePost


class ImageTransformerNetwork:
    """The weights of one `img2img_transformer` checkpoint and the network's building blocks.

    ``weights`` maps variable names (t2t-trainer's, or canonical) to arrays; every model variable
    must be used by these hparams, or the hparams describe another model (ValueError).
    """

    def __init__(
        self,
        hparams: "HParams",
        weights: Mapping[str, np.ndarray],
        model_name: str = DEFAULT_MODEL,
        dtype: str | np.dtype = "float32",
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.channels = int(hparams.num_channels)
        self.hidden = int(hparams.hidden_size)
        self.heads = int(hparams.num_heads)
        self.key_depth = int(hparams.attention_key_channels or hparams.hidden_size)
        self.value_depth = int(hparams.attention_value_channels or hparams.hidden_size)
        self.epsilon = self.dtype.type(float(hparams.norm_epsilon))
        self.inv_hidden = self.dtype.type(1.0 / self.hidden)
        self.norm_type = hparams.norm_type
        self.ffn_type = hparams.ffn_layer
        self.pre_seq = hparams.layer_preprocess_sequence
        self.post_seq = hparams.layer_postprocess_sequence
        self.model = model_name
        # img2img_transformer_sr's options (its documented defaults where a stock set lacks them);
        # the stock model has none of them.
        ours = model_name == SKIP_MODEL
        self.input_skip = ours and bool(option(hparams, "input_skip"))
        self.normalize = ours and bool(option(hparams, "normalize_inputs"))
        self.prior = ours and bool(option(hparams, "bicubic_prior"))
        self.prior_sigma = float(option(hparams, "prior_sigma"))
        self.patch_radius = int(option(hparams, "input_patch")) if ours else 0
        self.free_scale = self.dtype.type(option(hparams, "free_logit_scale"))
        self.self_attention_scope = SELF_ATTENTION_SCOPES[hparams.dec_attention_type]
        self.weights = {canonical_variable_name(k): v for k, v in weights.items()}
        self.used: set[str] = set()
        self.load(int(hparams.num_encoder_layers), int(hparams.num_decoder_layers))

    # ---- weights

    def get(self, name: str) -> np.ndarray:
        key = f"{self.model}/{name}"
        if key not in self.weights:
            near = sorted(k for k in self.weights if k.rsplit("/", 1)[0] == key.rsplit("/", 1)[0])
            raise KeyError(
                f"variable {key} not in the checkpoint"
                + (f" (same scope has: {near})" if near else "")
                + "; do the hparams (layers, sequences, sizes, dec_attention_type) match the trained model?")
        self.used.add(key)
        return np.asarray(self.weights[key], dtype=self.dtype)

    def find_embedding(self, targets: bool) -> np.ndarray:
        # The bottom's scope is named after the problem's modality ("identity_modality" for our
        # problems), so find the one embedding of each kind rather than hard-coding the scope.
        suffix = "rgb_target_emb_input_bottom"
        found = [
            k for k in self.weights
            if k.startswith(self.model + "/") and k.endswith("/" + suffix)
            and ("/targets_bottom/" in k) == targets
        ]
        if len(found) != 1:
            kind = "target" if targets else "input"
            raise KeyError(f"expected one {kind} embedding '*/{suffix}', found {found}")
        return self.get(found[0][len(self.model) + 1:])

    def prepost(self, namer: ScopeNamer, scope: str, sequence: str, pre: bool) -> PrePost:
        sub = namer(scope, "layer_prepostprocess" if pre else "layer_postprocess")
        norms = []
        if sequence != "none" and self.norm_type == "layer":
            norm_namer = ScopeNamer()
            for c in sequence:
                if c == "n":
                    ln = norm_namer(sub, "layer_norm")
                    norms.append((self.get(f"{ln}/layer_norm_scale"), self.get(f"{ln}/layer_norm_bias")))
        return PrePost(sequence, norms)

    def attention_weights(self, scope: str) -> Attention:
        wq, wk, wv, wo = (self.get(f"{scope}/{n}/kernel") for n in ("q", "k", "v", "output_transform"))
        return Attention(wq, wk, wv, wo, np.concatenate([wq, wk, wv], axis=1))

    def ffn_weights(self, scope: str) -> Ffn:
        if self.ffn_type == "none":
            return Ffn(None, None, None, None)
        return Ffn(self.get(f"{scope}/ffn/conv1/kernel"), self.get(f"{scope}/ffn/conv1/bias"),
                   self.get(f"{scope}/ffn/conv2/kernel"), self.get(f"{scope}/ffn/conv2/bias"))

    def load(self, num_encoder_layers: int, num_decoder_layers: int) -> None:
        # get_channel_embeddings multiplies the table by sqrt(hidden_size).
        emb_scale = np.asarray(self.hidden ** 0.5, self.dtype)
        self.input_embedding = self.find_embedding(targets=False) * emb_scale
        self.target_embedding = self.find_embedding(targets=True) * emb_scale
        expected = (VOCAB * self.channels, self.hidden)
        for emb in (self.input_embedding, self.target_embedding):
            if emb.shape != expected:
                raise ValueError(f"embedding has shape {emb.shape}, expected {expected} "
                                 f"for num_channels={self.channels}")
        if self.normalize or self.patch_radius:  # image_transformer.normalized_values
            self.norm_mean = self.get("body/input_normalization/mean")
            self.norm_std = self.get("body/input_normalization/std")
        if self.normalize:  # allen_sr.models.image_transformer.normalized_input_term
            self.norm_kernel = self.get("body/normalized_inputs/kernel")  # [1, H]
            self.norm_bias = self.get("body/normalized_inputs/bias")
        if self.patch_radius:  # allen_sr.models.image_transformer.patch_terms
            self.patch_skip = self.get("body/input_patch/skip")  # [f, f, C, K, H]
            if self.prior:
                self.patch_offset = self.get("body/input_patch/offset")  # [f, f, C, K]
                self.patch_offset_bias = self.get("body/input_patch/offset_bias")  # [f, f, C]
        namer = ScopeNamer()
        self.encoder: list[EncoderLayer] = []
        for i in range(num_encoder_layers):
            scope = f"body/encoder_layer_{i}"
            self_pre = self.prepost(namer, scope, self.pre_seq, True)
            att = self.attention_weights(f"{scope}/self_att/self_att")
            self_post = self.prepost(namer, scope, self.post_seq, False)
            ffn_pre = self.prepost(namer, scope, self.pre_seq, True)
            ffn = self.ffn_weights(scope)
            ffn_post = self.prepost(namer, scope, self.post_seq, False)
            self.encoder.append(EncoderLayer(self_pre, att, self_post, ffn_pre, ffn, ffn_post))
        self.encoder_final = self.prepost(namer, "body", self.pre_seq, True)
        self.decoder: list[DecoderLayer] = []
        for i in range(num_decoder_layers):
            scope = f"body/decoder_layer_{i}"
            self_pre = self.prepost(namer, scope, self.pre_seq, True)
            att = self.attention_weights(f"{scope}/{self.self_attention_scope}")
            self_post = self.prepost(namer, scope, self.post_seq, False)
            encdec_pre = self.prepost(namer, scope, self.pre_seq, True)
            encdec = self.attention_weights(f"{scope}/encdec_attention/encdec_attention")
            encdec_post = self.prepost(namer, scope, self.post_seq, False)
            ffn_pre = self.prepost(namer, scope, self.pre_seq, True)
            ffn = self.ffn_weights(scope)
            ffn_post = self.prepost(namer, scope, self.post_seq, False)
            self.decoder.append(DecoderLayer(self_pre, att, self_post, ffn_pre, ffn, ffn_post,
                                             encdec_pre, encdec, encdec_post))
        self.decoder_final = self.prepost(namer, "body", self.pre_seq, True)
        self.out_kernel = self.get("body/output_conv/kernel")
        self.out_bias = self.get("body/output_conv/bias")
        if self.prior:  # allen_sr.models.image_transformer.bicubic_prior_logits
            self.prior_kernel = self.get("body/bicubic_prior/kernel")  # [H, 2]: offset, log width
            self.prior_bias = self.get("body/bicubic_prior/bias")
        if self.out_kernel.shape != (self.hidden, VOCAB):
            raise UnsupportedHParamsError(
                f"output_conv kernel has shape {self.out_kernel.shape}, expected {(self.hidden, VOCAB)} "
                "(the categorical 256-way output)")
        # Model variables the network above never read mean the hparams describe a different
        # model than the checkpoint holds (e.g. fewer layers): refuse rather than decode garbage.
        unused = sorted(k for k in self.weights if k.startswith(self.model + "/") and k not in self.used)
        if unused:
            raise ValueError(
                f"{len(unused)} checkpoint variable(s) unused by these hparams, e.g. {unused[:3]}; "
                "do num_encoder_layers/num_decoder_layers and the pre/postprocess sequences match training?")
        del self.weights  # only the arrays referenced above are kept

    # ---- building blocks (x: [..., H])

    def layer_norm(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
        # ufunc reductions instead of x.mean(): same arithmetic, a third of the Python overhead,
        # which dominates a decoding step at these sizes.
        inv = self.inv_hidden
        centred = x - np.add.reduce(x, axis=-1, keepdims=True) * inv
        variance = np.add.reduce(centred * centred, axis=-1, keepdims=True) * inv
        return centred / np.sqrt(variance + self.epsilon) * scale + bias

    def apply(self, pp: PrePost, x: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """t2t `layer_prepostprocess`: 'a' adds the residual, 'n' normalises, 'd' is dropout (off)."""
        if pp.sequence == "none":
            return x
        norms = iter(pp.norms)
        for c in pp.sequence:
            if c == "a":
                x = x + previous
            elif c == "n" and self.norm_type == "layer":
                scale, bias = next(norms)
                x = self.layer_norm(x, scale, bias)
        return x

    @staticmethod
    def ffn(ffn: Ffn, x: np.ndarray) -> np.ndarray:
        if ffn.w1 is None:
            return x
        h = np.maximum(x @ ffn.w1 + ffn.b1, 0)
        return h @ ffn.w2 + ffn.b2

    @staticmethod
    def softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - np.maximum.reduce(logits, axis=-1, keepdims=True))
        return e / np.add.reduce(e, axis=-1, keepdims=True)

    def split_heads(self, x: np.ndarray, depth: int) -> np.ndarray:
        """[B, L, depth] -> [B, heads, L, depth/heads] (t2t puts head h at h*d .. h*d+d-1)."""
        b, length, _ = x.shape
        return x.reshape(b, length, self.heads, depth // self.heads).transpose(0, 2, 1, 3)

    def full_attention(self, att: Attention, x: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """Unmasked multihead attention of x [B, Lq, H] over memory [B, Lk, H] (encoder)."""
        scale = self.dtype.type((self.key_depth // self.heads) ** -0.5)
        q = self.split_heads(x @ att.wq, self.key_depth) * scale
        k = self.split_heads(memory @ att.wk, self.key_depth)
        v = self.split_heads(memory @ att.wv, self.value_depth)
        out = self.softmax(q @ k.transpose(0, 1, 3, 2)) @ v  # [B, heads, Lq, dv]
        b, _, length, _ = out.shape
        return out.transpose(0, 2, 1, 3).reshape(b, length, self.value_depth) @ att.wo

    def embed(self, values: np.ndarray, table: np.ndarray) -> np.ndarray:
        """[B, h, w, C] ints -> [B, h, w*C, H]: channel c uses rows c*256 .. c*256+255."""
        offsets = np.arange(self.channels) * VOCAB
        emb = table[values + offsets]  # [B, h, w, C, H]
        b, h, w, c, hidden = emb.shape
        return emb.reshape(b, h, w * c, hidden)

    def normalized(self, inputs: np.ndarray) -> np.ndarray:
        """[B, h, w, C]: the inputs normalized by the checkpoint's per-channel mean/std."""
        return (np.asarray(inputs, self.dtype) - self.norm_mean) / self.norm_std

    def patches(self, inputs: np.ndarray) -> np.ndarray:
        """[B, h, w, K]: `image_transformer.input_patches` of the normalized inputs."""
        r = self.patch_radius
        x = np.pad(self.normalized(inputs), ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
        _, h, w, _ = inputs.shape
        side = 2 * r + 1
        return np.concatenate([x[:, dy:dy + h, dx:dx + w] for dy in range(side) for dx in range(side)], axis=-1)

    def input_features(self, inputs: np.ndarray) -> np.ndarray:
        """The inputs bottom [B, h, w*C, H], plus the normalized-value term when enabled."""
        x = self.embed(np.asarray(inputs, np.int64), self.input_embedding)
        if self.normalize:
            values = self.normalized(inputs)
            b, h, w, c = values.shape
            x = x + values.reshape(b, h, w * c, 1) @ self.norm_kernel + self.norm_bias
        return x

    def encode(self, inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the encoder; returns per decoder layer the encoder-decoder keys and values.

        Keys are [B*heads, depth/heads, L_enc] (pre-transposed), values [B*heads, L_enc, depth/heads].
        """
        x = self.input_features(inputs)
        b, h, w, hidden = x.shape
        x = (x + timing_signal_2d(h, w, hidden, self.dtype)).reshape(b, h * w, hidden)
        for layer in self.encoder:
            y = self.apply(layer.self_pre, x)
            x = self.apply(layer.self_post, self.full_attention(layer.self_att, y, y), x)
            y = self.apply(layer.ffn_pre, x)
            x = self.apply(layer.ffn_post, self.ffn(layer.ffn, y), x)
        memory = self.apply(self.encoder_final, x)
        kv = []
        length = h * w
        for layer in self.decoder:
            att = layer.encdec_att
            k = self.split_heads(memory @ att.wk, self.key_depth).transpose(0, 1, 3, 2)
            v = self.split_heads(memory @ att.wv, self.value_depth)
            kv.append((np.ascontiguousarray(k).reshape(b * self.heads, -1, length),
                       np.ascontiguousarray(v).reshape(b * self.heads, length, -1)))
        return kv

    def position_terms(self, inputs: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """[B, rows*cols*C, H]: what the decoder input adds at each flat grid position besides the
        shifted target embedding: the timing signal on [rows, cols*C], plus for the input skip
        (`upsample_input_embeddings`) the embedding of the input pixel (r // f, col // f), same
        channel, and for ``input_patch`` its map of the input pixel's neighbourhood. All depend on
        the inputs only, never on the canvas."""
        c = self.channels
        length = rows * cols * c
        timing = timing_signal_2d(rows, cols * c, self.hidden, self.dtype).reshape(length, self.hidden)
        batch = inputs.shape[0]
        terms = np.broadcast_to(timing[None], (batch, length, self.hidden))
        if self.input_skip:
            emb = self.input_features(inputs)
            b, h, wc, hidden = emb.shape
            f = rows // h
            emb = emb.reshape(b, h, 1, wc // c, 1, c, hidden)
            terms = terms + np.broadcast_to(emb, (b, h, f, wc // c, f, c, hidden)).reshape(b, length, hidden)
        if self.patch_radius:  # the input_patch head's decoder-input map
            patch = np.einsum("nyxk,ijckh->nyixjch", self.patches(inputs), self.patch_skip, optimize=True)
            terms = terms + patch.reshape(batch, length, self.hidden)
        return terms

    def prior_centres(self, inputs: np.ndarray, rows: int) -> np.ndarray | None:
        """[B, rows*cols*C]: each sub-pixel's bicubic value plus the ``input_patch`` shift (the
        prior's centre before the decoder's offset), or None without the prior."""
        if not self.prior:
            return None
        centres = bicubic_centres(inputs, rows // inputs.shape[1], self.dtype)
        centres = centres.reshape(centres.shape[0], -1)
        if self.patch_radius:  # the input_patch head's learned shift of the centre
            shift = np.einsum("nyxk,ijck->nyixjc", self.patches(inputs), self.patch_offset, optimize=True)
            shift = (shift + self.patch_offset_bias[None, None, :, None]) * self.dtype.type(self.prior_sigma)
            centres = centres + shift.reshape(centres.shape[0], -1).astype(self.dtype)
        return centres

    def output_logits(self, x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
        """The final preprocess and `output_conv`: [B, H] -> [B, 256]; with the bicubic prior,
        plus its Gaussian around ``centre`` [B] (from :meth:`prior_centres`) + the learned offset."""
        y = self.apply(self.decoder_final, x)
        if not self.prior:
            return y @ self.out_kernel + self.out_bias
        # Gaussian only (free_logit_scale 0, our sets' default): the free logits add exactly 0.
        logits = (y @ self.out_kernel + self.out_bias) * self.free_scale if self.free_scale else 0
        params = y @ self.prior_kernel + self.prior_bias  # [B, 2]
        sigma0 = self.dtype.type(self.prior_sigma)
        low, high = (np.log(v) for v in PRIOR_SIGMA_RANGE)
        inv_sigma = np.exp(-np.clip(np.log(sigma0) + params[:, 1], low, high)).astype(self.dtype)
        mu = centre + params[:, 0] * sigma0
        z = (np.arange(VOCAB, dtype=self.dtype)[None, :] - mu[:, None]) * inv_sigma[:, None]
        return logits - self.dtype.type(0.5) * z * z
