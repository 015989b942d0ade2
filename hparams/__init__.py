"""Registered hparams sets (thin: each module registers functions with tensor2tensor)."""
import allen_sr.hparams.conv_sr  # noqa: F401
import allen_sr.hparams.image_transformer  # noqa: F401
