"""`mst render-people`: full-body renders of the body model with exact homographies.

Each index is one person: betas, a standing pose (from a pose set, else the built-in prior of
`mst_pipeline.body.poses` with some leg variation) and clothing colours, all drawn from
`numpy.random.default_rng([seed, index])`. The posed mesh is mapped into full-body space with the
full-body set's average weak-perspective camera ᾱ (paper Eq. 2; docs/mst.md, "Geometry"),
rescaled per person so that every body spans the rows of the mean body (head top near y = 0.04,
feet near 0.96 in the built-in space), as full-body datasets crop each person; an orthographic
render of the unit square *is* the full-body image.
Each person is rendered three times, every view an exact scale + translation of full-body space:

* ``full/``: the whole square at RES pixels;
* ``upper/``: a square over the top ~55 % of the body at ~3× the full image's pixel density;
* ``face/``: a square around the head at ~8× the density.

Next to each image, ``<stem>_keypoints.json`` holds the ground-truth projected BODY_25 and hand
keypoints in OpenPose's JSON layout, BODY_25 where a detector would put it (the model's calibrated
openpose-body25 convention, `mst_pipeline.body.conventions`, unless the given model already follows
one) (`mst align --detector openpose-json` reads it), and
``truth.jsonl`` holds every image's exact H (image pixels -> full-body space), against which the
MST's fitted H can be checked (`mst_pipeline.synthesis.people_truth`).

pyrender rasterises which triangle each pixel sees (`mst_pipeline.synthesis.mesh_render`, headless OpenGL:
identical bytes for the same seed on the same machine) and numpy shades it: Lambert shading of
smooth normals, colours by each vertex's dominant skinning joint
(shirt on the torso and upper arms, trousers on the legs, skin on head, hands and forearms, hair on
the top of the head) and fine shirt stripes laid out on the rest-pose surface, so that only the
denser views resolve them, as with real high-resolution crops.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body import load_body_model, use_convention
from mst_pipeline.body.layout import HAND_SLOTS, NUM_SMPL_JOINTS
from mst_pipeline.body.poses import load_pose_set
from mst_pipeline.shards.writer import encode_image
from mst_pipeline.space import load_space
from mst_pipeline.synthesis import mesh_render
from mst_pipeline.synthesis.mesh_render import barycentrics, triangle_ids
from mst_pipeline.synthesis.people_plan import (
    JOINT,
    VIEWS,
    PersonGeometry,
    PersonPlan,
    View,
    plan_person,
    pose_person,
    views,
)
from uh_train.format.atomic import atomic_write_bytes, atomic_write_text
from uh_train.format.geometry import apply_homography, scale_translate

NECKLINE = 0.03  # metres below the neck joint where the shirt ends
NECK_RADIUS = 0.09  # metres: the neckline's half width
EYE_RADIUS = 0.007  # metres around the eye vertices painted dark
SUPERSAMPLE = 2  # rendered at 2×2 samples per pixel, box-filtered

MATERIALS = ("skin", "shirt", "trousers", "shoes", "hair")
SKIN, SHIRT, TROUSERS, SHOES, HAIR = range(len(MATERIALS))
# Material of a vertex by its dominant skinning joint (sleeves and trouser legs vary per person).
_BASE_MATERIAL = {
    **dict.fromkeys(("pelvis", "left_hip", "right_hip", "left_knee", "right_knee"), TROUSERS),
    **dict.fromkeys(("left_ankle", "right_ankle", "left_foot", "right_foot"), SHOES),
    **dict.fromkeys(("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder",
                     "right_shoulder"), SHIRT),
    **dict.fromkeys(("neck", "head", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand",
                     "right_hand"), SKIN),
}
_FOREARMS = (JOINT["left_elbow"], JOINT["right_elbow"])
_SHINS = (JOINT["left_knee"], JOINT["right_knee"])


# ---------------------------------------------------------------------------------------------
# Materials and shading


def surface_materials(dominant: np.ndarray, rest: np.ndarray, plan: PersonPlan,
                      points: dict[str, np.ndarray]) -> np.ndarray:
    """Material [N] of surface points with dominant skinning joint [N] and rest position [N, 3].

    By the dominant joint, except two cuts made by rest-pose geometry (skinning weights of
    neighbouring joints interleave, so the joint alone gives ragged edges): a round neckline and
    the hair on the top and back of the head. Called per pixel with interpolated rest positions, so
    those edges are smooth at any pixel density.
    """
    table = np.full(NUM_SMPL_JOINTS, SKIN)
    for name, material in _BASE_MATERIAL.items():
        table[JOINT[name]] = material
    if plan.long_sleeves:
        table[list(_FOREARMS)] = SHIRT
    if plan.shorts:
        table[list(_SHINS)] = SKIN
    mats = table[dominant]
    neck = points["neck"]
    around = np.isin(dominant, [JOINT[j] for j in ("neck", "spine3", "left_collar", "right_collar")])
    near = around & (np.linalg.norm((rest - neck)[:, [0, 2]], axis=1) < NECK_RADIUS)
    mats[near] = np.where(rest[near, 1] > neck[1] - NECKLINE, SKIN, SHIRT)
    head = dominant == JOINT["head"]
    eye_y = 0.5 * (points["leye"][1] + points["reye"][1])
    top = rest[:, 1] > eye_y + plan.hairline
    back = (rest[:, 2] < points["head"][2] - 0.02) & (rest[:, 1] > eye_y - 0.05)
    mats[head & (top | back)] = HAIR
    return mats


def vertex_materials(geom: PersonGeometry, plan: PersonPlan) -> np.ndarray:
    """Material [V] of each vertex (see `surface_materials`)."""
    return surface_materials(geom.dominant, geom.rest, plan, geom.rest_points)


def render_view(geom: PersonGeometry, faces: np.ndarray, plan: PersonPlan, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: (RGB uint8 [h, w, 3], person coverage float [h, w] in [0, 1])."""
    ss = SUPERSAMPLE
    W, Hh = view.width * ss, view.height * ss
    H_ss = view.H @ scale_translate(1.0 / ss, 1.0 / ss, 0.0, 0.0)
    to_px = np.linalg.inv(H_ss)
    pts = np.empty_like(geom.vertices)
    pts[:, :2] = apply_homography(to_px, geom.vertices[:, :2])
    pts[:, 2] = geom.vertices[:, 2]
    fid = triangle_ids(pts, faces, W, Hh)
    bary = barycentrics(pts, faces, fid)
    # Background: a wall above the floor line, both defined in full-body space so crops agree.
    gy, gx = np.mgrid[0:Hh, 0:W] + 0.5
    fb = apply_homography(H_ss, np.stack([gx, gy], axis=-1))
    wall, floor = np.array(plan.wall, np.float64), np.array(plan.floor, np.float64)
    shade_y = np.clip(fb[..., 1], 0.0, 1.0)[..., None]
    on_floor = (fb[..., 1] > 0.93)[..., None]
    image = np.where(on_floor, floor * (1.05 - 0.1 * shade_y), wall * (1.0 - 0.12 * shade_y))
    hit = fid >= 0
    if hit.any():
        f = fid[hit]
        w = bary[hit][..., None]  # [N, 3, 1]
        tri = faces[f]
        normal = (w * geom.normals[tri]).sum(1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        normal[normal[:, 2] > 0] *= -1  # the visible side faces the camera (whatever the winding)
        rest = (w * geom.rest[tri]).sum(1)
        # Each sample takes the dominant joint of its nearest triangle corner, so material edges
        # cut through triangles instead of following their jagged edges.
        dominant = geom.dominant[tri][np.arange(len(f)), bary[hit].argmax(axis=1)]
        material = surface_materials(dominant, rest, plan, geom.rest_points)
        palette = np.array([plan.colours[m] for m in MATERIALS], np.float64)
        albedo = palette[material]
        shirt = material == SHIRT
        stripes = np.sin(2 * np.pi * rest[:, 1] / plan.stripe_period) > 0
        mix = (shirt & stripes)[:, None] * plan.stripe_contrast
        albedo = albedo * (1 - mix) + np.array(plan.colours["stripe"], np.float64) * mix
        albedo = _face_features(albedo, rest, material, geom.rest_points)
        diffuse = np.clip(normal @ np.asarray(plan.light), 0.0, 1.0)
        image[hit] = albedo * (0.35 + 0.7 * diffuse)[:, None]
    image = image.reshape(view.height, ss, view.width, ss, 3).mean(axis=(1, 3))
    coverage = hit.reshape(view.height, ss, view.width, ss).mean(axis=(1, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), coverage


def _face_features(albedo: np.ndarray, rest: np.ndarray, material: np.ndarray,
                   points: dict[str, np.ndarray]) -> np.ndarray:
    """Dark eyes and a mouth painted on the rest-pose face (what a face crop should show)."""
    front = rest[:, 2] > points["head"][2]
    skin = (material == SKIN) & front
    for eye in ("leye", "reye"):
        d = np.linalg.norm(rest - points[eye], axis=1)
        albedo[skin & (d < EYE_RADIUS)] = (35, 25, 25)
    nose = points["nose"]
    eye_gap = abs(points["leye"][0] - points["reye"][0])
    mouth_y = nose[1] - 0.75 * eye_gap
    mouth = skin & (np.abs(rest[:, 0] - nose[0]) < 0.45 * eye_gap) & (np.abs(rest[:, 1] - mouth_y) < 0.1 * eye_gap)
    albedo[mouth] = albedo[mouth] * np.array([0.75, 0.45, 0.45])
    return albedo


# ---------------------------------------------------------------------------------------------
# Keypoints (OpenPose JSON) and ground truth


def openpose_document(geom: PersonGeometry, view: View) -> dict[str, Any]:
    """The ground-truth keypoints of one view in OpenPose `--write_json` layout (docs/mst.md,
    "Keypoint backends"): pixel coordinates, confidence 1 inside the image; points outside are 0, 0, 0 as OpenPose
    writes undetected ones. Hands: wrist and fingertips (the points the body model has)."""
    to_px = np.linalg.inv(view.H)

    def flat(points: np.ndarray) -> list[float]:
        px = apply_homography(to_px, points)
        inside = (px[:, 0] >= 0) & (px[:, 0] <= view.width) & (px[:, 1] >= 0) & (px[:, 1] <= view.height)
        arr = np.concatenate([px, inside[:, None].astype(np.float64)], axis=1)
        arr[~inside] = 0.0
        return [round(float(x), 3) for x in arr.reshape(-1)]

    def hand(side: str) -> list[float]:
        arr = np.zeros((21, 3))
        arr[list(HAND_SLOTS)] = np.asarray(flat(geom.hands[side])).reshape(6, 3)
        return arr.reshape(-1).tolist()

    person = {"person_id": [-1], "pose_keypoints_2d": flat(geom.body25), "face_keypoints_2d": [],
              "hand_left_keypoints_2d": hand("left"), "hand_right_keypoints_2d": hand("right"),
              "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
              "hand_right_keypoints_3d": []}
    return {"version": 1.3, "people": [person]}


def person_stem(index: int) -> str:
    return f"person{index:06d}"


def truth_record(plan: PersonPlan, geom: PersonGeometry, view: View) -> dict[str, Any]:
    """One line of truth.jsonl: the image, its exact H and the person's full-image camera."""
    return {"image": f"{view.name}/{person_stem(plan.index)}.png", "index": plan.index, "view": view.name,
            "width": view.width, "height": view.height, "H": np.asarray(view.H).round(10).tolist(),
            "cam": [round(float(c), 8) for c in geom.cam]}


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class PeopleSummary:
    rendered: int = 0  # images written
    skipped: int = 0  # images already there
    seconds: float = 0.0
    coverage: dict[str, float] = field(default_factory=dict)  # mean person coverage per view


def render_people(out: str | os.PathLike, n: int, res: int = 256, seed: int = 0, model: Any = None,
                  body_model: str | os.PathLike | None = None, poses_file: str | os.PathLike | None = None,
                  space_file: str | os.PathLike | None = None, progress: bool = True) -> PeopleSummary:
    """Render people 0..n-1 into OUT/{full,upper,face}/ with OpenPose JSON and OUT/truth.jsonl.

    MODEL: a loaded body model (else BODY_MODEL's file or the open default). Deterministic per
    index and seed; images (with their keypoints) that exist are skipped; files are written
    atomically, so an interrupted run resumes where it stopped.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if res < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {res}")
    start = time.perf_counter()
    mesh_render.start()  # the renderer starts while the body model loads
    out = Path(out)
    for name in VIEWS:
        (out / name).mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load_body_model(body_model)
    own = model.keypoints
    if own is None:  # the keypoint files hold what `--detector openpose-json` expects of them
        use_convention(model, "openpose-json")
    try:
        return _render_people(out, n, res, seed, model, poses_file, space_file, progress, start)
    finally:
        model.use_keypoints(own)


def view_geometry(model: Any, plan: Any, space: Any, geom: Any, kind: str) -> Any:
    """GEOM with its keypoints where the model's detector places them in views of KIND (the
    calibration's per-view fit, `mst_pipeline.body.use_view`), so a render's keypoint file holds what
    a fit of that kind expects; GEOM itself when the kind has no fit of its own. The model's keypoints
    are left as they were."""
    from mst_pipeline.body import use_view

    saved = model.keypoints
    if saved is None or not saved.views.get(kind):
        return geom
    try:
        use_view(model, kind)
        return pose_person(model, plan, space)
    finally:
        model.use_keypoints(saved)


def _render_people(out: Path, n: int, res: int, seed: int, model: Any, poses_file, space_file, progress: bool,
                   start: float) -> PeopleSummary:
    space = load_space(space_file, model)
    poses = load_pose_set(poses_file) if poses_file is not None else None
    faces = model.faces
    summary = PeopleSummary()
    records: list[dict[str, Any]] = []
    covered: dict[str, list[float]] = {name: [] for name in VIEWS}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"rendering people ({res} px)", total=n)
        for index in range(n):
            plan = plan_person(index, seed, model.num_betas, space.pitch, poses)
            geom = pose_person(model, plan, space)
            for view in views(geom, plan, res):
                records.append(truth_record(plan, geom, view))
                png = out / view.name / f"{person_stem(index)}.png"
                keypoints = png.with_name(f"{person_stem(index)}_keypoints.json")
                if png.exists() and keypoints.exists():
                    summary.skipped += 1
                    continue
                image, coverage = render_view(geom, faces, plan, view)
                covered[view.name].append(float(coverage.mean()))
                document = json.dumps(openpose_document(view_geometry(model, plan, space, geom, view.name), view))
                atomic_write_text(keypoints, document)
                atomic_write_bytes(png, encode_image(image, "png"))
                summary.rendered += 1
            bar.advance(task)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_text(out / "truth.jsonl", lines)
    summary.coverage = {k: float(np.mean(v)) for k, v in covered.items() if v}
    summary.seconds = time.perf_counter() - start
    return summary
