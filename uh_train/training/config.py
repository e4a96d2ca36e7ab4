"""The training configuration: one record, its defaults in one place (the network presets say batch,
length, snapshot interval and mirror; the rest are fields' defaults here), and what a resumed run
may change."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from uh_train.augment import AUGMENTS
from uh_train.data import ViewSettings, parse_view
from uh_train.format.geometry import SCALE_MAX
from uh_train.networks.presets import PRESETS, TrainingDefaults

# Fields whose default depends on the preset (None: the preset's value, resolved on construction).
PRESET_FIELDS = tuple(f.name for f in fields(TrainingDefaults))


@dataclass
class TrainConfig:
    shards: list[str]
    out: str
    stage: int = 1
    teacher: str | None = None
    preset: str = "tiny"
    res: int | None = None  # patch resolution r; None: the preset's
    kimg: float | None = None  # None: the preset's
    batch: int | None = None  # global batch; None: the preset's
    batch_gpu: int | None = None  # per-process batch (gradient accumulation when smaller)
    lr_g: float = 0.0025
    lr_d: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 2.0
    r1_interval: int = 16
    ema_kimg: float | None = None  # None: batch * 10 / 32, as StyleGAN3
    ema_rampup: float | None = 0.05  # early on, the EMA half-life is at most this fraction of the images seen
    lambda_cr: float = 1.0  # consistency, Eq. 9
    # Eq. 9: "joint" trains both of its sides (U-Net GAN); "detached" holds the mix of D's outputs fixed
    # (ran away in stage 2: docs/training.md, "Stage 2 diagnosis")
    consistency_target: str = "joint"
    lambda_p: float = 5.0  # teacher pixel loss, Eq. 8
    lpips: str = "auto"  # auto | on | off; auto falls back to L1 only for the CPU presets
    scale_max: float = SCALE_MAX
    keypoint_prob: float = 0.5
    whole_prob: float = 0.5  # stage 2: a full-body sample seen whole at T = identity (AnyRes GAN: half the batches)
    mix: dict[str, float] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)  # per-source patch sampling, "SOURCE:key=value,..."
    mirror: bool | None = None  # x-flip augmentation, as StyleGAN3's --mirror; None: the preset's
    snapshot_kimg: float | None = None  # None: the preset's
    seed: int = 0
    workers: int = 0
    precision: str | None = None  # fp32 | bf16 | auto (bf16 on a GPU, fp32 on a CPU); None: the preset's
    max_bad_steps: int = 20
    diverge_limit: float = 1000.0  # stop when a loss term's magnitude stays above this (0: never)
    diverge_steps: int = 10  # ... for this many steps in a row
    consistency_n: int = 4  # latents of the scale-consistency check at each stage-2 snapshot (0: none)
    device: str = "auto"
    allow_config_change: bool = False  # resume even if the settings differ from the checkpoint's (recorded)
    compile: bool = False  # torch.compile the G and D forward passes (pays on GPUs; minutes to compile on CPU)
    cutmix_prob: float = 1.0  # share of whole views whose CutMix image counts (partial patches: always)
    cutmix_ramp_kimg: float = 0.0  # that share grows linearly from 0 over this many kimg (0: from the start)
    cutmix_global: bool = False  # CutMix images are fakes to the global head too (U-Net GAN's encoder)
    aug: str = "none"  # none | ada: adaptive augmentation of what D sees (the paper's runs: none)
    ada_target: float = 0.6  # ADA's target for E[sign(D(real))]
    ada_kimg: float = 500.0  # ADA's speed: p can move from 0 to 1 in this many kimg
    teacher_any_stage: bool = False  # paper preset: accept a stage-2 network as stage 2's teacher
    new_d: bool = False  # paper preset: accept a stage-2 start without stage 1's D (a new D)
    share_fakes: bool = True  # the D step reuses the G step's fakes (one render per step); False: fresh z, as StyleGAN3

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} ({', '.join(PRESETS)})")
        for name in PRESET_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(PRESETS[self.preset].training, name))
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


# Arithmetic of the networks: "fp32" throughout; "bf16" autocasts G, D (R1 included), the teacher and
# LPIPS to bfloat16 (the pixel loss and the optimiser stay in float32); "auto" is bf16 on a GPU and
# fp32 on a CPU.
PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device_type: str) -> str:
    """The arithmetic a run uses on a device: "auto" resolved, the others as they are."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


# Longest run a config may ask for: 10^12 images (the paper trains 25,000 kimg); beyond it the
# image and step counters stop being exact.
MAX_KIMG = 1e9


def config_problems(cfg: TrainConfig) -> list[str]:
    """What makes CFG impossible to run as asked (empty: runnable), each naming its option."""
    from uh_train.networks.discriminator import discriminator_channels

    out = []
    for name, value in (("--kimg", cfg.kimg), ("--snapshot-kimg", cfg.snapshot_kimg)):
        if not 0 < value <= MAX_KIMG:
            out.append(f"{name} {value:g} is not in (0, {MAX_KIMG:g}] thousand images")
    if cfg.res is not None:
        d = replace(PRESETS[cfg.preset].discriminator, img_resolution=cfg.res)
        if cfg.res & (cfg.res - 1) or not 8 <= cfg.res or min(discriminator_channels(d).values()) < 1:
            top = PRESETS[cfg.preset].discriminator.channel_base
            out.append(f"--res {cfg.res} is beyond preset {cfg.preset!r} (a power of two from 8 to {top})")
    if cfg.precision not in PRECISIONS:
        out.append(f"--precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 0 <= cfg.cutmix_prob <= 1:
        out.append(f"--cutmix-prob {cfg.cutmix_prob:g} is not in [0, 1]")
    if cfg.cutmix_ramp_kimg < 0:
        out.append(f"--cutmix-ramp-kimg {cfg.cutmix_ramp_kimg:g} must be at least 0")
    if cfg.aug not in AUGMENTS:
        out.append(f"--aug {cfg.aug!r} is not one of {', '.join(AUGMENTS)}")
    if cfg.batch < 1:
        out.append(f"--batch {cfg.batch} must be at least 1")
    elif cfg.batch_gpu is not None and not (1 <= cfg.batch_gpu <= cfg.batch and cfg.batch % cfg.batch_gpu == 0):
        out.append(f"--batch-gpu {cfg.batch_gpu} must divide --batch {cfg.batch} (images counted per step are "
                   "--batch)")
    folders = [os.path.realpath(s) for s in cfg.shards]
    if len(set(folders)) != len(folders):
        twice = sorted({s for s, f in zip(cfg.shards, folders, strict=True) if folders.count(f) > 1})
        out.append(f"--shards names the same folder more than once ({', '.join(twice)}); weight sources with --mix")
    try:
        views = parse_views(cfg.views, cfg.keypoint_prob)
    except ValueError as e:
        out.append(f"--view: {e}")
    else:
        for source, view in views.items():
            if view.s_min > cfg.scale_max:
                out.append(f"--view {source}: s_min {view.s_min:g} is above the run's largest scale {cfg.scale_max:g}")
    return out


def default(name: str) -> Any:
    """A field's default as `TrainConfig` declares it (what the CLI shows and passes when not given)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default


# Settings a resumed run may change freely: where and how long it runs, not what it learns.
RESUME_FREE = ("out", "kimg", "snapshot_kimg", "workers", "device", "max_bad_steps", "allow_config_change",
               "compile", "diverge_limit", "diverge_steps", "consistency_n", "precision", "teacher_any_stage", "new_d",
               "amp")  # `amp`: older runs' switch, replaced by `precision`


def config_changes(saved: dict[str, Any], current: TrainConfig) -> dict[str, list[Any]]:
    """Settings that differ between a checkpoint's config and this run's: name -> [saved, now]."""
    now = json.loads(json.dumps(asdict(current)))  # tuples as lists, as stored
    # A setting newer than the checkpoint counts as unchanged when it has its default value, and a
    # preset setting saved as null (older runs: "the preset's") as the saved preset's value.
    preset = PRESETS.get(saved.get("preset", current.preset))
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}))
    if preset is not None:
        defaults.update({k: getattr(preset.training, k) for k in PRESET_FIELDS})
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    saved.update({k: defaults[k] for k in PRESET_FIELDS if saved[k] is None})
    return {k: [saved.get(k), now.get(k)] for k in sorted(set(saved) | set(now))
            if k not in RESUME_FREE and saved.get(k) != now.get(k)}


def parse_views(items: list[str], keypoint_prob: float) -> dict[str, ViewSettings]:
    base = ViewSettings(keypoint_prob=keypoint_prob)
    return dict(parse_view(item, base) for item in items)
