"""Which detections are people, and which person an image is fitted for (pure numpy).

A detection is a person only when its torso or its face is seen: a hand or a foot alone says
nothing about where the body is, and fitting one anyway only fails later ("leaves full-body
space") or, worse, lands somewhere plausible. Among the people of an image the one most fully
visible is fitted; the others are named in the sample's meta (`person`, `other_people`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints

SEEN = 0.3  # a keypoint with this confidence is seen (SmplifyConfig.confidence's default)
TORSO = (2, 5, 9, 12)  # BODY_25 RShoulder, LShoulder, RHip, LHip
HEAD = (0, 15, 16, 17, 18)  # Nose, REye, LEye, REar, LEar
FEET = (11, 14, 19, 20, 21, 22, 23, 24)  # ankles, toes and heels
FACE_POINTS = 20  # face-landmark points (of 70) that make a face without body head points


@dataclass(frozen=True)
class SeenPerson:
    """One person of an image: keypoints, box [x0, y0, x1, y1] in image pixels (of every point with
    a confidence inside the image) and `visible`, the BODY_25 points seen inside the image."""

    keypoints: PersonKeypoints
    box: tuple[float, float, float, float]
    visible: int

    def record(self, index: int) -> dict:
        """The meta record of this person as the INDEX-th most visible of its image."""
        return {"index": index, "box": [round(v, 1) for v in self.box], "visible": self.visible}


def is_person(kp: PersonKeypoints, seen: float = SEEN) -> bool:
    """Whether a detection shows a person: two torso points (shoulders, hips) or two head points
    (nose, eyes, ears) seen, or a face found by a face-landmark model (FACE_POINTS points)."""
    body = kp.body[:, 2]
    return bool((body[list(TORSO)] >= seen).sum() >= 2 or (body[list(HEAD)] >= seen).sum() >= 2
                or (kp.face[:, 2] >= seen).sum() >= FACE_POINTS)


def why_no_person(people: list[PersonKeypoints], seen: float = SEEN) -> str:
    """The reject reason for detections none of which `is_person`: what was found instead."""
    hands = any((k.lhand[:, 2] >= seen).any() or (k.rhand[:, 2] >= seen).any() for k in people)
    feet = any((k.body[list(FEET), 2] >= seen).any() for k in people)
    found = " and ".join(w for w, f in (("hands", hands), ("feet", feet)) if f)
    what = f"only {found} found" if found else "no torso or face found"
    return f"no person ({what}; a person needs two of shoulders and hips, or a face)"


def _inside(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    return (pts[:, 2] > 0) & (pts[:, 0] >= 0) & (pts[:, 0] <= width) & (pts[:, 1] >= 0) & (pts[:, 1] <= height)


def seen_person(kp: PersonKeypoints, width: int, height: int, seen: float = SEEN) -> SeenPerson:
    pts = np.concatenate(list(kp.groups().values()))
    pts = pts[_inside(pts, width, height)]
    (x0, y0), (x1, y1) = (pts[:, :2].min(0), pts[:, :2].max(0)) if len(pts) else ((0.0, 0.0), (0.0, 0.0))
    visible = int((_inside(kp.body, width, height) & (kp.body[:, 2] >= seen)).sum())
    return SeenPerson(kp, (float(x0), float(y0), float(x1), float(y1)), visible)


def rank_people(people: list[PersonKeypoints], width: int, height: int, seen: float = SEEN) -> list[SeenPerson]:
    """The detections that are people, most fully visible first: by BODY_25 points seen inside the
    image, then the summed confidence of every point inside it, then box area; the leftmost box
    breaks a tie, so the order is the same on every run."""
    found = [seen_person(k, width, height, seen) for k in people if is_person(k, seen)]

    def order(p: SeenPerson):
        area = (p.box[2] - p.box[0]) * (p.box[3] - p.box[1])
        pts = np.concatenate(list(p.keypoints.groups().values()))
        total = float(pts[_inside(pts, width, height), 2].sum())
        return (-p.visible, -round(total, 6), -area, p.box[0], p.box[1])

    return sorted(found, key=order)
