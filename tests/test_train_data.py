"""The trainer's patch sampler and source mixing, checked against exactly known synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from mst_pipeline.synthetic import random_figure, render, write_synthetic
from uh_train.data import PatchBatches, PatchConfig, make_patch, resample_patch, sample_view
from uh_train.shard_reader import shard_pipeline
from uh_train.shardspec import ShardRecord
from uh_train.spatial import density, image_region, scale_translate


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_synthetic(folder, n=6, res=64, seed=3, max_count=2)
    return folder


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def figure_record(res_density: float, region: tuple[float, float, float, float], seed: int = 0):
    """A synthetic figure rendered as one source image, and the figure itself (ground truth)."""
    fig = random_figure(np.random.default_rng(seed))
    x0, y0, x1, y1 = region
    w, h = int((x1 - x0) * res_density), int((y1 - y0) * res_density)
    H = scale_translate(1 / res_density, 1 / res_density, x0, y0)
    img = render(fig, H, w, h)
    meta = {"key": "t/a", "source": "t", "kind": "upper", "tier": "HR", "H": H.tolist(),
            "region": image_region(H, w, h).tolist(), "density": density(H, w, h), "keypoints": None}
    return fig, ShardRecord.from_parts(meta, img, None)


def test_resampled_patch_matches_a_direct_render_of_the_region():
    fig, record = figure_record(1024, (0.3, 0.05, 0.7, 0.55))
    r, v, s = 64, np.array([0.5, 0.25]), 4.0
    rgb, mask = resample_patch(record, v, s, r)
    assert mask.min() == 1.0
    truth = render(fig, scale_translate(1 / (r * s), 1 / (r * s), v[0] - 0.5 / s, v[1] - 0.5 / s), r, r) / 255.0
    assert psnr(rgb, truth) > 20  # measured 21.9 dB: both sides are antialiased differently (box vs supersampling)
    shifted = render(fig, scale_translate(1 / (r * s), 1 / (r * s), v[0] - 0.35 / s, v[1] - 0.5 / s), r, r) / 255.0
    assert psnr(rgb, truth) > psnr(rgb, shifted) + 3


def test_minified_patch_is_antialiased():
    """Fine stripes seen through a small footprint average out instead of aliasing."""
    fig, record = figure_record(2048, (0.3, 0.05, 0.7, 0.55))
    rgb, _ = resample_patch(record, np.array([0.5, 0.3]), 1.0 / 0.4, 64)
    direct = render(fig, scale_translate(0.4 / 64, 0.4 / 64, 0.3, 0.1), 64, 64) / 255.0
    assert psnr(rgb, direct) > 20


def test_coverage_mask_is_zero_outside_the_source_and_padded_white():
    _, record = figure_record(512, (0.4, 0.05, 0.6, 0.25))
    rgb, mask = resample_patch(record, np.array([0.5, 0.5]), 1.0, 64)
    assert 0.02 < mask.mean() < 0.1  # the source covers 0.2 x 0.2 of the square
    assert np.allclose(rgb[mask == 0], 1.0)
    assert mask[8, 32] == 1 and mask[40, 32] == 0


def test_scale_never_exceeds_the_source_density(shards):
    cfg = PatchConfig(res=32, stage=2, scale_max=8.0)
    rng = np.random.default_rng(0)
    records = list(shard_pipeline([shards], shuffle_buffer=0, split=False))
    for record in records:
        for _ in range(20):
            v, s = sample_view(record, cfg, rng)
            assert 1.0 <= s <= max(1.0, record.density / cfg.res) + 1e-9
            x0, y0 = record.region.min(axis=0)
            x1, y1 = record.region.max(axis=0)
            assert x0 - 1e-9 <= v[0] <= x1 + 1e-9 and y0 - 1e-9 <= v[1] <= y1 + 1e-9


def test_stage_one_feeds_whole_full_body_images(shards):
    batch = next(iter(PatchBatches([shards], batch=8, cfg=PatchConfig(res=32, stage=1))))
    assert set(batch["source"]) == {"synth_full"}
    assert np.allclose(batch["transform"].numpy(), np.eye(3))
    assert batch["image"].shape == (8, 3, 32, 32)
    # a portrait padded (white) to the square: padding is part of the real full-body image
    assert batch["mask"].min() == 1
    assert batch["image"][:, :, :, :6].min() == 1.0 and batch["image"][:, :, :, 12:20].min() < 1.0


def test_keypoint_centres_land_on_body_parts(shards):
    cfg = PatchConfig(res=32, stage=2, keypoint_prob=1.0, jitter=0.0)
    rng = np.random.default_rng(1)
    for record in shard_pipeline([shards], shuffle_buffer=0, split=False):
        if record.source != "synth_upper":
            continue
        v, s = sample_view(record, cfg, rng)
        body = record.keypoints["body"]
        visible = body[body[:, 2] > 0.3, :2]
        assert np.min(np.linalg.norm(visible - v, axis=1)) < 1e-6 or s == 1.0


def test_mixing_weights_select_sources(shards):
    only_faces = PatchBatches([shards], batch=6, cfg=PatchConfig(res=32), weights={"synth_full": 0, "synth_upper": 0})
    assert set(next(iter(only_faces))["source"]) == {"synth_face"}
    with pytest.raises(ValueError, match="unknown sources: nope"):
        PatchBatches([shards], batch=2, cfg=PatchConfig(res=32), weights={"nope": 1})


def test_resumed_stream_continues_exactly(shards):
    cfg = PatchConfig(res=32, stage=2)
    it = iter(PatchBatches([shards], batch=5, cfg=cfg, seed=4))
    batches = [next(it) for _ in range(4)]
    resumed = next(iter(PatchBatches([shards], batch=5, cfg=cfg, seed=4, state=batches[1]["state"])))
    assert resumed["key"] == batches[2]["key"]
    np.testing.assert_array_equal(resumed["image"].numpy(), batches[2]["image"].numpy())
    np.testing.assert_array_equal(resumed["transform"].numpy(), batches[2]["transform"].numpy())


def test_patch_transform_of_a_patch_is_recorded(shards):
    record = next(iter(shard_pipeline([shards], shuffle_buffer=0, split=False)))
    p = make_patch(record, PatchConfig(res=32, stage=2), np.random.default_rng(0))
    s = 1 / p.transform[0, 0]
    assert p.transform[1, 1] == p.transform[0, 0] and s >= 1
    assert p.image.shape == (3, 32, 32) and -1 <= p.image.min() and p.image.max() <= 1
