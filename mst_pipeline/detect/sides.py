"""Left and right as the face says (pure numpy).

A pose detector sometimes labels a person's limbs the wrong way round: on renders of people who all
face the camera, mediapipe gave 15 of 192 full-body views their shoulders and arms (often the hips
and legs too) swapped, while the face's points were the right way round (docs/mst.md, "Left and
right"). A fit then starts from a body that faces away, and either keeps it (the face's points go
as outliers) or twists the neck half a turn; both misplace the image in full-body space, and a
full-body fit of that kind teaches the pose prior a pose no one makes.

A face seen from the front says which way the person faces: its nose lies between its ears (or
its jaw line's ends), and a person facing the camera has the left ear on the image's right. A neck
does not turn half a turn, so an arm pair (or leg pair) whose order says the opposite, clearly,
is taken to be swapped and is swapped back, with its hand. Nothing changes when the face is not
seen from the front, not seen confidently, or when the shoulders (hips) are too close together in
the image for their order to mean anything (a body seen side-on).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints

SURE = 0.8  # pose points at this confidence or above are trusted to say which way the face looks
FACE_SEEN = 0.3  # face-landmark points at this confidence are seen
NOSE = 0
EYES = (15, 16)  # REye, LEye
EARS = (17, 18)  # REar, LEar
JAW = (1, 15)  # the face landmarks' jaw line by the right and the left ear (OpenPose face 70)
ARMS = ((2, 3, 4), (5, 6, 7))  # right, left: shoulder, elbow, wrist
LEGS = ((9, 10, 11, 22, 23, 24), (12, 13, 14, 19, 20, 21))  # hip, knee, ankle, big toe, small toe, heel
HIP_SPREAD = 0.5  # hips closer together than this share of the face pair's spread say nothing


def face_facing(kp: PersonKeypoints) -> tuple[int, float]:
    """(+1 facing the camera, −1 facing away, 0 unknown; the face pair's horizontal spread in px)
    from the face seen from the front: the jaw line's ends of a face-landmark model, else the
    pose's ears, else its eyes, with the nose between the pair."""
    nose = kp.body[NOSE]
    candidates = []
    if len(kp.face) >= 70 and (kp.face[list(JAW), 2] >= FACE_SEEN).all():
        candidates.append((kp.face[JAW[0]], kp.face[JAW[1]], FACE_SEEN))
    candidates += [(kp.body[r], kp.body[left], SURE) for r, left in (EARS, EYES)]
    for right, left, sure in candidates:
        if min(right[2], left[2], nose[2]) < sure:
            continue
        lo, hi = sorted((right[0], left[0]))
        if not lo < nose[0] < hi:
            return 0, 0.0  # the nose outside its pair: a face seen from the side (or behind)
        return (1 if left[0] > right[0] else -1), hi - lo
    return 0, 0.0


def sides_from_face(kp: PersonKeypoints) -> PersonKeypoints:
    """KP with each limb pair whose left-right order clearly contradicts the face's
    (`face_facing`) swapped back, with the pair's hands for the arms; the eyes and ears made to
    agree with the face landmarks' jaw line when that decided. KP itself when nothing contradicts
    the face or the face does not decide."""
    facing, spread = face_facing(kp)
    if facing == 0:
        return kp
    body = kp.body.copy()
    lhand, rhand = kp.lhand, kp.rhand
    for (right, left), min_spread in ((ARMS, spread), (LEGS, HIP_SPREAD * spread)):
        r, le = body[right[0]], body[left[0]]
        if min(r[2], le[2]) < FACE_SEEN or abs(le[0] - r[0]) < min_spread:
            continue  # unseen, or too close together to have an order
        if np.sign(le[0] - r[0]) != facing:
            body[list(right) + list(left)] = body[list(left) + list(right)]
            if right == ARMS[0]:
                lhand, rhand = rhand, lhand
    for right, left in (EYES, EARS):
        r, le = body[right], body[left]
        if min(r[2], le[2]) >= FACE_SEEN and le[0] != r[0] and np.sign(le[0] - r[0]) != facing:
            body[[right, left]] = body[[left, right]]
    if np.array_equal(body, kp.body) and lhand is kp.lhand:
        return kp  # the same object: nothing was contradicted
    return replace(kp, body=body, lhand=lhand, rhand=rhand)
