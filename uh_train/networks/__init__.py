"""Networks of the continuous GAN: `Generator` (StyleGAN3-T with a T(v,s) Fourier input and scale
conditioning), `Discriminator` (U-Net), their configs and the presets. See each module's docstring
for shapes and conventions."""

from .discriminator import Discriminator, DiscriminatorConfig
from .generator import Generator, GeneratorConfig, patch_transforms, synthesis_schedule
from .presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "Preset",
    "get_preset",
    "patch_transforms",
    "synthesis_schedule",
]
