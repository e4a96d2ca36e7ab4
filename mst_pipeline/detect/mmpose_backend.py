"""mmpose as a keypoint backend: an optional extra, imported lazily. COCO-WholeBody-133 models (the
default `wholebody` alias) fill body, feet, hands and face; COCO-17 body models fill the body."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mst_pipeline.body.keypoints import KeypointLayoutError, PersonKeypoints, from_coco17, from_coco_wholebody133
from mst_pipeline.detect.base import BackendUnavailable, DetectionError

_CONVERTERS = {133: from_coco_wholebody133, 17: from_coco17}


def mmpose_to_internal(kp: np.ndarray) -> PersonKeypoints:
    """One person's mmpose keypoints [K, 3] (x, y, score) -> internal layout, by K (133 or 17)."""
    convert = _CONVERTERS.get(len(kp))
    if convert is None:
        raise DetectionError(f"mmpose gave {len(kp)} keypoints per person; supported layouts: COCO-WholeBody "
                             "(133) and COCO (17)")
    try:
        return convert(kp)
    except KeypointLayoutError as e:
        raise DetectionError(f"mmpose output: {e}") from None


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

    def __call__(self, image: np.ndarray, path: Path) -> list[PersonKeypoints]:
        result = next(self.inferencer(image[..., ::-1].copy()))  # mmpose reads BGR
        people = result.get("predictions", [[]])[0]
        if not people:
            raise DetectionError("no person (mmpose found nobody)")
        return [mmpose_to_internal(np.concatenate([np.asarray(p["keypoints"]),
                                                   np.asarray(p["keypoint_scores"])[:, None]], 1))
                for p in people]
