"""Generated images for the metrics, through one small protocol.

A `PatchGenerator` is anything with `z_dim`, `img_resolution` and `__call__(z [N, z_dim],
transform [N, 3, 3]) -> images [N, 3, r, r]` in about [-1, 1]: the image of the patch T(v, s)
(paper Eq. 4) of the person drawn from z. `GeneratorSampler` adapts our `Generator` (with
truncation); tests use analytic stand-ins.

Latents are drawn from a seeded torch generator, so two runs with the same seed evaluate the same
people.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from uh_train.networks.generator import patch_transforms

from .inception import to_uint8


class PatchGenerator(Protocol):
    z_dim: int
    img_resolution: int

    def __call__(self, z: torch.Tensor, transform: torch.Tensor) -> torch.Tensor: ...


class GeneratorSampler:
    """`Generator` -> PatchGenerator: G(z, T, truncation_psi) on a device, without gradients."""

    def __init__(self, G, truncation_psi: float = 1.0, device: str | torch.device = "cpu") -> None:
        self.G = G.eval().requires_grad_(False).to(device)
        self.truncation_psi = truncation_psi
        self.device = torch.device(device)
        self.z_dim = G.z_dim
        self.img_resolution = G.img_resolution

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        return self.G(z.to(self.device), transform.to(self.device), truncation_psi=self.truncation_psi).cpu()


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """n latents from N(0, I), reproducible from the seed."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def tile_transforms(tiles: int) -> np.ndarray:
    """T of each of the tiles x tiles patches that cover full-body space, row-major [tiles^2, 3, 3]."""
    centres = [((j + 0.5) / tiles, (i + 0.5) / tiles) for i in range(tiles) for j in range(tiles)]
    return patch_transforms(centres, float(tiles)).numpy().astype(np.float64)


@torch.no_grad()
def full_images(gen: PatchGenerator, z: torch.Tensor, size: int) -> torch.Tensor:
    """Whole full-body images at size x size, stitched from (size / r)^2 patches at s = size / r (the
    paper's way of rendering large images; `uh_train.render.render_region`'s stitched mode)."""
    r = gen.img_resolution
    if size % r:
        raise ValueError(f"the FID resolution {size} must be a multiple of the patch resolution {r}")
    k = size // r
    n = len(z)
    transforms = torch.as_tensor(tile_transforms(k), dtype=torch.float32)
    out = torch.empty(n, 3, size, size)
    for t, T in enumerate(transforms):
        i, j = divmod(t, k)
        out[:, :, i * r : (i + 1) * r, j * r : (j + 1) * r] = gen(z, T.expand(n, 3, 3))
    return out


def full_image_batches(gen: PatchGenerator, n: int, size: int, seed: int, batch: int) -> Iterator[torch.Tensor]:
    """n generated full images as uint8 [b, 3, size, size] batches."""
    z = latents(n, gen.z_dim, seed)
    for i in range(0, n, batch):
        yield to_uint8(full_images(gen, z[i : i + batch], size))


def patch_batches(gen: PatchGenerator, transforms: np.ndarray, seed: int, batch: int) -> Iterator[torch.Tensor]:
    """One generated patch per given transform (real ones replayed), as uint8 [b, 3, r, r] batches."""
    T = torch.as_tensor(np.asarray(transforms), dtype=torch.float32).reshape(-1, 3, 3)
    z = latents(len(T), gen.z_dim, seed)
    for i in range(0, len(T), batch):
        yield to_uint8(gen(z[i : i + batch], T[i : i + batch]))
