"""Generated images for the metrics, through one small protocol.

A `PatchGenerator` is anything with `z_dim`, `img_resolution` and `__call__(z [N, z_dim],
transform [N, 3, 3]) -> images [N, 3, r, r]` in about [-1, 1]: the image of the patch T(v, s)
(paper Eq. 4) of the person drawn from z. The `paper` protocol also needs `render(z, size) ->
[N, 3, size, size]`, the whole image in one generator pass. `GeneratorSampler` adapts our
`Generator` (with truncation); tests use analytic stand-ins.

Latents are drawn from a seeded torch generator, so two runs with the same seed evaluate the same
people.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from uh_train import resample
from uh_train.format.geometry import PatchView
from uh_train.networks.generator import patch_transforms

from .inception import to_uint8


class PatchGenerator(Protocol):
    z_dim: int
    img_resolution: int

    def __call__(self, z: torch.Tensor, transform: torch.Tensor) -> torch.Tensor: ...

    def render(self, z: torch.Tensor, size: int) -> torch.Tensor: ...


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

    @torch.no_grad()
    def render(self, z: torch.Tensor, size: int, max_bytes: int | None = None) -> torch.Tensor:
        """Whole images at size x size, each in one synthesis pass on a size / r times larger canvas
        (`render_region`'s single mode); samples are split into groups small enough for one pass
        each to fit in max_bytes."""
        from uh_train.render import DEFAULT_MAX_BYTES, pass_bytes, render_region

        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        ws = self.G.mapping(z.to(self.device), truncation_psi=self.truncation_psi)
        per_pass = max(1, max_bytes // max(pass_bytes(self.G, size // self.img_resolution, 1), 1))
        return torch.cat([render_region(self.G, ws[i : i + per_pass], size, mode="single", max_bytes=max_bytes).cpu()
                          for i in range(0, len(ws), per_pass)])


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """n latents from N(0, I), reproducible from the seed."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def tile_transforms(tiles: int) -> np.ndarray:
    """T of each of the tiles x tiles patches that cover full-body space, row-major [tiles^2, 3, 3]."""
    views = [view for _, _, view in PatchView((0.5, 0.5), 1.0).tiles(tiles)]
    return patch_transforms([view.v for view in views], views[0].s).numpy().astype(np.float64)


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


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of [N, C, H, W] images to size x size with the project's one resampler
    (`uh_train.resample`: Lanczos stretched by the factor), as real pixels are read."""
    return resample.reduce(images.float(), size)


def full_image_batches(gen: PatchGenerator, n: int, size: int, seed: int, batch: int,
                       render_size: int | None = None) -> Iterator[torch.Tensor]:
    """n generated full images as uint8 [b, 3, size, size] batches: stitched from patches at s =
    size / r, or (render_size given, the paper protocol) rendered in one pass at render_size and
    downsampled to size."""
    z = latents(n, gen.z_dim, seed)
    for i in range(0, n, batch):
        if render_size is None:
            images = full_images(gen, z[i : i + batch], size)
        else:
            images = downsample(gen.render(z[i : i + batch], render_size), size)
        yield to_uint8(images)


def patch_batches(gen: PatchGenerator, transforms: np.ndarray, seed: int, batch: int,
                  sizes: np.ndarray | None = None) -> Iterator[torch.Tensor]:
    """One generated patch per given transform (real ones replayed), as uint8 [b, 3, r, r] batches.
    With `sizes` (the real patches' pixel counts), a patch is downsampled to its real's size; a
    batch then comes out as one tensor per size."""
    T = torch.as_tensor(np.asarray(transforms), dtype=torch.float32).reshape(-1, 3, 3)
    z = latents(len(T), gen.z_dim, seed)
    for i in range(0, len(T), batch):
        images = gen(z[i : i + batch], T[i : i + batch])
        if sizes is None:
            yield to_uint8(images)
            continue
        chunk = np.asarray(sizes[i : i + batch])
        for size in np.unique(chunk):
            yield to_uint8(downsample(images[torch.from_numpy(chunk == size)], int(size)))
