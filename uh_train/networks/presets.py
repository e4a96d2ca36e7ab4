"""Network presets: `paper` (the paper's 256 px StyleGAN3-T G and U-Net D), `small` (64 px, CPU
training runs) and `tiny` (32 px, tests). Everything else is derived from these numbers
(`synthesis_schedule`, `discriminator_channels`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .discriminator import DiscriminatorConfig
from .generator import GeneratorConfig


@dataclass(frozen=True)
class Preset:
    name: str
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper",
        GeneratorConfig(name="paper"),
        DiscriminatorConfig(img_resolution=256),
    ),
    "small": Preset(
        "small",
        GeneratorConfig(name="small", img_resolution=64, z_dim=128, w_dim=128, channel_base=2048, channel_max=64,
                        num_layers=10, num_critical=2, scale_dim=32),
        DiscriminatorConfig(img_resolution=64, channel_base=2048, channel_max=64),
    ),
    "tiny": Preset(
        "tiny",
        GeneratorConfig(name="tiny", img_resolution=32, z_dim=32, w_dim=32, channel_base=256, channel_max=16,
                        num_layers=6, num_critical=2, scale_dim=8),
        DiscriminatorConfig(img_resolution=32, channel_base=256, channel_max=16),
    ),
}


def get_preset(name: str, **generator_overrides) -> Preset:
    """A preset by name; keyword overrides replace fields of its generator config."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return replace(p, generator=replace(p.generator, **generator_overrides)) if generator_overrides else p
