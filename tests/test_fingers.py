"""Finger rigs and fitting finger poses to 2D hand keypoints (mst_pipeline.body.fingers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mst_pipeline.body import fingers
from mst_pipeline.body.layout import SMPL_JOINT_NAMES


def toy_hand(side: str = "left") -> tuple[np.ndarray, fingers.FingerRig]:
    """A palm and five 3-segment capsule fingers along ±X (T-pose, palm down), with its rig."""
    import trimesh

    sign = 1.0 if side == "left" else -1.0
    wrist = np.array([sign * 0.70, 0.0, 0.0])
    parts, weights, chains = [], [], []
    palm = trimesh.creation.box(extents=[0.09, 0.025, 0.08]).apply_translation(wrist + [sign * 0.045, 0, 0])
    parts.append(palm.vertices)
    weights.append(np.zeros((len(palm.vertices), 15)))
    for f, (dz, length) in enumerate(((0.05, 0.06), (0.03, 0.085), (0.01, 0.09), (-0.01, 0.085), (-0.03, 0.07))):
        base = wrist + [sign * (0.05 if f == 0 else 0.09), 0, dz]
        direction = np.array([sign, 0, 0.4 if f == 0 else 0.0])
        direction /= np.linalg.norm(direction)
        tube = trimesh.creation.cylinder(radius=0.008, segment=[base, base + length * direction], sections=8)
        tube = tube.subdivide().subdivide()
        s = np.clip((tube.vertices - base) @ direction / length, 0, 0.999)
        w = np.zeros((len(tube.vertices), 15))
        w[np.arange(len(s)), 3 * f + (s * 3).astype(int)] = 1.0
        parts.append(tube.vertices)
        weights.append(w)
        chains.append([base + length * k / 3 * direction for k in range(3)] + [base + length * direction])
    V = np.concatenate(parts + [wrist[None]])
    W = np.concatenate(weights + [np.zeros((1, 15))])
    joints = np.array([c[k] for c in chains for k in range(3)])
    fingers_ids = np.arange(len(V) - 1 - sum(len(p) for p in parts[1:]), len(V) - 1)
    reg = np.zeros((16, len(V)))
    reg[0, len(V) - 1] = 1.0
    reg[1:] = fingers.regress_points(V, joints, fingers_ids)
    tips = np.array([np.argmin(np.linalg.norm(V - c[3], axis=1)) for c in chains])
    return V, fingers.FingerRig(side, reg, W, tips)


def project_known(V, rig, angles, rotvec, scale, offset):
    with torch.no_grad():
        _, kp = fingers.articulate(torch.as_tensor(V)[None], rig, torch.as_tensor(angles)[None])
    uv = fingers.project(kp, torch.as_tensor(rotvec)[None], torch.tensor([np.log(scale)]),
                         torch.as_tensor(offset)[None])[0].numpy()
    return uv


def test_regressed_joints_and_zero_pose_are_the_rest_pose():
    V, rig = toy_hand()
    v, kp = fingers.articulate_np(V, rig, np.zeros((15, 3)))
    assert np.allclose(v, V, atol=1e-9)
    assert np.allclose(kp[0], [0.70, 0, 0], atol=1e-9)
    assert np.allclose(kp[4], V[rig.tip_ids[0]]) and np.allclose(kp[20], V[rig.tip_ids[4]])


def test_flexion_bends_fingers_towards_the_palm_on_both_hands():
    for side in ("left", "right"):
        V, rig = toy_hand(side)
        angles = np.zeros((15, 3))
        angles[3:6, 0] = 0.8  # index: knuckle, middle and end joint flexed
        _, kp = fingers.articulate_np(V, rig, angles)
        _, rest = fingers.articulate_np(V, rig, np.zeros((15, 3)))
        assert kp[8, 1] < rest[8, 1] - 0.03, side  # the palm faces down (-Y): the tip moves down
        assert np.allclose(kp[12], rest[12])  # the middle finger did not move
        # the same angles give mirror-image poses
        if side == "left":
            left = kp
    assert np.allclose(left[:, 1:], kp[:, 1:], atol=1e-9) and np.allclose(left[:, 0], -kp[:, 0], atol=1e-9)


def test_fitted_fingertips_project_onto_the_keypoints(side="right"):
    """Keypoints of a hand posed with known angles and camera; the fit starts from straight
    fingers and must put the posed hand's fingertips within a few pixels of them."""
    V, rig = toy_hand(side)
    truth = np.zeros((15, 3))
    truth[0] = [0.3, 0.2, 0.1]  # thumb base
    truth[1:3, 0] = [0.4, 0.5]
    for f, flex in zip(range(1, 5), (0.3, 0.9, 1.2, 0.6), strict=True):
        truth[3 * f, :2] = [flex, 0.1 * (f - 2)]
        truth[3 * f + 1: 3 * f + 3, 0] = [1.1 * flex, 0.7 * flex]
    rotvec = (Rotation.from_euler("z", 0.9) * Rotation.from_euler("x", 0.5)).as_rotvec()
    scale, offset = 900.0, np.array([128.0, 140.0])  # a ~100 px hand in a 256 px image
    uv = project_known(V, rig, truth, rotvec, scale, offset)
    target = np.concatenate([uv, np.ones((21, 1))], axis=1)
    fit = fingers.fit_finger_poses(rig, V, target[None], iterations=250)
    _, kp = fingers.articulate_np(V, rig, fit.angles[0])
    posed_uv = fingers.project(torch.as_tensor(kp)[None], torch.as_tensor(fit.rotation),
                               torch.as_tensor(np.log(fit.scale)), torch.as_tensor(fit.translation))[0].numpy()
    tips = [4, 8, 12, 16, 20]
    err = np.linalg.norm(posed_uv[tips] - uv[tips], axis=1)
    assert err.max() < 3.0, err
    assert np.all(fit.angles[0][~fingers.FREE_DOF] == 0)
    # the fit did bend the fingers (not only moved the camera): straight fingers miss by far more
    straight = fingers.project(torch.as_tensor(fingers.articulate_np(V, rig, np.zeros((15, 3)))[1])[None],
                               torch.as_tensor(fit.rotation), torch.as_tensor(np.log(fit.scale)),
                               torch.as_tensor(fit.translation))[0].numpy()
    assert np.linalg.norm(straight[tips] - uv[tips], axis=1).max() > 10 * max(err.max(), 1.0)


def test_bad_keypoint_shape_is_a_clear_error():
    V, rig = toy_hand()
    with pytest.raises(ValueError, match=r"\[N, 21, 3\]"):
        fingers.fit_finger_poses(rig, V, np.zeros((2, 20, 3)))


def test_open_model_rig_follows_anny_finger_bones(open_model):
    rigs = fingers.finger_rigs(open_model)
    assert rigs is not None
    V = open_model.v_template.numpy().astype(np.float64)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        rig = rigs[side]
        _, kp = fingers.articulate_np(V, rig, np.zeros((15, 3)))
        wrist = kp[0]
        assert np.allclose(wrist, rig.regressor[0] @ V)
        assert SMPL_JOINT_NAMES.index(f"{side}_wrist") in (20, 21)
        # T-pose: every finger point lies beyond the wrist along the arm, knuckles before tips
        assert np.all(sign * (kp[1:, 0] - wrist[0]) > 0)
        for f in range(1, 5):
            chain = sign * kp[1 + 4 * f: 5 + 4 * f, 0]
            assert np.all(np.diff(chain) > 0), (side, f, chain)
        # the fingers' vertices are skinned to finger joints; flexing moves the tips towards -Y (palm)
        angles = np.zeros((15, 3))
        angles[:, 0] = 0.6
        _, bent = fingers.articulate_np(V, rig, angles)
        assert np.all(bent[[8, 12, 16, 20], 1] < kp[[8, 12, 16, 20], 1] - 0.01)
