"""mmpose (COCO-WholeBody-133) as a keypoint backend: an optional extra, imported lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mst_pipeline.detect import BackendUnavailable, DetectionError, PersonKeypoints

# COCO-17 body index for each BODY_25 slot (-1: derived or absent).
_COCO_TO_BODY25 = (0, -1, 6, 8, 10, 5, 7, 9, -1, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_FEET = {19: 17, 20: 18, 21: 19, 22: 20, 23: 21, 24: 22}  # BODY_25 toes/heels <- WholeBody 17..22


def wholebody_to_internal(kp: np.ndarray) -> PersonKeypoints:
    """COCO-WholeBody-133 [133, 3] (x, y, score) -> internal layout. Neck and MidHip are the
    midpoints of the shoulders and hips (confidence: the smaller of the two); face 68 points fill
    the first 68 of OpenPose's 70 (the pupils stay unknown)."""
    kp = np.asarray(kp, dtype=np.float64)
    if kp.shape != (133, 3):
        raise DetectionError(f"COCO-WholeBody keypoints must be [133, 3], got {list(kp.shape)}")
    out = PersonKeypoints.empty()
    for slot, idx in enumerate(_COCO_TO_BODY25):
        if idx >= 0:
            out.body[slot] = kp[idx]
    for slot, idx in _FEET.items():
        out.body[slot] = kp[idx]
    for slot, (a, b) in ((1, (5, 6)), (8, (11, 12))):
        out.body[slot, :2] = 0.5 * (kp[a, :2] + kp[b, :2])
        out.body[slot, 2] = min(kp[a, 2], kp[b, 2])
    out.face[:68] = kp[23:91]
    out.lhand[:] = kp[91:112]
    out.rhand[:] = kp[112:133]
    out.body[:, 2] = np.clip(out.body[:, 2], 0, 1)
    return out


class MMPoseDetector:
    def __init__(self, model: str = "wholebody") -> None:
        try:
            from mmpose.apis import MMPoseInferencer  # noqa: F401 - optional extra
        except ImportError:
            raise BackendUnavailable(
                "the mmpose backend needs mmpose and its dependencies (pip install mmpose mmcv mmdet, "
                "see mmpose's installation guide) and a COCO-WholeBody checkpoint; use --detector "
                "mediapipe (offline default) or openpose-json instead") from None
        self.inferencer = MMPoseInferencer(model)

    def __call__(self, image: np.ndarray, path: Path) -> PersonKeypoints:
        result = next(self.inferencer(image[..., ::-1].copy()))  # mmpose reads BGR
        people = result.get("predictions", [[]])[0]
        if not people:
            raise DetectionError("no person found")
        best = max(people, key=lambda p: float(np.sum(p["keypoint_scores"])))
        kp = np.concatenate([np.asarray(best["keypoints"]), np.asarray(best["keypoint_scores"])[:, None]], 1)
        return wholebody_to_internal(kp)
