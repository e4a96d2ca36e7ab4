"""mediapipe 0.10.21 as the offline keypoint backend: pose (33), hands (21 each), face mesh (468).

Only the models bundled in the wheel are used (pose `model_complexity=1`; 0 and 2 download their
models at run time). Conversion to the internal layout (local to this backend):

* pose 33 -> BODY_25: direct points, Neck and MidHip as midpoints; mediapipe's visibility is the
  confidence. mediapipe's "left" is the person's left, as OpenPose's.
* hands: each detected hand is assigned to the nearer pose wrist (mediapipe's handedness label
  assumes a mirrored selfie); the 21 points are in OpenPose's hand order already.
* face mesh: fills the nose and eyes when the pose model misses the face (tight face crops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mst_pipeline.detect import BackendUnavailable, DetectionError, PersonKeypoints

# BODY_25 slot <- mediapipe pose index (Neck 1 and MidHip 8 are midpoints).
_POSE_TO_BODY25 = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 9: 24, 10: 26, 11: 28, 12: 23, 13: 25,
                   14: 27, 15: 5, 16: 2, 17: 8, 18: 7, 19: 31, 20: 31, 21: 29, 22: 32, 23: 32, 24: 30}
_MIDPOINTS = {1: (11, 12), 8: (23, 24)}
# Face-mesh landmarks for BODY_25 nose (tip) and eyes (corner midpoints).
_MESH_NOSE, _MESH_REYE, _MESH_LEYE = (1,), (33, 133), (362, 263)


def pose33_to_body25(lm: np.ndarray) -> np.ndarray:
    """mediapipe pose landmarks [33, 3] (x, y in pixels, visibility) -> BODY_25 [25, 3]."""
    body = np.zeros((25, 3))
    for slot, idx in _POSE_TO_BODY25.items():
        body[slot] = lm[idx]
    for slot, (a, b) in _MIDPOINTS.items():
        body[slot, :2] = 0.5 * (lm[a, :2] + lm[b, :2])
        body[slot, 2] = min(lm[a, 2], lm[b, 2])
    body[:, 2] = np.clip(body[:, 2], 0.0, 1.0)
    return body


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
        out = PersonKeypoints.empty()
        pose = self.pose.process(img)
        if pose.pose_landmarks is not None:
            lm = np.array([(p.x * w, p.y * h, p.visibility) for p in pose.pose_landmarks.landmark])
            out.body = pose33_to_body25(lm)
        hands = self.hands.process(img)
        for hand in hands.multi_hand_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, 1.0) for p in hand.landmark])
            side = self._side(pts[0, :2], out.body, hands, hand)
            if side == "left" and out.lhand[0, 2] == 0:
                out.lhand = pts
            elif out.rhand[0, 2] == 0:
                out.rhand = pts
            else:
                out.lhand = pts
        if out.body[[0, 15, 16], 2].max() < 0.5:
            face = self.face.process(img)
            if face.multi_face_landmarks:
                mesh = np.array([(p.x * w, p.y * h) for p in face.multi_face_landmarks[0].landmark])
                for slot, ids in ((0, _MESH_NOSE), (15, _MESH_REYE), (16, _MESH_LEYE)):
                    out.body[slot] = (*mesh[list(ids)].mean(0), 0.9)
        if out.body[:, 2].max() == 0 and out.lhand[:, 2].max() == 0 and out.rhand[:, 2].max() == 0:
            raise DetectionError("no person found (mediapipe found no pose, hand or face)")
        return out

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
