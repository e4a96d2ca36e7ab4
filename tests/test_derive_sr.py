"""`mst derive-sr`: the SR lower-body source (paper Tab. 2) from an HR full-body set, with exact H."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mst_pipeline.align.folder import align_folder
from mst_pipeline.align.settings import AlignSettings
from mst_pipeline.cli import app
from mst_pipeline.shards.rejects import read_rejects
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.synthesis.derive_sr import derive_sr, lower_half_sr
from uh_train.format.geometry import apply_homography, full_image_homography, image_region, scale_translate
from uh_train.format.manifest import read_manifest


def _samples(folder):
    return {k: f for shard in complete_shards(folder) for k, f in read_shard(shard)}


def _portrait(seed=0, w=64, h=128):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _upsampled_lower_half(image):
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image[h // 2:]).resize((2 * w, 2 * (h - h // 2)), Image.Resampling.LANCZOS))


def _aligned_set(folder, n=3):
    """N aligned 64×128 (W×H) full-body portraits; the first has OpenPose JSON (nose, right eye, right
    ankle: a face, so a person)."""
    folder.mkdir(parents=True)
    images = {}
    for i in range(n):
        images[f"p{i}"] = _portrait(i)
        Image.fromarray(images[f"p{i}"]).save(folder / f"p{i}.png")
    body = np.zeros((25, 3))
    body[0], body[15], body[11] = (32, 10, 1), (30, 8, 1), (30, 120, 1)
    (folder / "p0_keypoints.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": body.ravel().tolist()}]}))
    return images


def test_lower_half_sr_is_the_2x_upsample_with_an_exact_h():
    image = _portrait(w=64, h=127)  # odd height: the lower half is rows 63..126
    H = scale_translate(0.01, 0.01, 0.3, -0.1)
    sr, H_sr, _ = lower_half_sr(image, H)
    assert sr.shape == (128, 128, 3)
    assert np.array_equal(sr, np.asarray(Image.fromarray(image[63:]).resize((128, 128), Image.Resampling.LANCZOS)))
    # The SR image's corners and pixel centres land where the source points they come from land.
    px = np.array([[0.0, 0.0], [128, 128], [2 * 10.5, 2 * 3.5]])  # SR pixel coordinates
    src = px / 2 + [0, 63]
    assert np.allclose(apply_homography(H_sr, px), apply_homography(H, src), atol=1e-15)
    # A 2× nearest up-sampling: SR pixel (2i, 2j) is the source pixel (i, j + 63), same full-body point area.
    nearest = np.asarray(Image.fromarray(image[63:]).resize((128, 128), Image.Resampling.NEAREST))
    assert np.array_equal(nearest[2 * 3, 2 * 10], image[63 + 3, 10])
    with pytest.raises(ValueError, match="resample"):
        lower_half_sr(image, H, resample="magic")


def test_derive_sr_from_aligned_hr_shards(tmp_path):
    images = _aligned_set(tmp_path / "shhq")
    shards = tmp_path / "shards"
    align_folder(tmp_path / "shhq", shards, "shhq", None, None,
                 AlignSettings(detector="openpose-json", aligned=True, tier="HR"))
    summary = derive_sr(shards, shards, limit=2)  # into the same folder, as a user would
    assert summary.written == 2 and summary.sources == {"shhq_sr": 2}
    report = validate_folder(shards)
    assert report.ok, report.to_dict()
    samples = _samples(shards)
    assert "shhq_sr/p2" not in samples  # --limit: the first two only
    hr = json.loads(samples["shhq/p0"]["meta.json"])
    meta = json.loads(samples["shhq_sr/p0"]["meta.json"])
    assert meta["kind"] == "lower" and meta["tier"] == "SR" and meta["fit"] is None
    assert (meta["width"], meta["height"]) == (128, 128)
    # Exact H and region: the lower half of the full-body strip x in [0.25, 0.75], y in [0.5, 1].
    H = np.asarray(meta["H"])
    assert np.array_equal(H, full_image_homography(64, 128) @ scale_translate(0.5, 0.5, 0, 64))
    assert np.array_equal(np.asarray(meta["region"]), [[0.25, 0.5], [0.75, 0.5], [0.75, 1], [0.25, 1]])
    assert np.array_equal(image_region(H, 128, 128), meta["region"])
    assert meta["density"] == pytest.approx(2 * hr["density"], rel=1e-12) and hr["density"] == pytest.approx(128)
    # Pixels: the 2× up-sampling of the lower half, stored losslessly.
    sr = np.asarray(Image.open(io.BytesIO(samples["shhq_sr/p0"]["img.png"])))
    assert np.array_equal(sr, _upsampled_lower_half(images["p0"]))
    # Keypoints stay in full-body space; those outside the lower half are dropped.
    body = np.asarray(meta["keypoints"]["body"])
    assert np.allclose(body[11], hr["keypoints"]["body"][11]) and body[11][2] == 1
    assert np.array_equal(body[0], [0, 0, 0])
    assert meta["orig"] == hr["orig"] and meta["derived"]["from"] == "shhq/p0"

    # Resumable: done keys are skipped; raising the limit adds the rest.
    again = derive_sr(shards, shards)
    assert again.written == 1 and again.skipped == 2
    assert sorted(read_manifest(shards).column("key").to_pylist()) == sorted(
        [f"shhq/p{i}" for i in range(3)] + [f"shhq_sr/p{i}" for i in range(3)])
    assert derive_sr(shards, shards).written == 0


def test_derive_sr_from_an_image_folder_and_the_cli(tmp_path):
    images = _aligned_set(tmp_path / "shhq", n=2)
    Image.fromarray(_portrait(w=128, h=64)).save(tmp_path / "shhq" / "wide.png")
    out = tmp_path / "sr"
    res = CliRunner().invoke(app, ["derive-sr", str(tmp_path / "shhq"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 SR lower halves (shhq_sr 2)" in res.output and "1 rejected" in res.output
    assert validate_folder(out).ok
    (reject,) = read_rejects(out)
    assert reject["path"] == "wide.png" and "landscape" in reject["reason"]
    meta = json.loads(_samples(out)["shhq_sr/p1"]["meta.json"])
    assert np.array_equal(np.asarray(meta["region"]), [[0.25, 0.5], [0.75, 0.5], [0.75, 1], [0.25, 1]])
    assert meta["keypoints"] is None and meta["orig"]["path"] == "p1.png" and meta["density"] == pytest.approx(256)
    sr = np.asarray(Image.open(io.BytesIO(_samples(out)["shhq_sr/p1"]["img.png"])))
    assert np.array_equal(sr, _upsampled_lower_half(images["p1"]))
    again = CliRunner().invoke(app, ["derive-sr", str(tmp_path / "shhq"), "--out", str(out)])
    assert again.exit_code == 0 and "2 already done" in again.output
    for args, code in ((["--resample", "magic"], 2), (["--format", "gif"], 2), (["--from", "x"], 1)):
        bad = CliRunner().invoke(app, ["derive-sr", str(tmp_path / "shhq"), "--out", str(out), *args])
        assert bad.exit_code == code, (args, bad.output)
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(app, ["derive-sr", str(tmp_path / "empty"), "--out", str(out)])
    assert bad.exit_code == 1 and "neither shards" in bad.output
