"""Keypoint conventions: the body model produces each detector's keypoints where that detector puts
them (calibrated on renders), the calibration's maths recovers a known point, and the face's scale
comes out the same from a face crop and from the upper-body crop of the same render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mst_pipeline.body import use_convention
from mst_pipeline.body.conventions import (
    BACKEND_CONVENTION,
    CONVENTIONS,
    SHIPPED,
    CalibrationError,
    KeypointRegressor,
    calibration_path,
    find_calibration,
)
from mst_pipeline.body.layout import BODY25_NAMES
from mst_pipeline.space import pixels_to_normalised
from mst_pipeline.synthesis.calibrate import Observation, fit_slot, gaps

B = {n: i for i, n in enumerate(BODY25_NAMES)}


def _regressor(model, convention="mediapipe") -> KeypointRegressor:
    """A hand-made calibration: each reported slot a combination of three vertices of its own."""
    n = model.num_vertices
    slots = {name: {"ids": [(2 * i) % n, (2 * i + 1) % n, (2 * i + 7) % n], "weights": [0.5, 0.25, 0.25]}
             for i, name in enumerate(CONVENTIONS[convention].reported)}
    return KeypointRegressor(convention, model.hash, slots)


def test_a_calibrated_slot_is_its_vertex_combination_and_neck_the_shoulders_midpoint(toy):
    reg = _regressor(toy)
    pose = torch.zeros(1, 69)
    pose[0, 50] = 0.8  # an elbow bent: the points follow the posed surface
    own = toy(body_pose=pose)
    toy.use_keypoints(reg)
    try:
        out = toy(body_pose=pose)
    finally:
        toy.use_keypoints(None)
    v = out.vertices[0]
    for name in CONVENTIONS["mediapipe"].reported:
        ids, w = reg.slots[name]["ids"], torch.tensor(reg.slots[name]["weights"])
        assert torch.allclose(out.body25[0, B[name]], (w[:, None] * v[ids]).sum(0), atol=1e-6)
    b = out.body25[0]
    assert torch.allclose(b[B["Neck"]], 0.5 * (b[B["RShoulder"]] + b[B["LShoulder"]]))
    assert torch.allclose(b[B["MidHip"]], 0.5 * (b[B["RHip"]] + b[B["LHip"]]))
    # the small toes mediapipe does not report stay the model's own
    assert torch.allclose(out.body25[0, B["LSmallToe"]], own.body25[0, B["LSmallToe"]])
    assert not torch.allclose(out.body25[0, B["LEar"]], own.body25[0, B["LEar"]])


def test_the_reduced_model_smplify_runs_on_gives_the_same_calibrated_keypoints(open_model):
    reg = find_calibration("mediapipe", open_model.hash)
    assert reg is not None, "the open model's mediapipe calibration ships with the package"
    g = torch.Generator().manual_seed(0)
    pose, betas = 0.3 * torch.randn(2, 69, generator=g), torch.randn(2, 10, generator=g)
    open_model.use_keypoints(reg)
    try:
        full = open_model(betas=betas, body_pose=pose).body25
        reduced = open_model.joint_model()(betas=betas, body_pose=pose).body25
    finally:
        open_model.use_keypoints(None)
    assert torch.allclose(full, reduced, atol=1e-5)


def test_the_calibration_recovers_a_known_point_from_noisy_detections():
    rng = np.random.default_rng(0)
    truth = np.zeros(6)
    truth[[1, 4]] = (0.7, 0.3)
    obs = []
    for _ in range(60):
        cands = rng.normal(0, 1, (6, 2))
        detected = truth @ cands + rng.normal(0, 0.01, 2)
        obs.append(Observation(0, "full", 0, 100.0, detected, cands))
    cols, w = fit_slot(obs, keep=3)
    full = np.zeros(6)
    full[cols] = w
    assert np.abs(full - truth).max() < 0.03
    assert gaps(obs, cols, w).mean() < 2.5  # pixels: about the detections' noise (1 px per axis)


def test_a_calibration_file_is_checked_and_a_proxy_convention_keeps_its_reported_slots(tmp_path, toy, monkeypatch):
    monkeypatch.setenv("UNITEDHUMAN_CACHE", str(tmp_path))
    reg = _regressor(toy)
    path = reg.save(calibration_path("mediapipe", toy.hash))
    back = find_calibration("mediapipe", toy.hash)
    assert back is not None and back.digest() == reg.digest()
    coco = find_calibration(BACKEND_CONVENTION["mmpose"], toy.hash)  # mmpose is not run here: by proxy
    assert coco.convention == "coco-wholebody" and set(coco.slots) == set(CONVENTIONS["coco-wholebody"].reported)
    assert coco.settings["proxy_of"] == "mediapipe"
    assert find_calibration("mediapipe", "0" * 16) is None  # another model: none
    doc = json.loads(path.read_text())
    doc["slots"]["Nose"]["weights"] = [1.5, -0.25, -0.25]
    with pytest.raises(CalibrationError, match="convex"):
        KeypointRegressor.from_json(doc)
    bad_view = dict(doc, views={"face": {"unused": []}})
    with pytest.raises(CalibrationError, match="view 'face' has no slots"):
        KeypointRegressor.from_json(bad_view)
    doc["version"] = 0
    with pytest.raises(CalibrationError, match="version"):
        KeypointRegressor.from_json(doc)


def test_a_view_kind_takes_its_own_fit_and_drops_its_unused_slots(toy, tmp_path, monkeypatch):
    """A face crop's points come from the face fit where it has one, the other slots from the fit over
    every view; the unused shoulders take the Neck (their midpoint) with them; specialising again to
    another kind starts from the overall fit, not from the face's; and the file keeps the views."""
    from mst_pipeline.body import use_view

    reg = _regressor(toy)
    n = toy.num_vertices
    face_nose = {"ids": [11 % n, 13 % n], "weights": [0.5, 0.5], "count": 9, "residual_px": 1.0}
    upper_ear = {"ids": [17 % n], "weights": [1.0], "count": 9, "residual_px": 1.0}
    reg.views = {"face": {"slots": {"Nose": face_nose}, "unused": ["LShoulder", "RShoulder"]},
                 "upper": {"slots": {"LEar": upper_ear}, "unused": []}}
    face, unused = reg.for_view("face")
    assert face.slots["Nose"] == face_nose and face.slots["LEar"] == reg.slots["LEar"]
    assert set(unused) == {B["LShoulder"], B["RShoulder"], B["Neck"]}
    upper, unused = face.for_view("upper")
    assert upper.slots["Nose"] == reg.slots["Nose"] and upper.slots["LEar"] == upper_ear and unused == ()
    assert face.for_view("hand") == (face.for_view(None)[0], ()) and face.for_view(None)[0].slots == reg.slots
    assert face.digest() == reg.digest()  # the same calibration, whichever view it serves
    toy.use_keypoints(reg)
    try:
        assert set(use_view(toy, "face")) == set(unused) | {B["LShoulder"], B["RShoulder"], B["Neck"]}
        with torch.no_grad():
            nose = toy().body25[0, B["Nose"]]
            v = toy().vertices[0]
        assert torch.allclose(nose, 0.5 * (v[face_nose["ids"][0]] + v[face_nose["ids"][1]]), atol=1e-6)
        use_view(toy, "upper")
        with torch.no_grad():
            assert torch.allclose(toy().body25[0, B["LEar"]], v[upper_ear["ids"][0]], atol=1e-6)
    finally:
        toy.use_keypoints(None)
    monkeypatch.setenv("UNITEDHUMAN_CACHE", str(tmp_path))
    reg.save(calibration_path("mediapipe", toy.hash))
    back = find_calibration("mediapipe", toy.hash)
    assert back.views == reg.views and back.for_view("face")[1] == reg.for_view("face")[1]
    coco = find_calibration(BACKEND_CONVENTION["mmpose"], toy.hash)  # a proxy keeps the views of its slots
    assert coco.views["face"]["slots"]["Nose"] == face_nose


def test_each_view_is_fitted_on_its_own_detections_and_a_scattered_slot_is_unused_there():
    """Detections in upper-body views sit on another vertex than in full views: each view's fit finds
    its own; a slot that scatters far more than the others in a view is marked unused in it."""
    from mst_pipeline.synthesis.calibrate import fit_views

    rng = np.random.default_rng(1)
    slots = [B["Nose"], B["LEye"], B["REye"], B["LEar"], B["REar"], B["RShoulder"]]
    cands = {i: np.arange(6) + 10 * k for k, i in enumerate(slots)}
    place = {"full": 1, "upper": 4}
    obs = []
    for view, vertex in place.items():
        for _ in range(30):
            for i in slots:
                c = rng.normal(0, 1, (6, 2))
                noise = 0.3 if (view == "upper" and i == B["RShoulder"]) else 0.01
                obs.append(Observation(0, view, i, 100.0, c[vertex] + rng.normal(0, noise, 2), c))
    views = fit_views(obs, cands)
    assert set(views) == {"full", "upper"}  # no face detections: no face fit
    for view, vertex in place.items():
        nose = views[view]["slots"]["Nose"]
        assert nose["ids"][int(np.argmax(nose["weights"]))] == cands[B["Nose"]][vertex]
    assert views["upper"]["unused"] == ["RShoulder"] and views["full"]["unused"] == []


def test_align_fits_each_view_kind_with_its_keypoints_and_without_its_unused_detections(toy, monkeypatch):
    """`mst align`'s batch fit: a face crop's guessed shoulders never reach SMPLify-P, an upper-body
    image's do, and each group is fitted while the model follows its own view."""
    from types import SimpleNamespace

    from mst_pipeline.align import folder
    from mst_pipeline.fitting.targets import NUM_TARGETS

    reg = _regressor(toy)
    reg.views = {"face": {"slots": {}, "unused": ["LShoulder", "RShoulder"]}}
    seen = []

    def fake_fit(model, targets, confidence, **kw):
        seen.append((model.keypoints.view, confidence.copy()))
        return [SimpleNamespace(ok=True, row=float(t[0, 0])) for t in targets]

    monkeypatch.setattr(folder, "smplify_p", fake_fit)
    targets = np.zeros((3, NUM_TARGETS, 2))
    targets[:, 0, 0] = [0.1, 0.2, 0.3]  # tells the rows apart
    confidence = np.ones((3, NUM_TARGETS))
    toy.use_keypoints(reg)
    try:
        for kind in ("face", "upper"):
            seen.clear()
            settings = SimpleNamespace(kind=kind, smplify=SimpleNamespace(confidence=0.3), device="cpu")
            fits = folder.fit_by_view(toy, targets, confidence, None, None, SimpleNamespace(pitch=0.0), settings)
            assert [f.row for f in fits] == [0.1, 0.2, 0.3]
            ((view, conf),) = seen
            dropped = conf[:, [B["LShoulder"], B["RShoulder"], B["Neck"]]]
            assert view == (kind if kind in reg.views else None)  # a kind without its own fit: the overall one
            assert (dropped == 0).all() == (kind == "face") and conf[:, B["Nose"]].all()
    finally:
        toy.use_keypoints(None)


def test_face_and_upper_body_crops_read_their_ears_from_the_jaw_line(toy, monkeypatch):
    """In a face or upper-body crop the ears a fit sees are the face's jaw-line points 1 and 15 (where
    the jaw meets the ears), not the body model's guess; only when both are seen, and in no other
    kind. `mst align`'s batch fit hands SMPLify-P those points for such crops and the body's for the
    rest."""
    from types import SimpleNamespace

    from mst_pipeline.align import folder
    from mst_pipeline.body.keypoints import PersonKeypoints, view_body
    from mst_pipeline.detect.pool import fitting_input

    kp = PersonKeypoints.empty()
    kp.body[:, :] = [50.0, 60.0, 0.9]
    kp.body[B["REar"]], kp.body[B["LEar"]] = [30.0, 40.0, 0.9], [70.0, 40.0, 0.9]
    kp.face[1], kp.face[15] = [36.0, 44.0, 0.9], [64.0, 45.0, 0.9]
    before = kp.body.copy()
    ears = [B["REar"], B["LEar"]]
    for kind in ("face", "upper"):
        got = view_body(kp.body, kp.face, kind)
        np.testing.assert_array_equal(got[ears], kp.face[[1, 15]])
        np.testing.assert_array_equal(np.delete(got, ears, 0), np.delete(before, ears, 0))
    np.testing.assert_array_equal(kp.body, before)  # the detection itself is left as it was
    for kind in ("full", "hand", None):
        np.testing.assert_array_equal(view_body(kp.body, kp.face, kind), before)
    half = kp.face.copy()
    half[15, 2] = 0.1  # one end of the jaw line unseen: the body's ears, both
    np.testing.assert_array_equal(view_body(kp.body, half, "face"), before)

    seen = []

    def fake_fit(model, targets, confidence, **kw):
        seen.append(targets.copy())
        return [SimpleNamespace(ok=True) for _ in targets]

    monkeypatch.setattr(folder, "smplify_p", fake_fit)
    rows = [fitting_input(kp, 100, 100) for _ in range(2)]
    targets, confidence = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    for kind, ears in (("face", kp.face[[1, 15], :2]), ("full", before[[B["REar"], B["LEar"]], :2])):
        seen.clear()
        settings = SimpleNamespace(kind=kind, smplify=SimpleNamespace(confidence=0.3), device="cpu")
        folder.fit_by_view(toy, targets, confidence, None, None, SimpleNamespace(pitch=0.0), settings,
                           [(kp, 100, 100)] * 2)
        want = pixels_to_normalised(ears, 100, 100)
        np.testing.assert_allclose(seen[0][:, [B["REar"], B["LEar"]]], np.stack([want] * 2))


def test_a_model_without_a_calibration_says_so_and_keeps_its_own_points(toy):
    lines = []
    use_convention(toy, "mediapipe", log=lines.append)
    assert toy.keypoints is None
    assert len(lines) == 1 and "mst body-model calibrate --detector mediapipe" in lines[0]
    lines.clear()  # OpenPose is calibrated by proxy: the advice names the backend that runs on renders
    use_convention(toy, "openpose-json", log=lines.append)
    assert len(lines) == 1 and "--detector mediapipe" in lines[0] and "openpose-json" not in lines[0]


def test_the_shipped_calibration_is_the_open_models(open_model):
    files = sorted(SHIPPED.glob("mediapipe-v*.json"))
    assert [f.name for f in files] == [calibration_path("mediapipe", open_model.hash).name]
    shipped = KeypointRegressor.from_json(json.loads(files[0].read_text()))
    assert shipped.pitch is not None and shipped.pitch["count"] >= 300  # `mst space` measures ô through it


# ---------------------------------------------------------------------------------------------
# Against the detector itself: renders of the open model through mediapipe

# Mean gap between mediapipe's points and the calibrated ones, as a share of the render's side (a full
# view is 128 px, an upper-body view 211, a face view 170-190): over every reported point the view
# shows, and on face views over the head's points (mediapipe guesses the shoulders below a face
# crop's edge), its ears read from the jaw line. Measured: full 0.7-0.9 %, upper 1.1-1.4 %, face
# 1.6-4.3 % (2.4-5.4 % with the body model's guess of a face crop's ears); the model's own points (the
# widest head vertices as ears) are 2-4 times further off.
BOUND = {"full": 0.02, "upper": 0.025, "face": 0.06}
_HEAD = ("Nose", "REye", "LEye", "REar", "LEar")


@pytest.fixture(scope="module")
def rendered(open_model):
    """Two people of `mst render-people` (seed 3, 128 px), their three views and mediapipe's output."""
    pytest.importorskip("mediapipe")
    from mst_pipeline.detect import make_detector
    from mst_pipeline.detect.persons import rank_people
    from mst_pipeline.space import default_space
    from mst_pipeline.synthesis import mesh_render
    from mst_pipeline.synthesis.people import render_view, view_geometry
    from mst_pipeline.synthesis.people_plan import plan_person, pose_person, views

    mesh_render.start()
    detector = make_detector("mediapipe")
    out = []
    use_convention(open_model, "mediapipe")
    try:
        space = default_space(open_model)
        for index in range(2):
            plan = plan_person(index, 3, open_model.num_betas, space.pitch)
            geom = pose_person(open_model, plan, space)
            for view in views(geom, plan, 128):
                image, _ = render_view(geom, open_model.faces, plan, view)
                people = rank_people(detector(image, None), view.width, view.height)
                calibrated = view_geometry(open_model, plan, space, geom, view.name)  # the view's own points
                out.append((index, view, calibrated, people[0].keypoints))
    finally:
        open_model.use_keypoints(None)
    return out


def test_calibrated_keypoints_of_a_render_land_on_mediapipes_own(rendered):
    from uh_train.format.geometry import apply_homography

    for _, view, geom, kp in rendered:
        px = apply_homography(np.linalg.inv(view.H), geom.body25)
        names = _HEAD if view.name == "face" else CONVENTIONS["mediapipe"].reported
        inside = (px[:, 0] >= 0) & (px[:, 0] <= view.width) & (px[:, 1] >= 0) & (px[:, 1] <= view.height)
        body = kp.targets(view.name)[:25]  # as a fit of the view's kind reads them (a face crop: jaw-line ears)
        seen = [B[n] for n in names if body[B[n], 2] >= 0.5 and inside[B[n]]]
        gap = np.linalg.norm(px[seen] - body[seen, :2], axis=1)
        named = dict(zip([BODY25_NAMES[i] for i in seen], gap.round(1), strict=True))
        assert gap.mean() < BOUND[view.name] * view.width, (view.name, named)


def _face_over_upper(rendered, model) -> list[float]:
    """Per person, the face crop's fitted scale over the upper-body crop's (each over its truth)."""
    from mst_pipeline.body import view_confidence
    from mst_pipeline.detect.pool import fitting_input
    from mst_pipeline.fitting.smplify import smplify_p
    from mst_pipeline.space import default_space

    use_convention(model, "mediapipe")
    try:
        space = default_space(model)
        scales = {}
        for index, view, _, kp in rendered:
            if view.name == "full":
                continue
            u, c = fitting_input(kp, view.width, view.height, view.name)
            c = view_confidence(model, view.name, c)  # as `mst align --kind` fits this view
            (fit,) = smplify_p(model, u[None], c[None], mean_pitch=space.pitch)
            assert fit.ok, fit.failure
            H = space.homography(fit.cam, view.width, view.height)
            scales.setdefault(index, {})[view.name] = H[0, 0] / view.H[0, 0]
    finally:
        model.use_keypoints(None)
    return [s["face"] / s["upper"] for s in scales.values()]


@pytest.fixture(scope="module")
def face_over_upper(rendered, open_model) -> list[float]:
    return _face_over_upper(rendered, open_model)


def test_the_face_scale_from_a_face_crop_and_an_upper_body_crop_agree_within_20_percent(face_over_upper):
    """With the model's own keypoints the face crop came out 1.74 times too large on average."""
    assert all(abs(r - 1) < 0.20 for r in face_over_upper), face_over_upper


def test_the_face_scale_from_a_face_crop_and_an_upper_body_crop_agree_within_10_percent(face_over_upper):
    """With each view's own calibration, a face crop's guessed shoulders unused and its ears read from
    the jaw line, the two renders give 1.017 and 0.956; with the body model's guess of a face crop's
    ears they gave 1.100 and 0.968, with the fit over every view 1.17 and 0.99, with the model's own
    points 1.55 and 1.44."""
    assert all(abs(r - 1) < 0.10 for r in face_over_upper), face_over_upper


def test_openpose_json_of_the_renders_holds_the_calibrated_points(tmp_path, open_model):
    """The renders' keypoint files follow the convention `--detector openpose-json` fits with, so
    they stay a fair test of it."""
    from mst_pipeline.synthesis.people import render_people

    render_people(tmp_path, 1, res=64, seed=2, model=open_model, progress=False)
    assert open_model.keypoints is None  # the caller's model is left as it was
    doc = json.loads((tmp_path / "face" / "person000000_keypoints.json").read_text())
    body = np.asarray(doc["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
    use_convention(open_model, "openpose-json")
    try:
        from mst_pipeline.space import default_space
        from mst_pipeline.synthesis.people_plan import plan_person, pose_person, views
        from uh_train.format.geometry import apply_homography

        space = default_space(open_model)
        plan = plan_person(0, 2, open_model.num_betas, space.pitch)
        geom = pose_person(open_model, plan, space)
        face = [v for v in views(geom, plan, 64) if v.name == "face"][0]
        from mst_pipeline.synthesis.people import view_geometry

        own = view_geometry(open_model, plan, space, geom, "face")  # the face view's own fit
        assert not np.allclose(own.body25, geom.body25)
        px = apply_homography(np.linalg.inv(face.H), own.body25)
    finally:
        open_model.use_keypoints(None)
    seen = body[:, 2] > 0
    assert seen[[B["LEar"], B["REar"], B["Nose"]]].all()
    assert np.abs(body[seen, :2] - px[seen]).max() < 0.01


def test_cli_calibrate_writes_a_calibration_the_pipeline_reads(tmp_path, open_model):
    pytest.importorskip("mediapipe")
    from typer.testing import CliRunner

    from mst_pipeline.cli import app

    out = tmp_path / "cal.json"
    result = CliRunner().invoke(app, ["body-model", "calibrate", "--n", "3", "--res", "128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    reg = KeypointRegressor.from_json(json.loads(out.read_text()))
    assert reg.convention == "mediapipe" and reg.model_hash == open_model.hash
    assert {"Nose", "LEar", "REar"} <= set(reg.slots)  # seen in all nine renders
    assert reg.settings["people"] == 3
    bad = CliRunner().invoke(app, ["body-model", "calibrate", "--detector", "openpose-json"])
    assert bad.exit_code == 2 and "mediapipe or mmpose" in bad.output


def test_slot_weights_count_a_views_loose_points_less(toy):
    """In a view kind with its own gaps, a slot weighs (median gap / its gap)², at most 1: the view's
    own fit's gap where it has one, else the overall fit's gap measured in that view; a point with no
    gap there (Neck, a slot never seen in that view) weighs 1, and so does every slot of the fit over
    every view and of a convention calibrated by proxy. A crop's fit multiplies its targets'
    confidences by them (`smplify.keypoint_weights`), for the view kind the model follows; a full
    view's fit does not."""
    from mst_pipeline.body import use_view
    from mst_pipeline.fitting.smplify import keypoint_weights

    reg = _regressor(toy)
    for slot in reg.slots.values():
        slot["residual_px"] = {"full": 2.0, "upper": 3.0}
    reg.slots["LWrist"]["residual_px"] = {"full": 4.0, "upper": 12.0}
    n = toy.num_vertices
    own = {"ids": [5 % n], "weights": [1.0], "count": 9, "residual_px": 6.0}
    reg.views = {"upper": {"slots": {"RElbow": own}, "unused": []}, "full": {"slots": {}, "unused": []}}
    upper, _ = reg.for_view("upper")
    w = upper.slot_weights()
    median = 3.0  # most slots' upper gap
    assert w[B["LWrist"]] == pytest.approx((median / 12.0) ** 2)
    assert w[B["RElbow"]] == pytest.approx((median / 6.0) ** 2)  # its own fit's gap in the view
    assert w[B["Nose"]] == 1.0 and w[B["Neck"]] == 1.0
    full, _ = reg.for_view("full")
    assert full.slot_weights()[B["LWrist"]] == pytest.approx((2.0 / 4.0) ** 2)
    assert (reg.for_view(None)[0].slot_weights() == 1).all()
    proxy = reg.as_convention(BACKEND_CONVENTION["mmpose"])
    assert (proxy.for_view("upper")[0].slot_weights() == 1).all()
    toy.use_keypoints(reg)
    try:
        use_view(toy, "upper")
        k = keypoint_weights(toy)
        assert k.shape == (37,) and (k[25:] == 1).all()
        np.testing.assert_allclose(k[:25], w)
        use_view(toy, "full")  # a full view's fit keeps every point at its confidence
        assert (keypoint_weights(toy) == 1).all() and not (toy.keypoints.slot_weights() == 1).all()
    finally:
        toy.use_keypoints(None)
    assert (keypoint_weights(toy) == 1).all()
