"""Test data for the metrics: shard sets whose images are an analytic pattern of full-body space,
an analytic "generator" that renders the same pattern for any T(v, s), and cheap feature extractors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from mst_pipeline.shards.writer import ShardWriter, encode_sample, write_manifest
from uh_train.format.geometry import apply_homography, density, image_region, scale_translate


def pattern(points: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of full-body points [..., 2]: smooth, but varying within an s = 8 patch."""
    x, y = points[..., 0], points[..., 1]
    return np.stack([0.5 + 0.4 * np.sin(2 * np.pi * 5 * x), 0.5 + 0.4 * np.cos(2 * np.pi * 7 * y),
                     0.5 + 0.4 * np.sin(2 * np.pi * 4 * (x + y))], axis=-1)


def pink_noise(n: int, seed: int = 0) -> np.ndarray:
    """A 1/f noise RGB image [n, n, 3] (natural images' spectrum), zero mean and unit spread."""
    f = np.fft.fftfreq(n)
    fx, fy = np.meshgrid(f, f)
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / n)
    rng = np.random.default_rng(seed)
    img = np.stack([np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((n, n))))) for _ in range(3)], -1)
    return (img - img.mean()) / img.std()


def render_pattern(H: np.ndarray, w: int, h: int) -> np.ndarray:
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    full = apply_homography(H, np.stack([jj, ii], axis=-1))
    return np.round(pattern(full) * 255).astype(np.uint8)


def body_keypoints(rng: np.random.Generator, region: np.ndarray) -> dict[str, np.ndarray]:
    body = np.zeros((25, 3))
    body[:, :2] = rng.uniform(0.15, 0.85, size=(25, 2))
    x0, y0 = region.min(axis=0)
    x1, y1 = region.max(axis=0)
    body[:, 2] = (body[:, 0] > x0) & (body[:, 0] < x1) & (body[:, 1] > y0) & (body[:, 1] < y1)
    return {"body": body, "lhand": np.zeros((21, 3)), "rhand": np.zeros((21, 3)), "face": np.zeros((70, 3))}


def write_pattern_shards(folder: Path, n: int = 6, keypoints: bool = True) -> Path:
    """n full-body images (256 px, the whole unit square) and n upper-body crops (2.5x denser)."""
    views = {"pat_full": ("full", scale_translate(1 / 256, 1 / 256, 0.0, 0.0), 256, 256),
             "pat_upper": ("upper", scale_translate(1 / 640, 1 / 640, 0.3, 0.1), 256, 256)}
    for source, (kind, H, w, h) in views.items():
        with ShardWriter(folder, source, update_manifest=False) as writer:
            image = render_pattern(H, w, h)
            for i in range(n):
                region = image_region(H, w, h)
                kp = body_keypoints(np.random.default_rng([i, len(source)]), region) if keypoints else None
                fields = {"kind": kind, "tier": "LR" if kind == "full" else "HR", "H": H, "region": region,
                          "density": density(H, w, h), "keypoints": kp, "smpl": None, "fit": None,
                          "orig": {"path": f"{source}/{i}.png", "sha256": hashlib.sha256(bytes([i])).hexdigest(),
                                   "width": w, "height": h}}
                writer.write(encode_sample(source, f"s{i}", image, fields, ext="png"))
    write_manifest(folder)
    return folder


class PatternGenerator:
    """A stand-in generator: the analytic pattern at the patch T(v, s), whatever z is. It records
    every transform it is asked for. `shift` moves every patch (a generator that misplaces T)."""

    z_dim = 4

    def __init__(self, res: int = 32, shift: float = 0.0) -> None:
        self.img_resolution = res
        self.shift = shift
        self.calls: list[np.ndarray] = []

    def __call__(self, z: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        T = transform.double().numpy()
        self.calls.append(T.copy())
        c = (np.arange(self.img_resolution) + 0.5) / self.img_resolution - 0.5
        gx, gy = np.meshgrid(c, c)
        grid = np.stack([gx, gy, np.ones_like(gx)], axis=-1)  # [r, r, 3]
        full = np.einsum("nij,hwj->nhwi", T, grid)[..., :2] + 0.5 + self.shift
        return torch.from_numpy(pattern(full) * 2 - 1).permute(0, 3, 1, 2).float()


class PoolFeatures:
    """Cheap features: 4 x 4 average-pooled pixels (48-d)."""

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(images).float() / 255, 4)
        return x.flatten(1).double().numpy()

    def describe(self) -> dict:
        return {"file": "pool4", "sha256": "pool4", "kind": "test"}


class NvidiaLikeInception(torch.nn.Module):
    """TorchScript stand-in with the calling convention of NVIDIA's inception-2015-12-05.pt: uint8
    images in, 2048 features with return_features=True."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection", torch.randn(3 * 16, 2048, generator=torch.Generator().manual_seed(0)))

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise ValueError("expected uint8 images")
        pooled = torch.nn.functional.adaptive_avg_pool2d(img.float(), 4).flatten(1)
        feats = pooled @ self.projection / 255.0
        return feats if return_features else feats[:, :1008]


def save_nvidia_like(path: Path) -> Path:
    torch.jit.script(NvidiaLikeInception()).save(str(path))
    return path


class NvidiaLikeVGG16(torch.nn.Module):
    """TorchScript stand-in with the calling convention of NVIDIA's vgg16.pt (4096 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection", torch.randn(3 * 16, 4096, generator=torch.Generator().manual_seed(1)))

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False,
                return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(img.float(), 4).flatten(1)
        return pooled @ self.projection / 255.0


def save_nvidia_like_vgg16(path: Path) -> Path:
    torch.jit.script(NvidiaLikeVGG16()).save(str(path))
    return path
