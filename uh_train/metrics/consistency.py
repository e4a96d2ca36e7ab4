"""Scale consistency: does the generator draw the same person at every density?

For fixed latents, the whole image is rendered at the patch resolution r and, in one pass each, at
k·r for k in `factors`; each dense render is reduced to r with the project's one resampler (`uh_train.resample`, Lanczos
stretched by the factor, so it antialiases; the pixel loss of Eq. 8 reduces the same way) and compared with
the render at r. A generator that has learned T(v, s) (paper Eq. 4-5) gives the same picture at
every density, so the reduced dense render matches (high PSNR); one that ignores T, or only holds
the figure at the density it trained at, does not. The reduction is the same for every k, so the
numbers of different k are comparable: a drop with k says where the figure is lost.

PSNR is on images in [-1, 1] with peak-to-peak 2 (StyleGAN3's convention for its equivariance
metrics), averaged over the latents per k. LPIPS (AlexNet) is added per k when a function is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from uh_train import resample

from .fakes import PatchGenerator, latents

FACTORS = (2, 4, 8)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> np.ndarray:
    """PSNR in dB of each pair of [N, C, H, W] images (inf where identical)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(dim=1).numpy()
    with np.errstate(divide="ignore"):
        return 10 * np.log10(peak * peak / mse)


def scale_consistency(gen: PatchGenerator, n: int = 16, seed: int = 0, factors: Sequence[int] = FACTORS,
                      batch: int = 8, lpips_fn: Callable | None = None) -> dict:
    """Render n latents at r and at k·r (one pass each), reduce to r (Lanczos), compare per k.

    Returns {"n", "seed", "factors": {"k": {"psnr": mean dB, "psnr_min", "psnr_per_seed": [...],
    "lpips": mean or None}}}. Infinite PSNRs (bit-identical images) are reported as 100 dB."""
    if n < 1:
        raise ValueError(f"scale consistency needs at least one latent, got n = {n}")
    if any(int(k) < 2 for k in factors):
        raise ValueError(f"every density factor must be an integer >= 2, got {list(factors)}")
    r = gen.img_resolution
    z = latents(n, gen.z_dim, seed)
    scores: dict[int, list[float]] = {int(k): [] for k in factors}
    perceptual: dict[int, list[float]] = {int(k): [] for k in factors}
    for i in range(0, n, batch):
        zb = z[i: i + batch]
        base = gen.render(zb, r).float().cpu().clamp(-1, 1)
        for k in scores:
            reduced = resample.reduce(gen.render(zb, k * r).float().cpu().clamp(-1, 1), r).clamp(-1, 1)
            scores[k] += np.minimum(psnr_per_image(reduced, base), 100.0).tolist()
            if lpips_fn is not None:
                with torch.no_grad():
                    perceptual[k] += lpips_fn(reduced, base).reshape(-1).tolist()
    out = {}
    for k, values in scores.items():
        out[str(k)] = {"psnr": float(np.mean(values)), "psnr_min": float(np.min(values)),
                       "psnr_per_seed": [round(v, 3) for v in values],
                       "lpips": float(np.mean(perceptual[k])) if perceptual[k] else None}
    return {"n": n, "seed": seed, "resolution": r, "factors": out}
