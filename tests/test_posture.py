"""The camera's pitch from standing people's posture (`mst_pipeline.body.posture`) and the
calibration that carries its response: features that ignore scale, position and the feet, an
estimate that stays unbiased at the ends of the calibrated range, and `mst space` reading it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mst_pipeline.body.layout import BODY25_NAMES, NUM_TARGETS
from mst_pipeline.body.posture import FEATURES, estimate, features, fit_response

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_B = {n: i for i, n in enumerate(BODY25_NAMES)}


def _people(model, seed: int, n: int, degrees) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [M, 37, 2] (normalised, the model's own points) of N people of `mst render-people`
    standing before cameras pitched by each of DEGREES, and each render's pitch [M] (radians)."""
    from mst_pipeline.space import default_space
    from mst_pipeline.synthesis.people_plan import plan_person, pose_person

    space = default_space(model)
    targets, truth = [], []
    for deg in degrees:
        space.pitch = np.radians(deg)
        for i in range(n):
            geom = pose_person(model, plan_person(i, seed, model.num_betas, space.pitch), space)
            targets.append(2 * np.concatenate([geom.body25, geom.hands["left"], geom.hands["right"]]) - 1)
            truth.append(space.pitch)
    return np.stack(targets), np.array(truth)


def test_features_ignore_scale_position_and_the_feet():
    rng = np.random.default_rng(0)
    u = rng.uniform(-0.5, 0.5, (3, NUM_TARGETS, 2))
    u[:, _B["Nose"], 1], u[:, _B["RAnkle"], 1], u[:, _B["LAnkle"], 1] = -0.8, 0.9, 0.85
    c = np.ones((3, NUM_TARGETS))
    f = features(u, c)
    assert f.shape == (3, len(FEATURES)) and np.isfinite(f).all()
    np.testing.assert_allclose(features(0.5 * u + np.array([0.2, -0.1]), c), f, atol=1e-12)
    moved = u.copy()
    for name in ("LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel", "RWrist", "LElbow"):
        moved[:, _B[name]] += rng.normal(0, 0.3, (3, 2))  # raised heels, waving arms
    np.testing.assert_allclose(features(moved, c), f)
    c[1, _B["LKnee"]] = 0.1  # a needed point unseen: that image has no measure
    c[2, _B["Neck"]] = 0.0  # an unused point: no matter
    f = features(u, c)
    assert np.isnan(f[1]).all() and np.isfinite(f[[0, 2]]).all()
    flipped = u.copy()
    flipped[0, :, 1] *= -1  # upside down: no height
    assert np.isnan(features(flipped, np.ones((3, NUM_TARGETS)))[0]).all()


def test_the_pitch_response_measures_a_held_out_sets_pitch_without_shrinking(open_model):
    """Fitted on 48 people at each of -4..12° and read on 64 others at 0° and at 12° (the range's edge): the
    mean estimate lands within 1° of each. A regression of the pitch on the features would pull the
    12° set towards the middle of the range; the per-pitch means here must not."""
    targets, truth = _people(open_model, 5, 48, (-4, 0, 4, 8, 12))
    conf = np.ones(truth.shape + (NUM_TARGETS,))
    doc = fit_response(features(targets, conf), truth)
    assert doc["features"] == list(FEATURES) and doc["count"] == len(truth)
    for deg in (0.0, 12.0):
        held, held_truth = _people(open_model, 6, 64, (deg,))
        got = np.degrees(estimate(doc, features(held, np.ones(held_truth.shape + (NUM_TARGETS,)))))
        assert abs(got.mean() - deg) < 1.0, (deg, got.mean())
    with pytest.raises(ValueError, match="several pitches"):
        fit_response(features(targets, conf)[truth == 0], truth[truth == 0])


def test_a_calibration_carries_its_pitch_response_and_a_proxy_does_not(open_model, tmp_path):
    from mst_pipeline.body.conventions import CalibrationError, KeypointRegressor
    from mst_pipeline.fitting.space_fit import image_pitches

    targets, truth = _people(open_model, 5, 12, (-4, 4, 12))
    conf = np.ones(truth.shape + (NUM_TARGETS,))
    slot = {"ids": [0], "weights": [1.0]}
    reg = KeypointRegressor("mediapipe", open_model.hash, {"Nose": slot},
                            pitch=fit_response(features(targets, conf), truth))
    back = KeypointRegressor.from_json(json.loads(json.dumps(reg.to_json())))
    f = features(targets, conf)
    np.testing.assert_allclose(estimate(back.pitch, f), estimate(reg.pitch, f))
    assert back.for_view("face")[0].pitch is not None
    assert reg.as_convention("openpose-body25").pitch is None  # OpenPose's posture was never measured
    doc = reg.to_json()
    doc["pitch"]["b"] = doc["pitch"]["b"][:-1]
    with pytest.raises(CalibrationError, match="pitch response"):
        KeypointRegressor.from_json(doc)
    # `mst space` measures through the response when the model has one, else through the feet
    saved = open_model.keypoints
    try:
        open_model.use_keypoints(back)
        got, source = image_pitches(open_model, targets, conf)
        assert source == "posture" and np.isfinite(got).all()
        open_model.use_keypoints(None)
        assert image_pitches(open_model, targets, conf)[1] == "feet"
    finally:
        open_model.use_keypoints(saved)
