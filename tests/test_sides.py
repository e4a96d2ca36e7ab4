"""Left and right as the face says (`mst_pipeline.detect.sides`): limbs a detector labelled the wrong
way round are swapped back when a face seen from the front contradicts them clearly, and nothing
changes when the face does not decide (seen from behind or the side, not confident) or the limbs'
order means nothing (a body seen side-on, arms crossed)."""

from __future__ import annotations

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.detect.persons import rank_people
from mst_pipeline.detect.sides import ARMS, LEGS, face_facing, sides_from_face

# BODY_25 of a person facing the camera (image pixels, y down): the person's right on the image's left.
FRONT = {
    0: (100, 40), 1: (100, 60), 2: (80, 62), 3: (75, 90), 4: (72, 115), 5: (120, 62), 6: (125, 90),
    7: (128, 115), 8: (100, 120), 9: (90, 120), 10: (89, 160), 11: (88, 200), 12: (110, 120), 13: (111, 160),
    14: (112, 200), 15: (96, 36), 16: (104, 36), 17: (92, 40), 18: (108, 40), 19: (116, 208), 20: (119, 206),
    21: (111, 204), 22: (84, 208), 23: (81, 206), 24: (89, 204),
}


def _front(jaw: bool = True) -> PersonKeypoints:
    body = np.array([[*FRONT[i], 0.95] for i in range(25)], dtype=float)
    face = np.zeros((70, 3))
    if jaw:
        face[1], face[15] = (91, 42, 0.9), (109, 42, 0.9)  # the jaw line by the right and left ear
    rng = np.random.default_rng(0)
    rhand = np.concatenate([np.array(FRONT[4]) + rng.normal(0, 3, (21, 2)), np.full((21, 1), 0.9)], 1)
    lhand = np.concatenate([np.array(FRONT[7]) + rng.normal(0, 3, (21, 2)), np.full((21, 1), 0.9)], 1)
    return PersonKeypoints(body=body, lhand=lhand, rhand=rhand, face=face)


def _swapped(kp: PersonKeypoints, pairs=(ARMS, LEGS), hands: bool = True) -> PersonKeypoints:
    body = kp.body.copy()
    for right, left in pairs:
        body[list(right) + list(left)] = kp.body[list(left) + list(right)]
    return PersonKeypoints(body=body, lhand=kp.rhand if hands else kp.lhand, rhand=kp.lhand if hands else kp.rhand,
                           face=kp.face)


def _same(a: PersonKeypoints, b: PersonKeypoints) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.groups().values(), b.groups().values(), strict=True))


def test_a_front_facing_person_is_left_as_it_is():
    kp = _front()
    assert face_facing(kp)[0] == 1
    assert _same(sides_from_face(kp), kp)


def test_swapped_arms_legs_or_both_are_swapped_back_with_their_hands():
    kp = _front()
    for pairs in ((ARMS,), (LEGS,), (ARMS, LEGS)):
        wrong = _swapped(kp, pairs, hands=ARMS in pairs)
        assert not _same(wrong, kp)
        assert _same(sides_from_face(wrong), kp), pairs


def test_a_face_without_landmarks_decides_through_the_pose_ears():
    kp = _front(jaw=False)
    assert face_facing(kp) == (1, 16.0)
    assert _same(sides_from_face(_swapped(kp)), kp)


def test_crossed_arms_keep_their_labels():
    """The wrists' order reverses when the arms cross; the shoulders' does not, so nothing is swapped."""
    kp = _front()
    body = kp.body.copy()
    body[[3, 4, 6, 7]] = kp.body[[6, 7, 3, 4]]
    crossed = PersonKeypoints(body=body, lhand=kp.lhand, rhand=kp.rhand, face=kp.face)
    assert _same(sides_from_face(crossed), crossed)


def test_a_face_that_does_not_decide_changes_nothing():
    kp = _front()
    # seen from behind: the pose's face points are guesses (low confidence), no face landmarks
    back = _swapped(_front(jaw=False))
    back.body[[0, 15, 16, 17, 18], 2] = 0.2
    assert face_facing(back)[0] == 0
    assert _same(sides_from_face(back), back)
    # a face in profile: the nose outside the ears (and the jaw line)
    profile = _swapped(kp)
    profile.body[0, 0] = 115
    assert face_facing(profile)[0] == 0
    assert _same(sides_from_face(profile), profile)


def test_a_side_on_body_keeps_its_order():
    """Shoulders closer together than the face is wide have no order to contradict the face with
    (a body turned side-on, or a detector that took it for one)."""
    kp = _front()
    body = kp.body.copy()
    body[2, 0], body[5, 0] = 104, 96  # reversed, 8 px apart: less than the face's 18
    side_on = PersonKeypoints(body=body, lhand=kp.lhand, rhand=kp.rhand, face=kp.face)
    assert _same(sides_from_face(side_on), side_on)


def test_the_jaw_line_decides_over_collapsed_pose_ears_and_puts_eyes_and_ears_right():
    """A detector that took the person for one turned away: its ears and eyes almost on top of each
    other and the wrong way round, its limbs swapped; the face landmarks' jaw line, seen from the
    front, puts all of them right."""
    kp = _front()
    wrong = _swapped(kp)
    wrong.body[[15, 16, 17, 18], 0] = [101, 99, 101, 99]
    fixed = sides_from_face(wrong)
    assert face_facing(wrong)[0] == 1
    assert fixed.body[16, 0] > fixed.body[15, 0] and fixed.body[18, 0] > fixed.body[17, 0]
    np.testing.assert_array_equal(fixed.body[list(ARMS[0]) + list(LEGS[0])], kp.body[list(ARMS[0]) + list(LEGS[0])])
    np.testing.assert_array_equal(fixed.lhand, kp.lhand)


def test_rank_people_returns_the_labels_put_right():
    kp = _front()
    (person,) = rank_people([_swapped(kp)], 256, 256)
    assert _same(person.keypoints, kp)


def test_nothing_to_put_right_returns_the_same_detection():
    kp = _front()
    assert sides_from_face(kp) is kp
    assert sides_from_face(_swapped(kp)) is not kp
