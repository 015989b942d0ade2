"""Which Image Transformer hparams each decoder implements, with errors that name the hparam.

A decoder is exact only for a model that is causal in the order it fills the canvas, so anything
else is refused up front by :class:`UnsupportedHParamsError` naming the hparam, its value and what
works. :func:`check_decodable` is what any decoder needs (the reference one, the real t2t graph,
needs nothing more); :func:`check_supported` adds what the fast NumPy decoder implements. A fast
refusal suggests ``--decoder naive`` only when the naive decoder accepts the hparams.

Dropout hparams need no check: t2t sets every ``*dropout`` hparam to 0 outside training
(`T2TModel.set_mode`), which is the network both decoders run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allen_sr.decoding.errors import UnsupportedHParamsError
from allen_sr.decoding.orders import check_causal

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

DEFAULT_MODEL = "img2img_transformer"
# allen_sr.models.image_transformer: img2img_transformer plus the input skip into the decoder.
SKIP_MODEL = "img2img_transformer_sr"
TRANSFORMER_MODELS = (DEFAULT_MODEL, SKIP_MODEL)
FAST_ATTENTION_TYPES = ("local_1d", "local_2d")
NAIVE_HINT = "; --decoder naive decodes these hparams (the t2t graph, one forward pass per sub-pixel: slow)"
EMBEDDING_SETS = ("every img2img_transformer2d_* set, img2img_transformer_tiny and the "
                  "img2img_allen_* sets")


def effective_modality_fn(hparams: "HParams", kind: str, feature: str) -> Any:
    """The bottom/top function t2t's model uses for ``feature``: ``hparams.<kind>[feature]``,
    else the default for the problem's modality (as `T2TModel` picks it); None if unknown."""
    from tensor2tensor.layers import modalities

    chosen = (getattr(hparams, kind, None) or {}).get(feature)
    if chosen is not None:
        return chosen
    problem = getattr(hparams, "problem_hparams", None)
    modality = (getattr(problem, "modality", None) or {}).get(feature)
    if modality is None:
        return None
    if kind == "top":
        return modalities.get_top(modality)
    return modalities.get_targets_bottom(modality) if feature == "targets" else modalities.get_bottom(modality)


def describe(fn: Any) -> str:
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
    inner = [getattr(c, "__name__", "") for c in cells if callable(c)]
    name = getattr(fn, "__name__", repr(fn))
    return f"{name}({', '.join(inner)})" if inner else name


def check_decodable(hparams: "HParams") -> str:
    """What every decoder here needs; returns the causal order's kind ("raster"/"block_raster").

    The model must be causal in some order (:func:`allen_sr.decoding.orders.check_causal`), have
    the 256-way categorical output, and embed its inputs: with raw pixel values as inputs
    (tensor2tensor's 1-D sets set no inputs bottom, and our problems' inputs modality is
    'identity'), t2t cannot even build the model, so no checkpoint of it can exist.
    """
    from tensor2tensor.layers import modalities

    kind = check_causal(hparams)
    likelihood = getattr(hparams, "likelihood", "cat")
    if likelihood != "cat":
        raise UnsupportedHParamsError(
            f"likelihood={likelihood!r} cannot be decoded here: decoding supports likelihood='cat' "
            "(the 256-way softmax) only")
    bottom = effective_modality_fn(hparams, "bottom", "inputs")
    if bottom in (modalities.identity_bottom, modalities.image_bottom):
        raise UnsupportedHParamsError(
            f"bottom['inputs']={describe(bottom)} (the hparams set names no inputs bottom, as "
            "tensor2tensor's 1-D sets img2img_transformer_base and img2img_transformer_b* do, so "
            "the problem's modality decides): the encoder would get raw pixel values where it "
            "needs hidden_size-wide embeddings, so tensor2tensor cannot build this model for this "
            "problem (its own graph fails: 'Cannot reshape') and no checkpoint of it exists; "
            "decodable: bottom['inputs'] = image_channel_embeddings_bottom, as in " + EMBEDDING_SETS)
    return kind


def check_supported(hparams: "HParams", model_name: str = DEFAULT_MODEL) -> None:
    """Raise :class:`UnsupportedHParamsError` unless the fast decoder implements these hparams.

    It implements `img2img_transformer` (and `img2img_transformer_sr`) with masked local 1-D
    decoder self-attention in raster order or masked local 2-D attention in block-raster order,
    global encoder self-attention, layer norm (or none), sinusoidal ("timing") positions, the
    dense-ReLU-dense FFN (or none), pre/postprocess sequences of 'n', 'd', 'a', image channel
    embeddings and the 256-way categorical output.
    """
    from tensor2tensor.layers import modalities

    def refuse(text: str, naive_ok: bool = True) -> None:
        raise UnsupportedHParamsError(f"the fast decoder does not support {text}"
                                      + (NAIVE_HINT if naive_ok else ""))

    def need(name: str, value: Any, supported: Any, why: str = "") -> None:
        many = isinstance(supported, (tuple, list, set))
        if (value in supported) if many else (value == supported):
            return
        shown = " or ".join(map(repr, supported)) if many else repr(supported)
        refuse(f"{name}={value!r} (supported: {shown})" + (f"; {why}" if why else ""))

    if model_name not in TRANSFORMER_MODELS:
        refuse(f"model {model_name!r} (supported: {' or '.join(TRANSFORMER_MODELS)})", naive_ok=False)
    check_decodable(hparams)  # no decoder takes what fails here, so no hint to another one
    need("dec_attention_type", hparams.dec_attention_type, FAST_ATTENTION_TYPES)
    need("enc_attention_type", hparams.enc_attention_type, "global")
    need("q_filter_width", hparams.q_filter_width, 1,
         "t2t's global encoder self-attention (and local_1d) use it as a convolution width")
    need("kv_filter_width", hparams.kv_filter_width, 1,
         "t2t's global encoder self-attention (and local_1d) use it as a convolution width")
    need("ffn_layer", hparams.ffn_layer, ("conv_hidden_relu", "none"))
    need("norm_type", hparams.norm_type, ("layer", "none"))
    need("pos", hparams.pos, "timing")
    need("activation_dtype", getattr(hparams, "activation_dtype", "float32"), "float32")
    need("weight_dtype", getattr(hparams, "weight_dtype", "float32"), "float32")
    for name, allowed in (("layer_preprocess_sequence", "nd"), ("layer_postprocess_sequence", "and")):
        seq = getattr(hparams, name)
        if seq != "none" and any(c not in allowed for c in seq):
            refuse(f"{name}={seq!r} (supported: 'none' or letters from {allowed!r})")
    if int(hparams.hidden_size) // 4 < 2:
        refuse(f"hidden_size={hparams.hidden_size} (supported: >= 8, the 2-D timing signal needs "
               "2 timescales per axis)")
    key_depth = hparams.attention_key_channels or hparams.hidden_size
    value_depth = hparams.attention_value_channels or hparams.hidden_size
    for name, depth in (("attention_key_channels", key_depth), ("attention_value_channels", value_depth)):
        if depth % hparams.num_heads:
            refuse(f"{name}={depth} with num_heads={hparams.num_heads} (supported: divisible)",
                   naive_ok=False)
    # Bottoms/top: the image channel embeddings for both features and the identity top, as in
    # img2img_transformer2d_base; anything else would need other weights and another output.
    bottom = effective_modality_fn(hparams, "bottom", "inputs")
    if bottom is not modalities.image_channel_embeddings_bottom:
        refuse(f"bottom['inputs']={describe(bottom)} (supported: image_channel_embeddings_bottom, "
               f"as in {EMBEDDING_SETS})")
    target_bottom = effective_modality_fn(hparams, "bottom", "targets")
    cells = [c.cell_contents for c in (getattr(target_bottom, "__closure__", None) or ())]
    if modalities.image_channel_embeddings_bottom not in cells:
        refuse(f"bottom['targets']={describe(target_bottom)} (supported: "
               "make_targets_bottom(image_channel_embeddings_bottom))")
    top = effective_modality_fn(hparams, "top", "targets")
    if top is not modalities.identity_top:
        refuse(f"top['targets']={describe(top)} (supported: identity_top)")
