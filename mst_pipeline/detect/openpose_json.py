"""OpenPose `--write_json` files as a keypoint backend (the input smplify-x reads).

Each image `DIR/a/b.jpg` has a file `b_keypoints.json` (or `b.json`) either next to it or under
`keypoints_dir/a/`. Every entry of `people` is a detection (`mst_pipeline.detect.persons` picks
the person to fit and names the others). Arrays are flat
(x, y, c) triples: 25 body, 21 per hand, 70 face points; empty hand/face lists mean "not run".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.detect.base import DetectionError

_ARRAYS = {"pose_keypoints_2d": 25, "hand_left_keypoints_2d": 21, "hand_right_keypoints_2d": 21,
           "face_keypoints_2d": 70}


def parse_openpose(data: object, source: str = "keypoint file") -> list[PersonKeypoints]:
    """Every person of a parsed OpenPose JSON document, in file order; DetectionError when malformed
    or empty."""
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise DetectionError(f"{source}: not an OpenPose JSON document (no 'people' list)")
    people = []
    for i, person in enumerate(data["people"]):
        if not isinstance(person, dict):
            raise DetectionError(f"{source}: people[{i}] is not an object")
        arrays = {}
        for name, n in _ARRAYS.items():
            flat = person.get(name) or []
            try:
                arr = np.asarray(flat, dtype=np.float64)
            except (TypeError, ValueError):
                raise DetectionError(f"{source}: people[{i}].{name} is not a list of numbers") from None
            if arr.size == 0:
                arr = np.zeros((n, 3))
            elif arr.ndim != 1 or arr.size != 3 * n:
                raise DetectionError(f"{source}: people[{i}].{name} has {arr.size} numbers, expected {3 * n}")
            arr = arr.reshape(n, 3)
            if not np.all(np.isfinite(arr)):
                raise DetectionError(f"{source}: people[{i}].{name} has non-finite values")
            arr[:, 2] = np.clip(arr[:, 2], 0.0, 1.0)
            arrays[name] = arr
        people.append(PersonKeypoints(arrays["pose_keypoints_2d"], arrays["hand_left_keypoints_2d"],
                                      arrays["hand_right_keypoints_2d"], arrays["face_keypoints_2d"]))
    if not people:
        raise DetectionError(f"{source}: no person")
    return people


class OpenPoseJsonDetector:
    def __init__(self, keypoints_dir: str | Path | None = None, root: str | Path | None = None) -> None:
        self.keypoints_dir = Path(keypoints_dir) if keypoints_dir else None
        self.root = Path(root) if root else None

    def find(self, path: Path) -> Path:
        folders = [path.parent]
        if self.keypoints_dir is not None:
            rel = path.parent.relative_to(self.root) if self.root and path.is_relative_to(self.root) else Path()
            folders = [self.keypoints_dir / rel, self.keypoints_dir]
        for folder in folders:
            for name in (f"{path.stem}_keypoints.json", f"{path.stem}.json"):
                if (folder / name).is_file():
                    return folder / name
        raise DetectionError(f"no OpenPose JSON for {path.name} ({path.stem}_keypoints.json) in "
                             + ", ".join(str(f) for f in folders))

    def __call__(self, image: np.ndarray, path: Path) -> list[PersonKeypoints]:
        file = self.find(Path(path))
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise DetectionError(f"{file.name}: unreadable JSON ({e})") from None
        return parse_openpose(data, file.name)
