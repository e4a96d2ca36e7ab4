"""Keypoint backends: OpenPose JSON parsing, layout converters, the lazy mmpose backend and the
real mediapipe path on a photograph shipped with matplotlib (an upper-body portrait)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_smplify import toy_body_model

from mst_pipeline.align.folder import infer_kind
from mst_pipeline.body.keypoints import from_coco_wholebody133, from_mediapipe_pose33
from mst_pipeline.detect import BackendUnavailable, DetectionError, make_detector
from mst_pipeline.detect.images import read_image
from mst_pipeline.detect.openpose_json import OpenPoseJsonDetector, parse_openpose
from mst_pipeline.detect.persons import rank_people
from mst_pipeline.detect.pool import fitting_input
from mst_pipeline.fitting.smplify import SmplifyConfig, smplify_p
from mst_pipeline.space import default_space
from uh_train.format.geometry import apply_homography


def test_openpose_json_gives_every_person_and_the_confident_one_is_fitted():
    weak = {"pose_keypoints_2d": [1, 2, 0.1] * 25}
    strong = {"pose_keypoints_2d": [float(i) for i in range(75)], "hand_left_keypoints_2d": [5, 6, 0.9] * 21,
              "hand_right_keypoints_2d": [], "face_keypoints_2d": [1, 1, 2.0] * 70}
    both = parse_openpose({"version": 1.3, "people": [weak, strong]})
    assert len(both) == 2 and both[0].body[0, 2] == pytest.approx(0.1)  # file order
    (kp,) = [p.keypoints for p in rank_people(both, 1000, 1000)]  # the weak one is no person: nothing seen
    assert kp is both[1]
    np.testing.assert_array_equal(kp.body[1], [3, 4, 1.0])  # confidence clipped to [0, 1]
    assert kp.lhand[20].tolist() == [5, 6, 0.9] and kp.rhand.sum() == 0 and kp.face[69, 2] == 1.0


@pytest.mark.parametrize("doc, match", [
    ({"nope": 1}, "no 'people'"), ({"people": []}, "no person"),
    ({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "expected 75"),
    ({"people": [{"pose_keypoints_2d": ["a"] * 75}]}, "not a list of numbers"),
])
def test_malformed_openpose_json_is_a_detection_error(doc, match):
    with pytest.raises(DetectionError, match=match):
        parse_openpose(doc)


def test_openpose_json_found_in_a_mirrored_keypoints_folder(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    (tmp_path / "kp" / "a").mkdir(parents=True)
    (tmp_path / "kp" / "a" / "x_keypoints.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [1] * 75}]}))
    det = OpenPoseJsonDetector(keypoints_dir=tmp_path / "kp", root=tmp_path / "img")
    (kp,) = det(np.zeros((4, 4, 3), np.uint8), tmp_path / "img" / "a" / "x.jpg")
    assert kp.body.shape == (25, 3)


def test_wholebody_converter_maps_named_points():
    kp = np.zeros((133, 3))
    kp[:, 2] = 0.8
    kp[:, 0] = np.arange(133)
    out = from_coco_wholebody133(kp)
    assert out.body[2, 0] == 6 and out.body[7, 0] == 9  # RShoulder <- right_shoulder, LWrist <- left_wrist
    assert out.body[1, 0] == 5.5 and out.body[8, 0] == 11.5  # neck, mid-hip: midpoints
    assert out.body[24, 0] == 22 and out.lhand[0, 0] == 91 and out.rhand[20, 0] == 132 and out.face[0, 0] == 23


def test_pose33_converter_keeps_the_persons_sides():
    lm = np.zeros((33, 3))
    lm[:, 0] = np.arange(33)
    lm[:, 2] = 1
    body = from_mediapipe_pose33(lm).body
    assert body[5, 0] == 11 and body[2, 0] == 12 and body[16, 0] == 2 and body[1, 0] == 11.5


@pytest.mark.skipif(importlib.util.find_spec("mmpose") is not None, reason="mmpose is installed")
def test_mmpose_backend_without_mmpose_says_what_to_install():
    with pytest.raises(BackendUnavailable, match="pip install mmpose"):
        make_detector("mmpose")


def _sample_photo() -> Path:
    mpl = pytest.importorskip("matplotlib.cbook")
    return Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")
def test_real_portrait_and_its_face_crop_land_on_the_head():
    torch.set_num_threads(1)
    photo = read_image(_sample_photo())
    det = make_detector("mediapipe")
    model = toy_body_model()
    space = default_space(model)
    h, w = photo.shape[:2]
    (kp,) = det(photo, Path("portrait.jpg"))
    nose = kp.body[0, :2].copy()
    x0, y0 = int(nose[0] - 110), int(nose[1] - 130)
    face = np.ascontiguousarray(photo[y0:y0 + 240, x0:x0 + 220])
    (kp_face,) = det(face, Path("face.jpg"))
    items = [(kp, w, h), (kp_face, face.shape[1], face.shape[0])]
    targets, conf = zip(*(fitting_input(k, ww, hh) for k, ww, hh in items), strict=True)
    fits = smplify_p(model, np.stack(targets), np.stack(conf), config=SmplifyConfig(iterations=150))
    head_y = (0.02, 0.2)  # the default space's head (top 0.04, chin ~0.15)
    assert infer_kind(targets[0], conf[0] >= 0.3) == "upper"
    assert infer_kind(targets[1], conf[1] >= 0.3) == "face"
    for (k, ww, hh), fit in zip(items, fits, strict=True):
        assert fit.ok, fit.failure
        H = space.homography(fit.cam, ww, hh)
        x, y = apply_homography(H, k.body[0, :2])
        assert 0.4 < x < 0.6 and head_y[0] < y < head_y[1], (x, y)
    # Both images put the nose at the same place of full-body space.
    noses = [apply_homography(space.homography(f.cam, ww, hh), k.body[0, :2])
             for (k, ww, hh), f in zip(items, fits, strict=True)]
    assert np.linalg.norm(noses[0] - noses[1]) < 0.03


def _hand_at(x: float, y: float, size: float = 40.0) -> np.ndarray:
    hand = np.zeros((21, 3))
    hand[:, 0] = x + np.linspace(0, size, 21)
    hand[:, 1] = y
    hand[:, 2] = 1.0
    return hand


def test_a_hand_far_from_the_visible_wrists_is_not_the_persons():
    from mst_pipeline.detect.mediapipe_backend import hand_is_attached

    body = np.zeros((25, 3))
    body[2], body[5] = (100, 400, 1.0), (400, 400, 1.0)  # shoulders of a portrait, wrists unseen
    assert not hand_is_attached(_hand_at(250, 470), body)  # a "hand" on the tie
    body[4] = (90, 700, 0.9)  # the right wrist is visible
    assert hand_is_attached(_hand_at(110, 690), body)
    assert not hand_is_attached(_hand_at(300, 690), body)
    assert hand_is_attached(_hand_at(300, 690), np.zeros((25, 3)))  # a hand crop: no person to check


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")
def test_mirrored_portrait_finds_no_hand_where_the_person_has_none():
    photo = read_image(_sample_photo())
    det = make_detector("mediapipe")
    for image in (photo, np.ascontiguousarray(photo[:, ::-1])):
        (kp,) = det(image, Path("portrait.jpg"))
        assert kp.body[[2, 5], 2].min() > 0.5  # both shoulders seen
        assert kp.lhand[:, 2].max() == 0 and kp.rhand[:, 2].max() == 0
