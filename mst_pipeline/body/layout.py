"""Joint layouts of SMPL-format body models and their mapping to OpenPose BODY_25.

Pure data, no torch. SMPL's 24 joints are in SMPL's own order; the extra joints are read from
single mesh vertices (nose, eyes, ears, toes, heels, fingertips) in the order `smplx` uses, so a
model's 45 joints line up with those of ``smplx.SMPL`` given the same vertex ids.
"""

from __future__ import annotations

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
NUM_SMPL_JOINTS = len(SMPL_JOINT_NAMES)
NUM_BODY_POSE_JOINTS = NUM_SMPL_JOINTS - 1  # body_pose: every joint but the root, axis-angle each

# Parent of each SMPL joint (kintree_table row 0 with the root as -1).
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)  # fmt: skip

# Extra joints taken from single vertices, in smplx's order (face, feet, fingertips). The names
# are the keys of smplx's vertex-id dictionaries.
EXTRA_VERTEX_NAMES: tuple[str, ...] = (
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky",
    "rthumb", "rindex", "rmiddle", "rring", "rpinky",
)  # fmt: skip
NUM_JOINTS = NUM_SMPL_JOINTS + len(EXTRA_VERTEX_NAMES)  # 45: the `joints` of a forward pass

BODY25_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
    "MidHip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye",
    "REar", "LEar", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip


def _joint(name: str) -> int:
    if name in SMPL_JOINT_NAMES:
        return SMPL_JOINT_NAMES.index(name)
    return NUM_SMPL_JOINTS + EXTRA_VERTEX_NAMES.index(name)


# Index into the 45 model joints for each BODY_25 keypoint. SMPL's neck and pelvis play
# OpenPose's Neck and MidHip.
SMPL_TO_BODY25: tuple[int, ...] = tuple(
    _joint(n)
    for n in (
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
        "left_elbow", "left_wrist", "pelvis", "right_hip", "right_knee", "right_ankle",
        "left_hip", "left_knee", "left_ankle", "reye", "leye", "rear", "lear",
        "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    )
)  # fmt: skip

# OpenPose hand keypoints that are model joints: 0 = wrist, 4/8/12/16/20 = fingertips thumb..pinky.
HAND_SLOTS: tuple[int, ...] = (0, 4, 8, 12, 16, 20)
# SMPLify-P's fitting targets (J' of paper Eq. 1): BODY_25, then HAND_SLOTS of the left and the right hand.
NUM_TARGETS = len(BODY25_NAMES) + 2 * len(HAND_SLOTS)

# SMPL joint indices of each arm.
ARM_JOINTS: dict[str, dict[str, int]] = {
    side: {part: SMPL_JOINT_NAMES.index(f"{side}_{part}") for part in ("shoulder", "elbow", "wrist", "hand")}
    for side in ("left", "right")
}
# Fingertip joints among the 45 model joints, thumb..pinky, per side.
FINGERTIPS: dict[str, tuple[int, ...]] = {
    side: tuple(_joint(f"{side[0]}{finger}") for finger in ("thumb", "index", "middle", "ring", "pinky"))
    for side in ("left", "right")
}
