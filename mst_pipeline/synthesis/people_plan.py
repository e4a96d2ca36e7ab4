"""One person of `mst render-people`: its random plan, its posed mesh in full-body space, its views.

`plan_person` draws every random choice of one index from `default_rng([seed, index])`;
`pose_person` poses the body model and maps it into full-body space through the person's own
camera (`person_camera`: ᾱ rescaled so every body spans the mean body's rows); `views` gives the
exact H of the full, upper-body and face images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mst_pipeline.body.layout import ARM_JOINTS, EXTRA_VERTEX_NAMES, FINGERTIPS, NUM_SMPL_JOINTS, SMPL_JOINT_NAMES
from mst_pipeline.body.poses import prior_pose
from mst_pipeline.space import FullBodySpace, upright_orientation
from uh_train.format.geometry import scale_translate, square_homography

VIEWS = ("full", "upper", "face")
UPPER_SIDE = 0.55  # the upper-body square covers this much of full-body space (head to hips)
UPPER_DENSITY = 3.0  # pixels per full-body unit, relative to the full image
FACE_DENSITY = 8.0
FACE_MARGIN = (1.3, 1.7)  # face square side / head extent
JOINT = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}  # SMPL joint index by name


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
        hip, knee, ankle = (JOINT[f"{side}_{j}"] for j in ("hip", "knee", "ankle"))
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
    rest_points["head"] = rest_joints[JOINT["head"]]
    rest_points["neck"] = rest_joints[JOINT["neck"]]
    return PersonGeometry(
        vertices=fb, rest=rest, normals=vertex_normals(fb, model.faces),
        dominant=model.lbs_weights.cpu().numpy().argmax(axis=1),
        body25=space.to_full_body(out.body25[0].cpu().numpy().astype(np.float64))[:, :2], hands=hands,
        rest_points=rest_points, cam=space.cam_bar,
    )


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
    upper = View("upper", square_homography(cx - side / 2, top, side, size), size, size)
    head = v[geom.dominant == JOINT["head"], :2]
    if len(head) == 0:  # a model without head vertices: the face keypoints bound the head
        head = geom.body25[[0, 15, 16, 17, 18]]
    lo, hi = head.min(axis=0), head.max(axis=0)
    fx, fy, spread = plan.face
    side = float(np.max(hi - lo)) * spread
    size = max(16, int(round(side * FACE_DENSITY * res)))
    centre = 0.5 * (lo + hi) + np.array([fx, fy]) * side
    face = View("face", square_homography(*(centre - side / 2), side, size), size, size)
    return [full, upper, face]
