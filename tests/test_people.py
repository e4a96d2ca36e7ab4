"""`mst render-people`: rendered people whose every view has an exact, checkable H.

The renders use the capsule body of test_render_hands (an SMPL-format mesh with rigid skinning),
so each test takes a second or two; the open default model is used by the demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_render_hands import toy_model_data
from typer.testing import CliRunner

from mst_pipeline.body.layout import SMPL_JOINT_NAMES
from mst_pipeline.body.model import BodyModel
from mst_pipeline.body.poses import load_pose_set
from mst_pipeline.body.smpl_file import write_model_npz
from mst_pipeline.cli import app
from mst_pipeline.detect.openpose_json import OpenPoseJsonDetector
from mst_pipeline.space import DEFAULT_FEET, DEFAULT_HEAD_TOP, default_space
from mst_pipeline.synthesis import people, people_plan, people_truth
from uh_train.format.geometry import apply_homography, bilinear_sample, density, scale_translate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = 96


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel(toy_model_data())


@pytest.fixture(scope="module")
def rendered(body, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("people")
    people.render_people(out, n=3, res=RES, model=body, progress=False)
    return out


def person(body, index: int, seed: int = 0):
    space = default_space(body)
    plan = people_plan.plan_person(index, seed, body.num_betas, space.pitch)
    geom = people_plan.pose_person(body, plan, space)
    return plan, geom, people_plan.views(geom, plan, RES)


def coverage_of(body, plan, geom, view) -> np.ndarray:
    return people.render_view(geom, body.faces, plan, view)[1]


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Full-body views


def test_full_render_shows_the_person_standing_in_the_central_strip(body):
    for index in range(3):
        plan, geom, (full, _, _) = person(body, index)
        cov = coverage_of(body, plan, geom, full)
        assert 0.03 < cov.mean() < 0.35
        ys, xs = np.nonzero(cov > 0)
        assert 0.2 * RES < xs.min() and xs.max() < 0.8 * RES
        assert ys.min() < 0.12 * RES and ys.max() > 0.88 * RES  # head at the top, feet at the bottom


def test_every_person_spans_the_mean_bodys_rows_whatever_their_height(body):
    space = default_space(body)
    upright = torch.tensor([[np.pi, 0.0, 0.0]])
    for size in (-3.0, 0.0, 3.0):  # beta 0 scales the capsule body by 3 % per unit
        cam = people_plan.person_camera(body, [size], space)
        with torch.no_grad():
            v = body(betas=torch.tensor([[size]]), global_orient=upright).vertices[0].numpy()
        fb = cam.to_full_body(v)
        assert fb[:, 1].min() == pytest.approx(DEFAULT_HEAD_TOP, abs=1e-5)
        assert fb[:, 1].max() == pytest.approx(DEFAULT_FEET, abs=1e-5)
        assert 0.5 * (fb[:, 0].min() + fb[:, 0].max()) == pytest.approx(0.5, abs=1e-5)
        assert (cam.cam_bar[0] < space.cam_bar[0]) == (size > 0)


def test_rendered_extent_matches_the_projected_mesh_and_joints(body):
    plan, geom, (full, _, _) = person(body, 1)
    cov = coverage_of(body, plan, geom, full)
    ys, xs = np.nonzero(cov > 0)
    used = np.unique(body.faces)
    px = geom.vertices[used, :2] * RES
    np.testing.assert_allclose([xs.min(), ys.min()], px.min(axis=0), atol=1.0)
    np.testing.assert_allclose([xs.max() + 1, ys.max() + 1], px.max(axis=0), atol=1.0)
    # Joints inside the limbs project onto the silhouette.
    core = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # neck, arms, hips, legs of BODY_25
    jx, jy = (geom.body25[core] * RES).astype(int).T
    assert (cov[jy, jx] > 0).all()


def _silhouette_iou(body, plan, geom, full, view, shift=(0.0, 0.0)) -> float:
    """IoU between a view's silhouette and the full image's, read through the view's H."""
    cov_full = coverage_of(body, plan, geom, full)[..., None]
    cov_view = coverage_of(body, plan, geom, view)
    gy, gx = np.mgrid[0:view.height, 0:view.width] + 0.5
    fb = apply_homography(view.H, np.stack([gx, gy], -1)) + np.asarray(shift)
    src = fb * RES - 0.5
    inside = (src >= 0).all(-1) & (src <= RES - 1).all(-1)
    seen = bilinear_sample(cov_full, src[..., 0], src[..., 1])[..., 0] > 0.5
    mine = cov_view > 0.5
    inter = (seen & mine & inside).sum()
    return float(inter / max(1, ((seen | mine) & inside).sum()))


@pytest.mark.parametrize("view_index", [1, 2], ids=["upper", "face"])
def test_partial_view_H_puts_the_body_where_the_full_image_shows_it(body, view_index):
    plan, geom, vs = person(body, 2)
    full, view = vs[0], vs[view_index]
    assert density(view.H, view.width, view.height) > 2.5 * RES
    iou = _silhouette_iou(body, plan, geom, full, view)
    assert iou > 0.92
    # An H off by one full-image pixel no longer lines up: the test sees misalignment.
    assert _silhouette_iou(body, plan, geom, full, view, shift=(0.0, 1.0 / RES)) < iou - 0.08


def test_keypoint_files_are_what_openpose_json_reads_and_agree_through_H(rendered):
    truth = people_truth.read_truth(rendered / "truth.jsonl")
    assert len(truth) == 9
    detect = OpenPoseJsonDetector()
    points = {}
    for view in people_plan.VIEWS:
        path = rendered / view / "person000000.png"
        image = read_rgb(path)
        rec = truth[f"{view}/person000000.png"]
        assert image.shape == (rec["height"], rec["width"], 3)
        (kp,) = detect(image, path)
        inside = kp.body[:, 2] > 0
        assert (kp.body[inside, :2] >= 0).all() and (kp.body[inside, :2] <= image.shape[0]).all()
        points[view] = (apply_homography(rec["H"], kp.body[:, :2]), inside)
    full_xy, full_in = points["full"]
    assert full_in.all()
    for view in ("upper", "face"):
        xy, inside = points[view]
        np.testing.assert_allclose(xy[inside], full_xy[inside], atol=2e-3)
    assert points["face"][1][0] and not points["face"][1][11]  # the face view sees the nose, not the ankle
    assert not points["upper"][1][14]
    assert points["upper"][1][[1, 2, 5]].all()


# ---------------------------------------------------------------------------------------------
# Appearance


def test_clothing_follows_the_dominant_skinning_joint(body):
    plan, geom, _ = person(body, 0)
    mats = people.vertex_materials(geom, plan)
    j = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}

    def of(joint: str) -> set[int]:
        return set(np.unique(mats[geom.dominant == j[joint]]).tolist())

    assert of("spine2") == {people.SHIRT} and of("left_shoulder") == {people.SHIRT}
    assert of("left_hip") == {people.TROUSERS}
    assert of("left_wrist") == {people.SKIN} and of("right_hand") == {people.SKIN}
    head = mats[geom.dominant == j["head"]]
    assert people.HAIR in head and people.SKIN in head
    top = geom.rest[geom.dominant == j["head"], 1].argmax()
    assert head[top] == people.HAIR


def test_people_differ_in_shape_pose_and_colours(body):
    plans = [person(body, i)[0] for i in range(4)]
    assert len({tuple(np.round(p.betas, 6)) for p in plans}) == 4
    assert len({tuple(np.round(p.pose, 6)) for p in plans}) == 4
    assert len({p.colours["shirt"] for p in plans}) == 4


def test_poses_come_from_the_pose_set_when_given(body, tmp_path):
    rng = np.random.default_rng(1)
    poses = rng.normal(0, 0.1, (5, 72))
    np.savez(tmp_path / "poses.npz", pose=poses)
    out = tmp_path / "out"
    people.render_people(out, n=2, res=48, model=body, poses_file=tmp_path / "poses.npz", progress=False)
    pose_set = load_pose_set(tmp_path / "poses.npz")
    for i in range(2):
        plan = people_plan.plan_person(i, 0, body.num_betas, 0.0, pose_set)
        assert min(np.abs(np.asarray(plan.pose) - p).max() for p in poses) < 1e-12


# ---------------------------------------------------------------------------------------------
# Files: determinism, resume, command line


def test_same_seed_same_bytes_other_seed_other_people(body, rendered, tmp_path):
    people.render_people(tmp_path / "a", n=1, res=RES, model=body, progress=False)
    people.render_people(tmp_path / "b", n=1, res=RES, model=body, seed=7, progress=False)
    for view in people_plan.VIEWS:
        name = f"{view}/person000000.png"
        assert (tmp_path / "a" / name).read_bytes() == (rendered / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() != (rendered / name).read_bytes()


def test_rerun_renders_only_what_is_missing(body, tmp_path):
    out = tmp_path / "out"
    first = people.render_people(out, n=2, res=48, model=body, progress=False)
    assert (first.rendered, first.skipped) == (6, 0)
    kept = out / "upper" / "person000000.png"
    stamp = kept.stat().st_mtime_ns
    (out / "face" / "person000001.png").unlink()
    again = people.render_people(out, n=3, res=48, model=body, progress=False)
    assert (again.rendered, again.skipped) == (1 + 3, 5)
    assert kept.stat().st_mtime_ns == stamp
    assert len(people_truth.read_truth(out / "truth.jsonl")) == 9
    assert not list(out.rglob("*.tmp"))


def test_corner_error_measures_how_far_an_H_puts_the_image(tmp_path):
    H = scale_translate(0.01, 0.01, 0.2, 0.1)
    assert people_truth.corner_error(H, H, 50, 50) == 0.0
    assert people_truth.corner_error(scale_translate(0.01, 0.01, 0.23, 0.1), H, 50, 50) == pytest.approx(0.03)
    # 10 % too large: the far corner moves by 0.1 * the image's diagonal extent.
    assert people_truth.corner_error(scale_translate(0.011, 0.011, 0.2, 0.1), H, 50, 50) == pytest.approx(0.05 * 2**0.5)
    truth = {"full/person000000.png": {"H": H, "width": 50, "height": 50}}
    rows = [{"key": "pf/person000000", "source": "pf", "H": scale_translate(0.01, 0.01, 0.2, 0.12).reshape(9)},
            {"key": "other/x", "source": "other", "H": H.reshape(9)}]
    errors = people_truth.truth_errors(truth, rows, {"pf": "full"})
    assert errors == {"pf": [pytest.approx(0.02)]}


def test_command_writes_the_folder_and_rejects_bad_input(tmp_path):
    model = write_model_npz(toy_model_data(), tmp_path / "toy.npz")
    runner = CliRunner()
    out = tmp_path / "people"
    result = runner.invoke(app, ["render-people", str(out), "--n", "1", "--res", "40", "--body-model", str(model)])
    assert result.exit_code == 0, result.output
    assert "rendered 3 images" in result.output
    for view in people_plan.VIEWS:
        assert json.loads((out / view / "person000000_keypoints.json").read_text())["people"]
    result = runner.invoke(app, ["render-people", str(out), "--n", "0", "--body-model", str(model)])
    assert result.exit_code == 1 and "--n must be at least 1" in result.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, pose=np.zeros((3, 10)))
    result = runner.invoke(app, ["render-people", str(out), "--n", "1", "--res", "40", "--body-model", str(model),
                                 "--poses", str(bad)])
    assert result.exit_code == 1 and "expected [N>0, 72]" in result.output


def test_mst_align_on_the_renders_recovers_their_true_H(body, rendered, tmp_path):
    from mst_pipeline.align.folder import align_folder
    from mst_pipeline.align.settings import AlignSettings
    from mst_pipeline.fitting.smplify import SmplifyConfig
    from uh_train.format.manifest import read_manifest

    space = default_space(body)
    settings = AlignSettings(detector="openpose-json", batch_size=8, smplify=SmplifyConfig(iterations=100))
    for view in people_plan.VIEWS:
        summary = align_folder(rendered / view, tmp_path, f"people-{view}", space, body, settings)
        assert summary.written == 3, summary.reasons
    rows = read_manifest(tmp_path).to_pylist()
    errors = people_truth.truth_errors(people_truth.read_truth(rendered / "truth.jsonl"), rows,
                                 {f"people-{view}": view for view in people_plan.VIEWS})
    for source, values in errors.items():
        assert len(values) == 3 and max(values) < 0.05, (source, values)  # shape/camera ambiguity: a few %


def test_full_renders_are_an_aligned_set_and_enter_with_their_true_H(rendered, tmp_path):
    """The full renders are square views of the whole of full-body space: `mst align --aligned`
    stores them as they are, with exactly the H they were rendered with."""
    from mst_pipeline.align.folder import align_folder
    from mst_pipeline.align.settings import AlignSettings
    from mst_pipeline.shards.writer import complete_shards, read_shard
    from uh_train.format.manifest import read_manifest

    summary = align_folder(rendered / "full", tmp_path, "people-full", None, None,
                           AlignSettings(detector="openpose-json", aligned=True))
    assert summary.written == 3 and summary.without_keypoints == 0
    truth = people_truth.read_truth(rendered / "truth.jsonl")
    errors = people_truth.truth_errors(truth, read_manifest(tmp_path).to_pylist(), {"people-full": "full"})
    assert len(errors["people-full"]) == 3 and max(errors["people-full"]) < 1e-8  # truth.jsonl rounds H
    for key, fields in (kv for shard in complete_shards(tmp_path) for kv in read_shard(shard)):
        assert fields["img.png"] == (rendered / "full" / f"{key.split('/')[1]}.png").read_bytes()
