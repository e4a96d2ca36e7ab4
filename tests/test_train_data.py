"""The trainer's patch sampler and source mixing, checked against exactly known synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from mst_pipeline.synthesis.synthetic import random_figure, render, write_synthetic
from uh_train.data.patches import (
    PatchConfig,
    ViewSettings,
    make_patch,
    mirror_record,
    parse_view,
    resample_patch,
    sample_view,
)
from uh_train.data.streams import PatchBatches
from uh_train.format.geometry import density, full_image_homography, image_region, patch_transform, scale_translate
from uh_train.format.spec import ShardRecord
from uh_train.shard_reader import shard_pipeline


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
            half = 0.5 / s
            # the patch shows part of the source and stays within a quarter side of the square
            assert v[0] - half <= x1 and v[0] + half >= x0 and v[1] - half <= y1 and v[1] + half >= y0
            assert np.all(v - half >= -0.25 - 1e-9) and np.all(v + half <= 1.25 + 1e-9)


def test_stage_one_feeds_whole_full_body_images(shards):
    batch = next(iter(PatchBatches([shards], batch=8, cfg=PatchConfig(res=32, stage=1))))
    assert set(batch["source"]) == {"synth_full"}
    assert np.allclose(batch["transform"].numpy(), np.eye(3))
    assert batch["image"].shape == (8, 3, 32, 32)
    # a portrait padded (white) to the square: the padding is not real data, only the portrait is
    assert batch["mask"][:, :, :, :6].max() == 0 and batch["mask"][:, :, :, 12:20].min() == 1
    assert batch["image"][:, :, :, :6].min() == 1.0 and batch["image"][:, :, :, 12:20].min() < 1.0


def test_keypoint_centres_land_on_body_parts(shards):
    # patches small enough (s >= 3) that the square's margin never moves the centre
    cfg = PatchConfig(res=32, stage=2, views={"synth_upper": ViewSettings(s_min=3.0, keypoint_prob=1.0, jitter=0.0)})
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


def aligned_record(width: int, height: int, seed: int = 0) -> ShardRecord:
    """An aligned full-body image (the person centred, head to feet) with its padded-identity H."""
    img = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    H = full_image_homography(width, height)
    meta = {"key": "shhq/a", "source": "shhq", "kind": "full", "tier": "HR", "H": H.tolist(),
            "region": image_region(H, width, height).tolist(), "density": density(H, width, height),
            "keypoints": None}
    return ShardRecord.from_parts(meta, img, None)


@pytest.mark.parametrize("shard_res", [32, 64])
def test_stage_one_reads_an_aligned_image_without_resampling(shard_res):
    """A 1:2 aligned image r pixels high is read at r bit for bit, and one 2r high as its exact
    Lanczos reduction (PIL's, in float), in the central strip x in [0.25, 0.75]; the padding around
    it is not real."""
    from PIL import Image

    r = 32
    record = aligned_record(shard_res // 2, shard_res)
    p = make_patch(record, PatchConfig(res=r, stage=1), np.random.default_rng(0))
    strip = p.image[:, :, r // 4: 3 * r // 4]
    if shard_res == r:
        np.testing.assert_array_equal(strip, (record.image.astype(np.float32) / 255.0 * 2 - 1).transpose(2, 0, 1))
    else:
        channels = [np.asarray(Image.fromarray(record.image[..., c].astype(np.float32) / 255.0, mode="F")
                               .resize((r // 2, r), Image.LANCZOS)) for c in range(3)]
        expected = np.clip(np.stack(channels), 0, 1) * 2 - 1
        np.testing.assert_allclose(strip, expected, atol=1e-5)
    assert p.mask[0, :, r // 4: 3 * r // 4].min() == 1
    assert p.mask[0, :, : r // 4].max() == 0 and p.mask[0, :, 3 * r // 4:].max() == 0
    assert p.whole  # the global head still judges the full-body view as the set presents it


def test_only_the_aligned_full_body_set_shows_its_padding_to_the_global_head():
    """An aligned image (padded-identity H) is a whole view, padding included; a full-body photo
    placed by a fitted H that leaves part of the square uncovered is not."""
    aligned = aligned_record(16, 32)
    assert make_patch(aligned, PatchConfig(res=32, stage=1), np.random.default_rng(0)).whole
    fitted = figure_record(40, (0.2, 0.1, 0.8, 0.9))[1]
    from dataclasses import replace

    fitted = replace(fitted, kind="full")
    p = make_patch(fitted, PatchConfig(res=32, stage=1), np.random.default_rng(0))
    assert 0.3 < p.mask.mean() < 0.9 and not p.whole


def test_a_face_source_is_seen_from_the_whole_square_to_its_density_limit():
    """A face crop covering 0.1 x 0.1 of full-body space at 2560 px per unit (a 256 px face): its
    patches range over s in [1, 8] (r = 32: density limit 80, capped at 8), and each patch's coverage
    is the share of the patch the face occupies."""
    x0, y0, side, dens = 0.45, 0.05, 0.1, 2560.0
    n = int(side * dens)
    H = scale_translate(1 / dens, 1 / dens, x0, y0)
    img = np.full((n, n, 3), 90, dtype=np.uint8)
    meta = {"key": "celeba/a", "source": "celeba", "kind": "face", "tier": "SR", "H": H.tolist(),
            "region": image_region(H, n, n).tolist(), "density": density(H, n, n), "keypoints": None}
    record = ShardRecord.from_parts(meta, img, None)
    cfg = PatchConfig(res=32, stage=2, scale_max=8.0)
    rng = np.random.default_rng(0)
    scales, errors = [], []
    for _ in range(200):
        p = make_patch(record, cfg, rng)
        s = 1 / float(p.transform[0, 0])
        vx, vy = p.transform[0, 2] + 0.5, p.transform[1, 2] + 0.5
        half = 0.5 / s
        ox = max(0.0, min(vx + half, x0 + side) - max(vx - half, x0))
        oy = max(0.0, min(vy + half, y0 + side) - max(vy - half, y0))
        expected = ox * oy * s * s  # share of the patch's area inside the face
        assert expected > 0  # every patch shows part of the face
        errors.append(abs(float(p.mask.mean()) - expected))
        assert p.whole == (expected > 0.999)  # a partial patch is never a whole real image
        scales.append(s)
    scales = np.array(scales)
    assert scales.min() < 1.1 and scales.max() > 7.0 and np.all((scales >= 1) & (scales <= 8))
    assert np.mean(scales < 2) > 0.2 and np.mean(scales > 4) > 0.2  # log-uniform: a third per octave
    assert max(errors) < 0.1 and np.mean(errors) < 0.03


def test_view_settings_per_source():
    name, view = parse_view("celeba:scale=uniform-size,s_min=2,keypoints=0.9")
    assert name == "celeba" and view == ViewSettings(scale="uniform-size", s_min=2.0, keypoint_prob=0.9)
    with pytest.raises(ValueError, match="unknown setting 'zoom'"):
        parse_view("celeba:zoom=3")
    with pytest.raises(ValueError, match="s_min must be"):
        parse_view("celeba:s_min=0.5")
    fig, record = figure_record(1024, (0.3, 0.05, 0.7, 0.55))
    cfg = PatchConfig(res=32, views={"t": ViewSettings(scale="uniform-size", s_min=2.0, s_max=4.0)})
    rng = np.random.default_rng(0)
    sides = np.array([1 / sample_view(record, cfg, rng)[1] for _ in range(400)])
    assert sides.min() >= 0.25 - 1e-9 and sides.max() <= 0.5 + 1e-9
    assert abs(np.mean(sides < 0.375) - 0.5) < 0.08  # uniform in the patch side


def test_mirrored_sample_is_the_x_flip_of_the_original_in_full_body_space():
    fig, record = figure_record(512, (0.3125, 0.0625, 0.5625, 0.5625))  # asymmetric: left of centre
    body = np.zeros((25, 3), np.float32)
    body[2] = (0.4, 0.2, 1.0)  # right shoulder
    body[5] = (0.5, 0.21, 0.9)  # left shoulder
    face = np.zeros((70, 3), np.float32)
    face[36] = (0.46, 0.1, 1.0)  # an eye corner
    kp = {"body": body, "lhand": np.zeros((21, 3), np.float32), "rhand": np.ones((21, 3), np.float32) * 0.5,
          "face": face}
    from dataclasses import replace

    record = replace(record, keypoints=kp)
    m = mirror_record(record)
    v, s = np.array([0.42, 0.3]), 2.0
    rgb, mask = resample_patch(record, v, s, 32)
    rgb_m, mask_m = resample_patch(m, np.array([1 - v[0], v[1]]), s, 32)
    np.testing.assert_allclose(rgb_m, rgb[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(mask_m, mask[:, ::-1], atol=1e-5)
    assert np.allclose(np.sort(m.region[:, 0]), np.sort(1 - record.region[:, 0]))
    np.testing.assert_allclose(m.keypoints["body"][5], (0.6, 0.2, 1.0), atol=1e-6)  # right shoulder -> left
    np.testing.assert_allclose(m.keypoints["body"][2], (0.5, 0.21, 0.9), atol=1e-6)
    np.testing.assert_allclose(m.keypoints["face"][45], (0.54, 0.1, 1.0), atol=1e-6)
    assert m.keypoints["lhand"][0, 2] == 0.5 and m.keypoints["rhand"][0, 2] == 0
    np.testing.assert_allclose(mirror_record(m).keypoints["face"], record.keypoints["face"], atol=1e-6)
    np.testing.assert_allclose(mirror_record(m).H, record.H, atol=1e-12)
    # the batch stream flips about half of the samples when asked to
    cfg = PatchConfig(res=32, stage=1, mirror=True)
    rng = np.random.default_rng(3)
    flips = [make_patch(record, cfg, rng).image for _ in range(40)]
    plain = make_patch(record, PatchConfig(res=32, stage=1), rng).image
    n_flipped = sum(np.allclose(f, plain[:, :, ::-1], atol=1e-5) for f in flips)
    n_plain = sum(np.allclose(f, plain, atol=1e-5) for f in flips)
    assert n_flipped + n_plain == 40 and 10 < n_flipped < 30
    assert patch_transform((0.5, 0.5), 1.0).tolist() == np.eye(3).tolist()


def test_uint8_bilinear_sampler_equals_the_float_reference_without_converting_the_image():
    from uh_train.data.patches import bilinear_sample_uint8
    from uh_train.format.geometry import bilinear_sample

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    sx = rng.uniform(-2, 55, (16, 16))  # beyond both borders too (clamped)
    sy = rng.uniform(-2, 39, (16, 16))
    got = bilinear_sample_uint8(img, sx, sy)
    ref = bilinear_sample(img.astype(np.float32) / 255.0, sx, sy)
    assert got.dtype == np.float32 and got.shape == (16, 16, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_stage_two_sees_full_body_samples_whole_at_the_chosen_rate_and_partial_ones_never(shards):
    records = list(shard_pipeline([shards], shuffle_buffer=0, split=False))
    full = [r for r in records if r.kind == "full"]
    partial = [r for r in records if r.kind != "full"]
    assert full and partial
    rng = np.random.default_rng(0)

    def identity_share(record_set, cfg, n=100):
        views = [sample_view(r, cfg, rng) for _ in range(n) for r in record_set]
        return np.mean([s == 1.0 and np.allclose(v, 0.5) for v, s in views])

    assert identity_share(full, PatchConfig(res=32, stage=2, whole_prob=1.0)) == 1.0
    assert identity_share(full, PatchConfig(res=32, stage=2, whole_prob=0.0)) < 0.05
    assert abs(identity_share(full, PatchConfig(res=32, stage=2, whole_prob=0.5)) - 0.5) < 0.08
    assert identity_share(partial, PatchConfig(res=32, stage=2, whole_prob=1.0)) < 0.05
    # a per-source setting overrides the run's
    per_source = PatchConfig(res=32, stage=2, whole_prob=1.0, views={full[0].source: ViewSettings(whole_prob=0.0)})
    assert identity_share(full, per_source) < 0.05
    assert parse_view("x:whole=0.25")[1].whole_prob == 0.25
    with pytest.raises(ValueError, match="whole-image probability"):
        parse_view("x:whole=2")


def test_one_function_decides_which_records_show_their_padding_for_trainer_and_metrics():
    """The meta's `aligned` field decides (older shards: kind full with the padded-identity H); the
    trainer's global-head view and the metrics' known box and coverage follow that one answer, for an
    aligned, a fitted full-body and a partial sample."""
    from dataclasses import replace

    from uh_train.format.spec import aligned_full_body
    from uh_train.metrics.patches import known_box, take_patch

    aligned = aligned_record(16, 32)
    tagged = replace(aligned, meta={**aligned.meta, "aligned": True})
    untagged_off = replace(aligned, meta={**aligned.meta, "aligned": False})  # the field wins over H
    fitted = replace(figure_record(40, (0.2, 0.1, 0.8, 0.9))[1], kind="full")
    partial = figure_record(40, (0.2, 0.1, 0.8, 0.9))[1]
    expected = {"aligned (field)": (tagged, True), "aligned (older shard)": (aligned, True),
                "field says no": (untagged_off, False), "fitted full body": (fitted, False),
                "partial": (partial, False)}
    for name, (record, is_aligned) in expected.items():
        assert aligned_full_body(record) is is_aligned, name
        whole = make_patch(record, PatchConfig(res=32, stage=1), np.random.default_rng(0)).whole
        assert whole is is_aligned, name  # the global head sees the padded view only of an aligned image
        box = known_box(record)
        assert np.array_equal(box, [0, 0, 1, 1]) is is_aligned, name
        _, coverage = take_patch(record, np.array([0.5, 0.5]), 1.0, 32)
        assert (coverage == 1.0) is is_aligned, name  # the padding counts as known only when aligned
