"""Keypoint-layout converters (COCO-17, COCO-WholeBody-133, mediapipe pose/hand/face mesh ->
OpenPose BODY_25 + hands + face) on hand-made arrays, and the face-mesh table on a real photograph."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mst_pipeline.body.keypoints import (
    MEDIAPIPE_FACE468_TO_OPENPOSE,
    MEDIAPIPE_LEFT_EYE_RING,
    MEDIAPIPE_POSE33_NAMES,
    MEDIAPIPE_RIGHT_EYE_RING,
    KeypointLayoutError,
    PersonKeypoints,
    from_coco17,
    from_coco_wholebody133,
    from_mediapipe_face468,
    from_mediapipe_hand21,
    from_mediapipe_pose33,
)
from mst_pipeline.detect import DetectionError
from mst_pipeline.detect import PersonKeypoints as DetectPersonKeypoints

needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")

# BODY_25 slot <- source index, written out from the layouts' published orders.
COCO17_EXPECTED = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 9: 12, 10: 14, 11: 16, 12: 11, 13: 13, 14: 15,
                   15: 2, 16: 1, 17: 4, 18: 3}
POSE33_EXPECTED = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 9: 24, 10: 26, 11: 28, 12: 23, 13: 25,
                   14: 27, 15: 5, 16: 2, 17: 8, 18: 7, 19: 31, 21: 29, 22: 32, 24: 30}


def numbered(n: int, conf: float = 0.8) -> np.ndarray:
    """[n, 3] points whose x is their index, y = 1000 + index, all with confidence `conf`."""
    return np.stack([np.arange(n), 1000 + np.arange(n), np.full(n, conf)], axis=1).astype(float)


def test_person_keypoints_is_the_one_detect_exports():
    assert DetectPersonKeypoints is PersonKeypoints


def test_coco17_points_land_in_their_body25_slots_with_their_coordinates():
    kp = numbered(17)
    out = from_coco17(kp)
    np.testing.assert_array_equal(out.body[7], kp[9])  # LWrist <- COCO left_wrist
    for slot, idx in COCO17_EXPECTED.items():
        np.testing.assert_array_equal(out.body[slot], kp[idx], err_msg=f"slot {slot}")


def test_coco17_lacks_feet_hands_and_face():
    out = from_coco17(numbered(17))
    assert not out.body[19:25].any() and not out.lhand.any() and not out.rhand.any() and not out.face.any()


def test_neck_and_mid_hip_are_midpoints_with_the_smaller_confidence():
    kp = numbered(17)
    kp[5] = (10, 20, 0.9)
    kp[6] = (30, 40, 0.6)  # shoulders
    kp[11] = (0, 100, 0.7)
    kp[12] = (50, 110, 0.4)  # hips
    body = from_coco17(kp).body
    np.testing.assert_allclose(body[1], (20, 30, 0.6))
    np.testing.assert_allclose(body[8], (25, 105, 0.4))


def test_a_missing_shoulder_makes_the_neck_missing():
    kp = numbered(17)
    kp[6, 2] = 0.0
    body = from_coco17(kp).body
    np.testing.assert_array_equal(body[1], 0)
    assert body[8, 2] == pytest.approx(0.8)


def test_confidences_are_clipped_to_unit_interval():
    kp = numbered(17)
    kp[9, 2], kp[10, 2] = 1.7, -0.3
    body = from_coco17(kp).body
    assert body[7, 2] == 1.0 and body[4, 2] == 0.0


def test_wholebody_fills_feet_face_and_hands():
    kp = numbered(133)
    out = from_coco_wholebody133(kp)
    for slot, idx in {**COCO17_EXPECTED, 19: 17, 20: 18, 21: 19, 22: 20, 23: 21, 24: 22}.items():
        np.testing.assert_array_equal(out.body[slot], kp[idx], err_msg=f"slot {slot}")
    np.testing.assert_array_equal(out.face[:68], kp[23:91])
    np.testing.assert_array_equal(out.face[68:], 0)  # no pupils in COCO-WholeBody
    np.testing.assert_array_equal(out.lhand, kp[91:112])
    np.testing.assert_array_equal(out.rhand, kp[112:133])


def test_pose33_keeps_the_persons_sides_and_has_no_small_toes():
    lm = numbered(33, conf=0.7)
    body = from_mediapipe_pose33(lm).body
    for slot, idx in POSE33_EXPECTED.items():
        np.testing.assert_array_equal(body[slot], lm[idx], err_msg=f"slot {slot}")
    np.testing.assert_array_equal(body[[20, 23]], 0)  # LSmallToe, RSmallToe
    np.testing.assert_allclose(body[1], (11.5, 1011.5, 0.7))


@needs_mediapipe
def test_pose33_names_follow_mediapipes_landmark_order():
    from mediapipe.python.solutions.pose import PoseLandmark

    assert tuple(p.name.lower() for p in PoseLandmark) == MEDIAPIPE_POSE33_NAMES


def test_hand21_keeps_the_point_order_and_ignores_depth():
    lm = numbered(21)
    lm[:, 2] = -5.0  # mediapipe's relative depth, not a confidence
    hand = from_mediapipe_hand21(lm, score=0.6)
    np.testing.assert_array_equal(hand[:, :2], lm[:, :2])
    np.testing.assert_array_equal(hand[:, 2], 0.6)
    with pytest.raises(KeypointLayoutError, match="score"):
        from_mediapipe_hand21(lm, score=2.0)


def test_face468_table_picks_68_distinct_mesh_points_and_ring_centred_pupils():
    table = np.asarray(MEDIAPIPE_FACE468_TO_OPENPOSE)
    assert table.shape == (68,) and len(set(table.tolist())) == 68 and table.min() >= 0 and table.max() < 468
    rng = np.random.default_rng(0)
    mesh = rng.uniform(0, 500, (468, 3))
    face = from_mediapipe_face468(mesh, score=0.9)
    np.testing.assert_array_equal(face[:68, :2], mesh[table, :2])
    np.testing.assert_allclose(face[68, :2], mesh[list(MEDIAPIPE_RIGHT_EYE_RING), :2].mean(0))
    np.testing.assert_allclose(face[69, :2], mesh[list(MEDIAPIPE_LEFT_EYE_RING), :2].mean(0))
    assert np.all(face[:, 2] == 0.9)


def test_refined_478_point_mesh_uses_the_iris_centres_as_pupils():
    mesh = np.random.default_rng(1).uniform(0, 500, (478, 2))
    face = from_mediapipe_face468(mesh)
    np.testing.assert_array_equal(face[68:, :2], mesh[[468, 473]])


@needs_mediapipe
def test_eye_rings_are_mediapipes_eye_contours():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def vertices(edges):
        return {v for e in edges for v in e}

    assert set(MEDIAPIPE_RIGHT_EYE_RING) == vertices(fmc.FACEMESH_RIGHT_EYE)
    assert set(MEDIAPIPE_LEFT_EYE_RING) == vertices(fmc.FACEMESH_LEFT_EYE)


@pytest.mark.parametrize("convert, good_n, message", [
    (from_coco17, 17, r"\[17, 3\]"),
    (from_coco_wholebody133, 133, r"\[133, 3\]"),
    (from_mediapipe_pose33, 33, r"\[33, 3\]"),
    (from_mediapipe_hand21, 21, r"\[21, 2\|3\]"),
    (from_mediapipe_face468, 468, r"\[468\|478, 2\|3\]"),
])
def test_wrong_shapes_name_the_expected_shape(convert, good_n, message):
    for bad in (np.zeros((good_n + 1, 3)), np.zeros((good_n, 4)), np.zeros(good_n * 3)):
        with pytest.raises(KeypointLayoutError, match=message):
            convert(bad)
    bad = np.zeros((good_n, 3))
    bad[3, 0] = np.nan
    with pytest.raises(KeypointLayoutError, match=r"non-finite.*\[3\]"):
        convert(bad)


def test_layout_errors_are_value_errors_and_not_numeric_input_is_one():
    assert issubclass(KeypointLayoutError, ValueError)
    with pytest.raises(KeypointLayoutError, match="numeric"):
        from_coco17([["a", "b", "c"]] * 17)


def test_mmpose_output_is_converted_by_its_point_count():
    from mst_pipeline.detect.mmpose_backend import mmpose_to_internal

    assert mmpose_to_internal(numbered(17)).body[7, 0] == 9
    assert mmpose_to_internal(numbered(133)).rhand[0, 0] == 112
    with pytest.raises(DetectionError, match="26 keypoints"):
        mmpose_to_internal(numbered(26))


def test_head_crop_is_a_square_around_the_head_clipped_to_the_image():
    from mst_pipeline.detect.mediapipe_backend import head_crop

    lm = np.zeros((33, 3))
    lm[:11, :2] = np.stack([np.linspace(100, 120, 11), np.linspace(50, 60, 11)], axis=1)  # 20 px wide head
    lm[:11, 2] = 0.9
    x0, y0, x1, y1 = head_crop(lm, 400, 400)
    assert (x1 - x0, y1 - y0) == (60, 60) and (x0 + x1) / 2 == 110 and (y0 + y1) / 2 == 55
    assert head_crop(lm, 125, 400)[2] == 125  # clipped at the right edge
    lm[:11, 2] = 0.2
    assert head_crop(lm, 400, 400) is None  # the pose does not see a head


# -- the face-mesh table on a real photograph ------------------------------------------------------


def _portrait() -> np.ndarray:
    mpl = pytest.importorskip("matplotlib.cbook")
    from mst_pipeline.detect.images import read_image

    return read_image(Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False)))


@pytest.fixture(scope="module")
def detector():
    from mst_pipeline.detect import make_detector

    return make_detector("mediapipe")


@needs_mediapipe
def test_face_points_on_a_real_portrait_are_in_anatomical_order(detector):
    (kp,) = detector(_portrait(), Path("portrait.jpg"))
    f = kp.face
    assert np.all(f[:, 2] > 0)
    y = f[:, 1]
    brows, eyes, tip, mouth, chin = y[17:27].mean(), y[36:48].mean(), y[30], y[48:68], y[8]
    assert brows < eyes < tip < mouth.min() and mouth.max() < chin
    assert y[27] < y[28] < y[29] < y[30] < y[33]  # nose ridge downwards, then the subnasale
    assert np.all(np.diff(y[0:9]) > 0) and np.all(np.diff(y[8:17]) < 0)  # jaw down to the chin and up
    # The person's left (OpenPose's L) is at larger x in a frontal photo.
    x = f[:, 0]
    assert x[42:48].mean() > x[36:42].mean() and x[69] > x[68]
    assert x[0] < x[36] < x[39] < x[42] < x[45] < x[16]  # jaw, right eye corners, left eye corners
    assert x[17] < x[21] < x[22] < x[26] and x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    assert x[36] < x[68] < x[39] and x[42] < x[69] < x[45]  # pupils between their eye's corners
    # The pose model (independent of the mesh) agrees on which eye is which.
    eye_dist = np.linalg.norm(f[69, :2] - f[68, :2])
    assert np.linalg.norm(f[68, :2] - kp.body[15, :2]) < 0.3 * eye_dist
    assert np.linalg.norm(f[69, :2] - kp.body[16, :2]) < 0.3 * eye_dist


@needs_mediapipe
def test_small_face_in_a_large_image_is_found_through_the_head_crop(detector):
    photo = _portrait()
    small = photo[::5, ::5]  # a face of about 40 px, too small for the mesh on the whole image
    canvas = np.full((1024, 512, 3), 200, np.uint8)
    x0 = (512 - small.shape[1]) // 2
    canvas[:small.shape[0], x0:x0 + small.shape[1]] = small
    whole = np.ascontiguousarray(canvas)
    assert detector.face.process(whole).multi_face_landmarks is None
    (kp,) = detector(canvas, Path("small.jpg"))
    f = kp.face
    assert np.all(f[:, 2] > 0)
    assert np.all((f[:, 0] > x0) & (f[:, 0] < x0 + small.shape[1]) & (f[:, 1] < small.shape[0]))
    assert f[69, 0] > f[68, 0] and f[30, 1] < f[57, 1] < f[8, 1]


@needs_mediapipe
def test_refined_mesh_iris_pupils_agree_with_the_eye_ring_centres_on_a_real_portrait():
    import mediapipe as mp

    photo = _portrait()
    h, w = photo.shape[:2]
    faces = {}
    for refine in (False, True):
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=refine) as fm:
            found = fm.process(photo).multi_face_landmarks
        faces[refine] = from_mediapipe_face468([(p.x * w, p.y * h) for p in found[0].landmark])
    assert len(found[0].landmark) == 478
    eye_dist = np.linalg.norm(faces[False][69, :2] - faces[False][68, :2])
    assert np.linalg.norm(faces[True][68:, :2] - faces[False][68:, :2], axis=1).max() < 0.1 * eye_dist


def test_converters_import_neither_torch_nor_a_detector_package():
    import subprocess
    import sys

    code = ("import sys, mst_pipeline.body.keypoints; "
            "print(sorted(m for m in ('torch', 'mediapipe', 'mmpose') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
