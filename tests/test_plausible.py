"""What is not a person is never written as a sample: a detection no body can make is "no person",
a fit that is no body is rejected with its reason."""

from __future__ import annotations

import numpy as np
from test_person import STANDING

from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.detect.persons import implausible, is_person, why_no_person
from mst_pipeline.fitting.plausible import implausible_fit


def _seen(points: np.ndarray, conf: float = 0.8) -> PersonKeypoints:
    kp = PersonKeypoints.empty()
    kp.body[:, :2] = points
    kp.body[:, 2] = conf
    kp.body[[1, 8], 2] = 0  # Neck and MidHip are derived
    return kp


def test_a_standing_person_is_a_person():
    assert implausible(_seen(STANDING)) is None and is_person(_seen(STANDING))


def test_a_keyboard_with_a_hand_is_no_person_collapsed():
    """The detector's confident 13-point "pose" on a keyboard photo: about 6 × 60 px."""
    rng = np.random.default_rng(0)
    kp = PersonKeypoints.empty()
    points = [0, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 15, 16]
    kp.body[points, 0] = 300 + rng.uniform(0, 6, len(points))
    kp.body[points, 1] = 200 + rng.uniform(0, 60, len(points))
    kp.body[points, 2] = rng.uniform(0.78, 0.95, len(points))
    assert not is_person(kp)
    assert why_no_person([kp]).startswith("no person (the pose found is collapsed")


def test_a_tiny_pose_is_no_person():
    kp = _seen(STANDING * 0.05)  # 10 px tall
    assert not is_person(kp)
    assert "too small" in why_no_person([kp])


def test_a_forearm_three_torsos_long_is_no_person():
    """Two hands and a ball: the "wrist" far out where a hand holds the ball, the "torso" squeezed."""
    pts = STANDING.copy()
    pts[[9, 12], 1] = 60  # hips just below the shoulders (y 45)
    pts[4] = (400, 112)  # right wrist three hundred px out
    kp = _seen(pts)
    assert not is_person(kp)
    assert "limbs of impossible proportion" in why_no_person([kp])


def test_a_profile_person_is_still_a_person():
    """Seen from the side a person is narrow, but not a sliver of a few pixels."""
    pts = STANDING.copy()
    pts[:, 0] = 100 + 0.12 * (pts[:, 0] - 100)  # 60 px wide -> 7 px, 200 px tall
    pts[[0, 15, 16], 0] += 12  # the face points forward
    assert is_person(_seen(pts))


def test_a_fit_with_its_pelvis_above_its_nose_is_no_body():
    pose = np.zeros(72)
    assert implausible_fit(pelvis_y=0.2, nose_y=-0.5, pose=pose, tail=0.05) is None
    assert implausible_fit(pelvis_y=-0.6, nose_y=0.3, pose=pose, tail=0.05) == "implausible fit (pelvis above the nose)"


def test_a_fit_beyond_the_human_range_or_far_from_a_keypoint_is_rejected_with_its_reason():
    pose = np.zeros(72)
    pose[3 + 3 * 3] = -0.8  # left knee (joint 4) bent 46° backwards
    assert "left_knee bent 46° backwards" in implausible_fit(0.2, -0.5, pose, 0.05)
    pose = np.zeros(72)
    pose[3 + 3 * 17: 3 + 3 * 17 + 3] = (0.0, 2.9, 0.0)  # left elbow (joint 18) turned 166°
    assert "left_elbow turned 166°" in implausible_fit(0.2, -0.5, pose, 0.05)
    assert "0.80 normalised units off" in implausible_fit(0.2, -0.5, np.zeros(72), 0.8)


def test_smplify_rejects_an_upside_down_body(toy):
    """Keypoints of a person turned upside down are fitted, and the fit is rejected: its pelvis is
    above its nose (with the bound on the mean reprojection error lifted, which rejects it first)."""
    from mst_pipeline.fitting.smplify import SmplifyConfig, smplify_p
    from mst_pipeline.space import default_space
    from mst_pipeline.synthesis.people_truth import truth_views

    full = [v for v in truth_views(toy, 1, seed=0, res=128, space=default_space(toy)) if v["view"] == "full"][0]
    u = full["targets"].copy()
    u[:, 1] = -u[:, 1]
    (upright,) = smplify_p(toy, full["targets"][None], full["confidence"][None], config=SmplifyConfig(iterations=150))
    (fit,) = smplify_p(toy, u[None], full["confidence"][None],
                       config=SmplifyConfig(iterations=150, max_error=10.0, max_tail=10.0))
    assert upright.ok, upright.failure
    assert not fit.ok and fit.failure == "implausible fit (pelvis above the nose)"
