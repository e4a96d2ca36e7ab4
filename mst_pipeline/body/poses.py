"""Body poses for the renders: a fitted pose set from a file, or the built-in standing prior.

`mst render-hands` and `mst render-people` draw each sample's pose from a pose set (`load_pose_set`,
e.g. the poses `mst space` fitted) or from `prior_pose`: standing, facing the camera at the mean
pitch, with varied arms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mst_pipeline.body.layout import ARM_JOINTS, SMPL_JOINT_NAMES


def _mirror_partner(name: str) -> int:
    """Index of the SMPL joint whose rotation joint NAME takes in the mirror image (its other side)."""
    side, _, rest = name.partition("_")
    other = {"left": "right", "right": "left"}.get(side)
    return SMPL_JOINT_NAMES.index(f"{other}_{rest}" if other else name)


MIRROR_ORDER = tuple(_mirror_partner(name) for name in SMPL_JOINT_NAMES)


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """The left-right mirror image of SMPL poses: [..., 72] (global orientation + 23 joints), [..., 69]
    (body_pose) or [..., 63] (the prior's 21 body joints), axis-angle.

    Reflecting the body in its sagittal plane (model x -> -x) swaps every left joint with its right
    one and turns a rotation (a, b, c) about (x, y, z) into (a, -b, -c): a forward bend stays a forward
    bend, a sideways bend or a twist changes direction. Applied twice it is the identity; on a
    left-right symmetric body model the mirrored pose's joints are the original's reflected."""
    pose = np.asarray(pose, dtype=np.float64)
    n = pose.shape[-1] // 3
    first = {72: 0, 69: 1, 63: 1}.get(pose.shape[-1])  # the first SMPL joint the array holds
    if first is None:
        raise ValueError(f"poses must be [..., 72], [..., 69] or [..., 63], got {list(pose.shape)}")
    joints = pose.reshape(*pose.shape[:-1], n, 3)
    order = [MIRROR_ORDER[first + k] - first for k in range(n)]
    out = joints[..., order, :] * np.array([1.0, -1.0, -1.0])
    return out.reshape(pose.shape)


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles); a missing or corrupt file is one ValueError naming `what`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip/npy errors of a corrupt file: one clear message
        raise ValueError(f"{what} {path} is not a readable .npz ({type(e).__name__}: {e})") from None


def load_pose_set(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Fitted poses (e.g. from `mst space`): .npz with `pose` [N, 72] (or `global_orient` [N, 3]
    and `body_pose` [N, 69]) and optionally `betas` [N, K]."""
    data = read_npz(path, "pose set")
    if "pose" not in data:
        if "global_orient" in data and "body_pose" in data:
            data["pose"] = np.concatenate([data["global_orient"], data["body_pose"]], axis=1)
        else:
            raise ValueError(f"{path} has neither 'pose' [N, 72] nor 'global_orient' + 'body_pose'")
    pose = np.asarray(data["pose"], dtype=np.float64).reshape(len(data["pose"]), -1)
    if pose.shape[1] != 72 or len(pose) == 0:
        raise ValueError(f"{path}: pose has shape {list(pose.shape)}, expected [N>0, 72]")
    out = {"pose": pose}
    if "betas" in data:
        out["betas"] = np.asarray(data["betas"], dtype=np.float64).reshape(len(pose), -1)
    return out


def _axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _rot(axis: str, angle: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler(axis, angle).as_matrix()


def prior_pose(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A standing pose with varied arms (the built-in pose prior), [72] axis-angle.

    Global orientation: turned 180° about x to face the camera (y down), at the mean pitch with a
    little noise and yaw. Shoulders lower the arms from the T-pose by 45-85°, elbows flex 0-90°
    forward, wrists and forearms twist; spine and neck get small noise.
    """
    pose = np.zeros((24, 3))
    R = _rot("x", np.pi - pitch + rng.normal(0, 0.03)) @ _rot("y", rng.normal(0, 0.2))  # space.pitch_of_rotation
    pose[0] = _axis_angle(R)
    for j in (3, 6, 9, 12, 15):
        pose[j] = rng.normal(0, 0.05, 3)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        j = ARM_JOINTS[side]
        down = rng.uniform(0.8, 1.45)  # full-body photos mostly show arms hanging or slightly raised
        forward = rng.uniform(-0.2, 0.5)
        pose[j["shoulder"]] = _axis_angle(_rot("z", -sign * down) @ _rot("y", -sign * forward))
        pose[j["elbow"]] = _axis_angle(_rot("y", -sign * rng.uniform(0.0, 1.6)) @ _rot("x", rng.normal(0, 0.4)))
        pose[j["wrist"]] = rng.normal(0, 0.25, 3)
    return pose.reshape(72)
