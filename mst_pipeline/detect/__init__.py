"""2-D keypoint backends behind one interface (paper §3.1: J' of Eq. 1).

Every backend returns a `PersonKeypoints` in the internal layout — OpenPose BODY_25, 2 × 21 hand
keypoints (OpenPose hand order) and 70 face keypoints — in image pixels (x right, y down) with a
confidence in [0, 1], 0 where unknown. Backends:

* `mediapipe` (default): mediapipe 0.10.21's bundled pose, hand and face-mesh models, offline;
* `openpose-json`: precomputed OpenPose `--write_json` files next to the images or in a folder;
* `mmpose`: COCO-WholeBody-133 through mmpose, an optional extra imported only when chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mst_pipeline.smplify import HAND_SLOTS, NUM_TARGETS

BACKENDS = ("mediapipe", "openpose-json", "mmpose")


class DetectionError(ValueError):
    """No usable keypoints for an image (no person, malformed file); the image is rejected."""


class BackendUnavailable(RuntimeError):
    """A backend whose package or model is not installed; the message says how to get it."""


@dataclass
class PersonKeypoints:
    """One person's keypoints in image pixels: body [25,3], lhand [21,3], rhand [21,3], face [70,3]
    as (x, y, confidence)."""

    body: np.ndarray
    lhand: np.ndarray
    rhand: np.ndarray
    face: np.ndarray

    @classmethod
    def empty(cls) -> PersonKeypoints:
        return cls(np.zeros((25, 3)), np.zeros((21, 3)), np.zeros((21, 3)), np.zeros((70, 3)))

    def targets(self) -> np.ndarray:
        """The fitting targets [37, 3]: BODY_25, then wrist + fingertips of each hand."""
        out = np.concatenate([self.body, self.lhand[list(HAND_SLOTS)], self.rhand[list(HAND_SLOTS)]])
        assert out.shape == (NUM_TARGETS, 3)
        return out

    def groups(self) -> dict[str, np.ndarray]:
        return {"body": self.body, "lhand": self.lhand, "rhand": self.rhand, "face": self.face}


class Detector(Protocol):
    def __call__(self, image: np.ndarray, path: Path) -> PersonKeypoints:
        """image: RGB uint8 [h, w, 3]; path: the image file (backends reading side files use it)."""


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
