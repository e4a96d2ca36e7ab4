"""Real pixels are as sharp as the exact antialiased reduction of their region, at every scale, in
the trainer's patches and the metrics' alike (one resampler: `uh_train.resample`).

The reference is independent of the code under test: PIL's Lanczos resize of the region's exact
(sub-pixel) box, in float. A reader that blurs (bilinear sampling at sub-pixel centres, a box
prefilter of the footprint's integer part) keeps visibly less high-frequency energy than it."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_helpers import pink_noise as pink_field
from PIL import Image

from uh_train.data.patches import resample_patch
from uh_train.format.geometry import full_image_homography
from uh_train.format.spec import ShardRecord
from uh_train.metrics.patches import take_patch

SIDE = 1024  # source pixels across full-body space
R = 32


def pink_noise(n: int, seed: int = 0) -> np.ndarray:
    """A 1/f noise RGB image [n, n, 3] uint8."""
    return np.clip(127.5 + 40 * pink_field(n, seed), 0, 255).astype(np.uint8)


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


def reference(image: np.ndarray, v: np.ndarray, s: float, size: int, margin: int = 0) -> np.ndarray:
    """The exact antialiased reduction of the region T(v, s): PIL's Lanczos on its sub-pixel box
    (`margin`: pixels of padding around the picture in `image`)."""
    n = image.shape[0] - 2 * margin
    side = n / s
    x0, y0 = v[0] * n - side / 2 + margin, v[1] * n - side / 2 + margin
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


class SharpnessFeatures:
    """Features that see sharpness: per channel, the mean, the spread and the mean absolute
    Laplacian (a blurred set moves the last), plus 2 x 2 pooled pixels."""

    def __call__(self, images) -> np.ndarray:
        import torch

        x = torch.as_tensor(images).float() / 255
        lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
        feats = [x.mean(dim=(2, 3)), x.std(dim=(2, 3)), 10 * lap.abs().mean(dim=(2, 3)),
                 torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)]
        return torch.cat(feats, dim=1).double().numpy()

    def describe(self) -> dict:
        return {"file": "sharpness", "sha256": "sharpness", "kind": "test"}


class WorldGenerator:
    """A generator that returns the real picture: the region T(v, s) of a denser copy of the world the
    real images were made from, reduced exactly (PIL's Lanczos on the sub-pixel box) — independent of
    the project's resampler. `shift` misplaces every patch."""

    z_dim = 4

    MARGIN = 256  # patches may reach past the picture's edge: it is mirrored there

    def __init__(self, world: np.ndarray, res: int, shift: float = 0.0) -> None:
        self.world = np.pad(world, ((self.MARGIN,) * 2, (self.MARGIN,) * 2, (0, 0)), mode="reflect")
        self.img_resolution, self.shift = res, shift

    def __call__(self, z, transform):
        import torch

        out = []
        for T in transform.double().numpy():
            s = 1.0 / T[0, 0]
            v = np.array([T[0, 2] + 0.5 + self.shift, T[1, 2] + 0.5])
            out.append(reference(self.world, v, s, self.img_resolution, self.MARGIN))
        return torch.from_numpy(np.stack(out) * 2 - 1).permute(0, 3, 1, 2).float()


def test_real_and_generated_patches_of_the_same_picture_score_near_zero(tmp_path):
    """Real patches read from a 512 px aligned image, and a generator that renders the same picture
    from a 1024 px copy: pFID and kFID at n = 64 are near 0 (a tenth of those of the same generator
    shifted by a fiftieth of the picture), with features that see sharpness. Reals read with a
    blur the fakes do not have would score far from 0."""
    from mst_pipeline.shards.writer import ShardWriter, encode_sample, write_manifest
    from uh_train.format.geometry import density, image_region
    from uh_train.metrics import EvalConfig, evaluate

    world = pink_noise(1024, seed=3)
    small = np.stack([np.asarray(Image.fromarray(world[..., c]).resize((512, 512), Image.LANCZOS))
                      for c in range(3)], -1)
    H = full_image_homography(512, 512)
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "shards", "world", update_manifest=False) as writer:
        for i in range(4):
            body = np.zeros((25, 3))
            body[:, :2] = rng.uniform(0.1, 0.9, size=(25, 2))
            body[:, 2] = 1
            kp = {"body": body, "lhand": np.zeros((21, 3)), "rhand": np.zeros((21, 3)), "face": np.zeros((70, 3))}
            fields = {"kind": "full", "tier": "HR", "H": H, "region": image_region(H, 512, 512),
                      "density": density(H, 512, 512), "keypoints": kp, "smpl": None, "fit": None, "aligned": True,
                      "orig": {"path": f"world/{i}.png", "sha256": f"{i:064x}", "width": 512, "height": 512}}
            writer.write(encode_sample("world", f"w{i}", small, fields, ext="png"))
    write_manifest(tmp_path / "shards")
    cfg = EvalConfig(metrics=("pfid", "kfid"), n=64, batch=16, seed=1)
    good = evaluate(WorldGenerator(world, R), [tmp_path / "shards"], cfg, SharpnessFeatures())
    bad = evaluate(WorldGenerator(world, R, shift=0.02), [tmp_path / "shards"], cfg, SharpnessFeatures())
    assert good["pfid"]["value"] < 0.1 * bad["pfid"]["value"], (good["pfid"], bad["pfid"])
    assert good["kfid"]["mean"] < 0.1 * bad["kfid"]["mean"], (good["kfid"]["mean"], bad["kfid"]["mean"])
