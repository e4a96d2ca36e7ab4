"""Rendering images of any size, and patches at (v, s), with a `Generator`.

A square region of full-body space (centre v, side 1/scale) is rendered at `size` = K * r pixels as
K x K tiles of r pixels, each the patch T(v_tile, s = K * scale) (paper §3.2: 64 patches for a
2048 px image at r = 256). Two modes, which agree (docs/networks.md, "Rendering at any size"):

* `stitched`: one generator pass per tile (the paper's method).
* `single`: the whole region in one pass on a K-times larger grid (`G.synthesis(..., canvas=K)`),
  split into b x b tile blocks (b divides K) when the estimated memory of one pass exceeds
  `max_bytes`.

API:

* `render_patch(G, ws, center, scale) -> [N, C, r, r]`
* `render_region(G, ws, size, center=(0.5, 0.5), scale=1.0, mode="stitched", max_bytes=...,
  on_block=None) -> [N, C, size, size]`
* `render_seed(G, seed, truncation, size, center, scale, mode, ...) -> uint8 [size, size, C]`: one seed's
  image as `uh-generate` writes it (and `uh-view` shows it)
* `seed_bytes(G, size)`, `largest_size(G, budget)`, `available_bytes(device)`: what a seed's render
  needs and what there is, so that `uh-generate` refuses a size before rendering
* `seed_latents(seeds, z_dim) -> z [len(seeds), z_dim]` (one NumPy RandomState per seed)
* `to_uint8(images) -> uint8 [N, H, W, C]`
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .format import cli_args
from .format.geometry import PatchView
from .networks.generator import Generator, patch_transforms

MODES = ("stitched", "single")
DEFAULT_MAX_BYTES = 4 << 30


def device_problem(name: str) -> str | None:
    """Why torch cannot run on the device NAME here (one line), or None when it can."""
    return cli_args.device_problem(name, torch)


def resolve_device(name: str) -> str:
    """--device NAME as a device here: 'auto' is CUDA when there is a GPU, else the CPU (docs/cli.md)."""
    return cli_args.resolve_device(name, torch)


def seed_latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """z for each seed, drawn from `np.random.RandomState(seed)` (StyleGAN's convention)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def render_patch(G: Generator, ws: torch.Tensor, center, scale: float, canvas: int = 1) -> torch.Tensor:
    """The patch T(center, scale) for every sample of ws [N, num_ws, w_dim] -> [N, C, canvas*r, canvas*r]."""
    n = ws.shape[0]
    transform = patch_transforms(np.broadcast_to(np.asarray(center, dtype=np.float64), (n, 2)), scale, ws.device)
    return G.synthesis(ws, transform, canvas=canvas)


def pass_bytes(G: Generator, canvas: int, batch: int) -> int:
    """Rough peak memory of one synthesis pass: the largest upsampled activation of any layer (the
    filtered leaky ReLU's intermediate) with a factor 3 for the tensors alive beside it."""
    peak = 0
    for spec in G.synthesis.specs:
        layer = getattr(G.synthesis, spec.name)
        in_size = canvas * int(spec.in_sampling_rate) + (spec.in_size - int(spec.in_sampling_rate))
        side = (in_size + layer.conv_kernel - 1) * layer.up_factor
        peak = max(peak, side * side * spec.out_channels)
    return 3 * 4 * batch * peak


def seed_bytes(G: Generator, size: int) -> int:
    """Rough peak memory of rendering one seed at size x size px: the float32 output and the two
    temporaries of its conversion to uint8, plus the smallest pass of either mode (one tile)."""
    return 3 * 4 * G.cfg.img_channels * size * size + pass_bytes(G, 1, 1)


def largest_size(G: Generator, budget: int) -> int:
    """The largest multiple of r whose `seed_bytes` fits in `budget` bytes (0 when none does)."""
    r = G.img_resolution
    room = max(budget - pass_bytes(G, 1, 1), 0) / (3 * 4 * G.cfg.img_channels)
    return int(math.isqrt(int(room)) // r * r)


def available_bytes(device: str) -> int | None:
    """Memory a render on `device` can still take: free GPU memory for CUDA, else the host's
    available memory (MemAvailable on Linux, free pages elsewhere); None when it cannot be told."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def block_size(G: Generator, tiles: int, batch: int, max_bytes: int) -> int:
    """Largest divisor b of `tiles` whose b x b tile pass fits in max_bytes (at least 1)."""
    fits = [b for b in range(1, tiles + 1) if tiles % b == 0 and pass_bytes(G, b, batch) <= max_bytes]
    return max(fits, default=1)


@torch.no_grad()
def render_region(
    G: Generator,
    ws: torch.Tensor,
    size: int,
    center: tuple[float, float] = (0.5, 0.5),
    scale: float = 1.0,
    mode: str = "stitched",
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_block: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Render the square of side 1/scale around `center` at size x size pixels for each sample of
    ws -> [N, C, size, size]. `size` must be a multiple of r. `on_block(tiles_done)` is called after
    every pass (for progress bars); there are K*K tiles in all."""
    r = G.img_resolution
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if size % r:
        raise ValueError(f"size {size} must be a multiple of the patch resolution {r}")
    k = size // r
    b = 1 if mode == "stitched" else block_size(G, k, ws.shape[0], max_bytes)
    n = ws.shape[0]
    out = torch.empty(n, G.cfg.img_channels, size, size, device=ws.device)
    blocks = PatchView(center, scale).tiles(k, block=b)
    # Several blocks per generator call (all samples x blocks in one batch) while memory allows.
    per_call = max(1, min(len(blocks), max_bytes // max(pass_bytes(G, b, n), 1)))
    for start in range(0, len(blocks), per_call):
        chunk = range(start, min(start + per_call, len(blocks)))
        transform = patch_transforms([blocks[i][2].v for i in chunk for _ in range(n)], blocks[0][2].s, ws.device)
        images = G.synthesis(ws.repeat(len(chunk), 1, 1), transform, canvas=b)
        for j, i in enumerate(chunk):
            bi, bj, _ = blocks[i]
            out[:, :, bi * b * r : (bi + 1) * b * r, bj * b * r : (bj + 1) * b * r] = images[j * n : (j + 1) * n]
        if on_block is not None:
            on_block(len(chunk) * b * b)
    return out


@torch.no_grad()
def render_seed(
    G: Generator,
    seed: int,
    truncation: float,
    size: int,
    center: tuple[float, float] = (0.5, 0.5),
    scale: float = 1.0,
    mode: str = "stitched",
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_block: Callable[[int], None] | None = None,
) -> np.ndarray:
    """One seed's region as uint8 [size, size, C]: z from the seed, w truncated towards w_avg by
    `truncation`, then `render_region`. `uh-generate` writes exactly this array."""
    z = seed_latents([seed], G.z_dim).to(G.mapping.w_avg.device)
    ws = G.mapping(z, truncation_psi=truncation)
    img = render_region(G, ws, size, center=center, scale=scale, mode=mode, max_bytes=max_bytes, on_block=on_block)
    return to_uint8(img)[0]


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2, as in StyleGAN3's equivariance metrics)."""
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)
