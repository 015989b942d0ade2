"""allen-sr from Python: :class:`Upscaler` (models opened by name or folder, images and files
enlarged as `allen-sr upscale` does) and folder runs. Imports neither TensorFlow nor
tensor2tensor until a training checkpoint (not a pretrained or exported model) is opened."""
from allen_sr.api.upscaler import Options, Region, Upscaler

__all__ = ["Upscaler", "Region", "Options"]
