"""Real pixels are as sharp as the exact antialiased reduction of their region, at every scale, in
the trainer's patches and the metrics' alike (one resampler: `uh_train.resample`).

The reference is independent of the code under test: PIL's Lanczos resize of the region's exact
(sub-pixel) box, in float. A reader that blurs (bilinear sampling at sub-pixel centres, a box
prefilter of the footprint's integer part) keeps visibly less high-frequency energy than it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uh_train.data.patches import resample_patch
from uh_train.format.geometry import full_image_homography
from uh_train.format.spec import ShardRecord
from uh_train.metrics.patches import take_patch

SIDE = 1024  # source pixels across full-body space
R = 32


def pink_noise(n: int, seed: int = 0) -> np.ndarray:
    """A 1/f noise RGB image [n, n, 3] uint8 (natural images' spectrum)."""
    f = np.fft.fftfreq(n)
    fx, fy = np.meshgrid(f, f)
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / n)
    rng = np.random.default_rng(seed)
    img = np.stack([np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((n, n))))) for _ in range(3)], -1)
    img = (img - img.mean()) / img.std()
    return np.clip(127.5 + 40 * img, 0, 255).astype(np.uint8)


def sharp_edges(n: int) -> np.ndarray:
    """Dark and light stripes of irregular widths, at positions that fall between pixels once read."""
    x = np.arange(n)
    edges = np.cumsum(np.random.default_rng(1).integers(5, 40, 64))
    dark = (np.searchsorted(edges, x) % 2).astype(bool)
    img = np.where(dark[None, :, None], 30, 220).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(img, (n, n, 3)))


def record_of(image: np.ndarray) -> ShardRecord:
    h, w = image.shape[:2]
    H = full_image_homography(w, h)
    meta = {"key": "t/x", "source": "t", "kind": "full", "tier": "HR", "H": H.tolist(),
            "region": [[0, 0], [1, 0], [1, 1], [0, 1]], "density": float(w), "keypoints": None}
    return ShardRecord.from_parts(meta, image, None)


def reference(image: np.ndarray, v: np.ndarray, s: float, size: int) -> np.ndarray:
    """The exact antialiased reduction of the region T(v, s): PIL's Lanczos on its sub-pixel box."""
    n = image.shape[0]
    side = n / s
    x0, y0 = v[0] * n - side / 2, v[1] * n - side / 2
    box = (x0, y0, x0 + side, y0 + side)
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255.0, mode="F")
                           .resize((size, size), Image.LANCZOS, box=box)) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 1)


def high_frequency_energy(patch: np.ndarray) -> float:
    """Energy above half the Nyquist frequency (the top octave), summed over channels."""
    spec = np.abs(np.fft.fft2(patch - patch.mean(axis=(0, 1)), axes=(0, 1))) ** 2
    f = np.fft.fftfreq(patch.shape[0])
    fx, fy = np.meshgrid(f, f)
    return float(spec[np.maximum(np.abs(fx), np.abs(fy)) > 0.25].sum())


READERS = {
    "trainer": lambda record, v, s: resample_patch(record, v, s, R)[0],
    "metrics": lambda record, v, s: take_patch(record, v, s, R)[0].transpose(1, 2, 0).astype(np.float64) / 255.0,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("make", [pink_noise, sharp_edges], ids=["1/f noise", "sharp edges"])
def test_real_patches_keep_the_high_frequencies_of_the_exact_reduction(reader, make):
    image = make(SIDE)
    record = record_of(image)
    limit = SIDE / R  # s at which the patch has one source pixel per patch pixel
    rng = np.random.default_rng(2)
    for s in (1.0, 2.0, 4.0, 8.0, 0.97 * limit, limit):
        ratios = []
        for _ in range(4):
            v = 0.5 + (rng.random(2) - 0.5) * (1 - 1 / s) if s > 1 else np.array([0.5, 0.5])
            got = READERS[reader](record, v, s)
            truth = reference(image, v, s, R)
            ratios.append(high_frequency_energy(got) / high_frequency_energy(truth))
            assert np.abs(got - truth).mean() < 0.01, (s, reader)  # the same picture, not just as sharp
        assert min(ratios) >= 0.95, (s, reader, ratios)
        assert max(ratios) <= 1.05, (s, reader, ratios)
