"""`mst render-hands`: geometry, compositing and rendering of synthetic hands in full-body space.

Most tests use a small stick-figure body in the SMPL format (24 joints, rigid skinning, capsule
limbs, five fingers per hand) built here, so they run in seconds; the real renders use Blender's
Cycles on the CPU at 64 px.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image, ImageDraw

from mst_pipeline import space as space_defaults
from mst_pipeline.body import layout
from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from mst_pipeline.body.model import BodyModel
from mst_pipeline.body.poses import load_pose_set
from mst_pipeline.body.smpl_file import BodyModelData, write_model_npz
from mst_pipeline.shards.rejects import read_rejects
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.synthesis import backgrounds, blender, hand_geometry, hands
from uh_train.format.geometry import apply_homography

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# A stick-figure SMPL-format body: T-pose, Y up, metres.

J = {
    "pelvis": (0, 0, 0), "left_hip": (0.09, -0.08, 0), "right_hip": (-0.09, -0.08, 0), "spine1": (0, 0.1, 0),
    "left_knee": (0.1, -0.48, 0), "right_knee": (-0.1, -0.48, 0), "spine2": (0, 0.24, 0),
    "left_ankle": (0.1, -0.88, 0), "right_ankle": (-0.1, -0.88, 0), "spine3": (0, 0.32, 0),
    "left_foot": (0.1, -0.93, 0.1), "right_foot": (-0.1, -0.93, 0.1), "neck": (0, 0.5, 0),
    "left_collar": (0.08, 0.46, 0), "right_collar": (-0.08, 0.46, 0), "head": (0, 0.62, 0),
    "left_shoulder": (0.18, 0.46, 0), "right_shoulder": (-0.18, 0.46, 0), "left_elbow": (0.45, 0.46, 0),
    "right_elbow": (-0.45, 0.46, 0), "left_wrist": (0.7, 0.46, 0), "right_wrist": (-0.7, 0.46, 0),
    "left_hand": (0.78, 0.46, 0), "right_hand": (-0.78, 0.46, 0),
}  # fmt: skip


def _capsule(a, b, r: float) -> trimesh.Trimesh:
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b - a))
    cap = trimesh.creation.capsule(height=max(length, 1e-3), radius=r, count=[8, 8])
    T = trimesh.geometry.align_vectors([0, 0, 1], (b - a) / max(length, 1e-9))
    T[:3, 3] = (a + b) / 2
    cap.apply_transform(T)
    return cap


def toy_model_data() -> BodyModelData:
    names = list(SMPL_JOINT_NAMES)
    joints = np.array([J[n] for n in names], dtype=np.float64)
    parts: list[tuple[trimesh.Trimesh, int]] = []
    for j in range(1, 24):
        p = SMPL_PARENTS[j]
        if names[j] in ("left_hand", "right_hand"):
            continue  # the palm is a box below
        r = 0.06 if "spine" in names[j] or names[j] == "neck" else 0.04
        r = 0.025 if "wrist" in names[j] or "elbow" in names[j] else r
        parts.append((_capsule(joints[p], joints[j], r), p))
    parts.append((trimesh.creation.icosphere(2, radius=0.1).apply_translation(joints[15] + [0, 0.06, 0]), 15))
    tips = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        wrist, hand = joints[names.index(f"{side}_wrist")], joints[names.index(f"{side}_hand")]
        palm = trimesh.creation.box(extents=[0.09, 0.025, 0.08]).apply_translation((wrist + hand) / 2)
        parts.append((palm, names.index(f"{side}_wrist")))
        for k, (dz, length) in enumerate(((0.05, 0.06), (0.03, 0.085), (0.01, 0.09), (-0.01, 0.085), (-0.03, 0.07))):
            base = hand + [0, 0, dz] - ([sign * 0.04, 0, 0] if k == 0 else 0)
            tip = base + [sign * length, 0, 0.02 if k == 0 else 0]
            parts.append((_capsule(base, tip, 0.008), names.index(f"{side}_hand")))
            tips[f"{side[0]}{('thumb', 'index', 'middle', 'ring', 'pinky')[k]}"] = tip
    verts, faces, weights = [], [], []
    offset = 0
    for mesh, joint in parts:
        verts.append(mesh.vertices)
        faces.append(mesh.faces + offset)
        w = np.zeros((len(mesh.vertices), 24))
        w[:, joint] = 1
        weights.append(w)
        offset += len(mesh.vertices)
    # One isolated vertex per joint: the joint regressor reads the joint from it.
    verts.append(joints)
    w = np.zeros((24, 24))
    w[np.arange(24), np.arange(24)] = 1
    weights.append(w)
    V = np.concatenate(verts)
    F = np.concatenate(faces)
    W = np.concatenate(weights)
    joint_ids = np.arange(len(V) - 24, len(V))
    regressor = np.zeros((24, len(V)))
    regressor[np.arange(24), joint_ids] = 1
    head = joints[15] + [0, 0.06, 0]
    targets = {"nose": head + [0, 0, 0.1], "reye": head + [-0.04, 0.03, 0.09], "leye": head + [0.04, 0.03, 0.09],
               "rear": head + [-0.1, 0, 0], "lear": head + [0.1, 0, 0],
               "LBigToe": joints[10] + [0.02, 0, 0.05], "LSmallToe": joints[10] + [0.05, 0, 0.04],
               "LHeel": joints[7] + [0, -0.04, -0.03], "RBigToe": joints[11] + [-0.02, 0, 0.05],
               "RSmallToe": joints[11] + [-0.05, 0, 0.04], "RHeel": joints[8] + [0, -0.04, -0.03], **tips}
    mesh_ids = np.arange(len(V) - 24)
    extra = np.array([mesh_ids[np.argmin(np.linalg.norm(V[mesh_ids] - targets[n], axis=1))]
                      for n in EXTRA_VERTEX_NAMES])
    shapedirs = np.zeros((len(V), 3, 10))
    shapedirs[:, :, 0] = 0.03 * V  # beta 0: overall size
    return BodyModelData(
        v_template=V.astype(np.float32), shapedirs=shapedirs.astype(np.float32),
        posedirs=np.zeros((len(V), 3, 207), np.float32), J_regressor=regressor.astype(np.float32),
        weights=W.astype(np.float32), parents=np.array(SMPL_PARENTS), faces=F.astype(np.int64),
        extra_vertex_ids=extra, attribution="test stick figure",
    )


@pytest.fixture(scope="module")
def toy_model() -> BodyModel:
    return BodyModel(toy_model_data())


@pytest.fixture(scope="module")
def toy_model_file(tmp_path_factory) -> Path:
    return write_model_npz(toy_model_data(), tmp_path_factory.mktemp("model") / "toy.npz")


SETTINGS = hands.RenderSettings(res=64, engine="cycles", samples=4, image_format="png", timeout=120)


def decode(fields: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads(fields["meta.json"])
    img = np.asarray(Image.open(io.BytesIO(fields[f"img.{meta['image']}"])).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(fields["mask.png"])))
    return img, mask, meta


def samples(folder: Path) -> dict[str, dict[str, bytes]]:
    return {key: fields for shard in complete_shards(folder) for key, fields in read_shard(shard)}


# ---------------------------------------------------------------------------------------------
# Geometry (no Blender)


def test_default_space_puts_the_mean_body_in_the_shhq_layout(toy_model):
    space = space_defaults.default_space(toy_model)
    out = toy_model(global_orient=torch.tensor([[np.pi, 0.0, 0.0]]))
    fb = space.to_full_body(out.vertices[0].numpy())
    assert fb[:, 1].min() == pytest.approx(space_defaults.DEFAULT_HEAD_TOP, abs=1e-4)
    assert fb[:, 1].max() == pytest.approx(space_defaults.DEFAULT_FEET, abs=1e-4)
    assert 0.5 * (fb[:, 0].min() + fb[:, 0].max()) == pytest.approx(0.5, abs=1e-4)
    # the head is at the top of the square, the feet at the bottom (y down)
    head, ankle = out.joints[0, 15].numpy(), out.joints[0, 7].numpy()
    assert space.to_full_body(head)[1] < 0.2 < 0.8 < space.to_full_body(ankle)[1]


def test_crop_camera_reproduces_the_crop_through_the_design_homography():
    cam_bar = (1.1, 0.02, -0.3)
    x0, y0, side = 0.61, 0.42, 0.13
    s, tx, ty = space_defaults.crop_camera(cam_bar, x0, y0, side)
    # paper Eq. 2: u_full = (s̄/s) u_part + s̄ (t̄ − t); u in [-1, 1], p = (u + 1) / 2
    for u_part in (np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([0.3, -0.7])):
        u_full = (cam_bar[0] / s) * u_part + cam_bar[0] * (np.array(cam_bar[1:]) - [tx, ty])
        p = (u_full + 1) / 2
        assert p == pytest.approx(np.array([x0, y0]) + side * (u_part + 1) / 2)


def test_curl_moves_fingertips_towards_the_palm_and_leaves_the_palm(toy_model):
    data = toy_model_data()
    V = data.v_template.astype(np.float64)
    hand_w = data.weights[:, 22]
    tips = V[data.extra_vertex_ids[[11, 12, 13, 14, 15]]]
    hand_joint = np.array(J["left_hand"])
    unchanged = hand_geometry.curl_fingers(V, hand_w, hand_joint, tips, "left", [0.0] * 5)
    assert np.array_equal(unchanged, V)
    curled = hand_geometry.curl_fingers(V, hand_w, hand_joint, tips, "left", [1.0] * 5)
    moved = np.linalg.norm(curled - V, axis=1)
    assert moved[data.weights[:, 20] == 1].max() == 0  # the palm (wrist joint) stays
    assert moved[data.weights[:, 0] == 1].max() == 0  # the rest of the body too
    middle_tip = data.extra_vertex_ids[13]
    assert curled[middle_tip, 1] < V[middle_tip, 1] - 0.03  # towards the palm (-y in the T-pose)
    assert curled[middle_tip, 0] < V[middle_tip, 0]  # the finger folds back
    assert np.linalg.norm(curled[middle_tip] - hand_joint) < np.linalg.norm(V[middle_tip] - hand_joint)
    # the right hand (mirrored: fingers along -x) also folds towards its palm
    right_tips = V[data.extra_vertex_ids[[16, 17, 18, 19, 20]]]
    right = hand_geometry.curl_fingers(V, data.weights[:, 23], np.array(J["right_hand"]), right_tips, "right",
                                       [1.0] * 5)
    tip = data.extra_vertex_ids[18]
    assert right[tip, 1] < V[tip, 1] - 0.03 and right[tip, 0] > V[tip, 0]
    # only the curled finger moves
    one = hand_geometry.curl_fingers(V, hand_w, hand_joint, tips, "left", [0, 0, 1, 0, 0])
    assert np.linalg.norm(one[data.extra_vertex_ids[13]] - V[data.extra_vertex_ids[13]]) > 0.03
    for other in (11, 12, 14, 15):
        assert np.array_equal(one[data.extra_vertex_ids[other]], V[data.extra_vertex_ids[other]])


def test_plan_is_deterministic_per_seed_and_index():
    a = hand_geometry.plan_hand(3, 7, 10, 0.0)
    b = hand_geometry.plan_hand(3, 7, 10, 0.0)
    c = hand_geometry.plan_hand(4, 7, 10, 0.0)
    d = hand_geometry.plan_hand(3, 8, 10, 0.0)
    assert a == b
    assert a.pose != c.pose and a.pose != d.pose


def test_posed_hand_lies_at_the_wrist_and_the_crop_contains_it(toy_model):
    space = space_defaults.default_space(toy_model)
    for index in range(6):
        plan = hand_geometry.plan_hand(index, 0, toy_model.num_betas, space.pitch)
        geom = hand_geometry.pose_hand(toy_model, plan, space)
        # the cut-out is the forearm + hand only: every vertex within forearm + hand length of the wrist
        assert np.linalg.norm(geom.vertices[:, :2] - geom.wrist, axis=1).max() < 0.2
        # the wrist agrees with the full body's BODY_25 wrist (slot 7 = LWrist, 4 = RWrist)
        slot = 7 if plan.side == "left" else 4
        assert geom.body25[slot] == pytest.approx(geom.wrist, abs=1e-6)
        x0, y0, side = hand_geometry.hand_crop(geom, plan)
        inside = ((geom.hand_points >= [x0, y0]) & (geom.hand_points <= [x0 + side, y0 + side])).all(axis=1)
        assert inside.mean() > 0.9


def test_space_file_and_pose_set_are_used(toy_model, tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"cam_bar": [1.2, 0.01, 0.3], "pitch": 0.1}))
    space = space_defaults.load_space(tmp_path / "space.json", toy_model)
    assert space.cam_bar == (1.2, 0.01, 0.3) and space.pitch == 0.1
    rng = np.random.default_rng(0)
    pose_set = rng.normal(0, 0.2, (3, 72))
    np.savez(tmp_path / "poses.npz", global_orient=pose_set[:, :3], body_pose=pose_set[:, 3:],
             betas=rng.normal(size=(3, 10)))
    poses = load_pose_set(tmp_path / "poses.npz")
    plan = hand_geometry.plan_hand(0, 0, 10, space.pitch, poses)
    k = int(np.argmin(np.abs(pose_set[:, :3] - np.asarray(plan.pose)[:3]).sum(axis=1)))
    wrist = layout.ARM_JOINTS[plan.side]["wrist"]
    others = np.ones(72, bool)
    others[3 * wrist: 3 * wrist + 3] = False
    assert np.allclose(np.asarray(plan.pose)[others], pose_set[k][others])  # only the wrist is varied
    assert np.allclose(plan.betas, poses["betas"][k])
    np.savez(tmp_path / "bad.npz", pose=np.zeros((2, 69)))
    with pytest.raises(ValueError, match="72"):
        load_pose_set(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="does not exist"):
        load_pose_set(tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_pose_set(tmp_path / "corrupt.npz")


def test_fabric_backgrounds_are_deterministic_and_varied():
    a = backgrounds.fabric_background(64, np.random.default_rng(1))
    b = backgrounds.fabric_background(64, np.random.default_rng(1))
    c = backgrounds.fabric_background(64, np.random.default_rng(2))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 2  # texture, not a flat colour


def test_composite_uses_the_alpha_as_mask():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[1:3, 1:3, 3] = 255
    rgba[0, 0, 3] = 128
    bg = np.full((4, 4, 3), 10, np.uint8)
    img, mask = backgrounds.composite(rgba, bg)
    assert np.array_equal(mask, rgba[..., 3])
    assert img[1, 1].tolist() == [200, 0, 0] and img[3, 3].tolist() == [10, 10, 10]
    assert img[0, 0, 0] == round(200 * 128 / 255 + 10 * 127 / 255)


# ---------------------------------------------------------------------------------------------
# Rendering with Blender (Cycles, CPU, 64 px)


@pytest.fixture(scope="module")
def rendered(toy_model, tmp_path_factory) -> tuple[Path, hands.RunSummary]:
    out = tmp_path_factory.mktemp("hands")
    summary = hands.render_hands(out, n=4, seed=0, settings=SETTINGS, model=toy_model, progress=False)
    return out, summary


def test_render_writes_valid_shards_with_visible_hands(rendered):
    out, summary = rendered
    assert summary.rendered == 4 and summary.rejected == 0
    report = validate_folder(out)
    assert report.ok, report.defects
    for key, fields in samples(out).items():
        img, mask, meta = decode(fields)
        assert meta["kind"] == "hand" and meta["has_mask"] and img.shape == (64, 64, 3)
        coverage = (mask > 127).mean()
        assert 0.02 < coverage < 0.9, (key, coverage)
        # the mask is the hand: inside it the image is skin, not the background
        assert mask.max() == 255 and mask.min() == 0


def test_hand_centroid_maps_through_H_next_to_the_posed_wrist(rendered, toy_model):
    out, _ = rendered
    space = space_defaults.default_space(toy_model)
    for key, fields in samples(out).items():
        _, mask, meta = decode(fields)
        H = np.asarray(meta["H"])
        ys, xs = np.nonzero(mask > 127)
        centroid = apply_homography(H, np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]))[0]
        index = int(key.split("hand")[-1])
        plan = hand_geometry.plan_hand(index, 0, toy_model.num_betas, space.pitch)
        geom = hand_geometry.pose_hand(toy_model, plan, space)
        side = meta["render"]["side"]
        wrist = np.asarray(meta["keypoints"]["lhand" if side == "left" else "rhand"])[0, :2]
        assert wrist == pytest.approx(geom.wrist, abs=1e-9)
        # hand + visible forearm: the centroid is within a hand length (about 0.06 units) of the wrist
        assert np.linalg.norm(centroid - geom.wrist) < 0.06, key
        # exactness: the rendered silhouette is the mesh projected through H^-1 (IoU of the masks)
        projected = rasterise(apply_homography(np.linalg.inv(H), geom.vertices[:, :2]), geom.faces, 64)
        rendered_mask = mask > 127
        iou = (projected & rendered_mask).sum() / (projected | rendered_mask).sum()
        assert iou > 0.9, (key, iou)


def rasterise(points: np.ndarray, faces: np.ndarray, size: int, ss: int = 4) -> np.ndarray:
    """Boolean [size, size] coverage of triangles given in pixel coordinates (centres at +0.5)."""
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for tri in points[faces] * ss:
        draw.polygon([tuple(p) for p in tri], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) > 127


def test_same_seed_and_index_give_identical_bytes(rendered, toy_model, tmp_path):
    out, _ = rendered
    again = tmp_path / "again"
    hands.render_hands(again, n=2, seed=0, settings=SETTINGS, model=toy_model, progress=False)
    first, second = samples(out), samples(again)
    for key in second:
        assert first[key]["img.png"] == second[key]["img.png"]
        assert first[key]["mask.png"] == second[key]["mask.png"]
    other = tmp_path / "other"
    hands.render_hands(other, n=1, seed=1, settings=SETTINGS, model=toy_model, progress=False)
    assert samples(other)["hands/hand000000"]["img.png"] != first["hands/hand000000"]["img.png"]


def test_a_crashing_render_goes_to_rejects_and_the_run_goes_on(toy_model, tmp_path):
    # Wrap the real worker and kill it (as a Blender segfault would) on the job of index 1.
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys
        real = subprocess.Popen([sys.executable, {str(blender.SCRIPT)!r}, "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        for line in sys.stdin:
            if json.loads(line)["mesh"].endswith("hand000001.npz"):
                real.kill()
                os._exit(139)
            real.stdin.write(line)
            real.stdin.flush()
            sys.stdout.write(real.stdout.readline())
            sys.stdout.flush()
        """))
    out = tmp_path / "out"
    summary = hands.render_hands(out, n=3, seed=0, settings=SETTINGS, model=toy_model, progress=False,
                                 worker_command=[sys.executable, str(wrapper)])
    assert summary.rendered == 2 and summary.rejected == 1
    rejects = read_rejects(out)
    assert [r["key"] for r in rejects] == ["hands/hand000001"]
    assert "exited with code 139" in rejects[0]["error"]
    assert sorted(samples(out)) == ["hands/hand000000", "hands/hand000002"]
    assert validate_folder(out).ok


def test_an_unreadable_texture_rejects_only_the_hands_that_use_it(toy_model, tmp_path):
    textures = tmp_path / "textures"
    textures.mkdir()
    Image.fromarray(np.full((16, 16, 3), (200, 150, 120), np.uint8)).save(textures / "good.png")
    (textures / "broken.png").write_bytes(b"not a png")
    files = backgrounds.list_photos(textures)
    plans = [hand_geometry.plan_hand(i, 0, toy_model.num_betas, 0.0, textures=files) for i in range(4)]
    broken = {f"hands/hand{p.index:06d}" for p in plans if p.texture.endswith("broken.png")}
    assert 0 < len(broken) < 4  # this seed picks both files
    out = tmp_path / "out"
    summary = hands.render_hands(out, n=4, seed=0, settings=SETTINGS, model=toy_model, progress=False,
                                 textures=textures)
    assert {r["key"] for r in read_rejects(out)} == broken
    assert all("cannot read image" in r["error"] for r in read_rejects(out))
    assert set(samples(out)) == {f"hands/hand{i:06d}" for i in range(4)} - broken
    assert summary.rendered == 4 - len(broken)


def test_resume_after_an_interrupted_run(toy_model_file, tmp_path):
    # The first run renders through a stand-in Blender executable (called the way `--blender`
    # calls Blender) that hangs on index 2, so the run is killed with exactly two samples done.
    hanging = tmp_path / "blender"
    hanging.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, subprocess, sys, time
        assert sys.argv[1:3] == ["-b", "--factory-startup"] and sys.argv[-2:] == ["--", "--serve"]
        real = subprocess.Popen([sys.executable, {str(blender.SCRIPT)!r}, "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        for line in sys.stdin:
            if json.loads(line)["mesh"].endswith("hand000002.npz"):
                time.sleep(3600)
            real.stdin.write(line)
            sys.stdout.write(real.stdout.readline())
            sys.stdout.flush()
        """))
    hanging.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", "from mst_pipeline.cli import main; main()", "render-hands", "--out", str(out),
           "--n", "4", "--res", "64", "--engine", "cycles", "--samples", "4", "--format", "png", "--max-count", "1",
           "--body-model", str(toy_model_file)]
    proc = subprocess.Popen([*cmd, "--blender", str(hanging)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(complete_shards(out)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, render workers included
    proc.wait()
    assert sorted(samples(out)) == ["hands/hand000000", "hands/hand000001"]
    assert len(list(out.glob(".render-hands-*"))) == 1  # the killed run's scratch folder stays inside OUT
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rendered 2, skipped 2" in resumed.stderr
    assert sorted(samples(out)) == [f"hands/hand{i:06d}" for i in range(4)]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".render-hands-*"))  # the re-run removed it
    assert validate_folder(out).ok


def test_open_default_model_hands_land_at_the_wrist(tmp_path, open_model):
    """The same checks on the project's open default body model, its fingers posed from a hand
    pose set (half-curled fingers)."""
    model = open_model
    space = space_defaults.default_space(model)
    out = tmp_path / "open"
    poses = tmp_path / "hand_poses.npz"
    angles = np.zeros((1, 15, 3), np.float32)
    angles[0, :, 0] = 0.7
    np.savez(poses, format=np.array("unitedhuman-hand-poses/1"), angles=angles)
    summary = hands.render_hands(out, n=2, seed=0, settings=SETTINGS, model=model, hand_poses_file=poses,
                                 progress=False)
    assert summary.rendered == 2, read_rejects(out)
    assert validate_folder(out).ok
    for key, fields in samples(out).items():
        _, mask, meta = decode(fields)
        assert meta["render"]["fingers"] == "fitted" and meta["render"]["finger_pose"] == 0
        hand = np.asarray(meta["keypoints"]["lhand" if meta["render"]["side"] == "left" else "rhand"])
        assert (hand[:, 2] > 0).sum() >= 15  # all 21 OpenPose hand points are known (most in view)
        assert 0.02 < (mask > 127).mean() < 0.9
        ys, xs = np.nonzero(mask > 127)
        centroid = apply_homography(np.asarray(meta["H"]), np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]))[0]
        plan = hand_geometry.plan_hand(int(key[-6:]), 0, model.num_betas, space.pitch)
        geom = hand_geometry.pose_hand(model, plan, space)
        assert np.linalg.norm(centroid - geom.wrist) < 0.06, key


# ---------------------------------------------------------------------------------------------
# Composites onto real patches (paper App. A: the composite is the training image)


def test_composite_over_a_real_patch_puts_the_whole_patch_in_the_mask():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3] = [200, 150, 120, 255]
    bg = np.full((4, 4, 3), 10, np.uint8)
    real = np.full((4, 4), 255, np.uint8)
    real[3, 3] = 0  # e.g. a shard sample's padding: not real, no hand over it
    img, mask = backgrounds.composite(rgba, bg, real)
    background = rgba[..., 3] == 0
    assert np.all(img[background] == 10)
    assert np.all(mask[background & (real == 255)] == 255)  # the background's pixels are real data
    assert mask[3, 3] == 0 and np.all(mask[1:3, 1:3] == 255)


def upper_shard(folder: Path, w: int = 256, h: int = 200, dens: float = 800.0) -> Path:
    """One aligned upper-body sample: red = its x coordinate, a mask with 20-px stripes of padding."""
    from mst_pipeline.shards.writer import ShardWriter, encode_sample
    from uh_train.format.geometry import image_region, scale_translate

    from shard_helpers import sample_fields

    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None]
    img[..., 2] = 200
    mask = np.where((np.arange(h)[:, None] // 20) % 2 == 0, 255, 0).repeat(w, axis=1).astype(np.uint8)
    fields = sample_fields(w, h, kind="upper")
    H = scale_translate(1 / dens, 1 / dens, 0.3, 0.2)
    fields.update(H=H, region=image_region(H, w, h), density=dens, tier="HR")
    with ShardWriter(folder, "df", max_count=10) as writer:
        writer.write(encode_sample("df", "person0", img, fields, mask=mask, ext="png"))
    return folder


def test_shard_backgrounds_are_cut_at_the_hands_scale_and_keep_the_sample_mask(tmp_path):
    bgs = backgrounds.find_backgrounds(upper_shard(tmp_path / "df"))
    assert len(bgs.items) == 1
    rgb, real = bgs.patch(bgs.items[0], side=0.1, res=64, rng=np.random.default_rng(0))
    assert rgb.shape == (64, 64, 3) and real.shape == (64, 64)
    # 0.1 full-body units at 800 px per unit: an 80-px patch, so red spans ~80 levels
    assert 74 <= int(rgb[..., 0].max()) - int(rgb[..., 0].min()) <= 82
    assert (real == 0).any() and (real == 255).any()  # the padding stripes stay out of the mask
    with pytest.raises(ValueError, match="no upper samples"):
        from mst_pipeline.shards.writer import ShardWriter

        from shard_helpers import valid_sample

        with ShardWriter(tmp_path / "full", "src", max_count=10) as writer:
            writer.write(valid_sample())
        backgrounds.find_backgrounds(tmp_path / "full")


def test_render_onto_photos_masks_the_whole_composite(toy_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (120, 160), (20, 40, 220)).save(photos / "person.png")
    out = tmp_path / "out"
    summary = hands.render_hands(out, n=2, seed=0, settings=SETTINGS, model=toy_model, backgrounds=photos,
                                 progress=False)
    assert summary.rendered == 2, read_rejects(out)
    assert validate_folder(out).ok
    for key, fields in samples(out).items():
        img, mask, meta = decode(fields)
        background = np.all(np.abs(img.astype(int) - [20, 40, 220]) <= 2, axis=-1)
        assert background.mean() > 0.1, key  # the photo shows around the hand
        assert np.all(mask[background] == 255), key  # ... and those pixels are training data
        assert np.all(mask == 255)
        assert meta["render"]["background"] == "person.png"


# ---------------------------------------------------------------------------------------------
# Fingers posed from fitted hand keypoints


def test_hand_poses_need_a_finger_skeleton(toy_model, tmp_path):
    path = tmp_path / "hp.npz"
    np.savez(path, format=np.array("unitedhuman-hand-poses/1"), angles=np.zeros((1, 15, 3), np.float32))
    with pytest.raises(ValueError, match="finger skeleton"):
        hands.render_hands(tmp_path / "out", n=1, settings=SETTINGS, model=toy_model, hand_poses_file=path,
                           progress=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, angles=np.zeros((1, 15, 3)))
    with pytest.raises(ValueError, match="not a hand pose set"):
        hands.render_hands(tmp_path / "out", n=1, settings=SETTINGS, model=toy_model, hand_poses_file=bad,
                           progress=False)


def test_fit_hands_poses_the_rendered_fingers(open_model, tmp_path):
    """`mst fit-hands` on shards whose hand keypoints come from a hand posed with known finger
    angles; render-hands then poses the open model's fingers with the fitted angles."""
    from mst_pipeline.body.fingers import articulate_np, finger_rigs, project
    from mst_pipeline.fitting.hand_poses import fit_hand_poses, load_hand_poses
    from mst_pipeline.shards.writer import ShardWriter, encode_sample

    from shard_helpers import sample_fields

    rigs = finger_rigs(open_model)
    V = open_model.v_template.numpy().astype(np.float64)
    truth = np.zeros((15, 3))
    truth[3:15, 0] = 1.0  # four fingers curled, thumb straight
    _, kp3 = articulate_np(V, rigs["right"], truth)
    uv = project(torch.as_tensor(kp3)[None], torch.tensor([[0.0, 0.0, 1.2]], dtype=torch.float64),
                 torch.tensor([np.log(0.6)], dtype=torch.float64),
                 torch.tensor([[0.3, 0.5]], dtype=torch.float64))[0].numpy()
    fields = sample_fields(16, 32)
    fields["keypoints"]["rhand"] = np.concatenate([uv, np.ones((21, 1))], axis=1)
    fields["keypoints"]["lhand"] = np.zeros((21, 3))  # not detected: skipped
    with ShardWriter(tmp_path / "full", "shhq", max_count=10) as writer:
        writer.write(encode_sample("shhq", "a", np.zeros((32, 16, 3), np.uint8), fields, ext="png"))
    with ShardWriter(tmp_path / "full", "hands", max_count=10) as writer:  # our own renders are not data
        writer.write(encode_sample("hands", "b", np.zeros((32, 16, 3), np.uint8), fields, ext="png"))
    out = tmp_path / "hand_poses.npz"
    counts = fit_hand_poses([tmp_path / "full"], out, open_model, rigs, iterations=200)
    assert counts == {"hands": 1, "kept": 1, "dropped": 0}
    angles = load_hand_poses(out)
    assert angles.shape == (1, 15, 3)
    assert angles[0, 3:15, 0].mean() > 0.5  # curled fingers were fitted as flexed
    # render-hands' geometry: the plan carries the fitted angles; all 21 keypoints are posed
    space = space_defaults.default_space(open_model)
    plan = hand_geometry.plan_hand(0, 0, open_model.num_betas, space.pitch, hand_poses=angles)
    assert plan.fingers is not None and plan.finger_source == 0
    geom = hand_geometry.pose_hand(open_model, plan, space, rigs)
    assert geom.hand_slots == tuple(range(21)) and geom.hand_keypoints.shape == (21, 2)
    straight_plan = hand_geometry.HandPlan(**{**plan.__dict__, "fingers": [0.0] * 45})
    straight = hand_geometry.pose_hand(open_model, straight_plan, space, rigs)
    hand_len = np.linalg.norm(straight.hand_keypoints[12] - straight.hand_keypoints[0])
    # curled fingertips end nearer the wrist than straight ones
    tip_dist = np.linalg.norm(geom.hand_keypoints[[8, 12, 16, 20]] - geom.hand_keypoints[0], axis=1)
    assert np.all(tip_dist < 0.9 * hand_len), (tip_dist, hand_len)
    assert np.allclose(geom.wrist, straight.wrist, atol=1e-4)  # the fingers bend beyond the wrist


def test_fit_hands_names_a_missing_folder_and_one_without_shards(tmp_path):
    from mst_pipeline.fitting.hand_poses import collect_hand_keypoints

    with pytest.raises(ValueError, match="is not a folder"):
        collect_hand_keypoints([tmp_path / "missing"])
    with pytest.raises(ValueError, match="holds no shards"):
        collect_hand_keypoints([tmp_path])
