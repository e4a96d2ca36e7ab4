"""Keypoint layouts and their conversion to the internal one (J' of paper Eq. 1).

The internal layout is OpenPose's: BODY_25 [25, 3], left and right hand [21, 3] each (OpenPose
hand order: wrist, then four points per finger from thumb to little finger) and 70 face points
[70, 3] (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth, 68/69 right/left pupil),
each (x, y, confidence) in image pixels. "Left" is always the person's left.

Rules shared by every converter: points a source layout lacks are (0, 0, 0); Neck and MidHip are
the midpoints of the shoulders and hips with the smaller of the two confidences ((0, 0, 0) when
either is missing); confidences are clipped to [0, 1]; a wrong shape or a non-finite value raises
`KeypointLayoutError` naming the expected shape. Pure numpy: detector packages are not imported.

Converters: `from_coco17`, `from_coco_wholebody133`, `from_mediapipe_pose33` return a
`PersonKeypoints`; `from_mediapipe_hand21` returns one hand [21, 3] and `from_mediapipe_face468`
the 70 face points [70, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mst_pipeline.body.layout import BODY25_NAMES, HAND_SLOTS, NUM_TARGETS


class KeypointLayoutError(ValueError):
    """Keypoints that do not have the shape (or finite values) their layout requires."""


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

    def targets(self, kind: str | None = None) -> np.ndarray:
        """The fitting targets [37, 3]: BODY_25, then wrist + fingertips of each hand, as a fit of
        view kind KIND reads them (`view_body`)."""
        body = view_body(self.body, self.face, kind)
        out = np.concatenate([body, self.lhand[list(HAND_SLOTS)], self.rhand[list(HAND_SLOTS)]])
        assert out.shape == (NUM_TARGETS, 3)
        return out

    def groups(self) -> dict[str, np.ndarray]:
        return {"body": self.body, "lhand": self.lhand, "rhand": self.rhand, "face": self.face}


NECK, MIDHIP = BODY25_NAMES.index("Neck"), BODY25_NAMES.index("MidHip")
# In face and upper-body crops the ears are read from the face's jaw line where it meets them
# (points 1 and 15 of the 70, iBUG numbering): in a face crop a body model guesses the ears
# (mediapipe's scatter 10-14 px on 400-px crops, their spread 0.7-1.0x from crop to crop, which sized
# faces up to 35 % wrong), a face model places the jaw line within 5 px (docs/mst.md, "Keypoint
# conventions"). Per view kind: BODY_25 slot -> face point.
_JAW_EARS = {BODY25_NAMES.index("REar"): 1, BODY25_NAMES.index("LEar"): 15}
FROM_FACE = {"face": _JAW_EARS, "upper": _JAW_EARS}
FACE_SEEN = 0.3  # face points at this confidence are seen (`detect.persons.SEEN`)


def view_body(body: np.ndarray, face: np.ndarray | None, kind: str | None) -> np.ndarray:
    """BODY_25 [25, 3] as a fit of view kind KIND reads it: the slots of `FROM_FACE[kind]` from the
    face's points when all of them are seen; otherwise BODY [25, 3] itself."""
    slots = FROM_FACE.get(kind or "")
    if not slots or face is None or len(face) < 70:
        return body
    points = np.asarray(face)[list(slots.values())]
    if not (points[:, 2] >= FACE_SEEN).all():
        return body
    out = np.array(body, dtype=np.float64, copy=True)
    out[list(slots)] = points
    return out


COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# COCO-WholeBody: COCO-17, six foot points, 68 face (iBUG order), 21 left-hand, 21 right-hand points.
COCO_WHOLEBODY_FEET: tuple[str, ...] = (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip
WHOLEBODY_FACE, WHOLEBODY_LHAND, WHOLEBODY_RHAND = slice(23, 91), slice(91, 112), slice(112, 133)
MEDIAPIPE_POSE33_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip

# Source point name of each BODY_25 keypoint (Neck and MidHip are derived). A layout fills the
# slots whose name it has.
_BODY25_SOURCE = {
    "Nose": "nose", "RShoulder": "right_shoulder", "RElbow": "right_elbow", "RWrist": "right_wrist",
    "LShoulder": "left_shoulder", "LElbow": "left_elbow", "LWrist": "left_wrist", "RHip": "right_hip",
    "RKnee": "right_knee", "RAnkle": "right_ankle", "LHip": "left_hip", "LKnee": "left_knee",
    "LAnkle": "left_ankle", "REye": "right_eye", "LEye": "left_eye", "REar": "right_ear", "LEar": "left_ear",
    "LBigToe": "left_big_toe", "LSmallToe": "left_small_toe", "LHeel": "left_heel",
    "RBigToe": "right_big_toe", "RSmallToe": "right_small_toe", "RHeel": "right_heel",
}  # fmt: skip


def _body_map(names: tuple[str, ...], aliases: dict[str, str] | None = None) -> tuple[tuple[int, int], ...]:
    """(BODY_25 slot, source index) pairs for a layout with these point names."""
    source = {**_BODY25_SOURCE, **(aliases or {})}
    return tuple((slot, names.index(source[n])) for slot, n in enumerate(BODY25_NAMES)
                 if n in source and source[n] in names)


_COCO17_MAP = _body_map(COCO17_NAMES)
_WHOLEBODY_MAP = _body_map(COCO17_NAMES + COCO_WHOLEBODY_FEET)
# mediapipe's one toe point (tip of the second toe) stands in for the big toe; it has no small toe.
_POSE33_MAP = _body_map(MEDIAPIPE_POSE33_NAMES, {"LBigToe": "left_foot_index", "RBigToe": "right_foot_index"})

# Face mesh landmark for each of OpenPose's face points 0-67 (the 68 iBUG / Multi-PIE points).
# Each part follows one of the mesh's own contours (the face oval, the upper brow edges, the
# nose ridge and lower nose, the eye and lip rings); along a contour the vertex nearest to the
# iBUG point's place is taken: the eye and mouth corners, the cupid's-bow peaks (37, 267), the
# chin (152) and the nose tip (4) as anatomical landmarks, the points between them at even arc
# length along the contour as measured on a frontal photograph. The table is mirror-symmetric
# (each right-side vertex pairs with its left-side mirror) and was checked by drawing it.
MEDIAPIPE_FACE468_TO_OPENPOSE: tuple[int, ...] = (
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107,  # right brow 17-21, outer to inner
    336, 296, 334, 293, 300,  # left brow 22-26, inner to outer
    168, 197, 5, 4,  # nose ridge 27-30, nasion to tip
    98, 97, 2, 326, 327,  # lower nose 31-35, right ala to left ala
    33, 160, 158, 133, 153, 144,  # right eye 36-41, outer corner, upper lid, inner corner, lower lid
    362, 385, 387, 263, 373, 380,  # left eye 42-47, inner corner, upper lid, outer corner, lower lid
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,  # outer lips 48-59 from the right corner
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips 60-67 from the right corner
)  # fmt: skip
# The 16 mesh vertices around each eye; their mean is the pupil when the mesh has no iris points.
MEDIAPIPE_RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MEDIAPIPE_LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# With `refine_landmarks=True` the mesh has 478 points; 468 and 473 are the right and left iris centres.
MEDIAPIPE_IRIS_CENTRES = (468, 473)


def _points(kp: object, layout: str, n: tuple[int, ...], cols: tuple[int, ...], scored: bool = True) -> np.ndarray:
    """kp as a float [N, C] array with N in `n` and C in `cols`, else KeypointLayoutError. `scored`:
    the third column is a confidence (clipped to [0, 1])."""
    expected = f"[{'|'.join(map(str, n))}, {'|'.join(map(str, cols))}]"
    try:
        arr = np.array(kp, dtype=np.float64)
    except (TypeError, ValueError):
        raise KeypointLayoutError(f"{layout} keypoints must be a numeric array {expected}") from None
    if arr.ndim != 2 or arr.shape[0] not in n or arr.shape[1] not in cols:
        raise KeypointLayoutError(f"{layout} keypoints must be {expected}, got {list(arr.shape)}")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise KeypointLayoutError(f"{layout} keypoints have non-finite values at point(s) {bad.tolist()}")
    if scored:
        arr[:, 2] = np.clip(arr[:, 2], 0.0, 1.0)
    return arr


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    conf = min(a[2], b[2])
    if conf <= 0:
        return np.zeros(3)
    return np.array([0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1]), conf])


def _body25(kp: np.ndarray, slots: tuple[tuple[int, int], ...], names: tuple[str, ...]) -> np.ndarray:
    body = np.zeros((25, 3))
    for slot, idx in slots:
        body[slot] = kp[idx]
    body[NECK] = _midpoint(kp[names.index("left_shoulder")], kp[names.index("right_shoulder")])
    body[MIDHIP] = _midpoint(kp[names.index("left_hip")], kp[names.index("right_hip")])
    return body


def _with_score(xy: np.ndarray, score: float) -> np.ndarray:
    if not 0.0 <= score <= 1.0:
        raise KeypointLayoutError(f"score must be in [0, 1], got {score}")
    return np.concatenate([xy, np.full((len(xy), 1), float(score))], axis=1)


def from_coco17(kp: object) -> PersonKeypoints:
    """COCO-17 body keypoints [17, 3] (x, y, score) -> internal layout (no feet, hands or face)."""
    arr = _points(kp, "COCO-17", (17,), (3,))
    out = PersonKeypoints.empty()
    out.body = _body25(arr, _COCO17_MAP, COCO17_NAMES)
    return out


def from_coco_wholebody133(kp: object) -> PersonKeypoints:
    """COCO-WholeBody keypoints [133, 3] (x, y, score) -> internal layout: body and feet to BODY_25,
    the 68 face points to OpenPose's face 0-67 (same iBUG order; the pupils stay unknown), the hands
    to the left and right hand (same order as OpenPose's)."""
    arr = _points(kp, "COCO-WholeBody", (133,), (3,))
    out = PersonKeypoints.empty()
    out.body = _body25(arr, _WHOLEBODY_MAP, COCO17_NAMES + COCO_WHOLEBODY_FEET)
    out.face[:68] = arr[WHOLEBODY_FACE]
    out.lhand = arr[WHOLEBODY_LHAND].copy()
    out.rhand = arr[WHOLEBODY_RHAND].copy()
    return out


def from_mediapipe_pose33(lm: object) -> PersonKeypoints:
    """mediapipe pose landmarks [33, 3] (x, y in pixels, visibility) -> internal layout (body only).
    mediapipe's "left" is the person's left, as OpenPose's."""
    arr = _points(lm, "mediapipe pose", (33,), (3,))
    out = PersonKeypoints.empty()
    out.body = _body25(arr, _POSE33_MAP, MEDIAPIPE_POSE33_NAMES)
    return out


def from_mediapipe_hand21(lm: object, score: float = 1.0) -> np.ndarray:
    """mediapipe hand landmarks [21, 2 or 3] in pixels -> one OpenPose hand [21, 3] (same point order).
    A third column is mediapipe's relative depth and is ignored; mediapipe gives no per-point
    confidence, so every point gets `score`."""
    arr = _points(lm, "mediapipe hand", (21,), (2, 3), scored=False)
    return _with_score(arr[:, :2], score)


def from_mediapipe_face468(mesh: object, score: float = 1.0) -> np.ndarray:
    """mediapipe face mesh [468 or 478, 2 or 3] in pixels -> OpenPose's 70 face points [70, 3]
    (`MEDIAPIPE_FACE468_TO_OPENPOSE`; pupils: the iris centres of a 478-point mesh, else the mean
    of each eye's ring). A third column is mediapipe's relative depth and is ignored; every point
    gets `score`."""
    arr = _points(mesh, "mediapipe face mesh", (468, 478), (2, 3), scored=False)[:, :2]
    if len(arr) == 478:
        pupils = arr[list(MEDIAPIPE_IRIS_CENTRES)]
    else:
        pupils = np.stack([arr[list(MEDIAPIPE_RIGHT_EYE_RING)].mean(0), arr[list(MEDIAPIPE_LEFT_EYE_RING)].mean(0)])
    return _with_score(np.concatenate([arr[list(MEDIAPIPE_FACE468_TO_OPENPOSE)], pupils]), score)
