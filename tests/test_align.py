"""`mst align` end to end on a folder whose OpenPose JSON comes from a posed body with known H:
shards pass `mst validate`, crops land where the ground truth puts them, failures go to
rejects.jsonl, re-runs skip done images and --part slices are disjoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_space import make_crops
from typer.testing import CliRunner

from mst_pipeline.align import AlignSettings, align_folder, list_images, read_rejects
from mst_pipeline.body.smpl_file import BodyModelData, write_model_npz
from mst_pipeline.cli import app
from mst_pipeline.shards import complete_shards, read_manifest, read_shard
from mst_pipeline.smplify import SmplifyConfig
from mst_pipeline.space import default_space, normalised_to_pixels
from mst_pipeline.validate import validate_folder
from uh_train.spatial import image_region

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batched fits: one thread is faster


def write_dataset(folder, model, space, n=2):
    """Images (plain noise) with OpenPose JSON of a posed person; returns {stem: (kind, H_true)}."""
    truth = {}
    rng = np.random.default_rng(0)
    for kind, person, W, Hh, H_true, targets, conf in make_crops(model, space, n=n, seed=5):
        stem = f"{kind}{person}"
        sub = folder / ("crops" if kind != "full" else "people")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (Hh // 4, W // 4, 3), dtype=np.uint8)).resize((W, Hh)).save(
            sub / f"{stem}.jpg")
        px = normalised_to_pixels(targets, W, Hh)
        body = np.concatenate([px[:25], conf[:25, None]], 1)
        lhand, rhand = np.zeros((21, 3)), np.zeros((21, 3))
        for hand, rows in ((lhand, slice(25, 31)), (rhand, slice(31, 37))):
            hand[[0, 4, 8, 12, 16, 20]] = np.concatenate([px[rows], conf[rows, None]], 1)
        doc = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": body.ravel().tolist(),
                                           "hand_left_keypoints_2d": lhand.ravel().tolist(),
                                           "hand_right_keypoints_2d": rhand.ravel().tolist(),
                                           "face_keypoints_2d": []}]}
        (sub / f"{stem}_keypoints.json").write_text(json.dumps(doc))
        truth[f"{sub.name}_{stem}"] = (kind, H_true, W, Hh)
    return truth


def add_bad_inputs(folder):
    (folder / "bad").mkdir()
    (folder / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("RGB", (64, 64)).save(folder / "bad" / "nobody.png")
    (folder / "bad" / "nobody_keypoints.json").write_text('{"people": []}')
    Image.new("RGB", (64, 64)).save(folder / "bad" / "malformed.jpg")
    (folder / "bad" / "malformed_keypoints.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    Image.new("RGB", (64, 64)).save(folder / "bad" / "nojson.jpg")


def test_align_writes_valid_shards_in_the_right_place_and_rejects_bad_images(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space)
    add_bad_inputs(data)
    out = tmp_path / "shards"
    settings = AlignSettings(detector="openpose-json", batch_size=4, smplify=SmplifyConfig(iterations=200))
    summary = align_folder(data, out, "synth", space, toy, settings)
    assert summary.written == len(truth) and summary.rejected == 4
    report = validate_folder(out)
    assert report.ok, report.to_dict()
    rejects = {r["path"]: r["reason"] for r in read_rejects(out)}
    assert "unreadable" in rejects["bad/corrupt.jpg"]
    assert "no person" in rejects["bad/nobody.png"]
    assert "expected 75" in rejects["bad/malformed.jpg"]
    assert "no OpenPose JSON" in rejects["bad/nojson.jpg"]
    metas = {k: json.loads(f["meta.json"]) for shard in complete_shards(out) for k, f in read_shard(shard)}
    for stem, (kind, H_true, W, Hh) in truth.items():
        meta = metas[f"synth/{stem}"]
        err = np.abs(image_region(np.array(meta["H"]), W, Hh) - image_region(H_true, W, Hh)).max()
        assert err < 0.02, (stem, err)
        assert meta["kind"] == kind
        if kind in ("full", "face"):  # 512 px over the whole space vs over 0.12 of it
            assert meta["tier"] == {"full": "LR", "face": "HR"}[kind]
        assert meta["fit"]["visible"] >= 3 and meta["orig"]["path"].endswith(".jpg")

    # A re-run does nothing new; the rejected images are retried (and rejected again).
    again = align_folder(data, out, "synth", space, toy, settings)
    assert again.written == 0 and again.skipped == len(truth) and again.rejected == 4
    assert read_manifest(out).num_rows == len(truth)


def test_parts_are_disjoint_and_cover_the_folder(tmp_path):
    for i in range(20):
        (tmp_path / f"d{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 3}" / f"img{i}.jpg").write_bytes(b"x")
    parts = [set(list_images(tmp_path, (k, 3))) for k in range(3)]
    assert set().union(*parts) == set(list_images(tmp_path)) and sum(map(len, parts)) == 20
    with pytest.raises(ValueError):
        list_images(tmp_path, (3, 3))


def test_cli_align_with_a_body_model_file(tmp_path, toy):
    model_file = tmp_path / "toy.npz"
    write_model_npz(BodyModelData(
        v_template=toy.v_template.numpy(), shapedirs=toy.shapedirs.numpy(),
        posedirs=toy.posedirs.numpy().T.reshape(-1, 3, 207), J_regressor=toy.J_regressor.numpy(),
        weights=toy.lbs_weights.numpy(), parents=np.array(toy.parents), faces=toy.faces,
        extra_vertex_ids=toy.extra_vertex_ids.numpy()), model_file)
    data = tmp_path / "mydata"
    write_dataset(data, toy, default_space(toy), n=1)
    out = tmp_path / "shards"
    args = ["align", str(data), "--out", str(out), "--detector", "openpose-json", "--body-model", str(model_file),
            "--iterations", "120", "--part", "0/1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 aligned" in result.output
    keys = [k for shard in complete_shards(out) for k, _ in read_shard(shard)]
    assert all(k.startswith("mydata/") for k in keys) and len(keys) == 3
    assert validate_folder(out).ok
    bad = CliRunner().invoke(app, ["align", str(data), "--part", "2/2", "--body-model", str(model_file)])
    assert bad.exit_code == 2
