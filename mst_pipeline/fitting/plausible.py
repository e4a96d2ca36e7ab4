"""Whether a fit is a body (pure numpy): a fit can match its keypoints and still be no person, e.g. a
crop of two hands and a ball fitted as an upper body with its pelvis above its nose. Such a fit is
rejected with its reason (`implausible_fit`) and never written as a sample."""

from __future__ import annotations

import numpy as np

from mst_pipeline.body.layout import SMPL_JOINT_NAMES

MAX_TAIL = 0.5  # normalised units (1 = half the image side): the worst visible keypoint's gap
MAX_BEND = 2.6  # radians (~150°): no body joint rotates further from rest
KNEE_BACK = -0.35  # radians: a knee bent this far backwards (its flexion about x) is no knee
_KNEES = tuple(SMPL_JOINT_NAMES.index(n) for n in ("left_knee", "right_knee"))


def implausible_fit(pelvis_y: float, nose_y: float, pose: np.ndarray, tail: float,
                    max_tail: float = MAX_TAIL) -> str | None:
    """Why a fit is no body, or None. pelvis_y, nose_y: the fitted pelvis and nose in the image's
    normalised coordinates (y down); pose [72] axis-angle (global orientation first); tail: the
    largest gap of a visible keypoint, normalised units."""
    if pelvis_y < nose_y:
        return "implausible fit (pelvis above the nose)"
    body = np.asarray(pose, dtype=np.float64)[3:72].reshape(23, 3)
    angles = np.linalg.norm(body[:21], axis=1)
    worst = int(np.argmax(angles))
    if angles[worst] > MAX_BEND:
        return (f"implausible fit ({SMPL_JOINT_NAMES[worst + 1]} turned {np.degrees(angles[worst]):.0f}°, "
                f"beyond the human range)")
    for k in _KNEES:
        if body[k - 1, 0] < KNEE_BACK:
            return f"implausible fit ({SMPL_JOINT_NAMES[k]} bent {np.degrees(-body[k - 1, 0]):.0f}° backwards)"
    if tail > max_tail:
        return f"implausible fit (a keypoint {tail:.2f} normalised units off, beyond {max_tail})"
    return None
