"""Which detections are people, and which person an image is fitted for (pure numpy).

A detection is a person only when its torso or its face is seen: a hand or a foot alone says
nothing about where the body is, and fitting one anyway only fails later ("leaves full-body
space") or, worse, lands somewhere plausible. Nor is a pose that no body can make (`implausible`):
too small to fit, collapsed into a sliver (a keyboard with a hand gives a confident 13-point pose
about 6×60 px), or with a limb segment far longer than the torso. Among the people of an image the one most fully
visible is fitted; the others are named in the sample's meta (`person`, `other_people`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.body.layout import BODY25_NAMES
from mst_pipeline.detect.sides import sides_from_face

SEEN = 0.3  # a keypoint with this confidence is seen (SmplifyConfig.confidence's default)
TORSO = (2, 5, 9, 12)  # BODY_25 RShoulder, LShoulder, RHip, LHip
HEAD = (0, 15, 16, 17, 18)  # Nose, REye, LEye, REar, LEar
FEET = (11, 14, 19, 20, 21, 22, 23, 24)  # ankles, toes and heels
FACE_POINTS = 20  # face-landmark points (of 70) that make a face without body head points
MIN_EXTENT = 16.0  # pixels: a pose smaller than this across is not fitted
COLLAPSED = (0.12, 12.0)  # narrow side below this share of the long side and below this many pixels
LIMB_TO_TORSO = 2.5  # no upper arm, forearm, thigh or shin is this many times the torso length
_OWN = [i for i in range(25) if i not in (1, 8)]  # points a detector places itself (not Neck, MidHip)
_SEGMENTS = ((2, 3), (3, 4), (5, 6), (6, 7), (9, 10), (10, 11), (12, 13), (13, 14))


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


def implausible(kp: PersonKeypoints, seen: float = SEEN) -> str | None:
    """Why the seen BODY_25 points of a detection cannot be a person's, or None: too small (less
    than MIN_EXTENT px across, with four points or more), collapsed (six points or more in a sliver,
    COLLAPSED), or a limb segment LIMB_TO_TORSO times the torso (shoulders' to hips' midpoint) or
    longer."""
    body = kp.body
    own = body[_OWN]
    pts = own[own[:, 2] >= seen, :2]
    if len(pts) >= 4:
        extent = np.ptp(pts, axis=0)
        if extent.max() < MIN_EXTENT:
            return f"the pose found is {extent.max():.0f} px across, too small to be fitted"
        if len(pts) >= 6 and extent.min() < COLLAPSED[0] * extent.max() and extent.min() < COLLAPSED[1]:
            return f"the pose found is collapsed ({extent[0]:.0f}×{extent[1]:.0f} px for {len(pts)} points)"
    torso = body[[2, 5, 9, 12]]
    if (torso[:, 2] >= seen).all():
        length = float(np.linalg.norm(torso[:2, :2].mean(0) - torso[2:, :2].mean(0)))
        for a, b in _SEGMENTS:
            if min(body[a, 2], body[b, 2]) >= seen:
                limb = float(np.linalg.norm(body[a, :2] - body[b, :2]))
                if limb >= LIMB_TO_TORSO * max(length, 1.0):
                    return (f"limbs of impossible proportion ({BODY25_NAMES[a]}-{BODY25_NAMES[b]} is "
                            f"{limb / max(length, 1.0):.1f}× the torso)")
    return None


def is_person(kp: PersonKeypoints, seen: float = SEEN) -> bool:
    """Whether a detection shows a person: two torso points (shoulders, hips) or two head points
    (nose, eyes, ears) seen, or a face found by a face-landmark model (FACE_POINTS points); and its
    pose is one a body can make (`implausible`)."""
    return _torso_or_face(kp, seen) and implausible(kp, seen) is None


def _torso_or_face(kp: PersonKeypoints, seen: float) -> bool:
    body = kp.body[:, 2]
    return bool((body[list(TORSO)] >= seen).sum() >= 2 or (body[list(HEAD)] >= seen).sum() >= 2
                or (kp.face[:, 2] >= seen).sum() >= FACE_POINTS)


def why_no_person(people: list[PersonKeypoints], seen: float = SEEN) -> str:
    """The reject reason for detections none of which `is_person`: what was found instead."""
    for k in people:
        why = implausible(k, seen) if _torso_or_face(k, seen) else None
        if why is not None:
            return f"no person ({why})"
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
    breaks a tie, so the order is the same on every run. Limbs labelled the wrong way round are
    swapped back where the face says so (`sides_from_face`)."""
    found = [seen_person(sides_from_face(k), width, height, seen) for k in people if is_person(k, seen)]

    def order(p: SeenPerson):
        area = (p.box[2] - p.box[0]) * (p.box[3] - p.box[1])
        pts = np.concatenate(list(p.keypoints.groups().values()))
        total = float(pts[_inside(pts, width, height), 2].sum())
        return (-p.visible, -round(total, 6), -area, p.box[0], p.box[1])

    return sorted(found, key=order)
