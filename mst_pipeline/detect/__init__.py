"""2-D keypoint backends behind one interface (paper §3.1: J' of Eq. 1).

Every backend returns a list of `PersonKeypoints`, one per detection, in the internal layout —
OpenPose BODY_25, 2 × 21 hand keypoints (OpenPose hand order) and 70 face keypoints — in image
pixels (x right, y down) with a confidence in [0, 1], 0 where unknown; the layout converters are
in `mst_pipeline.body.keypoints`.
Backends:

* `mediapipe` (default): mediapipe 0.10.21's bundled pose, hand, face-detection and face-mesh
  models, offline; its pose model sees one person, so further people are found by their faces;
* `openpose-json`: precomputed OpenPose `--write_json` files next to the images or in a folder
  (every entry of `people`);
* `mmpose`: COCO-WholeBody-133 through mmpose, an optional extra imported only when chosen (every
  person its detector finds).

Which detections are people and which one is fitted: `mst_pipeline.detect.persons`.
"""

from __future__ import annotations

from pathlib import Path

from mst_pipeline.body.keypoints import PersonKeypoints  # re-exported for callers
from mst_pipeline.detect.base import BackendUnavailable, DetectionError, Detector  # re-exported for callers

BACKENDS = ("mediapipe", "openpose-json", "mmpose")
__all__ = ["BACKENDS", "BackendUnavailable", "DetectionError", "Detector", "PersonKeypoints", "make_detector"]


def make_detector(name: str, keypoints_dir: str | Path | None = None, root: str | Path | None = None) -> Detector:
    """Build a backend by name. `keypoints_dir`/`root` locate OpenPose JSON files (see
    `openpose_json.OpenPoseJsonDetector`)."""
    if name == "mediapipe":
        from mst_pipeline.detect.mediapipe_backend import MediaPipeDetector

        return MediaPipeDetector()
    if name == "openpose-json":
        from mst_pipeline.detect.openpose_json import OpenPoseJsonDetector

        return OpenPoseJsonDetector(keypoints_dir=keypoints_dir, root=root)
    if name == "mmpose":
        from mst_pipeline.detect.mmpose_backend import MMPoseDetector

        return MMPoseDetector()
    raise ValueError(f"unknown keypoint backend {name!r}: choose one of {', '.join(BACKENDS)}")
