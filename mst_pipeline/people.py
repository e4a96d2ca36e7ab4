"""`mst render-people`: full-body renders of the body model with exact homographies.

Each index is one person: betas, a standing pose (from a pose set, else the built-in prior of
`mst_pipeline.hands` with some leg variation) and clothing colours, all drawn from
`numpy.random.default_rng([seed, index])`. The posed mesh is mapped into full-body space with the
full-body set's average weak-perspective camera ᾱ (DESIGN §3), rescaled per person so that every
body spans the rows of the mean body (head top near y = 0.04, feet near 0.96 in the built-in
space), as full-body datasets crop each person; an orthographic render of the unit square *is*
the full-body image.
Each person is rendered three times, every view an exact scale + translation of full-body space:

* ``full/``: the whole square at RES pixels;
* ``upper/``: a square over the top ~55 % of the body at ~3× the full image's pixel density;
* ``face/``: a square around the head at ~8× the density.

Next to each image, ``<stem>_keypoints.json`` holds the ground-truth projected BODY_25 and hand
keypoints in OpenPose's JSON layout (`mst align --detector openpose-json` reads it), and
``truth.jsonl`` holds every image's exact H (image pixels -> full-body space), against which the
MST's fitted H can be checked (`truth_errors`).

The renderer is our own z-buffer rasteriser in numpy (no OpenGL, identical bytes on every
machine): Lambert shading of smooth normals, colours by each vertex's dominant skinning joint
(shirt on the torso and upper arms, trousers on the legs, skin on head, hands and forearms, hair on
the top of the head) and fine shirt stripes laid out on the rest-pose surface, so that only the
denser views resolve them, as with real high-resolution crops.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body import load_body_model
from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, NUM_SMPL_JOINTS, SMPL_JOINT_NAMES
from mst_pipeline.hands import ARM_JOINTS, FINGERTIPS, OPENPOSE_HAND_SLOTS, load_pose_set, load_space, prior_pose
from mst_pipeline.shards import encode_image
from mst_pipeline.space import FullBodySpace, upright_orientation
from uh_train.format.atomic import atomic_write_bytes, atomic_write_text
from uh_train.format.geometry import apply_homography, scale_translate

VIEWS = ("full", "upper", "face")
UPPER_SIDE = 0.55  # the upper-body square covers this much of full-body space (head to hips)
UPPER_DENSITY = 3.0  # pixels per full-body unit, relative to the full image
FACE_DENSITY = 8.0
FACE_MARGIN = (1.3, 1.7)  # face square side / head extent
NECKLINE = 0.03  # metres below the neck joint where the shirt ends
NECK_RADIUS = 0.09  # metres: the neckline's half width
EYE_RADIUS = 0.007  # metres around the eye vertices painted dark
SUPERSAMPLE = 2  # rendered at 2×2 samples per pixel, box-filtered
MAX_CANDIDATES = 2_000_000  # pixel-triangle pairs rasterised at once (bounds the memory)

MATERIALS = ("skin", "shirt", "trousers", "shoes", "hair")
SKIN, SHIRT, TROUSERS, SHOES, HAIR = range(len(MATERIALS))
_J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
# Material of a vertex by its dominant skinning joint (sleeves and trouser legs vary per person).
_BASE_MATERIAL = {
    **dict.fromkeys(("pelvis", "left_hip", "right_hip", "left_knee", "right_knee"), TROUSERS),
    **dict.fromkeys(("left_ankle", "right_ankle", "left_foot", "right_foot"), SHOES),
    **dict.fromkeys(("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder",
                     "right_shoulder"), SHIRT),
    **dict.fromkeys(("neck", "head", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand",
                     "right_hand"), SKIN),
}
_FOREARMS = (_J["left_elbow"], _J["right_elbow"])
_SHINS = (_J["left_knee"], _J["right_knee"])


def _extra(name: str) -> int:
    """Index among the 45 model joints of an OpenPose vertex joint."""
    return NUM_SMPL_JOINTS + EXTRA_VERTEX_NAMES.index(name)


# ---------------------------------------------------------------------------------------------
# Per-index plan: every random choice of one person


@dataclass
class PersonPlan:
    """What to render for one index (all choices drawn from default_rng([seed, index]))."""

    index: int
    betas: list[float]
    pose: list[float]  # 72: global orientation + 23 body joints, axis-angle
    colours: dict[str, tuple[int, int, int]]  # material -> sRGB
    long_sleeves: bool
    shorts: bool
    hairline: float  # metres above the eyes where the hair starts
    stripe_period: float  # metres on the rest-pose torso
    stripe_contrast: float
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    light: tuple[float, float, float]  # direction towards the light, camera frame (x right, y down, z away)
    upper: tuple[float, float, float]  # crop jitter: x offset, y margin (full-body units), side factor
    face: tuple[float, float, float]  # crop jitter: x, y offset (in sides), side / head extent


def standing_pose(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A standing pose [72]: the built-in arm prior of `mst render-hands` plus varied legs
    (hips apart or together, one leg a little forward, soft knees) and feet flat on the floor: the
    ankles undo the legs' forward bend, so each foot's pitch is the body's (`space.feet_pitch`)."""
    pose = prior_pose(rng, pitch).reshape(24, 3)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        hip, knee, ankle = (_J[f"{side}_{j}"] for j in ("hip", "knee", "ankle"))
        pose[hip] = [rng.normal(0, 0.12), rng.normal(0, 0.08), sign * rng.uniform(-0.02, 0.12)]
        pose[knee] = [rng.uniform(0.0, 0.25), 0.0, 0.0]
        pose[ankle] = [-(pose[hip, 0] + pose[knee, 0]), 0.0, 0.0]
    return pose.reshape(72)


def _colour(rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(int(lo), int(hi), size=3))


def plan_person(index: int, seed: int, num_betas: int, pitch: float,
                poses: dict[str, np.ndarray] | None = None) -> PersonPlan:
    """Every random choice of person INDEX; POSES (`load_pose_set`) replaces the built-in pose prior."""
    rng = np.random.default_rng([seed, index])
    if poses is not None:
        pose = poses["pose"][int(rng.integers(len(poses["pose"])))].copy()
    else:
        pose = standing_pose(rng, pitch)
    betas = np.zeros(num_betas)
    k = min(num_betas, 10)
    betas[:k] = rng.normal(0, 0.6, k)
    tone = rng.uniform(0.0, 1.0)
    light_skin, dark_skin = np.array([236, 192, 164]), np.array([92, 58, 40])
    skin = dark_skin + (light_skin - dark_skin) * tone + rng.normal(0, 6, 3)
    colours = {
        "skin": tuple(int(c) for c in np.clip(skin, 0, 255)),
        "shirt": _colour(rng, 25, 240), "trousers": _colour(rng, 15, 170), "shoes": _colour(rng, 10, 90),
        "hair": _colour(rng, 10, 110), "stripe": _colour(rng, 25, 240),
    }
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.2), -1.0])
    return PersonPlan(
        index=index, betas=betas.tolist(), pose=np.asarray(pose, dtype=np.float64).tolist(), colours=colours,
        long_sleeves=bool(rng.random() < 0.4), shorts=bool(rng.random() < 0.2),
        hairline=float(rng.uniform(0.02, 0.045)), stripe_period=float(rng.uniform(0.012, 0.025)),
        stripe_contrast=float(rng.uniform(0.0, 0.5)), wall=_colour(rng, 150, 250), floor=_colour(rng, 90, 200),
        light=tuple(float(c) for c in light / np.linalg.norm(light)),
        upper=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(0.01, 0.04)), float(rng.uniform(0.9, 1.1))),
        face=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)), float(rng.uniform(*FACE_MARGIN))),
    )


# ---------------------------------------------------------------------------------------------
# Geometry: pose the body and map it to full-body space


@dataclass
class PersonGeometry:
    """The posed person in full-body space.

    vertices [V, 3]: full-body x, y and depth (smaller = nearer the camera); rest [V, 3]: the shaped
    rest-pose vertices (metres, Y up), where the surface patterns live; normals [V, 3] of the posed
    mesh (unit, camera frame); dominant [V] the dominant skinning joint; body25 [25, 2];
    hands {"left"/"right": [6, 2]} wrist + fingertips thumb..pinky; rest_points: rest positions of
    the eyes, nose, head and neck joints (face pattern, hairline, neckline).
    """

    vertices: np.ndarray
    rest: np.ndarray
    normals: np.ndarray
    dominant: np.ndarray
    body25: np.ndarray
    hands: dict[str, np.ndarray]
    rest_points: dict[str, np.ndarray] = field(default_factory=dict)
    cam: tuple[float, float, float] = (1.0, 0.0, 0.0)  # the person's camera (s, tx, ty), `person_camera`


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [V, 3] (unit; zero for vertices outside every face)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        for d in range(3):
            n[:, d] += np.bincount(faces[:, k], weights=fn[:, d], minlength=len(vertices))
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)


def person_camera(model: Any, betas: Sequence[float], space: FullBodySpace) -> FullBodySpace:
    """The space's ᾱ rescaled for one person: their upright rest body spans the same rows (head top
    to feet) and column centre as the mean body's does through ᾱ.

    Full-body datasets are cropped to each person, so a tall and a short person fill the frame
    alike; the MST, which fits the mean shape, maps every image the same way.
    """
    import torch

    with torch.no_grad():
        b = torch.zeros(2, model.num_betas)
        b[1, : len(betas)] = torch.as_tensor(np.asarray(betas)[: model.num_betas], dtype=torch.float32)
        upright = torch.as_tensor(np.stack([upright_orientation("front")] * 2), dtype=torch.float32)
        v = model(betas=b, global_orient=upright).vertices.cpu().numpy().astype(np.float64)
    (top_m, top_p), (bot_m, bot_p) = v[:, :, 1].min(1), v[:, :, 1].max(1)
    cx_m, cx_p = 0.5 * (v[:, :, 0].min(1) + v[:, :, 0].max(1))
    s_bar, tx_bar, ty_bar = space.cam_bar
    s = s_bar * (bot_m - top_m) / (bot_p - top_p)
    cam = (s, s_bar * (cx_m + tx_bar) / s - cx_p, s_bar * (top_m + ty_bar) / s - top_p)
    return FullBodySpace(cam_bar=cam, pitch=space.pitch, density=space.density, source=space.source)


def pose_person(model: Any, plan: PersonPlan, space: FullBodySpace) -> PersonGeometry:
    """Pose the person and map them to full-body space through their camera (`person_camera`)."""
    import torch

    with torch.no_grad():
        betas = torch.tensor([plan.betas], dtype=torch.float32)
        pose = torch.tensor([plan.pose], dtype=torch.float32)
        out = model(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:])
        rest = model.v_template + torch.einsum("bk,vdk->bvd", out.betas, model.shapedirs)[0]
        rest_joints = out.rest_joints[0].cpu().numpy().astype(np.float64)
    vertices = out.vertices[0].cpu().numpy().astype(np.float64)
    joints = out.joints[0].cpu().numpy().astype(np.float64)
    rest = rest.cpu().numpy().astype(np.float64)
    space = person_camera(model, plan.betas, space)
    fb = space.to_full_body(vertices)
    extra_ids = model.extra_vertex_ids.cpu().numpy()
    hands = {side: space.to_full_body(joints[[ARM_JOINTS[side]["wrist"], *FINGERTIPS[side]]])[:, :2]
             for side in ("left", "right")}
    rest_points = {name: rest[extra_ids[_extra(name) - NUM_SMPL_JOINTS]] for name in ("nose", "leye", "reye")}
    rest_points["head"] = rest_joints[_J["head"]]
    rest_points["neck"] = rest_joints[_J["neck"]]
    return PersonGeometry(
        vertices=fb, rest=rest, normals=vertex_normals(fb, model.faces),
        dominant=model.lbs_weights.cpu().numpy().argmax(axis=1),
        body25=space.to_full_body(out.body25[0].cpu().numpy().astype(np.float64))[:, :2], hands=hands,
        rest_points=rest_points, cam=space.cam_bar,
    )


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
        table[_J[name]] = material
    if plan.long_sleeves:
        table[list(_FOREARMS)] = SHIRT
    if plan.shorts:
        table[list(_SHINS)] = SKIN
    mats = table[dominant]
    neck = points["neck"]
    around = np.isin(dominant, [_J[j] for j in ("neck", "spine3", "left_collar", "right_collar")])
    near = around & (np.linalg.norm((rest - neck)[:, [0, 2]], axis=1) < NECK_RADIUS)
    mats[near] = np.where(rest[near, 1] > neck[1] - NECKLINE, SKIN, SHIRT)
    head = dominant == _J["head"]
    eye_y = 0.5 * (points["leye"][1] + points["reye"][1])
    top = rest[:, 1] > eye_y + plan.hairline
    back = (rest[:, 2] < points["head"][2] - 0.02) & (rest[:, 1] > eye_y - 0.05)
    mats[head & (top | back)] = HAIR
    return mats


def vertex_materials(geom: PersonGeometry, plan: PersonPlan) -> np.ndarray:
    """Material [V] of each vertex (see `surface_materials`)."""
    return surface_materials(geom.dominant, geom.rest, plan, geom.rest_points)


# ---------------------------------------------------------------------------------------------
# Views: the exact H of each image


@dataclass
class View:
    name: str
    H: np.ndarray  # image pixels -> full-body space
    width: int
    height: int


def views(geom: PersonGeometry, plan: PersonPlan, res: int) -> list[View]:
    """The full image, the upper-body square and the face square of one person."""
    full = View("full", scale_translate(1.0 / res, 1.0 / res, 0.0, 0.0), res, res)
    v = geom.vertices
    dx, margin, factor = plan.upper
    side = UPPER_SIDE * factor
    size = int(round(UPPER_SIDE * UPPER_DENSITY * res))
    cx = 0.5 * (v[:, 0].min() + v[:, 0].max()) + dx
    top = float(v[:, 1].min()) - margin
    upper = View("upper", scale_translate(side / size, side / size, cx - side / 2, top), size, size)
    head = v[geom.dominant == _J["head"], :2]
    if len(head) == 0:  # a model without head vertices: the face keypoints bound the head
        head = geom.body25[[0, 15, 16, 17, 18]]
    lo, hi = head.min(axis=0), head.max(axis=0)
    fx, fy, spread = plan.face
    side = float(np.max(hi - lo)) * spread
    size = max(16, int(round(side * FACE_DENSITY * res)))
    centre = 0.5 * (lo + hi) + np.array([fx, fy]) * side
    face = View("face", scale_translate(side / size, side / size, *(centre - side / 2)), size, size)
    return [full, upper, face]


# ---------------------------------------------------------------------------------------------
# Rasterisation and shading


def rasterise(points: np.ndarray, faces: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of a triangle mesh, sampled at pixel centres.

    points [V, 3]: pixel x, y (pixel centres at integer + 0.5) and depth (smaller = nearer);
    faces [F, 3]. Returns (triangle index [height, width] int64, -1 where no triangle covers the
    centre; barycentric weights [height, width, 3]). Ties go to the lower triangle index.
    """
    tri = points[faces]  # [F, 3, 3]
    xy = tri[..., :2]
    x0 = np.maximum(np.ceil(xy[..., 0].min(1) - 0.5), 0).astype(np.int64)
    x1 = np.minimum(np.floor(xy[..., 0].max(1) - 0.5), width - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(xy[..., 1].min(1) - 0.5), 0).astype(np.int64)
    y1 = np.minimum(np.floor(xy[..., 1].max(1) - 0.5), height - 1).astype(np.int64)
    area = ((xy[:, 1, 0] - xy[:, 0, 0]) * (xy[:, 2, 1] - xy[:, 0, 1])
            - (xy[:, 1, 1] - xy[:, 0, 1]) * (xy[:, 2, 0] - xy[:, 0, 0]))
    keep = np.flatnonzero((x1 >= x0) & (y1 >= y0) & (np.abs(area) > 1e-12))
    nx, ny = x1[keep] - x0[keep] + 1, y1[keep] - y0[keep] + 1
    counts = nx * ny
    zbuf = np.full(width * height, np.inf)
    fbuf = np.full(width * height, -1, dtype=np.int64)
    wbuf = np.zeros((width * height, 3))
    ends = np.cumsum(counts)
    start = 0
    while start < len(keep):
        # A chunk of triangles whose pixel candidates fit in MAX_CANDIDATES (at least one triangle).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + MAX_CANDIDATES, side="right")))
        sel = keep[start:stop]
        c = counts[start:stop]
        owner = np.repeat(np.arange(len(sel)), c)
        offset = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        px = x0[sel][owner] + offset % nx[start:stop][owner]
        py = y0[sel][owner] + offset // nx[start:stop][owner]
        t = tri[sel][owner]  # [N, 3, 3]
        cx, cy = px + 0.5, py + 0.5
        a = area[sel][owner]
        w0 = ((t[:, 1, 0] - cx) * (t[:, 2, 1] - cy) - (t[:, 1, 1] - cy) * (t[:, 2, 0] - cx)) / a
        w1 = ((t[:, 2, 0] - cx) * (t[:, 0, 1] - cy) - (t[:, 2, 1] - cy) * (t[:, 0, 0] - cx)) / a
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        w = np.stack([w0, w1, w2], axis=1)[inside]
        pix = (py * width + px)[inside]
        z = (w * t[inside][:, :, 2]).sum(1)
        fid = sel[owner[inside]]
        order = np.lexsort((fid, z, pix))  # per pixel: nearest first, then lowest triangle index
        pix, z, fid, w = pix[order], z[order], fid[order], w[order]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, z, fid, w = pix[first], z[first], fid[first], w[first]
        better = (z < zbuf[pix]) | ((z == zbuf[pix]) & (fid < fbuf[pix]))
        pix, z, fid, w = pix[better], z[better], fid[better], w[better]
        zbuf[pix], fbuf[pix], wbuf[pix] = z, fid, w
        start = stop
    return fbuf.reshape(height, width), wbuf.reshape(height, width, 3)


def render_view(geom: PersonGeometry, faces: np.ndarray, plan: PersonPlan, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: (RGB uint8 [h, w, 3], person coverage float [h, w] in [0, 1])."""
    ss = SUPERSAMPLE
    W, Hh = view.width * ss, view.height * ss
    H_ss = view.H @ scale_translate(1.0 / ss, 1.0 / ss, 0.0, 0.0)
    to_px = np.linalg.inv(H_ss)
    pts = np.empty_like(geom.vertices)
    pts[:, :2] = apply_homography(to_px, geom.vertices[:, :2])
    pts[:, 2] = geom.vertices[:, 2]
    fid, bary = rasterise(pts, faces, W, Hh)
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
    """The ground-truth keypoints of one view in OpenPose `--write_json` layout (CHECKPOINT-LAYOUTS
    §7): pixel coordinates, confidence 1 inside the image; points outside are 0, 0, 0 as OpenPose
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
        arr[list(OPENPOSE_HAND_SLOTS)] = np.asarray(flat(geom.hands[side])).reshape(6, 3)
        return arr.reshape(-1).tolist()

    person = {"person_id": [-1], "pose_keypoints_2d": flat(geom.body25), "face_keypoints_2d": [],
              "hand_left_keypoints_2d": hand("left"), "hand_right_keypoints_2d": hand("right"),
              "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
              "hand_right_keypoints_3d": []}
    return {"version": 1.3, "people": [person]}


def stem_of(index: int) -> str:
    return f"person{index:06d}"


def truth_record(plan: PersonPlan, geom: PersonGeometry, view: View) -> dict[str, Any]:
    """One line of truth.jsonl: the image, its exact H and the person's full-image camera."""
    return {"image": f"{view.name}/{stem_of(plan.index)}.png", "index": plan.index, "view": view.name,
            "width": view.width, "height": view.height, "H": np.asarray(view.H).round(10).tolist(),
            "cam": [round(float(c), 8) for c in geom.cam]}


def read_truth(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """truth.jsonl as {image path relative to the render folder: record}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    out = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rec["H"] = np.asarray(rec["H"], dtype=np.float64).reshape(3, 3)
            out[rec["image"]] = rec
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a truth record ({e})") from None
    return out


def corner_error(H: np.ndarray, H_true: np.ndarray, width: int, height: int) -> float:
    """Largest distance, in full-body units, between where H and the true H put the image's corners."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    return float(np.linalg.norm(apply_homography(H, corners) - apply_homography(H_true, corners), axis=1).max())


def truth_errors(truth: dict[str, dict[str, Any]], shards: Sequence[dict[str, Any]],
                 folders: dict[str, str]) -> dict[str, list[float]]:
    """Corner errors per source of aligned samples against the renders' truth.

    shards: manifest rows (key, source, H [9]); folders: source -> the render view folder its
    images came from (e.g. {"people-full": "full"}). Sources not in FOLDERS are ignored.
    """
    errors: dict[str, list[float]] = {s: [] for s in folders}
    for row in shards:
        source = row["source"]
        if source not in folders:
            continue
        stem = row["key"].split("/", 1)[1]
        rec = truth.get(f"{folders[source]}/{stem}.png")
        if rec is None:
            continue
        H = np.asarray(row["H"], dtype=np.float64).reshape(3, 3)
        errors[source].append(corner_error(H, rec["H"], rec["width"], rec["height"]))
    return errors


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
        raise ValueError(f"--res must be at least 32 pixels, got {res}")
    start = time.perf_counter()
    out = Path(out)
    for name in VIEWS:
        (out / name).mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load_body_model(body_model)
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
                png = out / view.name / f"{stem_of(index)}.png"
                keypoints = png.with_name(f"{stem_of(index)}_keypoints.json")
                if png.exists() and keypoints.exists():
                    summary.skipped += 1
                    continue
                image, coverage = render_view(geom, faces, plan, view)
                covered[view.name].append(float(coverage.mean()))
                document = json.dumps(openpose_document(geom, view))
                atomic_write_text(keypoints, document)
                atomic_write_bytes(png, encode_image(image, "png"))
                summary.rendered += 1
            bar.advance(task)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_text(out / "truth.jsonl", lines)
    summary.coverage = {k: float(np.mean(v)) for k, v in covered.items() if v}
    summary.seconds = time.perf_counter() - start
    return summary
