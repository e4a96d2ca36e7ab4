"""mediapipe 0.10.21 as the offline keypoint backend: pose (33), hands (21 each), face mesh (468),
face detection (boxes).

Only the models bundled in the wheel are used (pose `model_complexity=1`; 0 and 2 download their
models at run time; the Tasks API's multi-person pose landmarker needs a model file the wheel does
not ship). The layouts are converted by `mst_pipeline.body.keypoints`:

* pose: mediapipe's visibility is the confidence. The pose model finds one person per input;
  further people are found through their faces: each face the face detector finds (full-range
  model) whose place no pose so far explains gets the pose model run on a crop below it
  (`body_crop`), kept when that pose's nose lies in the face; then the pose model runs on the
  whole image with everyone found greyed out, while it finds a torso outside them whose head
  crop shows a face (`stands_apart`, `_has_face`). People with no visible face, very small or
  overlapping another stay unseen or are found as one;
* hands: each detected hand is assigned to the person with the nearer pose wrist, and there to
  that wrist (mediapipe's handedness label assumes a mirrored selfie); when a pose sees a
  person, a hand far from all visible wrists is dropped (`hand_is_attached`: in portraits the
  hand model finds "hands" in ties and folds of clothing, and one such outlier spoils the fit);
* face mesh: the 70 OpenPose face points, and the nose and eyes where the pose misses them (tight
  face crops). The mesh's face detector finds only faces that fill a fair part of its input, so
  when the pose sees a head the mesh runs on a square crop around it (a full-body photo's face
  is small); otherwise, or when the crop gives nothing, on the whole image (when the image
  holds one person: else it could find another's face).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mst_pipeline.body.keypoints import (
    KeypointLayoutError,
    PersonKeypoints,
    from_mediapipe_face468,
    from_mediapipe_hand21,
    from_mediapipe_pose33,
)
from mst_pipeline.detect.base import BackendUnavailable, DetectionError

_POSE_HEAD = slice(0, 11)  # mediapipe pose landmarks on the head: nose, eyes, ears, mouth
_HEAD_SEEN = 0.5  # pose visibility above which the head is taken to be in the image
_HEAD_CROP = 3.0  # crop side / extent of the pose's head landmarks (about 2.5-3 face widths)
_MESH_SCORE = 0.9  # the face mesh has no per-point confidence
_FACE_SCORE = 0.6  # face detector score that starts a search for a further person
_BODY_CROP = (3.0, 1.0, 8.0)  # see body_crop
_MAX_HANDS = 4  # two people's hands
_MAX_PEOPLE = 4  # greyed-out passes stop here
# BODY_25 slot <- OpenPose face point, for filling the body's face points from the mesh.
_BODY_FROM_FACE = {0: 30, 15: 68, 16: 69}  # Nose <- nose tip, REye/LEye <- pupils


class MediaPipeDetector:
    def __init__(self, min_confidence: float = 0.3) -> None:
        try:
            import mediapipe as mp
        except ImportError:
            raise BackendUnavailable("the mediapipe backend needs `pip install mediapipe==0.10.21`") from None
        sol = mp.solutions
        self.pose = sol.pose.Pose(static_image_mode=True, model_complexity=1,
                                  min_detection_confidence=min_confidence)
        self.hands = sol.hands.Hands(static_image_mode=True, max_num_hands=_MAX_HANDS, model_complexity=1,
                                     min_detection_confidence=min_confidence)
        self.face = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                           min_detection_confidence=min_confidence)
        # Full-range model (1): faces down to a few dozen pixels, as in a group photo.
        self.faces = sol.face_detection.FaceDetection(model_selection=1, min_detection_confidence=_FACE_SCORE)

    def __call__(self, image: np.ndarray, path: Path) -> list[PersonKeypoints]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectionError(f"expected an RGB uint8 image, got {image.dtype} {list(image.shape)}")
        img = np.ascontiguousarray(image)
        try:
            poses = self._poses(img)
            people = [from_mediapipe_pose33(lm) for lm in poses] or [PersonKeypoints.empty()]
            heads = [head_crop(lm, img.shape[1], img.shape[0]) for lm in poses] or [None]
            self._add_hands(img, people)
            for person, box in zip(people, heads, strict=True):
                # Without a head box the whole image is searched: only when it holds one person.
                mesh = self._mesh(img, box, whole=len(people) == 1)
                if mesh is None:
                    continue
                person.face = from_mediapipe_face468(mesh, score=_MESH_SCORE)
                for slot, point in _BODY_FROM_FACE.items():
                    if person.body[slot, 2] < _HEAD_SEEN:
                        person.body[slot] = person.face[point]
        except KeypointLayoutError as e:
            raise DetectionError(f"mediapipe output: {e}") from None
        people = [p for p in people if any(g[:, 2].max() > 0 for g in p.groups().values())]
        if not people:
            raise DetectionError("no person (mediapipe found no pose, hand or face)")
        return people

    def _pose(self, img: np.ndarray, box: tuple[int, int, int, int], hide: tuple = ()) -> np.ndarray | None:
        """Pose landmarks [33, 3] (image pixels, visibility) of the person in crop BOX, or None.
        HIDE: boxes (x0, y0, x1, y1) painted grey first (the heads of people already found, which
        the pose model, whose person detector keys on faces, would otherwise find again)."""
        x0, y0, x1, y1 = box
        crop = np.array(img[y0:y1, x0:x1])
        for hx0, hy0, hx1, hy1 in hide:
            crop[max(hy0 - y0, 0):max(hy1 - y0, 0), max(hx0 - x0, 0):max(hx1 - x0, 0)] = 128
        found = self.pose.process(crop).pose_landmarks
        if found is None:
            return None
        cw, ch = x1 - x0, y1 - y0
        return np.array([(x0 + p.x * cw, y0 + p.y * ch, p.visibility) for p in found.landmark])

    def _poses(self, img: np.ndarray) -> list[np.ndarray]:
        """Pose landmarks of each person: mediapipe's pose model sees one person per input, so the
        whole image gives one; each face the face detector finds that no pose so far explains
        gives one more, from the pose model run on a body-sized crop below that face; then the
        whole image again with everyone found so far greyed out, while that finds someone new (a
        person whose face the whole-image face search misses: small, in profile) whose head crop
        shows a face."""
        h, w = img.shape[:2]
        first = self._pose(img, (0, 0, w, h))
        poses = [first] if first is not None else []
        if first is None:  # a tight face or hand crop: the face mesh and hand model take over
            return poses
        for face in self._faces(img):
            if any(head_in(lm, face) for lm in poses):
                continue
            heads = [b for b in (head_crop(p, w, h) for p in poses) if b is not None]
            lm = self._pose(img, body_crop(face, w, h), hide=heads)
            if lm is not None and head_in(lm, face) and not any(same_person(lm, other) for other in poses):
                poses.append(lm)
        while len(poses) < _MAX_PEOPLE:
            boxes = [seen_box(p, w, h) for p in poses]
            lm = self._pose(img, (0, 0, w, h), hide=boxes)
            if lm is None or not stands_apart(lm, boxes) or any(same_person(lm, other) for other in poses):
                break
            if not self._has_face(img, lm):  # a head-like thing (a helmet, a ball) the pose model took for one
                break
            poses.append(lm)
        return poses

    def _has_face(self, img: np.ndarray, lm: np.ndarray) -> bool:
        """Whether the face detector finds a face in the head crop of pose landmarks [33, 3] (a
        face too small or too turned for the whole-image search is found at this zoom)."""
        box = head_crop(lm, img.shape[1], img.shape[0])
        if box is None:
            return False
        x0, y0, x1, y1 = box
        return bool(self.faces.process(np.ascontiguousarray(img[y0:y1, x0:x1])).detections)

    def _faces(self, img: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes (x0, y0, x1, y1) in image pixels, from the full-range face detector."""
        h, w = img.shape[:2]
        boxes = []
        for d in self.faces.process(img).detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
        return boxes

    def _add_hands(self, img: np.ndarray, people: list[PersonKeypoints]) -> None:
        """Each hand the hand model finds goes to the person whose visible wrist is nearest (among
        those it is attached to, `hand_is_attached`); a hand of nobody is dropped."""
        h, w = img.shape[:2]
        hands = self.hands.process(img)
        for hand in hands.multi_hand_landmarks or []:
            pts = from_mediapipe_hand21([(p.x * w, p.y * h) for p in hand.landmark])
            owners = [p for p in people if hand_is_attached(pts, p.body)]
            if not owners:
                continue
            out = min(owners, key=lambda p: _wrist_distance(pts[0, :2], p.body))
            side = self._side(pts[0, :2], out.body, hands, hand)
            if side == "left" and out.lhand[0, 2] == 0:
                out.lhand = pts
            elif out.rhand[0, 2] == 0:
                out.rhand = pts
            else:
                out.lhand = pts

    def _mesh(self, img: np.ndarray, box: tuple[int, int, int, int] | None, whole: bool = True) -> np.ndarray | None:
        """Face mesh [468, 2] in image pixels, run on the head crop `box` (x0, y0, x1, y1) and then,
        when WHOLE, on the whole image; None when none finds a face."""
        h, w = img.shape[:2]
        boxes = [b for b in (box, (0, 0, w, h) if whole else None) if b is not None]
        for x0, y0, x1, y1 in boxes:
            crop = np.ascontiguousarray(img[y0:y1, x0:x1])
            found = self.face.process(crop).multi_face_landmarks
            if found:
                cw, ch = x1 - x0, y1 - y0
                return np.array([(x0 + p.x * cw, y0 + p.y * ch) for p in found[0].landmark])
        return None

    @staticmethod
    def _side(wrist: np.ndarray, body: np.ndarray, result, hand) -> str:
        lw, rw = body[7], body[4]
        if lw[2] > 0.3 or rw[2] > 0.3:
            dl = np.linalg.norm(wrist - lw[:2]) if lw[2] > 0.3 else np.inf
            dr = np.linalg.norm(wrist - rw[:2]) if rw[2] > 0.3 else np.inf
            return "left" if dl < dr else "right"
        idx = (result.multi_hand_landmarks or []).index(hand)
        label = result.multi_handedness[idx].classification[0].label  # mirrored-selfie convention
        return "right" if label == "Left" else "left"


def hand_is_attached(hand: np.ndarray, body: np.ndarray, seen: float = 0.5, wrist_seen: float = 0.3) -> bool:
    """Whether a detected hand [21, 3] belongs to the person of BODY_25 `body` [25, 3].

    Without a confidently seen shoulder there is no person to check against (a hand crop): keep
    it. Otherwise its wrist must lie within 1.5 hand sizes (or a quarter of the shoulder width)
    of a visible pose wrist.
    """
    if max(body[2, 2], body[5, 2]) < seen:
        return True
    size = float(np.ptp(hand[:, :2], axis=0).max())
    shoulders = float(np.linalg.norm(body[2, :2] - body[5, :2])) if min(body[2, 2], body[5, 2]) >= seen else 0.0
    reach = max(1.5 * size, 0.25 * shoulders)
    return any(body[i, 2] > wrist_seen and np.linalg.norm(hand[0, :2] - body[i, :2]) <= reach for i in (4, 7))


def _wrist_distance(point: np.ndarray, body: np.ndarray, seen: float = 0.3) -> float:
    d = [np.linalg.norm(point - body[i, :2]) for i in (4, 7) if body[i, 2] > seen]
    return float(min(d)) if d else np.inf


def head_in(lm: np.ndarray, face: tuple[float, float, float, float], margin: float = 0.25) -> bool:
    """Whether the nose of pose landmarks [33, 3] is seen inside face box (x0, y0, x1, y1), grown by
    MARGIN of its size on each side."""
    x0, y0, x1, y1 = face
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    x, y, v = lm[0]
    return bool(v >= _HEAD_SEEN and x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my)


def same_person(a: np.ndarray, b: np.ndarray, tolerance: float = 0.25) -> bool:
    """Whether two sets of pose landmarks [33, 3] are one person found twice: their shoulders and
    noses within TOLERANCE of the shoulder width."""
    idx = [0, 11, 12]
    if min(a[idx, 2].min(), b[idx, 2].min()) < _HEAD_SEEN:
        return False
    width = max(np.linalg.norm(a[11, :2] - a[12, :2]), np.linalg.norm(b[11, :2] - b[12, :2]), 1.0)
    return bool(np.linalg.norm(a[idx, :2] - b[idx, :2], axis=1).max() <= tolerance * width)


_TORSO33 = (11, 12, 23, 24)  # mediapipe pose shoulders and hips


def seen_box(lm: np.ndarray, width: int, height: int, grow: float = 0.1) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1) around the landmarks [33, 3] seen (visibility ≥ 0.5), grown by GROW of
    its size on each side and clipped to the image."""
    pts = lm[lm[:, 2] >= _HEAD_SEEN, :2]
    if not len(pts):
        return 0, 0, 0, 0
    lo, hi = pts.min(0), pts.max(0)
    pad = grow * (hi - lo)
    return (max(int(lo[0] - pad[0]), 0), max(int(lo[1] - pad[1]), 0),
            min(int(np.ceil(hi[0] + pad[0])), width), min(int(np.ceil(hi[1] + pad[1])), height))


def stands_apart(lm: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> bool:
    """Whether pose landmarks [33, 3] show a torso (two shoulders or hips seen) whose centre lies
    outside every one of BOXES (the people already found): a new person, not a trace of the grey."""
    torso = lm[list(_TORSO33)]
    seen = torso[torso[:, 2] >= _HEAD_SEEN, :2]
    if len(seen) < 2:
        return False
    x, y = seen.mean(0)
    return not any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)


def body_crop(face: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1), clipped to the image, where the body below face box FACE lies:
    _BODY_CROP = (half width, height above, height below) in face heights (a standing body is
    about 7.5 heads tall; arms may reach out about two heads each side of the shoulders)."""
    x0, y0, x1, y1 = face
    size = max(y1 - y0, x1 - x0, 1.0)
    half, above, below = _BODY_CROP
    cx = 0.5 * (x0 + x1)
    return (max(int(cx - half * size), 0), max(int(y0 - above * size), 0),
            min(int(np.ceil(cx + half * size)), width), min(int(np.ceil(y1 + below * size)), height))


def head_crop(lm: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Square box (x0, y0, x1, y1), clipped to the image, around the head landmarks of mediapipe pose
    landmarks [33, 3] (pixels, visibility); None when the pose does not see the head."""
    head = lm[_POSE_HEAD]
    if head[:, 2].max() < _HEAD_SEEN:
        return None
    lo, hi = head[:, :2].min(0), head[:, :2].max(0)
    half = 0.5 * max(_HEAD_CROP * float((hi - lo).max()), 32.0)
    cx, cy = 0.5 * (lo + hi)
    x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
    x1, y1 = min(int(np.ceil(cx + half)), width), min(int(np.ceil(cy + half)), height)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return x0, y0, x1, y1
