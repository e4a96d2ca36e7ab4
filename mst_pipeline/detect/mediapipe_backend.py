"""mediapipe 0.10.21 as the offline keypoint backend: pose (33), hands (21 each), face mesh (468).

Only the models bundled in the wheel are used (pose `model_complexity=1`; 0 and 2 download their
models at run time). The layouts are converted by `mst_pipeline.body.keypoints`:

* pose: mediapipe's visibility is the confidence;
* hands: each detected hand is assigned to the nearer pose wrist (mediapipe's handedness label
  assumes a mirrored selfie); when the pose sees a person, a hand far from both of its visible
  wrists is dropped (`hand_is_attached`: in portraits the hand model finds "hands" in ties and
  folds of clothing, and one such outlier spoils the fit);
* face mesh: the 70 OpenPose face points, and the nose and eyes where the pose misses them (tight
  face crops). The mesh's face detector finds only faces that fill a fair part of its input, so
  when the pose sees a head the mesh runs on a square crop around it (a full-body photo's face
  is small); otherwise, or when the crop gives nothing, on the whole image.
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
        self.hands = sol.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                     min_detection_confidence=min_confidence)
        self.face = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                           min_detection_confidence=min_confidence)

    def __call__(self, image: np.ndarray, path: Path) -> PersonKeypoints:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectionError(f"expected an RGB uint8 image, got {image.dtype} {list(image.shape)}")
        h, w = image.shape[:2]
        img = np.ascontiguousarray(image)
        try:
            out, head_box = PersonKeypoints.empty(), None
            pose = self.pose.process(img)
            if pose.pose_landmarks is not None:
                lm = np.array([(p.x * w, p.y * h, p.visibility) for p in pose.pose_landmarks.landmark])
                out = from_mediapipe_pose33(lm)
                head_box = head_crop(lm, w, h)
            hands = self.hands.process(img)
            for hand in hands.multi_hand_landmarks or []:
                pts = from_mediapipe_hand21([(p.x * w, p.y * h) for p in hand.landmark])
                if not hand_is_attached(pts, out.body):
                    continue
                side = self._side(pts[0, :2], out.body, hands, hand)
                if side == "left" and out.lhand[0, 2] == 0:
                    out.lhand = pts
                elif out.rhand[0, 2] == 0:
                    out.rhand = pts
                else:
                    out.lhand = pts
            mesh = self._mesh(img, head_box)
            if mesh is not None:
                out.face = from_mediapipe_face468(mesh, score=_MESH_SCORE)
                for slot, point in _BODY_FROM_FACE.items():
                    if out.body[slot, 2] < _HEAD_SEEN:
                        out.body[slot] = out.face[point]
        except KeypointLayoutError as e:
            raise DetectionError(f"mediapipe output: {e}") from None
        if all(g[:, 2].max() == 0 for g in out.groups().values()):
            raise DetectionError("no person found (mediapipe found no pose, hand or face)")
        return out

    def _mesh(self, img: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray | None:
        """Face mesh [468, 2] in image pixels, run on the head crop `box` (x0, y0, x1, y1) and then on
        the whole image; None when neither finds a face."""
        h, w = img.shape[:2]
        boxes = [box, (0, 0, w, h)] if box is not None else [(0, 0, w, h)]
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
