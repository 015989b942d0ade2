"""Checkpoint variable names the models write and the decoders read (no TensorFlow here)."""

# A weight average (hparam weight_ema_decay) is stored as <variable>/EMA_NAME.
EMA_NAME = "ExponentialMovingAverage"
# The dataset statistics (hparam normalize_inputs) are the variables <model>/body/NORMALIZATION_SCOPE/{mean,std}.
NORMALIZATION_SCOPE = "input_normalization"
