"""The targets of SMPLify-P's keypoint term and the keypoint-based start (paper §3.1, Eq. 1).

Targets (`layout.NUM_TARGETS`): BODY_25, then wrist + 5 fingertips of each hand, in the image's
normalised coordinates. Which targets are visible, which body joints they leave unseen (the joints
Eq. 1's prior term pulls), the weak-perspective projection J of the model's joints, and the camera
and facing a fit starts from.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, HAND_SLOTS, NUM_SMPL_JOINTS, NUM_TARGETS, SMPL_JOINT_NAMES

# Fitting targets (`layout.NUM_TARGETS`): BODY_25, then wrist + 5 fingertips (`layout.HAND_SLOTS`)
# of the left and the right hand.
LHAND = slice(25, 25 + len(HAND_SLOTS))
RHAND = slice(25 + len(HAND_SLOTS), NUM_TARGETS)


def _model_joint(name: str) -> int:
    if name in SMPL_JOINT_NAMES:
        return SMPL_JOINT_NAMES.index(name)
    return NUM_SMPL_JOINTS + EXTRA_VERTEX_NAMES.index(name)


# Indices into the model's 45 joints of the 12 hand targets (after BODY_25).
HAND_MODEL_JOINTS = tuple(
    _model_joint(n) for n in ("left_wrist", "lthumb", "lindex", "lmiddle", "lring", "lpinky",
                              "right_wrist", "rthumb", "rindex", "rmiddle", "rring", "rpinky")
)  # fmt: skip

# Body joints 1..21 (the prior's joints) and the targets whose position they determine: a joint
# with none of them visible is "invisible" and pulled towards the prior's reconstruction.
_B = {n: i for i, n in enumerate((
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
    "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe",
    "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"))}
_HEAD = ("Nose", "REye", "LEye", "REar", "LEar")
_JOINT_TARGETS: dict[str, tuple[int, ...]] = {
    "left_hip": (_B["LKnee"],), "right_hip": (_B["RKnee"],),
    "spine1": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_knee": (_B["LAnkle"],), "right_knee": (_B["RAnkle"],),
    "spine2": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_ankle": (_B["LBigToe"], _B["LSmallToe"], _B["LHeel"]),
    "right_ankle": (_B["RBigToe"], _B["RSmallToe"], _B["RHeel"]),
    "spine3": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_foot": (_B["LBigToe"], _B["LSmallToe"]), "right_foot": (_B["RBigToe"], _B["RSmallToe"]),
    "neck": tuple(_B[n] for n in _HEAD), "left_collar": (_B["LShoulder"],),
    "right_collar": (_B["RShoulder"],), "head": tuple(_B[n] for n in _HEAD),
    "left_shoulder": (_B["LElbow"],), "right_shoulder": (_B["RElbow"],),
    "left_elbow": (_B["LWrist"], LHAND.start), "right_elbow": (_B["RWrist"], RHAND.start),
    "left_wrist": tuple(range(LHAND.start + 1, LHAND.stop)),
    "right_wrist": tuple(range(RHAND.start + 1, RHAND.stop)),
}  # fmt: skip
# A joint's rotation is relative to its parent's: it is seen only when keypoints on both sides of
# it are, those it moves and one on the parent's side. Without the pelvis a spine bend is
# indistinguishable from the global orientation; without the shoulders a neck bend from a spine
# bend, and a head turn or tilt from either: a face alone fixes the head's orientation in the
# camera, not how the unseen chain below it (spine, neck, head) shares it. That share decides
# where the face sits above the pelvis, so it is left to the prior rather than given to the head.
PELVIS = (_B["MidHip"], _B["RHip"], _B["LHip"])
SHOULDERS = (_B["RShoulder"], _B["LShoulder"])
_CHEST = (_B["Neck"],) + SHOULDERS
_PARENT_TARGETS: dict[str, tuple[int, ...]] = {
    "left_hip": PELVIS, "right_hip": PELVIS, "spine1": PELVIS, "spine2": PELVIS, "spine3": PELVIS,
    "left_knee": (_B["LHip"],), "right_knee": (_B["RHip"],),
    "left_ankle": (_B["LKnee"],), "right_ankle": (_B["RKnee"],),
    "left_foot": (_B["LAnkle"], _B["LHeel"]), "right_foot": (_B["RAnkle"], _B["RHeel"]),
    "neck": SHOULDERS, "head": SHOULDERS,
    "left_collar": (_B["Neck"], _B["RShoulder"]), "right_collar": (_B["Neck"], _B["LShoulder"]),
    "left_shoulder": (_B["LShoulder"],), "right_shoulder": (_B["RShoulder"],),
    "left_elbow": (_B["LElbow"],), "right_elbow": (_B["RElbow"],),
    "left_wrist": (_B["LWrist"], LHAND.start), "right_wrist": (_B["RWrist"], RHAND.start),
}  # fmt: skip
JOINT_TARGET_MASK = np.zeros((21, NUM_TARGETS), dtype=bool)  # [21 body joints, targets it moves]
PARENT_TARGET_MASK = np.zeros((21, NUM_TARGETS), dtype=bool)  # [21 body joints, targets on the parent's side]
for _j, _name in enumerate(SMPL_JOINT_NAMES[1:22]):
    JOINT_TARGET_MASK[_j, list(_JOINT_TARGETS[_name])] = True
    PARENT_TARGET_MASK[_j, list(_PARENT_TARGETS[_name])] = True

# Targets for the camera start, in order of preference: torso and face, then hands.
TORSO_FACE = tuple(_B[n] for n in ("Neck", "RShoulder", "LShoulder", "MidHip", "RHip", "LHip") + _HEAD)
HANDS = tuple(range(25, NUM_TARGETS))


def fitting_joints(joints: Tensor, body25: Tensor) -> Tensor:
    """Model joints in the target layout. joints [B,45,3], body25 [B,25,3] -> [B,37,3]."""
    return torch.cat([body25, joints[:, list(HAND_MODEL_JOINTS)]], dim=1)


def visibility(targets: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Visible keypoints: confident and inside the image's normalised box.

    targets [B,N,2] normalised, confidence [B,N] -> bool [B,N]. Points outside [-1, 1]² lie outside
    the padded square; points in the padding of a non-square image are rejected by the caller
    passing the image's own box through `inside`.
    """
    inside = np.all(np.abs(targets) <= 1.0, axis=-1)
    return (confidence >= threshold) & inside & np.all(np.isfinite(targets), axis=-1)


def invisible_joints(visible: Tensor) -> Tensor:
    """Body joints 1..21 with no visible target among those they move, or none on their parent's
    side. visible [B,37] -> [B,21]."""
    moved = torch.as_tensor(JOINT_TARGET_MASK, device=visible.device)
    parent = torch.as_tensor(PARENT_TARGET_MASK, device=visible.device)
    return ~((visible[:, None, :] & moved[None]).any(-1) & (visible[:, None, :] & parent[None]).any(-1))


def project(points: Tensor, cam: Tensor) -> Tensor:
    """Weak-perspective u = s · (X_xy + t). points [B,N,3], cam [B,3] -> [B,N,2]."""
    return cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:])


def keypoint_init(rest_joints: Tensor, targets: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Camera (s, tx, ty) aligning the rest body's joints to the visible keypoints.

    rest_joints [B,37,3] (already oriented), targets [B,37,2], visible [B,37] bool -> (cam [B,3],
    ok [B] bool). Uses torso and face keypoints when at least two are visible, otherwise the hand
    keypoints (wrist + fingertips), otherwise everything visible. Least squares in scale and
    translation: s = Σ⟨u−ū, X−X̄⟩ / Σ|X−X̄|², t = ū/s − X̄.
    """
    B = targets.shape[0]
    torso = torch.zeros(NUM_TARGETS, dtype=torch.bool, device=targets.device)
    torso[list(TORSO_FACE)] = True
    hands = torch.zeros_like(torso)
    hands[list(HANDS)] = True
    use = visible & torso
    few = use.sum(1) < 2
    use = torch.where(few[:, None], visible & hands, use)
    few = use.sum(1) < 2
    use = torch.where(few[:, None], visible, use)
    w = use.to(targets.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1)
    X = rest_joints[..., :2]
    Xm = (w[..., None] * X).sum(1) / n
    um = (w[..., None] * targets).sum(1) / n
    dX, du = X - Xm[:, None], targets - um[:, None]
    num = (w[..., None] * dX * du).sum((1, 2))
    den = (w[..., None] * dX * dX).sum((1, 2))
    s = num / den.clamp_min(1e-9)
    ok = (use.sum(1) >= 2) & (s > 1e-3) & torch.isfinite(s)
    s = torch.where(ok, s, torch.ones_like(s))
    t = um / s[:, None] - Xm
    return torch.cat([s[:, None], t], dim=1).reshape(B, 3), ok


def facing_from_keypoints(targets: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which way each person faces, from the left/right order of paired keypoints.

    Facing the camera, the person's left side appears on the image's right (larger x). Returns
    (back [B] bool, ambiguous [B] bool): ambiguous when the shoulders (or, without them, the
    hips, ears or eyes) are closer together than a quarter of the torso length or unknown.
    """
    B = targets.shape[0]
    back = np.zeros(B, dtype=bool)
    ambiguous = np.ones(B, dtype=bool)
    pairs = [("LShoulder", "RShoulder"), ("LHip", "RHip"), ("LEar", "REar"), ("LEye", "REye")]
    for b in range(B):
        for left, right in pairs:
            li, ri = _B[left], _B[right]
            if not (visible[b, li] and visible[b, ri]):
                continue
            dx = targets[b, li, 0] - targets[b, ri, 0]
            scale = _torso_length(targets[b], visible[b])
            back[b] = dx < 0
            ambiguous[b] = scale is not None and abs(dx) < 0.25 * scale if left == "LShoulder" else False
            break
    return back, ambiguous


def _torso_length(t: np.ndarray, v: np.ndarray) -> float | None:
    neck, hip = _B["Neck"], _B["MidHip"]
    if v[neck] and v[hip]:
        return float(np.linalg.norm(t[neck] - t[hip]))
    ls, rs = _B["LShoulder"], _B["RShoulder"]
    if v[ls] and v[rs] and v[_B["Nose"]]:
        return 2.5 * float(np.linalg.norm(0.5 * (t[ls] + t[rs]) - t[_B["Nose"]]))
    return None
