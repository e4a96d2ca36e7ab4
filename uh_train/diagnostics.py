"""Cheap training diagnostics that need no pretrained network.

`sliced_wasserstein` is a patch-level feature distance between two image sets (local 7x7
neighbourhoods at a few pyramid levels, compared through random 1-d projections, as ProGAN's SWD).
It is what the learning-evidence test and `benchmarks/bench_train.py` track; FID and friends live
in `uh-eval`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _descriptors(images: torch.Tensor, per_image: int, size: int, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = images.shape
    ys = torch.randint(0, h - size + 1, (n, per_image), generator=gen)
    xs = torch.randint(0, w - size + 1, (n, per_image), generator=gen)
    patches = F.unfold(images, size)  # [n, c*size*size, L]
    idx = ys * (w - size + 1) + xs
    desc = torch.gather(patches, 2, idx.unsqueeze(1).expand(-1, patches.shape[1], -1))
    desc = desc.permute(0, 2, 1).reshape(-1, c * size * size)
    return desc


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, levels: int = 3, per_image: int = 64,
                       projections: int = 256, seed: int = 0) -> float:
    """SWD between image sets a, b [N, C, H, W] (same sizes), averaged over pyramid levels.

    Descriptors are normalised with the statistics of `a` at each level, so the value is in units
    of a's local contrast; identical sets give about 0.
    """
    gen = torch.Generator().manual_seed(seed)
    a, b = a.float(), b.float()
    total = 0.0
    for level in range(levels):
        da = _descriptors(a, per_image, 7, gen)
        db = _descriptors(b, per_image, 7, gen)
        mean, std = da.mean(), da.std() + 1e-6
        da, db = (da - mean) / std, (db - mean) / std
        proj = torch.randn(da.shape[1], projections, generator=gen)
        proj = proj / proj.norm(dim=0, keepdim=True)
        pa, _ = torch.sort(da @ proj, dim=0)
        pb, _ = torch.sort(db @ proj, dim=0)
        m = min(len(pa), len(pb))
        total += float((pa[:m] - pb[:m]).abs().mean())
        if level < levels - 1:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            if a.shape[-1] < 7:
                levels = level + 1
                break
    return total / levels
