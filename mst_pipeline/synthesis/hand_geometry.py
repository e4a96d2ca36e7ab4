"""One synthetic hand of `mst render-hands`: its random plan, and its mesh in full-body space.

`plan_hand` draws every random choice of one index from `default_rng([seed, index])`; `pose_hand`
poses the body (fingers from a fitted hand pose, or the procedural `curl_fingers`), keeps forearm
and hand and maps them into full-body space with ᾱ (paper Eq. 2); `hand_crop` is the square of
full-body space the image shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.layout import ARM_JOINTS, FINGERTIPS, HAND_SLOTS, NUM_SMPL_JOINTS
from mst_pipeline.body.poses import prior_pose
from mst_pipeline.space import FullBodySpace

THUMB_CURL = 0.6  # the thumb flexes less than the fingers


@dataclass
class HandPlan:
    """What to render for one index (all choices drawn from default_rng([seed, index]))."""

    index: int
    side: str  # "left" or "right": the person's hand
    betas: list[float]
    pose: list[float]  # 72: global orientation + 23 body joints, axis-angle
    curl: list[float]  # finger flexion thumb..pinky in [0, 1]
    spread: float  # crop side / hand extent
    offset: tuple[float, float]  # crop centre offset, in crop sides
    skin: tuple[float, float, float]  # linear RGB
    light: dict[str, float]
    render_seed: int
    background_seed: int
    texture: str | None = None
    background: str | None = None
    fingers: list[float] | None = None  # 45 finger angles from a hand pose set (None: the curl)
    finger_source: int | None = None  # which pose of the set


def plan_hand(index: int, seed: int, num_betas: int, pitch: float, poses: dict[str, np.ndarray] | None = None,
              textures: Sequence[Path] = (), backgrounds: Sequence[str | Path] = (),
              hand_poses: np.ndarray | None = None) -> HandPlan:
    rng = np.random.default_rng([seed, index])
    side = "left" if rng.random() < 0.5 else "right"
    betas = np.zeros(num_betas)
    if poses is not None:
        k = int(rng.integers(len(poses["pose"])))
        pose = poses["pose"][k].copy()
        if "betas" in poses:
            n = min(num_betas, poses["betas"].shape[1])
            betas[:n] = poses["betas"][k, :n]
        wrist = ARM_JOINTS[side]["wrist"]
        pose[3 * wrist: 3 * wrist + 3] += rng.normal(0, 0.15, 3)
    else:
        pose = prior_pose(rng, pitch)
        betas[: min(num_betas, 10)] = rng.normal(0, 0.8, min(num_betas, 10))
    fist = rng.random() < 0.3
    curl = np.clip(rng.uniform(0.6, 1.0, 5) if fist else rng.beta(1.2, 2.5, 5), 0, 1)
    tone = rng.uniform(0.0, 1.0)
    light_skin, dark_skin = np.array([0.80, 0.55, 0.42]), np.array([0.18, 0.09, 0.05])
    skin = dark_skin + (light_skin - dark_skin) * tone + rng.normal(0, 0.02, 3)
    plan = HandPlan(
        index=index, side=side, betas=betas.tolist(), pose=pose.tolist(), curl=curl.tolist(),
        spread=float(rng.uniform(1.15, 1.6)), offset=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12))),
        skin=tuple(float(c) for c in np.clip(skin, 0.02, 1.0)),
        light={"azimuth": float(rng.uniform(-1.2, 1.2)), "elevation": float(rng.uniform(0.2, 1.1)),
               "strength": float(rng.uniform(0.7, 1.3)), "hdr_rotation": float(rng.uniform(0, 2 * np.pi))},
        render_seed=int(rng.integers(2**31)), background_seed=int(rng.integers(2**31)),
        texture=str(textures[int(rng.integers(len(textures)))]) if textures else None,
        background=str(backgrounds[int(rng.integers(len(backgrounds)))]) if backgrounds else None,
    )
    if hand_poses is not None:  # drawn last: the other choices do not depend on it
        plan.finger_source = int(rng.integers(len(hand_poses)))
        plan.fingers = np.asarray(hand_poses[plan.finger_source], dtype=np.float64).ravel().tolist()
    return plan


# ---------------------------------------------------------------------------------------------
# Geometry: pose the body with finger articulation, cut out forearm + hand, map to full-body space


def curl_fingers(vertices: np.ndarray, weights: np.ndarray, hand_joint: np.ndarray, tips: np.ndarray,
                 side: str, curl: Sequence[float], max_angle: float = 1.9) -> np.ndarray:
    """Flex the fingers of one hand in the rest (T-) pose, before skinning.

    vertices [V, 3] rest vertices (shaped), weights [V] how much each vertex follows the hand,
    hand_joint [3] the hand joint (knuckles), tips [5, 3] fingertip positions thumb..pinky,
    curl [5] in [0, 1]. SMPL-format models have no finger joints, so each finger is bent as a
    smooth arc: a vertex beyond the knuckles is rotated towards the palm by an angle growing with
    its distance along its finger. The palm's normal comes from the geometry (the fingers' direction
    and the index -> pinky direction, with the thumb in front), not from a fixed rest orientation.
    Returns new [V, 3].
    """
    v = np.asarray(vertices, dtype=np.float64).copy()
    rel = v - hand_joint
    axes = tips - hand_joint  # [5, 3]
    lengths = np.linalg.norm(axes, axis=1)
    dirs = axes / lengths[:, None]
    palm_normal = np.cross(dirs[2], tips[4] - tips[1]) * (-1.0 if side == "left" else 1.0)
    palm_normal /= np.linalg.norm(palm_normal)
    along = rel @ dirs.T / lengths  # [V, 5]: 0 at the knuckles, 1 at the tip
    perp = np.linalg.norm(rel[:, None, :] - along[..., None] * axes[None], axis=2)  # [V, 5]
    perp = np.where(along > -0.1, perp, np.inf)
    finger = perp.argmin(axis=1)
    rows = np.arange(len(v))
    s = along[rows, finger]
    # Only the finger's own vertices bend: close to its axis, beyond the knuckles, on the hand.
    width = 0.3 * lengths[finger]
    closeness = np.clip(1.0 - perp[rows, finger] / width, 0.0, 1.0)
    ramp = np.clip(s / 0.9, 0.0, 1.0)
    amount = np.asarray(curl, dtype=np.float64)[finger] * ramp * closeness * np.clip(weights, 0, 1)
    moving = amount > 1e-6
    if not moving.any():
        return v
    from scipy.spatial.transform import Rotation

    d = dirs[finger[moving]]
    axis = np.cross(d, palm_normal)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-12
    angle = max_angle * amount[moving] * np.where(finger[moving] == 0, THUMB_CURL, 1.0)
    R = Rotation.from_rotvec(axis * angle[:, None])
    # Rotate about the knuckle point of each vertex's finger.
    pivot = hand_joint + 0.05 * axes[finger[moving]]
    v[moving] = pivot + R.apply(v[moving] - pivot)
    return v


@dataclass
class HandGeometry:
    """The forearm + hand in full-body space and what the meta needs about the whole body.

    vertices [V', 3] full-body x, y and depth; faces [F', 3]; wrist [2] and keypoints in full-body
    space; hand_points [N, 2] the hand's own vertices (for the crop).
    """

    vertices: np.ndarray
    faces: np.ndarray
    wrist: np.ndarray
    body25: np.ndarray
    hand_keypoints: np.ndarray  # [K, 2]: the OpenPose hand keypoints of `hand_slots`
    hand_points: np.ndarray
    hand_slots: tuple[int, ...] = HAND_SLOTS


def pose_hand(model: Any, plan: HandPlan, space: FullBodySpace, rigs: dict[str, Any] | None = None) -> HandGeometry:
    """Pose the whole body (with finger articulation), keep forearm + hand, map by ᾱ.

    The fingers take the plan's fitted angles through the model's finger rig (RIGS, see
    `mst_pipeline.body.fingers`) when it has them, else the procedural curl (`curl_fingers`).
    """
    import torch

    from mst_pipeline.body.fingers import articulate_np
    from mst_pipeline.body.lbs import blend_shapes, lbs, vertices2joints

    arm = ARM_JOINTS[plan.side]
    with torch.no_grad():
        betas = torch.tensor([plan.betas], dtype=model.v_template.dtype)
        v_shaped = (model.v_template[None] + blend_shapes(betas, model.shapedirs))[0]
        rest_joints = vertices2joints(model.J_regressor, v_shaped[None])[0]
        w = model.lbs_weights.cpu().numpy()
        tip_ids = model.extra_vertex_ids.cpu().numpy()[np.asarray(FINGERTIPS[plan.side]) - NUM_SMPL_JOINTS]
        v_np = v_shaped.cpu().numpy()
        shapedirs, posedirs, J_reg, weights = model.shapedirs, model.posedirs, model.J_regressor, model.lbs_weights
        V = len(v_np)
        if plan.fingers is not None:
            if rigs is None:
                raise ValueError("fitted finger poses need a body model with a finger skeleton (the open model); "
                                 "this one has none")
            articulated, hand_rest = articulate_np(v_np.astype(np.float64), rigs[plan.side],
                                                   np.reshape(plan.fingers, (15, 3)))
            # The 21 hand keypoints ride along as extra points: the wrist with the wrist joint,
            # the fingers with the hand joint (as the fingers' vertices do).
            extra_w = torch.zeros(21, weights.shape[1], dtype=weights.dtype)
            extra_w[0, arm["wrist"]] = 1.0
            extra_w[1:, arm["hand"]] = 1.0
            template = torch.as_tensor(np.concatenate([articulated, hand_rest]), dtype=v_shaped.dtype)
            shapedirs = torch.cat([shapedirs, shapedirs.new_zeros(21, *shapedirs.shape[1:])])
            posedirs = torch.cat([posedirs, posedirs.new_zeros(posedirs.shape[0], 63)], dim=1)
            J_reg = torch.cat([J_reg, J_reg.new_zeros(J_reg.shape[0], 21)], dim=1)
            weights = torch.cat([weights, extra_w])
        else:
            template = torch.as_tensor(curl_fingers(
                v_np, w[:, arm["hand"]] + w[:, arm["wrist"]], rest_joints[arm["hand"]].cpu().numpy(), v_np[tip_ids],
                plan.side, plan.curl), dtype=v_shaped.dtype)
        # Skin the shaped, articulated rest mesh (betas already applied). Joints are regressed from
        # it; the fingers bend beyond the knuckles, so the wrist and hand joints hardly move.
        pose = torch.tensor([plan.pose], dtype=v_shaped.dtype).view(1, 24, 3)
        zeros = torch.zeros_like(betas)
        vertices, joints = lbs(zeros, pose, template, shapedirs, posedirs, J_reg, model.parents, weights)
        vertices = vertices[0].cpu().numpy().astype(np.float64)
        joints = joints[0].cpu().numpy().astype(np.float64)
        hand_posed = vertices[V:]
        vertices = vertices[:V]
    joints45 = np.concatenate([joints, vertices[model.extra_vertex_ids.cpu().numpy()]], axis=0)
    body25 = joints45[model.body25_index.cpu().numpy()]
    # Forearm + hand: vertices that follow the elbow, wrist or hand joint more than anything else.
    follow = w[:, arm["elbow"]] + w[:, arm["wrist"]] + w[:, arm["hand"]]
    keep = follow > 0.5
    faces = model.faces
    faces = faces[keep[faces].all(axis=1)]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    fb = space.to_full_body(vertices)
    hand_only = (w[:, arm["wrist"]] + w[:, arm["hand"]]) > 0.5
    if plan.fingers is not None:
        kp, slots = hand_posed, tuple(range(21))
    else:
        kp, slots = joints45[[arm["wrist"], *FINGERTIPS[plan.side]]], HAND_SLOTS
    return HandGeometry(
        vertices=fb[used], faces=remap[faces], wrist=space.to_full_body(joints[arm["wrist"]])[:2],
        body25=space.to_full_body(body25)[:, :2], hand_keypoints=space.to_full_body(kp)[:, :2],
        hand_points=fb[hand_only][:, :2], hand_slots=slots,
    )


def hand_crop(geom: HandGeometry, plan: HandPlan) -> tuple[float, float, float]:
    """The full-body-space square (x0, y0, side) the image covers: around the hand, with margin."""
    pts = geom.hand_points
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    extent = float(np.max(pts.max(axis=0) - pts.min(axis=0)))
    side = max(extent * plan.spread, 1e-3)
    cx, cy = centre + np.asarray(plan.offset) * side
    return float(cx - side / 2), float(cy - side / 2), float(side)
