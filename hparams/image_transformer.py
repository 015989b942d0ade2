"""Image Transformer hparams sets for Allen brain super-resolution (model `img2img_transformer`).

All sets decode in plain raster order with masked local 1-D self-attention (each sub-pixel sees
its own block and the previous one: `block_length` sub-pixels, 3 per RGB pixel). That order is
what `allen-sr decode` reproduces incrementally with cached keys and values, so decoding is both
exact and fast. tensor2tensor's stock `img2img_transformer2d_*` sets use local 2-D attention in
block-raster order, which its own decoder cannot run (see README).
"""
from tensor2tensor.layers import common_image_attention as cia
from tensor2tensor.models import image_transformer_2d

from allen_sr.data.degrade import REAL_INPUTS_TRANSFORMER
from allen_sr.models import image_transformer  # noqa: F401  (registers img2img_transformer_sr)
from allen_sr.t2t import registration


def _allen_transformer_base():
    """Shared base: img2img_transformer2d_base with local 1-D raster decoding and a warm-up schedule."""
    hp = image_transformer_2d.img2img_transformer2d_base()
    hp.dec_attention_type = cia.AttentionType.LOCAL_1D
    hp.block_raster_scan = False
    hp.img_len = 32
    hp.block_length = 256
    hp.layer_prepostprocess_dropout = 0.1
    # "noam": linear warm-up, then 1/sqrt(step) decay, scaled by 1/sqrt(hidden_size).
    hp.learning_rate_schedule = "constant*linear_warmup*rsqrt_decay*rsqrt_hidden_size"
    hp.learning_rate_constant = 1.0
    hp.learning_rate_warmup_steps = 4000
    hp.clip_grad_norm = 1.0
    # Read by model img2img_transformer_sr only (allen_sr/models/image_transformer.py). The recipe
    # (bicubic prior, Gaussian only, normalized inputs, bicubic/noisy conditioning in training) is
    # what held-out side-by-side runs kept (docs/decisions/image_transformer.md).
    hp.add_hparam("normalize_inputs", True)  # add each input value scaled by the dataset mean/std
    hp.add_hparam("input_skip", True)  # add each sub-pixel's input pixel embedding to its decoder input
    hp.add_hparam("bicubic_prior", True)  # add a Gaussian around bicubic + learned offset to the logits
    hp.add_hparam("prior_sigma", 8.0)  # the prior's initial width (and offset unit), grey levels
    hp.add_hparam("input_patch", 2)  # r > 0: linear maps of each input pixel's (2r+1)^2 neighbourhood
    hp.add_hparam("upscale_factor", 4)  # output / input side; our problems set it
    hp.add_hparam("free_logit_scale", 0.0)  # with the prior: weight of the free 256-way logits (0: Gaussian only)
    # Training only (the network the decoders run is unchanged by these):
    hp.add_hparam("train_budget_seconds", 0.0)  # > 0: stop after this much training time; the cosine follows it
    hp.add_hparam("cosine_decay_steps", 0)  # without a budget: clamped half cosine over this many steps
    hp.add_hparam("cosine_decay_min", 0.1)  # the cosine's final factor of the learning rate
    hp.add_hparam("embedding_init", "default")  # "smooth": value embeddings start smooth in the value
    hp.add_hparam("embedding_smoothness", 0.0)  # weight of the neighbouring-value embedding penalty
    hp.add_hparam("context_bicubic", 1.0)  # probability a conditioning sub-pixel is its bicubic value (training)
    hp.add_hparam("target_noise", 4)  # +-grey levels of noise on the decoder's conditioning (training)
    hp.add_hparam("ev_loss_weight", 4.0)  # weight of the L1 of each sub-pixel's expected value (prior_sigma units)
    hp.add_hparam("self_condition", 0.0)  # fraction of the context replaced by the model's own mean values (training)
    hp.add_hparam("color_augment", "")  # problem-side colour augmentation of training tiles (problems.py)
    hp.add_hparam("degradation", REAL_INPUTS_TRANSFORMER)  # realistic training inputs (allen_sr.t2t.degradation); none: clean
    # Decoding: the mode `allen-sr decode/evaluate/upscale` use when --mode is not given.
    hp.add_hparam("decode_mode", "mean")
    hp.add_hparam("decode_tta", False)  # average the decodes of the 8 flips/rotations (measured: +0.006 dB, 10x time)
    return hp


@registration.hparams
def img2img_allen_cpu_tiny():
    """Tiny Image Transformer that beats bicubic after ~15 minutes on 2 CPU cores (make demo)."""
    hp = _allen_transformer_base()
    hp.hidden_size = 64
    hp.filter_size = 128
    # 2 heads and 64-sub-pixel blocks: 1.4x the steps of 4 heads and 128 on 2 CPU cores (attention
    # is most of a step), which scored better on held-out tissue after the same 15 minutes
    # (docs/decisions/image_transformer.md, "Why 2 heads and 64-sub-pixel blocks").
    hp.num_heads = 2
    hp.num_encoder_layers = 2
    hp.num_decoder_layers = 2
    hp.block_length = 64
    hp.batch_size = 8
    hp.layer_prepostprocess_dropout = 0.0
    # A CPU budget is a few hundred to ~2000 steps: a short warm-up to 3e-3, then no 1/sqrt(step)
    # decay (it had cut the rate to a third by step 1000); with train_budget_seconds (or
    # cosine_decay_steps) the clamped cosine of the base set decays it to cosine_decay_min.
    # Measured (benchmarks/RESULTS.md): held-out teacher-forced NLL 4.16 vs 5.40 after 5 minutes.
    hp.learning_rate_schedule = "constant*linear_warmup*rsqrt_hidden_size"
    hp.learning_rate_constant = 0.024  # 0.024 / sqrt(64) = 3e-3 after step 20
    hp.learning_rate_warmup_steps = 20
    return hp


@registration.hparams
def img2img_allen_base():
    """Single-GPU Image Transformer: hidden 256, 4 encoder / 6 decoder layers, batch 8."""
    hp = _allen_transformer_base()
    hp.hidden_size = 256
    hp.filter_size = 1024
    hp.num_heads = 8
    hp.num_encoder_layers = 4
    hp.num_decoder_layers = 6
    hp.batch_size = 8
    hp.learning_rate_constant = 1.0  # peak ~1e-3 at step 4000
    hp.learning_rate_warmup_steps = 4000
    return hp


@registration.hparams
def img2img_allen_multigpu():
    """Multi-GPU set as in the original run (8 GPUs, batch 18 per GPU): hidden 512, 4/8 layers."""
    hp = _allen_transformer_base()
    hp.hidden_size = 512
    hp.filter_size = 2048
    hp.num_heads = 8
    hp.num_encoder_layers = 4
    hp.num_decoder_layers = 8
    hp.batch_size = 18  # per GPU: t2t's batch_size counts examples per data shard for images
    hp.learning_rate_constant = 2.0  # peak ~1.2e-3 at step 8000
    hp.learning_rate_warmup_steps = 8000
    return hp
