"""Bring-your-own-microscope-images problems: tile the images in --tmp_dir, no download."""
from allen_sr.t2t import registration
from allen_sr.t2t.problems import LocalImages


@registration.problem
class Img2imgLocalDim8to32(LocalImages):
    """8x8 -> 32x32 RGB from your own images (dataset prefix img2img_local_dim8to32)."""
