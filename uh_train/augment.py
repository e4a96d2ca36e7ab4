"""Adaptive discriminator augmentation (StyleGAN2-ADA's idea, our operators): what D sees of reals,
fakes and CutMix images is augmented with probability p per operator and sample, and p follows how
sure D is of the reals (`AdaptiveP`), so D cannot memorise a small training set.

The operators are those that keep the per-pixel head's targets exact: a pixel permutation (x-flip,
rotation by a multiple of 90°, integer translation with wrap-around), applied identically to the
image and to its masks (coverage, CutMix M), and colour changes (brightness, contrast, saturation)
that leave masks alone. A real patch, its fake and their CutMix image share one draw per batch index,
so Eq. 9 still compares D's outputs on the same pixels. Every operator is differentiable, so the
generator's gradient passes through the augmentation of its fakes, as in ADA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AUGMENTS = ("none", "ada")
TRANSLATE_MAX = 0.125  # of the patch side, as ADA's integer translation


@dataclass
class Draw:
    """One augmentation per sample: which operators apply, and their parameters."""

    flip: torch.Tensor  # [N] bool
    quarter_turns: torch.Tensor  # [N] int in 0..3 (0: none)
    shift: torch.Tensor  # [N, 2] int pixels (x, y), 0 where off
    brightness: torch.Tensor  # [N] added, in [-1, 1] image units (0 where off)
    contrast: torch.Tensor  # [N] factor about the mean (1 where off)
    saturation: torch.Tensor  # [N] factor about the luma (1 where off)


def draw(n: int, p: float, res: int, generator: torch.Generator) -> Draw:
    """Each operator on each of n samples with probability p (StyleGAN2-ADA's strengths)."""
    def on() -> torch.Tensor:
        return torch.rand(n, generator=generator) < p

    flip = on()
    turns = torch.where(on(), torch.randint(1, 4, (n,), generator=generator), 0)
    reach = max(1, int(round(TRANSLATE_MAX * res)))
    shift = torch.randint(-reach, reach + 1, (n, 2), generator=generator) * on()[:, None]
    brightness = torch.randn(n, generator=generator) * 0.2 * on()
    contrast = torch.where(on(), torch.exp2(torch.randn(n, generator=generator) * 0.5), 1.0)
    saturation = torch.where(on(), torch.exp2(torch.randn(n, generator=generator) * 1.0), 1.0)
    return Draw(flip, turns, shift, brightness, contrast, saturation)


def permute(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """The draw's pixel permutation (flip, quarter turns, wrap-around shift) of [N, C, r, r] images or
    masks; samples without one are returned as they are."""
    out = []
    for i in range(x.shape[0]):
        y = x[i]
        if bool(d.flip[i]):
            y = y.flip(-1)
        if int(d.quarter_turns[i]):
            y = torch.rot90(y, int(d.quarter_turns[i]), dims=(-2, -1))
        if bool(d.shift[i].any()):
            y = torch.roll(y, shifts=(int(d.shift[i, 1]), int(d.shift[i, 0])), dims=(-2, -1))
        out.append(y)
    return torch.stack(out)


def colour(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """Brightness, contrast and saturation of [N, 3, r, r] images in [-1, 1] units (samples the draw
    leaves alone are returned bit for bit)."""
    active = (d.brightness != 0) | (d.contrast != 1) | (d.saturation != 1)
    if not bool(active.any()):
        return x
    dev, dt = x.device, x.dtype
    y = x + d.brightness.to(dev, dt).view(-1, 1, 1, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * d.contrast.to(dev, dt).view(-1, 1, 1, 1)
    luma = (y * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt).view(1, 3, 1, 1)).sum(1, keepdim=True)
    y = luma + (y - luma) * d.saturation.to(dev, dt).view(-1, 1, 1, 1)
    return torch.where(active.to(dev).view(-1, 1, 1, 1), y, x)


def images(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """What D sees of images under the draw."""
    return colour(permute(x, d), d)


class AdaptiveP:
    """StyleGAN2-ADA's heuristic: every `interval` steps, r_t = E[sign(D(real))] over the global
    logits seen since the last adjustment; p moves up when r_t > target (D too sure of the reals) and
    down otherwise, by batch·interval / (speed_kimg·1000), within [0, 1)."""

    def __init__(self, p: float = 0.0, target: float = 0.6, speed_kimg: float = 500.0, interval: int = 4) -> None:
        self.p, self.target, self.speed_kimg, self.interval = float(p), target, speed_kimg, interval
        self.signs: list[float] = []
        self.steps = 0

    def observe(self, real_global_logits: torch.Tensor) -> None:
        self.signs.extend(torch.sign(real_global_logits.detach().float()).flatten().cpu().tolist())

    def step(self, batch: int) -> None:
        self.steps += 1
        if self.steps % self.interval:
            return
        total = torch.tensor([sum(self.signs), float(len(self.signs))], dtype=torch.float64)
        self.signs.clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one p for every process
            total = total.to("cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
            torch.distributed.all_reduce(total)
        if float(total[1]) == 0:
            return
        r_t = float(total[0] / total[1])
        adjust = math.copysign(batch * self.interval / (self.speed_kimg * 1000), r_t - self.target)
        self.p = min(max(self.p + adjust, 0.0), 1.0 - 1e-6)
