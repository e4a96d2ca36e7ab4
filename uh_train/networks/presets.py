"""Network presets: `paper` (the paper's 256 px StyleGAN3-T G and U-Net D), `small` (64 px, CPU
training runs) and `tiny` (32 px, tests). Everything else is derived from these numbers
(`synthesis_schedule`, `discriminator_channels`). Each preset also holds the training defaults
that go with its size, read by both `uh_train.training.config.TrainConfig` and the `uh-train` CLI."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .discriminator import DiscriminatorConfig
from .generator import GeneratorConfig


@dataclass(frozen=True)
class TrainingDefaults:
    batch: int  # global batch
    kimg: float  # training length, thousands of real images
    snapshot_kimg: float  # checkpoint interval
    mirror: bool  # x-flip augmentation (on for `paper`, as the paper's StyleGAN3 runs)
    # arithmetic of G, D, the teacher and LPIPS (`PRECISIONS`; docs/training.md, "Precision")
    precision: str = "auto"


@dataclass(frozen=True)
class Preset:
    name: str
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    training: TrainingDefaults


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper",
        GeneratorConfig(name="paper"),
        DiscriminatorConfig(img_resolution=256),
        TrainingDefaults(batch=32, kimg=25000.0, snapshot_kimg=200.0, mirror=True, precision="fp32"),
    ),
    "small": Preset(
        "small",
        GeneratorConfig(name="small", img_resolution=64, z_dim=128, w_dim=128, channel_base=2048, channel_max=64,
                        num_layers=10, num_critical=2, scale_dim=32),
        DiscriminatorConfig(img_resolution=64, channel_base=2048, channel_max=64),
        TrainingDefaults(batch=16, kimg=100.0, snapshot_kimg=10.0, mirror=False),
    ),
    "tiny": Preset(
        "tiny",
        GeneratorConfig(name="tiny", img_resolution=32, z_dim=32, w_dim=32, channel_base=256, channel_max=16,
                        num_layers=6, num_critical=2, scale_dim=8),
        DiscriminatorConfig(img_resolution=32, channel_base=256, channel_max=16),
        TrainingDefaults(batch=8, kimg=0.4, snapshot_kimg=0.2, mirror=False),
    ),
}


def get_preset(name: str, **generator_overrides) -> Preset:
    """A preset by name; keyword overrides replace fields of its generator config."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return replace(p, generator=replace(p.generator, **generator_overrides)) if generator_overrides else p
