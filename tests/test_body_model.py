"""Body models: SMPL files without chumpy, `mst body-model`, and the open default model's anatomy."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mst_pipeline.body import BODY_MODEL_ENV, load_body_model
from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from mst_pipeline.body.model import BodyModel
from mst_pipeline.body.open_model import bone_to_joint, skin_with_global_rotations, tpose_rotations
from mst_pipeline.body.smpl_file import BodyModelError, import_model, read_model_file
from mst_pipeline.cli import app

J = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}


# ---------------------------------------------------------------------------------------------
# A small SMPL-format file in the official layout, chumpy objects included, written without chumpy


def _smpl_arrays(rng: np.random.Generator, V: int = 40) -> dict[str, np.ndarray]:
    weights = rng.random((V, 24))
    weights /= weights.sum(1, keepdims=True)
    J_reg = np.zeros((24, V))
    J_reg[np.arange(24), rng.choice(V, 24, replace=False)] = 1.0
    return {
        "v_template": rng.normal(0, 0.3, (V, 3)), "shapedirs": rng.normal(0, 0.01, (V, 3, 10)),
        "posedirs": rng.normal(0, 0.001, (V, 3, 207)), "J_regressor": J_reg, "weights": weights,
        "kintree_table": np.stack([np.array([2**32 - 1] + list(SMPL_PARENTS[1:]), dtype=np.uint32),
                                   np.arange(24, dtype=np.uint32)]),
        "f": rng.integers(0, V, (30, 3)).astype(np.uint32),
    }


def write_chumpy_style_pickle(path, arrays: dict[str, np.ndarray]) -> None:
    """Pickle like the official SMPL files: shapedirs as a chumpy ``Ch`` (its value in ``x``),
    J_regressor as a scipy csc matrix. A stand-in `chumpy.ch` module exists only while dumping."""
    import scipy.sparse

    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    package.ch = module

    class Ch:
        pass

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        d = dict(arrays)
        ch = Ch()
        ch.__dict__ = {"x": d["shapedirs"], "_depends_on_deps": {}}
        d["shapedirs"] = ch
        d["J_regressor"] = scipy.sparse.csc_matrix(d["J_regressor"])
        d["bs_style"] = "lbs"
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_chumpy_pickle_reads_without_chumpy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = _smpl_arrays(rng)
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_chumpy_style_pickle(path, arrays)
    assert b"chumpy.ch" in path.read_bytes()
    with pytest.raises(ImportError):
        __import__("chumpy")
    data = read_model_file(path)
    np.testing.assert_allclose(data.shapedirs, arrays["shapedirs"], rtol=1e-6)
    np.testing.assert_allclose(data.J_regressor, arrays["J_regressor"])
    np.testing.assert_array_equal(data.parents, [-1] + list(SMPL_PARENTS[1:]))
    assert data.num_betas == 10 and data.faces.dtype == np.int64


def test_cli_import_writes_a_clean_npz_that_loads(tmp_path):
    rng = np.random.default_rng(1)
    arrays = _smpl_arrays(rng)
    src, out = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", tmp_path / "smpl.npz"
    write_chumpy_style_pickle(src, arrays)
    res = CliRunner().invoke(app, ["body-model", "import", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    with np.load(out, allow_pickle=False) as z:  # no object arrays: loads without pickle
        np.testing.assert_allclose(z["v_template"], arrays["v_template"], rtol=1e-6)
        assert "Max Planck" in str(z["attribution"])
    again = read_model_file(out)
    np.testing.assert_allclose(again.weights, arrays["weights"], rtol=1e-6)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(BodyModelError, match="refusing"):
        read_model_file(path)
    assert not marker.exists()


def test_wrong_files_name_what_is_missing(tmp_path):
    arrays = _smpl_arrays(np.random.default_rng(2))
    del arrays["weights"], arrays["J_regressor"]
    p = tmp_path / "partial.npz"
    np.savez(p, **arrays)
    with pytest.raises(BodyModelError, match="'J_regressor', 'weights'"):
        read_model_file(p)
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BodyModelError, match="not a readable .npz"):
        read_model_file(bad)
    with pytest.raises(BodyModelError, match="does not exist"):
        read_model_file(tmp_path / "missing.pkl")
    res = CliRunner().invoke(app, ["body-model", "import", str(p), "--out", str(tmp_path / "o.npz")])
    assert res.exit_code == 1 and "weights" in res.output
    assert not (tmp_path / "o.npz").exists()


def test_environment_variable_names_the_users_model(tmp_path, monkeypatch):
    arrays = _smpl_arrays(np.random.default_rng(3), V=6890)
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    write_chumpy_style_pickle(src, arrays)
    import_model(src, tmp_path / "smpl.npz")
    monkeypatch.setenv(BODY_MODEL_ENV, str(tmp_path / "smpl.npz"))
    model = load_body_model()
    assert model.num_vertices == 6890  # the standard SMPL mesh gets smplx's OpenPose vertex ids
    np.testing.assert_allclose(model.v_template.numpy(), arrays["v_template"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The open default model


def test_every_anny_bone_maps_to_a_plausible_smpl_joint():
    assert SMPL_JOINT_NAMES[bone_to_joint("upperarm02.L")] == "left_shoulder"
    assert SMPL_JOINT_NAMES[bone_to_joint("finger2-3.R")] == "right_hand"
    assert SMPL_JOINT_NAMES[bone_to_joint("metacarpal4.L")] == "left_wrist"
    assert SMPL_JOINT_NAMES[bone_to_joint("toe5-2.R")] == "right_foot"
    assert SMPL_JOINT_NAMES[bone_to_joint("neck03")] == "neck"
    with pytest.raises(BodyModelError):
        bone_to_joint("tail01")


def test_tpose_rotations_straighten_a_bent_arm_with_the_palm_down():
    joints = np.zeros((1, 24, 3))
    for side, s in (("left", 1), ("right", -1)):  # an arm hanging down, elbow bent forwards
        joints[0, J[f"{side}_shoulder"]] = (s * 0.2, 0.4, 0)
        joints[0, J[f"{side}_elbow"]] = (s * 0.25, 0.1, 0)
        joints[0, J[f"{side}_wrist"]] = (s * 0.25, -0.1, 0.2)
        joints[0, J[f"{side}_hand"]] = (s * 0.25, -0.15, 0.28)
    palms = np.array([[[-1.0, 0, 0], [1.0, 0, 0]]])  # facing the body
    G = tpose_rotations(joints, palms)
    weights = np.eye(24)
    _, posed = skin_with_global_rotations(joints, joints, weights, G)
    for side, s in (("left", 1), ("right", -1)):
        chain = posed[0, [J[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist", "hand")]]
        d = np.diff(chain, axis=0)
        np.testing.assert_allclose(d[:, 1:], 0, atol=1e-9)  # straight along X
        assert np.all(s * d[:, 0] > 0)
        palm = G[0, J[f"{side}_wrist"]] @ palms[0, 0 if side == "left" else 1]
        np.testing.assert_allclose(palm, [0, -1, 0], atol=1e-9)
    # bone lengths are kept
    np.testing.assert_allclose(np.linalg.norm(np.diff(posed[0, [16, 18, 20, 22]], axis=0), axis=1),
                               np.linalg.norm(np.diff(joints[0, [16, 18, 20, 22]], axis=0), axis=1))


def test_open_model_zero_pose_is_the_rest_mesh(open_model):
    out = open_model()
    np.testing.assert_allclose(out.vertices[0].numpy(), open_model.v_template.numpy(), atol=1e-6)
    rest = (open_model.J_regressor @ open_model.v_template).numpy()
    np.testing.assert_allclose(out.joints[0, :24].numpy(), rest, atol=1e-5)


def test_open_model_anatomy(open_model):
    j = open_model().joints[0].numpy()
    y = j[:, 1]
    assert y[J["head"]] > y[J["neck"]] > y[J["spine3"]] > y[J["pelvis"]] > y[J["left_knee"]] > y[J["left_ankle"]]
    for name in SMPL_JOINT_NAMES:  # SMPL's left side on +x
        if name.startswith("left_"):
            assert j[J[name], 0] > 0.03 and j[J[name.replace("left", "right")], 0] < -0.03, name
    # T-pose: the arms are horizontal, spread along x
    arm = j[[J["left_shoulder"], J["left_elbow"], J["left_wrist"]]]
    assert np.ptp(arm[:, 1]) < 0.02 and arm[2, 0] - arm[0, 0] > 0.4
    # facing +z: nose and toes in front, heels behind
    e = {n: j[24 + i] for i, n in enumerate(EXTRA_VERTEX_NAMES)}
    assert e["nose"][2] > j[J["head"], 2] + 0.05
    assert e["LBigToe"][2] > j[J["left_ankle"], 2] + 0.1 > e["LHeel"][2] + 0.1
    assert e["leye"][0] > 0 > e["reye"][0] and e["leye"][1] > e["nose"][1]
    assert e["lear"][0] > e["leye"][0] and e["LSmallToe"][0] > e["LBigToe"][0]
    assert all(e[f"l{f}"][0] > j[J["left_wrist"], 0] for f in ("thumb", "index", "middle", "ring", "pinky"))
    # the pelvis sits where SMPL's template puts its root, between the hips
    np.testing.assert_allclose(j[J["pelvis"]], [0.0, -0.24, 0.03], atol=0.01)
    assert y[J["left_hip"]] < y[J["pelvis"]]


def test_open_model_height_is_human_and_grows_with_beta0(open_model):
    heights = []
    for b in np.linspace(-2, 2, 9):
        betas = torch.zeros(1, open_model.num_betas)
        betas[0, 0] = float(b)
        v = open_model(betas=betas).vertices[0]
        heights.append(float(v[:, 1].max() - v[:, 1].min()))
    assert 1.55 < heights[4] < 1.90
    assert np.all(np.diff(heights) > 0.01)
    assert 1.3 < heights[0] and heights[-1] < 2.2
    # joints follow shape: the regressed head rises with height
    lo, hi = (open_model(betas=torch.tensor([[b] + [0.0] * 9])).joints[0, J["head"], 1] for b in (-2.0, 2.0))
    assert float(hi - lo) > 0.2


def test_open_model_skinning_weights_and_regressor(open_model):
    w = open_model.lbs_weights.numpy()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert w.min() >= 0
    reg = open_model.J_regressor.numpy()
    np.testing.assert_allclose(reg.sum(1), 1.0, atol=1e-5)
    assert reg.min() >= 0 and (reg > 0).sum(1).max() < 400  # sparse
    assert not open_model.posedirs.any()


def test_bending_the_left_elbow_moves_the_hand_and_not_the_feet(open_model):
    pose = torch.zeros(1, 23, 3)
    pose[0, J["left_elbow"] - 1, 1] = -np.pi / 2  # about y: the forearm turns forwards
    rest, bent = open_model(), open_model(body_pose=pose)
    moved = (bent.vertices - rest.vertices).norm(dim=-1)[0].numpy()
    w = open_model.lbs_weights.numpy()
    hand = w[:, [J["left_wrist"], J["left_hand"]]].sum(1) > 0.9
    feet = w[:, [J[n] for n in ("left_ankle", "right_ankle", "left_foot", "right_foot")]].sum(1) > 0.5
    upper_arm = w[:, J["left_shoulder"]] > 0.9
    assert hand.sum() > 100 and moved[hand].min() > 0.1
    assert moved[feet].max() < 1e-6 and moved[upper_arm].max() < 0.05
    wrist = bent.joints[0, J["left_wrist"]] - bent.joints[0, J["left_elbow"]]
    assert float(wrist[2]) > 0.2 and abs(float(wrist[0])) < 0.03  # the forearm now points forwards


def test_open_model_loads_through_smplx(open_model):
    pytest.importorskip("smplx")
    ref = open_model.to_smplx()
    g = torch.Generator().manual_seed(0)
    betas, pose = torch.randn(2, 10, generator=g), 0.3 * torch.randn(2, 69, generator=g)
    orient = 0.3 * torch.randn(2, 3, generator=g)
    ours = open_model(betas=betas, global_orient=orient, body_pose=pose)
    theirs = ref(betas=betas, global_orient=orient, body_pose=pose)
    np.testing.assert_allclose(theirs.vertices.detach().numpy(), ours.vertices.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(theirs.joints[:, :24].detach().numpy(), ours.joints[:, :24].numpy(), atol=1e-4)


def test_cli_build_open_prints_its_path_and_the_file_is_a_model(tmp_path):
    out = tmp_path / "open.npz"
    res = CliRunner().invoke(app, ["body-model", "build-open", "--out", str(out), "--samples", "24"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(out)
    model = BodyModel.from_file(out)
    assert model.num_betas == 10 and len(model.parents) == 24
    assert "CC0" in model.attribution


def test_joint_model_gives_the_same_joints_from_far_fewer_vertices(open_model):
    reduced = open_model.joint_model()
    assert reduced.num_vertices < open_model.num_vertices / 2
    assert open_model.joint_model() is reduced  # cached
    assert not any(k.startswith("_joint") for k in open_model.state_dict())
    g = torch.Generator().manual_seed(1)
    kw = {"betas": torch.randn(3, 10, generator=g), "global_orient": 0.5 * torch.randn(3, 3, generator=g),
          "body_pose": 0.4 * torch.randn(3, 69, generator=g), "transl": torch.randn(3, 3, generator=g)}
    full, small = open_model(**kw), reduced(**kw)
    np.testing.assert_allclose(small.joints.numpy(), full.joints.numpy(), atol=1e-5)
    np.testing.assert_allclose(small.body25.numpy(), full.body25.numpy(), atol=1e-5)


def test_skinning_is_smplx_lbs_on_the_models_arrays():
    """The body model's forward pass is smplx's `lbs` (no skinning code of our own): bit for bit
    the same vertices and joints as a direct call on the same arrays, rest joints included."""
    import smplx.lbs

    from mst_pipeline.body import lbs as ours

    assert ours.blend_shapes is smplx.lbs.blend_shapes and ours.vertices2joints is smplx.lbs.vertices2joints
    assert ours.batch_rodrigues is smplx.lbs.batch_rodrigues
    from test_render_hands import toy_model_data

    model = BodyModel(toy_model_data())
    g = torch.Generator().manual_seed(1)
    betas = torch.randn(3, model.num_betas, generator=g)
    orient, pose = torch.randn(3, 3, generator=g), torch.randn(3, 69, generator=g)
    out = model(betas=betas, global_orient=orient, body_pose=pose)
    parents = torch.as_tensor(model.parents, dtype=torch.long)
    verts, joints = smplx.lbs.lbs(betas, torch.cat([orient, pose], 1), model.v_template, model.shapedirs,
                                  model.posedirs, model.J_regressor, parents, model.lbs_weights)
    assert torch.equal(out.vertices, verts) and torch.equal(out.joints[:, :24], joints)
    rest = smplx.lbs.vertices2joints(model.J_regressor,
                                     model.v_template + smplx.lbs.blend_shapes(betas, model.shapedirs))
    assert torch.equal(out.rest_joints, rest)
    posed, transforms = ours.batch_rigid_transform(smplx.lbs.batch_rodrigues(torch.cat([orient, pose], 1).view(-1, 3))
                                                   .view(3, 24, 3, 3), rest, model.parents)
    assert torch.equal(posed, joints) and transforms.shape == (3, 24, 4, 4)

