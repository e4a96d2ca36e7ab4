"""One resampler for pixels: a region of an image read at any density, antialiased at every scale.

Every place that reduces or re-grids pixels for a comparison uses this module: the trainer's real
patches, the teacher's target in the pixel loss (paper Eq. 8), the metrics' real patches and the
reduction of dense renders in the scale-consistency metric. One kernel for all means a generator is
never rewarded for matching one filter in training and judged by another in evaluation.

The kernel is Lanczos-3 stretched by the footprint (source pixels per output pixel) when reducing,
as PIL's `Image.resize(..., LANCZOS)` does, so a reduction antialiases whatever its factor, and
unstretched when enlarging. Sample positions are continuous: a region that starts between source
pixels is read there exactly, not re-gridded first (no bilinear blur from sub-pixel offsets).

Coordinates are in source pixel units with pixel j spanning [j, j + 1) (its centre at j + 0.5).
Taps that fall outside the source are dropped and the remaining weights renormalised; `coverage`
says how much of a sample's kernel was inside, so callers can mask samples read mostly from outside.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LOBES = 3  # Lanczos-3, PIL's LANCZOS


def lanczos(x: np.ndarray, a: int = LOBES) -> np.ndarray:
    """The Lanczos window sinc(x) sinc(x / a) on |x| < a, 0 elsewhere (float64)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    return np.where(x < a, np.sinc(x) * np.sinc(x / a), 0.0)


def axis_weights(n_src: int, centres: np.ndarray, footprint: np.ndarray,
                 a: int = LOBES) -> tuple[np.ndarray, np.ndarray]:
    """Resampling weights along one axis.

    centres [B, m]: output sample positions in source pixel units; footprint [B]: source pixels per
    output pixel (the kernel is stretched by max(footprint, 1)). Returns (weights [B, m, n_src], rows
    summing to 1 over the taps inside the source; coverage [B, m], the fraction of each sample's
    kernel weight that falls inside the source: 1 in the interior, about 0.5 at an edge)."""
    centres = np.asarray(centres, dtype=np.float64)
    stretch = np.maximum(np.asarray(footprint, dtype=np.float64), 1.0)[:, None, None]
    reach = int(math.ceil(a * float(stretch.max()))) + 1
    src = np.arange(-reach, n_src + reach, dtype=np.float64) + 0.5
    w = lanczos((src[None, None, :] - centres[..., None]) / stretch, a)
    total = w.sum(axis=-1)
    inside = w[..., reach : reach + n_src]
    kept = inside.sum(axis=-1)
    some = np.abs(kept) > 1e-12
    weights = np.where(some[..., None], inside / np.where(some, kept, 1.0)[..., None], 0.0)
    coverage = np.where(np.abs(total) > 1e-12, kept / np.where(np.abs(total) > 1e-12, total, 1.0), 0.0)
    return weights, np.clip(coverage, 0.0, 1.0)


def grid_centres(start: np.ndarray, length: np.ndarray, m: int) -> np.ndarray:
    """[B] region starts and lengths (source pixels) -> [B, m] centres of m equal output pixels."""
    k = np.arange(m, dtype=np.float64) + 0.5
    return np.asarray(start, np.float64)[:, None] + k[None, :] * (np.asarray(length, np.float64) / m)[:, None]


def apply(images: torch.Tensor, wy: np.ndarray, wx: np.ndarray) -> torch.Tensor:
    """images [B, C, H, W] resampled by per-image axis weights wy [B, my, H] and wx [B, mx, W] ->
    [B, C, my, mx] (differentiable in `images`)."""
    import torch

    wy = torch.as_tensor(wy, dtype=images.dtype, device=images.device)
    wx = torch.as_tensor(wx, dtype=images.dtype, device=images.device)
    return torch.einsum("bih,bchw,bjw->bcij", wy, images, wx)


def read_boxes(images: torch.Tensor, boxes: np.ndarray, size: int,
               a: int = LOBES) -> tuple[torch.Tensor, torch.Tensor]:
    """The axis-aligned boxes (x0, y0, x1, y1) [B, 4], in source pixel units, of images [B, C, H, W]
    read as size x size images. Returns (patches [B, C, size, size], coverage [B, 1, size, size])."""
    import torch

    h, w = images.shape[-2:]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    wx, cx = axis_weights(w, grid_centres(boxes[:, 0], bw, size), bw / size, a)
    wy, cy = axis_weights(h, grid_centres(boxes[:, 1], bh, size), bh / size, a)
    coverage = torch.as_tensor(cy[:, :, None] * cx[:, None, :], dtype=images.dtype, device=images.device)[:, None]
    return apply(images, wy, wx), coverage


def reduce(images: torch.Tensor, size: int, a: int = LOBES) -> torch.Tensor:
    """Whole images [N, C, H, W] -> [N, C, size, size] (Lanczos, antialiased; float, no rounding)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    n, _, h, w = images.shape
    boxes = np.tile(np.array([[0.0, 0.0, float(w), float(h)]]), (n, 1))
    return read_boxes(images, boxes, size, a)[0]
