"""Real patches with their T(v, s), and fakes that replay them exactly (pFID, kFID, FID tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_helpers import PatternGenerator, PoolFeatures, render_pattern, write_pattern_shards

from uh_train.format.geometry import scale_translate
from uh_train.metrics import EvalConfig, MetricsError, evaluate, fakes, patches
from uh_train.metrics.fid import fid_from_features
from uh_train.metrics.stats import StatsCache


@pytest.fixture(scope="module")
def pattern_shards(tmp_path_factory):
    return write_pattern_shards(tmp_path_factory.mktemp("pattern"), n=6)


def _as_float(images) -> np.ndarray:
    return np.asarray(images, dtype=np.float64)


def test_keypoint_patches_are_centred_on_their_group_keypoints_at_scale_8(pattern_shards):
    items = list(patches.keypoint_patches([pattern_shards], res=32, n=4, seed=0))
    groups = list(patches.KFID_GROUPS)
    assert {groups[p.group] for p in items} == set(groups)
    assert all(sum(p.group == g for p in items) <= 4 for g in range(len(groups)))
    from uh_train import shard_reader

    records = {r.key: r for r in shard_reader.shard_pipeline([pattern_shards], shuffle_buffer=0, split=False)}
    for p in items:
        assert p.transform[0, 0] == p.transform[1, 1] == pytest.approx(1 / 8)
        centre = p.transform[:2, 2] + 0.5
        body = records[p.key].keypoints["body"]
        indices = patches.KFID_GROUPS[groups[p.group]]
        # The centre is exactly one of the group's keypoints (float32 storage).
        assert min(np.abs(body[j, :2] - centre).max() for j in indices) < 1e-6


def test_real_patches_show_the_region_their_transform_names(pattern_shards):
    """Each real patch equals the analytic pattern rendered at its stored T(v, s)."""
    gen = PatternGenerator(res=32)
    items = list(patches.random_patches([pattern_shards], res=32, n=12, seed=3))
    items += list(patches.keypoint_patches([pattern_shards], res=32, n=2, seed=3))
    T = torch.tensor(np.stack([p.transform for p in items]), dtype=torch.float32)
    rendered = _as_float(fakes.to_uint8(gen(torch.zeros(len(items), 4), T)))
    real = _as_float(np.stack([p.image for p in items]))
    assert np.abs(rendered - real).mean() < 3.0  # bilinear resampling of a smooth pattern, in 8-bit levels
    # A patch compared with its neighbour's transform differs a lot: the test can tell patches apart.
    assert np.abs(rendered[1:] - real[:-1]).mean() > 20.0
    scales = 1 / np.array([p.transform[0, 0] for p in items])
    assert scales.min() >= 1.0 and scales.max() <= 8.0 + 1e-9 and np.ptp(scales) > 1.0


def test_evaluate_replays_the_real_transforms_exactly(pattern_shards):
    gen = PatternGenerator(res=32)
    cfg = EvalConfig(metrics=("pfid", "kfid"), n=6, batch=4, seed=1)
    result = evaluate(gen, [pattern_shards], cfg, PoolFeatures())
    real = [p.transform for p in patches.random_patches([pattern_shards], 32, 6, seed=1)]
    by_group: list[list[np.ndarray]] = [[] for _ in patches.KFID_GROUPS]
    for p in patches.keypoint_patches([pattern_shards], 32, 6, seed=1):
        by_group[p.group].append(p.transform)
    expected = np.concatenate([np.stack(real)] + [np.stack(t) for t in by_group if t])
    asked = np.concatenate(gen.calls)
    assert asked.shape == expected.shape
    np.testing.assert_allclose(asked, expected, atol=1e-6)  # same centres and scales, same order
    assert result["pfid"]["n"] == 6
    assert [g["n"] for g in result["kfid"]["groups"].values()] == [len(t) for t in by_group]


def test_pfid_and_kfid_are_near_zero_for_a_generator_that_matches_and_large_for_a_misplaced_one(pattern_shards):
    cfg = EvalConfig(metrics=("pfid", "kfid"), n=6, batch=6, seed=2)
    good = evaluate(PatternGenerator(res=32), [pattern_shards], cfg, PoolFeatures())
    bad = evaluate(PatternGenerator(res=32, shift=0.04), [pattern_shards], cfg, PoolFeatures())
    assert good["pfid"]["value"] < 0.05 * bad["pfid"]["value"]
    assert good["kfid"]["mean"] < 0.05 * bad["kfid"]["mean"]
    values = [g["value"] for g in good["kfid"]["groups"].values() if g["value"] is not None]
    assert good["kfid"]["mean"] == pytest.approx(np.mean(values))


def test_full_images_are_stitched_from_tiles_in_place():
    gen = PatternGenerator(res=16)
    image = _as_float(fakes.to_uint8(fakes.full_images(gen, torch.zeros(1, 4), 64)))[0].transpose(1, 2, 0)
    direct = render_pattern(scale_translate(1 / 64, 1 / 64, 0, 0), 64, 64).astype(np.float64)
    assert np.abs(image - direct).max() <= 1.0
    assert len(gen.calls) == 16 and all(c[0, 0, 0] == pytest.approx(1 / 4) for c in gen.calls)


def test_stitched_full_images_agree_with_the_renderer_for_the_real_generator():
    from uh_train.generate import random_generator
    from uh_train.render import render_region

    G = random_generator("tiny", 0, "cpu")
    z = fakes.latents(2, G.z_dim, seed=0)
    ours = fakes.full_images(fakes.GeneratorSampler(G, truncation_psi=0.7), z, 64)
    with torch.no_grad():
        theirs = render_region(G, G.mapping(z, truncation_psi=0.7), 64, mode="stitched")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_fid_on_full_images_is_small_for_the_matching_generator(pattern_shards):
    cfg = EvalConfig(metrics=("fid",), n=4, batch=4, fid_res=64)
    good = evaluate(PatternGenerator(res=32), [pattern_shards], cfg, PoolFeatures())
    bad = evaluate(PatternGenerator(res=32, shift=0.1), [pattern_shards], cfg, PoolFeatures())
    assert good["fid"]["n_real"] == 4 and good["fid"]["resolution"] == 64
    assert good["fid"]["value"] < 0.05 * bad["fid"]["value"]


def test_real_statistics_are_cached_and_reused(pattern_shards, tmp_path):
    cache = StatsCache(tmp_path / "cache")
    cfg = EvalConfig(metrics=("pfid",), n=4, batch=4)
    first = evaluate(PatternGenerator(res=32), [pattern_shards], cfg, PoolFeatures(), cache)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].startswith("pfid-")
    calls = []

    def counting(images):
        calls.append(len(images))
        return PoolFeatures()(images)

    counting.describe = PoolFeatures().describe
    second = evaluate(PatternGenerator(res=32), [pattern_shards], cfg, counting, cache)
    assert sum(calls) == 4  # only the fakes were featurised
    assert second["pfid"]["value"] == pytest.approx(first["pfid"]["value"])
    other = EvalConfig(metrics=("pfid",), n=5, batch=4)
    evaluate(PatternGenerator(res=32), [pattern_shards], other, PoolFeatures(), cache)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # another config, another entry


def test_shards_without_keypoints_give_a_clear_error(tmp_path):
    folder = write_pattern_shards(tmp_path / "nokp", n=2, keypoints=False)
    with pytest.raises(MetricsError, match="no keypoints"):
        evaluate(PatternGenerator(), [folder], EvalConfig(metrics=("kfid",), n=2), PoolFeatures())


def test_fid_without_full_body_images_gives_a_clear_error(tmp_path):
    folder = write_pattern_shards(tmp_path / "s", n=2)
    for tar in folder.glob("pat_full-*.tar"):
        tar.unlink()
    from mst_pipeline.shards.writer import write_manifest

    write_manifest(folder)
    with pytest.raises(MetricsError, match="no full-body images"):
        evaluate(PatternGenerator(), [folder], EvalConfig(metrics=("fid",), n=2), PoolFeatures())


def test_uncovered_patches_of_partial_sources_are_rejected(pattern_shards):
    from uh_train import shard_reader

    upper = next(r for r in shard_reader.shard_pipeline([pattern_shards], shuffle_buffer=0, split=False)
                 if r.kind == "upper")
    inside, coverage_in = patches.take_patch(upper, np.array([0.5, 0.3]), 8.0, 32)
    _, coverage_edge = patches.take_patch(upper, np.array([0.3, 0.3]), 8.0, 32)  # half outside the crop
    assert coverage_in == pytest.approx(1.0) and coverage_edge == pytest.approx(0.5, abs=0.05)
    assert coverage_edge < patches.MIN_COVERAGE


def test_fid_helper_on_pool_features_separates_sets(pattern_shards):
    real = [p.image for p in patches.random_patches([pattern_shards], 32, 8, seed=0)]
    feats = PoolFeatures()(torch.from_numpy(np.stack(real)))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
