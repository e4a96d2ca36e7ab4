"""`mst body-model calibrate`: fit a detector's keypoint convention on renders of the body model.

People of `mst render-people` (shapes, standing poses and clothing drawn per index), each turned
by a random yaw, are rendered in their full, upper-body and face views; the detector runs on every
render; for each BODY_25 slot the detector reports itself (`conventions.Convention.reported`) the
detections seen with confidence ≥ `SEEN` inside the image are the data. Each slot's point on the
model is a convex combination of the mesh vertices near the model's own point of that name
(`RADIUS`), found by non-negative least squares of the gap, in each render's pixels, between the
detected point and the combination projected through the render's exact H (the renders are
orthographic, as the MST's weak-perspective camera), then pruned to its `KEEP` largest weights
and fitted again. The yaw is what fixes the point's depth (which vertices, front or back).

A detector does not put a point at the same place on the body in every framing: on the same renders
mediapipe's shoulders sit wider in an upper-body crop than in a full view, and its eyes wider (its
ears narrower) in a face crop. So each view kind (full, upper, face) also gets its own fit of every
slot it shows often enough (`fit_views`), which the MST uses for images of that kind; and a slot whose
gap in a view stays far above that view's typical gap after the fit (`UNRELIABLE` times the median:
the shoulders and neck a detector guesses at the bottom edge of a face crop) is marked unused there,
so the fit of such an image does not see it.

Last, the detector's full-view keypoints are measured against the camera's pitch: `PITCH_PEOPLE`
other people (seed + 1, as `mst render-people` stands them, not turned) are rendered full-view at
each of `PITCHES`, and the posture features' response to the pitch is fitted
(`mst_pipeline.body.posture`); `mst space` measures ô through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from mst_pipeline.body.conventions import CONVENTIONS, KeypointRegressor
from mst_pipeline.body.layout import BODY25_NAMES, SMPL_JOINT_NAMES
from mst_pipeline.space import default_space
from mst_pipeline.synthesis import mesh_render
from mst_pipeline.synthesis.people import render_view
from mst_pipeline.synthesis.people_plan import VIEWS, plan_person, pose_person, views
from uh_train.format.geometry import apply_homography

SEEN = 0.5  # detections below this confidence are not used
YAW = np.radians(35.0)  # people are turned by up to this much either way
RADIUS = {"head": 0.07, "foot": 0.08, "body": 0.14}  # metres around the model's own point
_HEAD = ("Nose", "REye", "LEye", "REar", "LEar")
_FOOT = ("LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel")
# Foot points stay rigid with the foot (`space_fit.feet_pitch` reads the camera's pitch from their
# rest offsets): their vertices are those the ankle and foot joints move most.
_FOOT_JOINTS = {"L": ("left_ankle", "left_foot"), "R": ("right_ankle", "right_foot")}
KEEP = 8  # vertices per keypoint
RIDGE = 1e-3  # per observation, in squared pixels per unit weight: spreads weight among near-equal vertices
MIN_COUNT = 8  # detections a slot needs (overall, or in one view) to be fitted
UNRELIABLE = 2.5  # a slot whose calibrated gap in a view exceeds this many times the view's median is unused there
PITCHES = tuple(np.radians(np.arange(-4.0, 12.5, 2.0)))  # camera pitches of the pitch response's renders
# People rendered at each of PITCHES. The response's intercept is the population's mean posture, and
# one person's reading scatters by about 6°: the mean of 48 people is off by about 0.7°, of 144 by 0.4°
# (two calibrations of 48 people each read the same 48 others 1.0° apart).
PITCH_PEOPLE = 144


@dataclass
class Observation:
    person: int
    view: str
    slot: int
    density: float  # render pixels per full-body unit
    detected: np.ndarray  # [2] full-body space
    candidates: np.ndarray  # [K, 2] the candidate vertices, posed, in full-body space


def _radius(name: str) -> float:
    return RADIUS["head" if name in _HEAD else "foot" if name in _FOOT else "body"]


def candidate_vertices(model: Any) -> dict[int, np.ndarray]:
    """Vertex ids near the model's own point of each BODY_25 slot, on the mean body at rest."""
    import torch

    with torch.no_grad():
        saved = model.keypoints
        model.use_keypoints(None)
        out = model()
        model.use_keypoints(saved)
    v, own = out.vertices[0].cpu().numpy(), out.body25[0].cpu().numpy()
    dominant = model.lbs_weights.cpu().numpy().argmax(axis=1)
    out_ids = {}
    for i, n in enumerate(BODY25_NAMES):
        near = np.linalg.norm(v - own[i], axis=1) < _radius(n)
        if n in _FOOT or n.endswith("Ankle"):
            near &= np.isin(dominant, [SMPL_JOINT_NAMES.index(j) for j in _FOOT_JOINTS[n[0]]])
        out_ids[i] = np.flatnonzero(near)
    return out_ids


def turned(plan: Any, yaw: float) -> None:
    """Turn PLAN's person by YAW radians about the body's vertical axis (in place)."""
    from scipy.spatial.transform import Rotation

    go = Rotation.from_rotvec(plan.pose[:3]) * Rotation.from_rotvec([0.0, yaw, 0.0])
    plan.pose[:3] = go.as_rotvec().tolist()


def _first_person(detector: Callable, image: np.ndarray, view: Any) -> Any:
    """The keypoints of the person DETECTOR ranks first in render IMAGE of VIEW, or None."""
    from mst_pipeline.detect.base import DetectionError
    from mst_pipeline.detect.persons import rank_people

    try:
        people = rank_people(detector(image, None), view.width, view.height)
    except DetectionError:
        return None
    return people[0].keypoints if people else None


def observe(model: Any, detector: Callable, convention: str, n: int, seed: int, res: int,
            log: Callable[[str], None] = lambda m: None) -> list[Observation]:
    """Render N people (seed SEED, full view RES px), run DETECTOR on every view and collect the
    slots of CONVENTION it reports."""
    mesh_render.start()
    conv = CONVENTIONS[convention]
    slots = [BODY25_NAMES.index(s) for s in conv.reported]
    cands = candidate_vertices(model)
    saved = model.keypoints
    model.use_keypoints(None)
    space = default_space(model)
    rng = np.random.default_rng([seed, 7])
    out: list[Observation] = []
    t0 = time.perf_counter()
    try:
        for index in range(n):
            plan = plan_person(index, seed, model.num_betas, space.pitch)
            turned(plan, float(rng.uniform(-YAW, YAW)))
            geom = pose_person(model, plan, space)
            for view in views(geom, plan, res):
                kp = _first_person(detector, render_view(geom, model.faces, plan, view)[0], view)
                if kp is None:
                    continue
                body = kp.targets(view.name)[:25]  # as a fit of this kind reads them
                density = 1.0 / float(view.H[0, 0])
                for i in slots:
                    x, y, c = body[i]
                    if c < SEEN or not (0 <= x <= view.width and 0 <= y <= view.height):
                        continue
                    fb = apply_homography(view.H, np.array([[x, y]]))[0]
                    out.append(Observation(index, view.name, i, density, fb, geom.vertices[cands[i], :2]))
            if (index + 1) % 10 == 0:
                log(f"{index + 1}/{n} people, {len(out)} detections, {time.perf_counter() - t0:.0f} s")
    finally:
        model.use_keypoints(saved)
    return out


def fit_slot(obs: list[Observation], keep: int = KEEP) -> tuple[np.ndarray, np.ndarray]:
    """Weights w ≥ 0, Σw = 1 over the candidates minimising Σ density² |Σ w_k v_k − detected|²
    (pixels²) over OBS of one slot; returns (candidate indices [≤keep], weights)."""
    K = len(obs[0].candidates)

    def solve(cols: np.ndarray) -> np.ndarray:
        A = np.concatenate([o.density * o.candidates[cols].T for o in obs])  # [2N, k]
        b = np.concatenate([o.density * o.detected for o in obs])
        scale = float(np.abs(A).max())
        ridge = np.sqrt(RIDGE * len(obs)) * np.eye(len(cols))
        ones = 1e3 * scale * np.ones((1, len(cols)))
        w, _ = nnls(np.concatenate([A, ridge, ones]), np.concatenate([b, np.zeros(len(cols)), [1e3 * scale]]),
                    maxiter=50 * len(cols))
        return w / w.sum()

    w = solve(np.arange(K))
    cols = np.sort(np.argsort(-w)[:keep])
    cols = cols[w[cols] > 0]
    return cols, solve(cols)


def gaps(obs: list[Observation], cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pixel gap [N] between each detection and the combination's projection."""
    return np.array([o.density * np.linalg.norm(w @ o.candidates[cols] - o.detected) for o in obs])


def observe_pitch(model: Any, detector: Callable, n: int, seed: int, res: int, pitches: tuple[float, ...] = PITCHES,
                  log: Callable[[str], None] = lambda m: None) -> tuple[np.ndarray, np.ndarray]:
    """Full views (RES px) of N people (seed SEED) at each camera pitch of PITCHES (radians), through
    DETECTOR: (posture features [M, F] (`posture.features`), the renders' pitches [M]); a render
    whose person the detector misses is left out."""
    from mst_pipeline.body.posture import features
    from mst_pipeline.detect.pool import fitting_input

    mesh_render.start()
    saved = model.keypoints
    model.use_keypoints(None)
    feats, truth = [], []
    t0 = time.perf_counter()
    try:
        for pitch in pitches:
            space = default_space(model)
            space.pitch = float(pitch)
            for index in range(n):
                plan = plan_person(index, seed, model.num_betas, float(pitch))
                geom = pose_person(model, plan, space)
                (view,) = [v for v in views(geom, plan, res) if v.name == "full"]
                kp = _first_person(detector, render_view(geom, model.faces, plan, view)[0], view)
                if kp is None:
                    continue
                u, c = fitting_input(kp, view.width, view.height)
                feats.append(features(u[None], c[None])[0])  # at `mst space`'s threshold
                truth.append(float(pitch))
            log(f"pitch {np.degrees(pitch):+.0f}°: {len(truth)} renders, {time.perf_counter() - t0:.0f} s")
    finally:
        model.use_keypoints(saved)
    return np.array(feats), np.array(truth)


def calibrate(model: Any, detector: Callable, convention: str, n: int = 40, seed: int = 1000, res: int = 256,
              log: Callable[[str], None] = lambda m: None,
              pitch_people: int = PITCH_PEOPLE) -> tuple[KeypointRegressor, dict[str, Any]]:
    """Calibrate CONVENTION on MODEL with DETECTOR (see the module doc). Returns the regressor and a
    report: per slot the detections used and the mean pixel gap of the model's own point and of the
    calibrated one, per view, and the pitch response's per-pitch mean estimate (`"pitch"`)."""
    from mst_pipeline.body.posture import estimate, fit_response

    t0 = time.perf_counter()
    obs = observe(model, detector, convention, n, seed, res, log)
    cands = candidate_vertices(model)
    own_point = {}
    import torch

    with torch.no_grad():  # the model's own point as a combination of its candidates (for the report)
        saved = model.keypoints
        model.use_keypoints(None)
        rest = model()
        model.use_keypoints(saved)
    slots, report = {}, {}
    for i, name in enumerate(BODY25_NAMES):
        mine = [o for o in obs if o.slot == i]
        if len(mine) < MIN_COUNT:
            continue
        cols, w = fit_slot(mine)
        ids = cands[i][cols]
        g = gaps(mine, cols, w)
        own = rest.body25[0, i].cpu().numpy()
        v = rest.vertices[0, cands[i]].cpu().numpy()
        nearest = int(np.argmin(np.linalg.norm(v - own, axis=1)))
        own_point[name] = gaps(mine, np.array([nearest]), np.array([1.0]))
        per_view = {vn: round(float(g[[o.view == vn for o in mine]].mean()), 2)
                    for vn in VIEWS if any(o.view == vn for o in mine)}
        own_view = {vn: round(float(own_point[name][[o.view == vn for o in mine]].mean()), 2)
                    for vn in per_view}
        slots[name] = {"ids": [int(x) for x in ids], "weights": [round(float(x), 6) for x in w],
                       "count": len(mine), "residual_px": per_view}
        slots[name]["weights"] = (np.array(slots[name]["weights"]) / sum(slots[name]["weights"])).tolist()
        report[name] = {"count": len(mine), "calibrated_px": per_view, "model_px": own_view}
    views_doc = fit_views(obs, cands)
    for kind, doc in views_doc.items():
        for name, slot in doc["slots"].items():
            report.setdefault(name, {}).setdefault("view_px", {})[kind] = slot["residual_px"]
        for name in doc["unused"]:
            report.setdefault(name, {}).setdefault("unused_in", []).append(kind)
    feats, truth = observe_pitch(model, detector, pitch_people, seed + 1, res, log=log)
    response = fit_response(feats, truth)
    est = estimate(response, feats)
    report["pitch"] = {f"{np.degrees(p):+.0f}°": round(float(np.degrees(np.nanmean(est[truth == p]))), 2)
                       for p in np.unique(truth)}
    settings = {"detector": CONVENTIONS[convention].calibrated_by, "people": n, "seed": seed, "res": res,
                "yaw_deg": round(float(np.degrees(YAW)), 1), "seen": SEEN, "keep": KEEP,
                "unreliable": UNRELIABLE, "pitch_people": pitch_people, "pitch_seed": seed + 1,
                "pitches_deg": [round(float(np.degrees(p)), 2) for p in PITCHES],
                "seconds": round(time.perf_counter() - t0, 1)}
    return KeypointRegressor(convention, model.hash, slots, settings=settings, views=views_doc,
                             pitch=response), report


def fit_views(obs: list[Observation], cands: dict[int, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Each view kind's own fit of the slots it shows at least MIN_COUNT times, and the slots unused
    in it: {kind: {"slots": {name: {ids, weights, count, residual_px}}, "unused": [names]}}. A slot is
    unused in a view when its calibrated mean gap there exceeds UNRELIABLE times the median of the
    view's slots' gaps (gaps in full-body units, so views of every density compare alike)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in VIEWS:
        slots, spread = {}, {}
        for i, name in enumerate(BODY25_NAMES):
            mine = [o for o in obs if o.slot == i and o.view == kind]
            if len(mine) < MIN_COUNT:
                continue
            cols, w = fit_slot(mine)  # weights summing to 1
            g = gaps(mine, cols, w)
            slots[name] = {"ids": [int(x) for x in cands[i][cols]], "weights": [float(x) for x in w],
                           "count": len(mine), "residual_px": round(float(g.mean()), 2)}
            spread[name] = float(np.mean(g / np.array([o.density for o in mine])))
        if not slots:
            continue
        typical = float(np.median(list(spread.values())))
        unused = sorted(n for n, v in spread.items() if v > UNRELIABLE * typical)
        out[kind] = {"slots": slots, "unused": unused}
    return out
