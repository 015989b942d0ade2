"""Allen Brain Atlas problems. These replace tensor2tensor's stock registrations of the same
names (allen_sr.t2t.registration.REPLACED_STOCK_PROBLEMS)."""
from allen_sr.t2t import registration
from allen_sr.t2t.problems import AllenBrain


@registration.problem
class Img2imgAllenBrainDim8to32(AllenBrain):
    """8x8 -> 32x32 RGB (x4), as in the original experiment."""


@registration.problem
class Img2imgAllenBrainDim16to64(AllenBrain):
    """16x16 -> 64x64 RGB (x4 on whole tiles)."""

    input_dim, output_dim = 16, 64


@registration.problem
class Img2imgAllenBrainDim48to64(AllenBrain):
    """48x48 -> 64x64 RGB (x4/3, the gentlest ratio)."""

    input_dim, output_dim = 48, 64


@registration.problem
class Img2imgAllenBrainDim8to32Grey(AllenBrain):
    """8x8 -> 32x32 greyscale (ITU-R 601 luma of the RGB tiles)."""

    num_channels = 1


@registration.problem
class Img2imgAllenBrainDim16to16Paint1(AllenBrain):
    """In-painting: one random pixel of the 16x16 input is zeroed, per example (a square of side
    int(sqrt(1% of 16x16)) = 1 px, i.e. 1 of 256 px: 0.4%)."""

    input_dim, output_dim = 16, 16
    inpaint_fraction = 0.01
