"""Hparams sets for the residual CNN `img2img_conv_sr` (allen_sr/models/conv_sr.py).

All train with Adam, batch 64, a short linear warm-up and a clamped
cosine decay of the learning rate over `cosine_decay_steps` (or, with
`train_budget_seconds`, over that much training time, after which training stops), L1 loss on
the 0-1 scale, the block-mean projection and a learned correction of the block means of up to 4
grey levels (`mean_correction`: realistic inputs are noisy and JPEG). The `*_hybrid` set adds
the pix2pix-style adversarial loss.
The model's own hparams, one line each: `allen_sr.models.conv_sr.HPARAMS`; the measurements behind
these choices: docs/ARCHITECTURE.md ("The models").
"""
from tensor2tensor.layers import common_hparams

from allen_sr.models import conv_sr
from allen_sr.t2t import registration  # noqa: F401  (registers model img2img_conv_sr)


def _conv_sr_base():
    """Shared base: t2t's basic_params1 without its text-model defaults, plus the model's hparams."""
    hp = common_hparams.basic_params1()
    hp.batch_size = 64  # examples per data shard for our (fixed-shape) image problems
    hp.hidden_size = 64
    # t2t's "adam" is tensorflow-addons' LazyAdam, which equals Adam for dense gradients (all of
    # ours); "true_adam" (tf.train.AdamOptimizer) fails in t2t's TF 2 code path (no get_gradients).
    hp.optimizer = "adam"
    hp.optimizer_adam_beta1 = 0.9
    hp.optimizer_adam_beta2 = 0.999
    hp.optimizer_adam_epsilon = 1e-8
    hp.learning_rate_schedule = "constant*linear_warmup"
    hp.learning_rate_constant = 1e-3
    hp.learning_rate_warmup_steps = 100
    hp.clip_grad_norm = 0.0  # none: L1 gradients are bounded
    hp.weight_decay = 0.0
    hp.label_smoothing = 0.0  # only meaningful for softmax outputs
    hp.dropout = 0.0
    hp.layer_prepostprocess_dropout = 0.0
    conv_sr.add_conv_sr_hparams(hp)
    # The projection copies a noisy or JPEG input's errors into every block's mean; a bounded,
    # learned shift corrects them. 4 grey levels: side by side with 0, 2, 8 and 32 and no
    # projection at all (docs/decisions/real_inputs.md, "Correcting the block means").
    hp.mean_correction = 4.0
    return hp


@registration.hparams
def img2img_conv_sr_cpu():
    """2 CPU cores, 15 minutes: 64 channels, 6 residual blocks, one sub-pixel upsampling conv
    (~0.63M parameters), pixel loss."""
    hp = _conv_sr_base()
    hp.hidden_size = 64
    hp.num_res_blocks = 6
    hp.upsample = "pixel_shuffle"  # faster than x2 stages on CPU, same quality
    # ~15 minutes of `allen-sr train` on 2 idle cores; for a wall-clock budget instead pass
    # --hparams=train_budget_seconds=900 (the decay then follows the time trained).
    hp.cosine_decay_steps = 15000
    hp.cosine_decay_min = 0.02
    hp.decode_tta = True  # average the 8 flips/rotations: a little better, 8x the decoding compute
    return hp


@registration.hparams
def img2img_conv_sr_cpu_hybrid():
    """img2img_conv_sr_cpu plus the pix2pix-style adversarial loss (weight 0.005 vs L1)."""
    hp = img2img_conv_sr_cpu()
    hp.gan_weight = 0.005  # pix2pix's L1 : GAN = 100 : 1 on [-1, 1] is 1 : 0.005 with our 0-1 L1
    hp.gan_filters = 32
    hp.gan_learning_rate = 2e-4
    hp.gan_beta1 = 0.5
    # Averaging 8 predictions would blur the texture the adversarial loss is there to add.
    hp.decode_tta = False
    return hp


@registration.hparams
def img2img_conv_sr_gpu():
    """One GPU: 128 channels, 16 residual blocks (~5M parameters), 200k steps, normalized inputs."""
    hp = _conv_sr_base()
    hp.hidden_size = 128
    hp.num_res_blocks = 16
    hp.normalize_inputs = True
    hp.learning_rate_constant = 2e-4  # deeper and wider: EDSR's rate
    hp.learning_rate_warmup_steps = 1000
    hp.cosine_decay_steps = 200000
    hp.cosine_decay_min = 0.01
    return hp


@registration.hparams
def img2img_conv_sr_fast():
    """Whole slides at speed: everything at the input resolution (`upsample=input_res`: the last
    conv emits the 4x4 sub-pixels of each input pixel, bicubic and the block-mean projection are
    folded into fixed weights), 16 channels, 1 residual block; about 2 kFLOP per output pixel,
    1/40 of img2img_conv_sr_cpu. For `allen-sr upscale` of whole sections."""
    hp = _conv_sr_base()
    hp.hidden_size = 16
    hp.num_res_blocks = 1
    hp.upsample = "input_res"
    hp.learning_rate_constant = 2e-3  # a small network: twice the rate
    hp.cosine_decay_steps = 15000
    hp.cosine_decay_min = 0.02
    hp.decode_tta = False  # the point is speed
    return hp
