"""`mst render-hands`: synthetic hands rendered with Blender in full-body space (paper App. A).

For each index the command poses the body model (a pose from a pose set, or the built-in arm
prior; fingers from a fitted hand pose set, or a procedural curl), cuts out the forearm and hand,
and maps the mesh into full-body space with the full-body set's average weak-perspective camera ᾱ
(`mst_pipeline.space`, paper Eq. 2). Blender renders it orthographically over a square crop of
full-body space, so the image pixel -> full-body map is a known scale + translation: each
sample's H is exact. The RGBA render is composited onto a real image patch (`--backgrounds DIR`:
photos or aligned shards), and `mask.png` covers the whole composite, which is the training
image; over the generated fabric fallback the mask is the hand's alpha.

Blender runs in worker subprocesses (`blender_scripts/render_hands.py --serve`), so a crash in
one render costs that sample only: it goes to `rejects.jsonl` and the worker is restarted. Every
random choice of a sample comes from `numpy.random.default_rng([seed, index])`, so the same seed
and index give identical image bytes, and a re-run skips keys already in complete shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mst_pipeline.body import load_body_model
from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, NUM_SMPL_JOINTS
from mst_pipeline.shards import ShardWriter, encode_sample, write_manifest
from mst_pipeline.space import FullBodySpace, default_space
from mst_pipeline.space import load_space as read_space_file
from uh_train.format.geometry import density, image_region, scale_translate

SOURCE = "hands"
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "blender_scripts" / "render_hands.py"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# SMPL joint indices (mst_pipeline.body.layout.SMPL_JOINT_NAMES) of each arm.
ARM_JOINTS = {
    "left": {"shoulder": 16, "elbow": 18, "wrist": 20, "hand": 22},
    "right": {"shoulder": 17, "elbow": 19, "wrist": 21, "hand": 23},
}
# Fingertip joints among the 45 model joints (24 SMPL + layout.EXTRA_VERTEX_NAMES), thumb..pinky.
FINGERTIPS = {
    side: tuple(NUM_SMPL_JOINTS + EXTRA_VERTEX_NAMES.index(f"{side[0]}{finger}")
                for finger in ("thumb", "index", "middle", "ring", "pinky"))
    for side in ("left", "right")
}
# OpenPose hand keypoints we know exactly: 0 = wrist, 4/8/12/16/20 = fingertips thumb..pinky.
OPENPOSE_HAND_SLOTS = (0, 4, 8, 12, 16, 20)
THUMB_CURL = 0.6  # the thumb flexes less than the fingers
MIN_COVERAGE = 0.005  # a render whose hand covers less of the image than this is rejected


class RenderError(RuntimeError):
    """A sample that could not be rendered; the run records it in rejects.jsonl and goes on."""


# ---------------------------------------------------------------------------------------------
# Full-body space and body model (adapters over `mst space` and `mst_pipeline.body`)


def crop_camera(cam_bar: Sequence[float], x0: float, y0: float, side: float) -> list[float]:
    """Weak-perspective camera α of a crop of full-body space [x0, x0+side] x [y0, y0+side].

    Inverse of Eq. 2's u_full = (s̄/s) u_part + s̄ (t̄ − t): here s̄/s = side and
    s̄ (t̄ − t) = 2 (x0, y0) + side − 1.
    """
    s_bar, tx_bar, ty_bar = (float(c) for c in cam_bar)
    return [s_bar / side, tx_bar + (1 - 2 * x0 - side) / s_bar, ty_bar + (1 - 2 * y0 - side) / s_bar]


def load_space(path: str | os.PathLike | None, model: Any) -> FullBodySpace:
    """ᾱ and the mean pitch from `mst space`'s output (or an .npz with `cam_bar` and `pitch`), or
    the built-in default space for MODEL when PATH is None."""
    if path is None:
        return default_space(model)
    path = Path(path)
    if path.suffix != ".npz":
        return read_space_file(path)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "cam_bar" not in data:
        raise ValueError(f"{path} has no 'cam_bar' (the full-body set's average camera s, tx, ty)")
    cam = [float(c) for c in np.asarray(data["cam_bar"], dtype=np.float64).reshape(3)]
    return FullBodySpace(cam_bar=(cam[0], cam[1], cam[2]), pitch=float(np.asarray(data.get("pitch", 0.0))))


def load_pose_set(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Fitted poses (e.g. from `mst space`): .npz with `pose` [N, 72] (or `global_orient` [N, 3]
    and `body_pose` [N, 69]) and optionally `betas` [N, K]."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pose set {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip/npy errors of a corrupt file: one clear message
        raise ValueError(f"pose set {path} is not a readable .npz ({type(e).__name__}: {e})") from None
    if "pose" not in data:
        if "global_orient" in data and "body_pose" in data:
            data["pose"] = np.concatenate([data["global_orient"], data["body_pose"]], axis=1)
        else:
            raise ValueError(f"{path} has neither 'pose' [N, 72] nor 'global_orient' + 'body_pose'")
    pose = np.asarray(data["pose"], dtype=np.float64).reshape(len(data["pose"]), -1)
    if pose.shape[1] != 72 or len(pose) == 0:
        raise ValueError(f"{path}: pose has shape {list(pose.shape)}, expected [N>0, 72]")
    out = {"pose": pose}
    if "betas" in data:
        out["betas"] = np.asarray(data["betas"], dtype=np.float64).reshape(len(pose), -1)
    return out


# ---------------------------------------------------------------------------------------------
# Per-index plan: every random choice of one sample


@dataclass
class HandPlan:
    """What to render for one index (all choices drawn from default_rng([seed, index]))."""

    index: int
    side: str  # "left" or "right": the person's hand
    betas: list[float]
    pose: list[float]  # 72: global orientation + 23 body joints, axis-angle
    curl: list[float]  # finger flexion thumb..pinky in [0, 1]
    spread: float  # crop side / hand extent
    offset: tuple[float, float]  # crop centre offset, in crop sides
    skin: tuple[float, float, float]  # linear RGB
    light: dict[str, float]
    render_seed: int
    background_seed: int
    texture: str | None = None
    background: str | None = None
    fingers: list[float] | None = None  # 45 finger angles from a hand pose set (None: the curl)
    finger_source: int | None = None  # which pose of the set


def _axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _rot(axis: str, angle: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler(axis, angle).as_matrix()


def prior_pose(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A standing pose with varied arms (the built-in pose prior), [72] axis-angle.

    Global orientation: turned 180° about x to face the camera (y down), at the mean pitch with a
    little noise and yaw. Shoulders lower the arms from the T-pose by 45-85°, elbows flex 0-90°
    forward, wrists and forearms twist; spine and neck get small noise.
    """
    pose = np.zeros((24, 3))
    R = _rot("x", np.pi - pitch + rng.normal(0, 0.03)) @ _rot("y", rng.normal(0, 0.2))  # space.pitch_of_rotation
    pose[0] = _axis_angle(R)
    for j in (3, 6, 9, 12, 15):
        pose[j] = rng.normal(0, 0.05, 3)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        j = ARM_JOINTS[side]
        down = rng.uniform(0.8, 1.45)  # full-body photos mostly show arms hanging or slightly raised
        forward = rng.uniform(-0.2, 0.5)
        pose[j["shoulder"]] = _axis_angle(_rot("z", -sign * down) @ _rot("y", -sign * forward))
        pose[j["elbow"]] = _axis_angle(_rot("y", -sign * rng.uniform(0.0, 1.6)) @ _rot("x", rng.normal(0, 0.4)))
        pose[j["wrist"]] = rng.normal(0, 0.25, 3)
    return pose.reshape(72)


def plan_hand(index: int, seed: int, num_betas: int, pitch: float, poses: dict[str, np.ndarray] | None = None,
              textures: Sequence[Path] = (), backgrounds: Sequence[str | Path] = (),
              hand_poses: np.ndarray | None = None) -> HandPlan:
    rng = np.random.default_rng([seed, index])
    side = "left" if rng.random() < 0.5 else "right"
    betas = np.zeros(num_betas)
    if poses is not None:
        k = int(rng.integers(len(poses["pose"])))
        pose = poses["pose"][k].copy()
        if "betas" in poses:
            n = min(num_betas, poses["betas"].shape[1])
            betas[:n] = poses["betas"][k, :n]
        wrist = ARM_JOINTS[side]["wrist"]
        pose[3 * wrist: 3 * wrist + 3] += rng.normal(0, 0.15, 3)
    else:
        pose = prior_pose(rng, pitch)
        betas[: min(num_betas, 10)] = rng.normal(0, 0.8, min(num_betas, 10))
    fist = rng.random() < 0.3
    curl = np.clip(rng.uniform(0.6, 1.0, 5) if fist else rng.beta(1.2, 2.5, 5), 0, 1)
    tone = rng.uniform(0.0, 1.0)
    light_skin, dark_skin = np.array([0.80, 0.55, 0.42]), np.array([0.18, 0.09, 0.05])
    skin = dark_skin + (light_skin - dark_skin) * tone + rng.normal(0, 0.02, 3)
    plan = HandPlan(
        index=index, side=side, betas=betas.tolist(), pose=pose.tolist(), curl=curl.tolist(),
        spread=float(rng.uniform(1.15, 1.6)), offset=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12))),
        skin=tuple(float(c) for c in np.clip(skin, 0.02, 1.0)),
        light={"azimuth": float(rng.uniform(-1.2, 1.2)), "elevation": float(rng.uniform(0.2, 1.1)),
               "strength": float(rng.uniform(0.7, 1.3)), "hdr_rotation": float(rng.uniform(0, 2 * np.pi))},
        render_seed=int(rng.integers(2**31)), background_seed=int(rng.integers(2**31)),
        texture=str(textures[int(rng.integers(len(textures)))]) if textures else None,
        background=str(backgrounds[int(rng.integers(len(backgrounds)))]) if backgrounds else None,
    )
    if hand_poses is not None:  # drawn last: the other choices do not depend on it
        plan.finger_source = int(rng.integers(len(hand_poses)))
        plan.fingers = np.asarray(hand_poses[plan.finger_source], dtype=np.float64).ravel().tolist()
    return plan


# ---------------------------------------------------------------------------------------------
# Geometry: pose the body with finger articulation, cut out forearm + hand, map to full-body space


def curl_fingers(vertices: np.ndarray, weights: np.ndarray, hand_joint: np.ndarray, tips: np.ndarray,
                 side: str, curl: Sequence[float], max_angle: float = 1.9) -> np.ndarray:
    """Flex the fingers of one hand in the rest (T-) pose, before skinning.

    vertices [V, 3] rest vertices (shaped), weights [V] how much each vertex follows the hand,
    hand_joint [3] the hand joint (knuckles), tips [5, 3] fingertip positions thumb..pinky,
    curl [5] in [0, 1]. SMPL-format models have no finger joints, so each finger is bent as a
    smooth arc: a vertex beyond the knuckles is rotated towards the palm by an angle growing with
    its distance along its finger. The palm's normal comes from the geometry (the fingers' direction
    and the index -> pinky direction, with the thumb in front), not from a fixed rest orientation.
    Returns new [V, 3].
    """
    v = np.asarray(vertices, dtype=np.float64).copy()
    rel = v - hand_joint
    axes = tips - hand_joint  # [5, 3]
    lengths = np.linalg.norm(axes, axis=1)
    dirs = axes / lengths[:, None]
    palm_normal = np.cross(dirs[2], tips[4] - tips[1]) * (-1.0 if side == "left" else 1.0)
    palm_normal /= np.linalg.norm(palm_normal)
    along = rel @ dirs.T / lengths  # [V, 5]: 0 at the knuckles, 1 at the tip
    perp = np.linalg.norm(rel[:, None, :] - along[..., None] * axes[None], axis=2)  # [V, 5]
    perp = np.where(along > -0.1, perp, np.inf)
    finger = perp.argmin(axis=1)
    rows = np.arange(len(v))
    s = along[rows, finger]
    # Only the finger's own vertices bend: close to its axis, beyond the knuckles, on the hand.
    width = 0.3 * lengths[finger]
    closeness = np.clip(1.0 - perp[rows, finger] / width, 0.0, 1.0)
    ramp = np.clip(s / 0.9, 0.0, 1.0)
    amount = np.asarray(curl, dtype=np.float64)[finger] * ramp * closeness * np.clip(weights, 0, 1)
    moving = amount > 1e-6
    if not moving.any():
        return v
    from scipy.spatial.transform import Rotation

    d = dirs[finger[moving]]
    axis = np.cross(d, palm_normal)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-12
    angle = max_angle * amount[moving] * np.where(finger[moving] == 0, THUMB_CURL, 1.0)
    R = Rotation.from_rotvec(axis * angle[:, None])
    # Rotate about the knuckle point of each vertex's finger.
    pivot = hand_joint + 0.05 * axes[finger[moving]]
    v[moving] = pivot + R.apply(v[moving] - pivot)
    return v


@dataclass
class HandGeometry:
    """The forearm + hand in full-body space and what the meta needs about the whole body.

    vertices [V', 3] full-body x, y and depth; faces [F', 3]; wrist [2] and keypoints in full-body
    space; hand_points [N, 2] the hand's own vertices (for the crop).
    """

    vertices: np.ndarray
    faces: np.ndarray
    wrist: np.ndarray
    body25: np.ndarray
    hand_keypoints: np.ndarray  # [K, 2]: the OpenPose hand keypoints of `hand_slots`
    hand_points: np.ndarray
    hand_slots: tuple[int, ...] = OPENPOSE_HAND_SLOTS


def pose_hand(model: Any, plan: HandPlan, space: FullBodySpace, rigs: dict[str, Any] | None = None) -> HandGeometry:
    """Pose the whole body (with finger articulation), keep forearm + hand, map by ᾱ.

    The fingers take the plan's fitted angles through the model's finger rig (RIGS, see
    `mst_pipeline.body.fingers`) when it has them, else the procedural curl (`curl_fingers`).
    """
    import torch

    from mst_pipeline.body.fingers import articulate_np
    from mst_pipeline.body.lbs import blend_shapes, lbs, vertices2joints

    arm = ARM_JOINTS[plan.side]
    with torch.no_grad():
        betas = torch.tensor([plan.betas], dtype=model.v_template.dtype)
        v_shaped = (model.v_template[None] + blend_shapes(betas, model.shapedirs))[0]
        rest_joints = vertices2joints(model.J_regressor, v_shaped[None])[0]
        w = model.lbs_weights.cpu().numpy()
        tip_ids = model.extra_vertex_ids.cpu().numpy()[np.asarray(FINGERTIPS[plan.side]) - NUM_SMPL_JOINTS]
        v_np = v_shaped.cpu().numpy()
        shapedirs, posedirs, J_reg, weights = model.shapedirs, model.posedirs, model.J_regressor, model.lbs_weights
        V = len(v_np)
        if plan.fingers is not None:
            if rigs is None:
                raise ValueError("fitted finger poses need a body model with a finger skeleton (the open model); "
                                 "this one has none")
            articulated, hand_rest = articulate_np(v_np.astype(np.float64), rigs[plan.side],
                                                   np.reshape(plan.fingers, (15, 3)))
            # The 21 hand keypoints ride along as extra points: the wrist with the wrist joint,
            # the fingers with the hand joint (as the fingers' vertices do).
            extra_w = torch.zeros(21, weights.shape[1], dtype=weights.dtype)
            extra_w[0, arm["wrist"]] = 1.0
            extra_w[1:, arm["hand"]] = 1.0
            template = torch.as_tensor(np.concatenate([articulated, hand_rest]), dtype=v_shaped.dtype)
            shapedirs = torch.cat([shapedirs, shapedirs.new_zeros(21, *shapedirs.shape[1:])])
            posedirs = torch.cat([posedirs, posedirs.new_zeros(posedirs.shape[0], 63)], dim=1)
            J_reg = torch.cat([J_reg, J_reg.new_zeros(J_reg.shape[0], 21)], dim=1)
            weights = torch.cat([weights, extra_w])
        else:
            template = torch.as_tensor(curl_fingers(
                v_np, w[:, arm["hand"]] + w[:, arm["wrist"]], rest_joints[arm["hand"]].cpu().numpy(), v_np[tip_ids],
                plan.side, plan.curl), dtype=v_shaped.dtype)
        # Skin the shaped, articulated rest mesh (betas already applied). Joints are regressed from
        # it; the fingers bend beyond the knuckles, so the wrist and hand joints hardly move.
        pose = torch.tensor([plan.pose], dtype=v_shaped.dtype).view(1, 24, 3)
        zeros = torch.zeros_like(betas)
        vertices, joints = lbs(zeros, pose, template, shapedirs, posedirs, J_reg, model.parents, weights)
        vertices = vertices[0].cpu().numpy().astype(np.float64)
        joints = joints[0].cpu().numpy().astype(np.float64)
        hand_posed = vertices[V:]
        vertices = vertices[:V]
    joints45 = np.concatenate([joints, vertices[model.extra_vertex_ids.cpu().numpy()]], axis=0)
    body25 = joints45[model.body25_index.cpu().numpy()]
    # Forearm + hand: vertices that follow the elbow, wrist or hand joint more than anything else.
    follow = w[:, arm["elbow"]] + w[:, arm["wrist"]] + w[:, arm["hand"]]
    keep = follow > 0.5
    faces = model.faces
    faces = faces[keep[faces].all(axis=1)]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    fb = space.to_full_body(vertices)
    hand_only = (w[:, arm["wrist"]] + w[:, arm["hand"]]) > 0.5
    if plan.fingers is not None:
        kp, slots = hand_posed, tuple(range(21))
    else:
        kp, slots = joints45[[arm["wrist"], *FINGERTIPS[plan.side]]], OPENPOSE_HAND_SLOTS
    return HandGeometry(
        vertices=fb[used], faces=remap[faces], wrist=space.to_full_body(joints[arm["wrist"]])[:2],
        body25=space.to_full_body(body25)[:, :2], hand_keypoints=space.to_full_body(kp)[:, :2],
        hand_points=fb[hand_only][:, :2], hand_slots=slots,
    )


def hand_crop(geom: HandGeometry, plan: HandPlan) -> tuple[float, float, float]:
    """The full-body-space square (x0, y0, side) the image covers: around the hand, with margin."""
    pts = geom.hand_points
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    extent = float(np.max(pts.max(axis=0) - pts.min(axis=0)))
    side = max(extent * plan.spread, 1e-3)
    cx, cy = centre + np.asarray(plan.offset) * side
    return float(cx - side / 2), float(cy - side / 2), float(side)


# ---------------------------------------------------------------------------------------------
# Backgrounds and compositing


def fabric_background(res: int, rng: np.random.Generator) -> np.ndarray:
    """A fabric-like patch: a woven two-colour pattern (stripes or checks) with thread noise and
    soft folds, uint8 [res, res, 3]."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) / res
    base = rng.uniform(30, 230, 3)
    accent = np.clip(base + rng.normal(0, 60, 3), 0, 255)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = rng.uniform(0.03, 0.25)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        pattern = (np.sin(2 * np.pi * u / period) > rng.uniform(-0.5, 0.5)).astype(np.float64)
    elif kind == 1:  # checks
        pattern = 0.5 * ((np.sin(2 * np.pi * u / period) > 0) + (np.sin(2 * np.pi * v / period) > 0))
    else:  # plain
        pattern = np.zeros_like(u)
    threads = res / rng.uniform(3, 6, 2)  # thread spacing of a few pixels
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * u * threads[0]) * np.sin(2 * np.pi * v * threads[1])
    folds = np.zeros_like(u)
    for _ in range(3):
        k = rng.normal(0, 4, 2)
        folds += np.sin(2 * np.pi * (k[0] * xx + k[1] * yy) + rng.uniform(0, 2 * np.pi))
    img = base + (accent - base) * pattern[..., None]
    img = img * (0.92 + 0.08 * weave[..., None]) * (1.0 + 0.06 * folds[..., None])
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# A photo's background patch spans this fraction of the photo's height: about what the hand's
# crop (1.15-1.6 hand lengths) covers in a half-body photo, where a hand is ~0.2 of the height.
PHOTO_PATCH_FRACTION = (0.2, 0.4)
BACKGROUND_KINDS = ("upper",)  # aligned shard samples used as backgrounds (DeepFashion-like)


def crop_square(image: Image.Image, side_px: int, res: int, rng: np.random.Generator,
                mask: Image.Image | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random square of SIDE_PX pixels (clamped to the image) resized to RES: (rgb, valid)."""
    w, h = image.size
    side = int(np.clip(side_px, 1, min(w, h)))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    box = (x0, y0, x0 + side, y0 + side)
    rgb = np.asarray(image.crop(box).resize((res, res), Image.Resampling.LANCZOS), dtype=np.uint8)
    if mask is None:
        return rgb, np.full((res, res), 255, np.uint8)
    return rgb, np.asarray(mask.crop(box).resize((res, res), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class ShardBackground:
    """An aligned shard sample to take background patches from."""

    shard: Path
    image: tuple[int, int]  # (offset, size) of the image member's bytes in the tar
    mask: tuple[int, int] | None
    density: float  # its pixels per full-body unit

    def read(self, member: tuple[int, int]) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(member[0])
            return f.read(member[1])


@dataclass
class Backgrounds:
    """Real image patches to composite hands onto (paper App. A: DeepFashion-HR patches).

    items: photo paths, or "SHARD#KEY" for the samples in `shards`. A photo's patch is a random
    square of `PHOTO_PATCH_FRACTION` of its height; a shard sample's patch has the hand crop's
    own full-body size at the sample's density, so the background is at the hand's scale, and
    keeps the sample's mask (its padding is not real).
    """

    items: list[str]
    shards: dict[str, ShardBackground] = field(default_factory=dict)

    def patch(self, item: str, side: float, res: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [res, res, 3], valid uint8 [res, res]: 255 where the patch is real)."""
        if item not in self.shards:
            with Image.open(item) as im:
                im = im.convert("RGB")
                return crop_square(im, int(im.size[1] * rng.uniform(*PHOTO_PATCH_FRACTION)), res, rng)
        s = self.shards[item]
        image = Image.open(io.BytesIO(s.read(s.image))).convert("RGB")
        mask = Image.open(io.BytesIO(s.read(s.mask))).convert("L") if s.mask else None
        return crop_square(image, int(round(side * s.density)), res, rng, mask)


def find_backgrounds(folder: str | os.PathLike | None) -> Backgrounds | None:
    """Backgrounds from FOLDER: its aligned shards' upper-body samples when it holds shards, else
    its photos. None without a folder (the procedural fabric is used)."""
    if folder is None:
        return None
    import tarfile

    from mst_pipeline.shards import complete_shards

    folder = Path(folder)
    if folder.is_dir() and complete_shards(folder):
        shards: dict[str, ShardBackground] = {}
        kinds: set[str] = set()
        for shard in complete_shards(folder):
            # One pass over the tar: every member's place, and the samples' meta records.
            members: dict[str, tuple[int, int]] = {}
            metas: list[tuple[str, dict[str, Any]]] = []
            try:
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        members[m.name] = (m.offset_data, m.size)
                        if m.name.endswith(".meta.json"):
                            metas.append((m.name[: -len(".meta.json")], json.loads(tar.extractfile(m).read())))
            except (tarfile.TarError, OSError, ValueError) as e:
                raise ValueError(f"{shard}: unreadable shard ({e})") from None
            for key, meta in metas:
                kinds.add(str(meta.get("kind")))
                image = members.get(f"{key}.img.{meta.get('image')}")
                if meta.get("kind") in BACKGROUND_KINDS and image is not None:
                    mask = members.get(f"{key}.mask.png") if meta.get("has_mask") else None
                    shards[f"{shard}#{key}"] = ShardBackground(shard, image, mask, float(meta["density"]))
        if not shards:
            raise ValueError(f"the shards of {folder} hold no {'/'.join(BACKGROUND_KINDS)} samples to use as "
                             f"backgrounds (kinds found: {', '.join(sorted(kinds)) or 'none'})")
        return Backgrounds(sorted(shards), shards)
    return Backgrounds([str(p) for p in list_images(folder)])


def composite(rgba: np.ndarray, background: np.ndarray,
              real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Straight-alpha RGBA uint8 over an RGB uint8 background -> (image uint8 [h,w,3], mask uint8).

    The mask marks the pixels that count as real training data: the hand, and where REAL (uint8,
    255 = a real photo's pixel) is given, the background too. Without REAL (a generated
    background) the mask is the hand's alpha.
    """
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    out = rgba[..., :3].astype(np.float64) * alpha + background.astype(np.float64) * (1 - alpha)
    mask = rgba[..., 3].copy() if real is None else np.maximum(rgba[..., 3], real)
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------
# Blender workers


SCRATCH_PREFIX = ".render-hands-"


def scratch_folder(out: Path) -> Path:
    """A fresh folder for Blender's frames inside OUT. Called while holding the writer's lock on the
    hands source, so any older scratch folder there is a killed run's leftover and is removed."""
    for stale in out.glob(SCRATCH_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out))


def blender_command(blender: str | None = None) -> list[str]:
    """How to start a render worker: the `bpy` module in this Python, or a Blender executable."""
    if blender:
        return [blender, "-b", "--factory-startup", "-noaudio", "-P", str(SCRIPT), "--", "--serve"]
    return [sys.executable, str(SCRIPT), "--serve"]


def gpu_present() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class BlenderWorker:
    """One render subprocess speaking the line protocol of `render_hands.py --serve`.

    A crash or a timeout kills only this worker; the next job starts a fresh one.
    """

    def __init__(self, command: Sequence[str], log_path: Path, timeout: float) -> None:
        self.command, self.log_path, self.timeout = list(command), log_path, timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, bufsize=1)
        finally:
            log.close()
        return self.proc

    def render(self, job: dict[str, Any]) -> float:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(self.timeout, kill)
        timer.start()
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        finally:
            timer.cancel()
        if not line:
            code = proc.wait()
            self.proc = None
            if timed_out.is_set():
                raise RenderError(f"render timed out after {self.timeout:.0f} s")
            raise RenderError(f"render worker exited with code {code}: {self._log_tail()}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RenderError(answer.get("error", "render failed"))
        return float(answer.get("seconds", 0.0))

    def _log_tail(self, n: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-n:].replace("\n", " | ")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class RenderSettings:
    res: int = 512
    engine: str = "auto"  # auto | cycles | eevee | workbench
    samples: int = 16
    image_format: str = "jpg"
    threads: int = 0  # per worker; 0 = CPU cores / workers
    timeout: float = 300.0
    hdr: str | None = None


@dataclass
class RunSummary:
    rendered: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    render_seconds: list[float] = field(default_factory=list)


def list_images(folder: str | os.PathLike | None) -> list[Path]:
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def stem_of(index: int) -> str:
    return f"hand{index:06d}"


def build_sample(plan: HandPlan, geom: HandGeometry, crop: tuple[float, float, float], rgba: np.ndarray,
                 rgba_bytes: bytes, space: FullBodySpace, settings: RenderSettings, engine: str,
                 backgrounds: Backgrounds | None = None):
    """Composite the render and build the shard sample (exact H: pixel -> crop of full-body space).

    Over a real patch (BACKGROUNDS) the whole composite is the training image: the mask covers
    the hand and every real background pixel. Over the generated fabric only the hand counts.
    """
    res = settings.res
    x0, y0, side = crop
    coverage = float(rgba[..., 3].mean()) / 255.0
    if coverage < MIN_COVERAGE:
        raise RenderError(f"the hand covers only {coverage:.2%} of the image")
    rng = np.random.default_rng(plan.background_seed)
    if plan.background:
        if backgrounds is None:
            backgrounds = Backgrounds([plan.background])
        bg, real = backgrounds.patch(plan.background, side, res, rng)
    else:
        bg, real = fabric_background(res, rng), None
    image, mask = composite(rgba, bg, real)
    H = scale_translate(side / res, side / res, x0, y0)
    region = image_region(H, res, res)
    lo, hi = region.min(axis=0), region.max(axis=0)

    def visible(p: np.ndarray) -> np.ndarray:
        return np.all((p >= lo) & (p <= hi), axis=-1).astype(np.float64)

    body = np.concatenate([geom.body25, visible(geom.body25)[:, None]], axis=1)
    hand = np.zeros((21, 3))
    hand[list(geom.hand_slots), :2] = geom.hand_keypoints
    hand[list(geom.hand_slots), 2] = visible(geom.hand_keypoints)
    empty = np.zeros((21, 3))
    keypoints = {"body": body, "lhand": hand if plan.side == "left" else empty,
                 "rhand": hand if plan.side == "right" else empty, "face": np.zeros((70, 3))}
    betas10 = np.zeros(10)
    betas10[: min(10, len(plan.betas))] = plan.betas[:10]
    stem = stem_of(plan.index)
    fields = {
        "kind": "hand", "tier": "HR", "H": H, "region": region, "density": density(H, res, res),
        "keypoints": keypoints,
        "smpl": {"betas": betas10, "pose": plan.pose, "cam": crop_camera(space.cam_bar, x0, y0, side),
                 "cam_bar": list(space.cam_bar)},
        "fit": None,
        "orig": {"path": f"{SOURCE}/{stem}.png", "sha256": hashlib.sha256(rgba_bytes).hexdigest(),
                 "width": res, "height": res},
        "render": {"engine": engine, "samples": settings.samples, "side": plan.side,
                   "fingers": "fitted" if plan.fingers is not None else "curl",
                   "finger_pose": plan.finger_source, "curl": plan.curl if plan.fingers is None else None,
                   "coverage": coverage, "texture": Path(plan.texture).name if plan.texture else None,
                   "background": _background_name(plan.background)},
    }
    return encode_sample(SOURCE, stem, image, fields, mask=mask, ext=settings.image_format)


def _background_name(item: str | None) -> str:
    if not item:
        return "fabric"
    shard, _, key = item.partition("#")
    return key if key else Path(shard).name


def render_hands(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    settings: RenderSettings | None = None,
    workers: int = 1,
    model: Any = None,
    body_model: str | os.PathLike | None = None,
    space_file: str | os.PathLike | None = None,
    poses_file: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    textures: str | os.PathLike | None = None,
    hand_poses_file: str | os.PathLike | None = None,
    worker_command: Sequence[str] | None = None,
    max_count: int = 500,
    progress: bool = True,
    on_written: Callable[[str], None] | None = None,
) -> RunSummary:
    """Render hands 0..n-1 into shards `hands-000-*.tar` of OUT. Resumable and deterministic.

    MODEL: a loaded body model (else BODY_MODEL's file or the open default). BACKGROUNDS: a
    folder of photos or of aligned shards (upper-body samples) to composite onto; without it a
    generated fabric. HAND_POSES_FILE: finger poses from `mst fit-hands` (else the procedural
    curl). Failed renders are appended to OUT/rejects.jsonl and the run goes on.
    """
    import torch

    settings = settings or RenderSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    engine = settings.engine
    if engine == "auto":
        engine = "eevee" if gpu_present() else "cycles"
    if settings.hdr is not None and not Path(settings.hdr).is_file():
        raise ValueError(f"HDR file {settings.hdr} does not exist")
    background_set, texture_files = find_backgrounds(backgrounds), list_images(textures)
    background_items = background_set.items if background_set is not None else []
    model = model if model is not None else load_body_model(body_model)
    space = load_space(space_file, model)
    poses = load_pose_set(poses_file) if poses_file is not None else None
    hand_poses = rigs = None
    if hand_poses_file is not None:
        from mst_pipeline.body.fingers import finger_rigs
        from mst_pipeline.hand_poses import load_hand_poses

        hand_poses = load_hand_poses(hand_poses_file)
        rigs = finger_rigs(model)
        if rigs is None:
            raise ValueError("--hand-poses needs a body model with a finger skeleton (the open default model); "
                             "this SMPL-format model has none")
    workers = max(1, int(workers))
    threads = settings.threads or max(1, (os.cpu_count() or 1) // workers)
    summary = RunSummary()
    torch.set_num_threads(1)  # the mesh work is small; leave the cores to Blender
    command = list(worker_command) if worker_command else blender_command()
    writer = ShardWriter(out, SOURCE, part=0, max_count=max_count, update_manifest=False)
    todo = [i for i in range(n) if not writer.has(f"{SOURCE}/{stem_of(i)}")]
    summary.skipped = n - len(todo)
    lock = threading.Lock()
    local = threading.local()
    all_workers: list[BlenderWorker] = []
    tmp = scratch_folder(out)

    def worker() -> BlenderWorker:
        if not hasattr(local, "worker"):
            with lock:
                local.worker = BlenderWorker(command, tmp / f"worker-{len(all_workers)}.log", settings.timeout)
                all_workers.append(local.worker)
        return local.worker

    def render_one(index: int):
        plan = plan_hand(index, seed, model.num_betas, space.pitch, poses, texture_files, background_items, hand_poses)
        with lock:  # torch and the model are shared between threads
            geom = pose_hand(model, plan, space, rigs)
        crop = hand_crop(geom, plan)
        mesh = tmp / f"{stem_of(index)}.npz"
        np.savez(mesh, vertices=geom.vertices.astype(np.float32), faces=geom.faces.astype(np.int32))
        png = tmp / f"{stem_of(index)}.png"
        job = {"mesh": str(mesh), "out": str(png), "res": settings.res, "crop": list(crop), "engine": engine,
               "samples": settings.samples, "threads": threads, "seed": plan.render_seed, "skin": list(plan.skin),
               "texture": plan.texture, "hdr": settings.hdr, "light": plan.light}
        try:
            seconds = worker().render(job)
            rgba_bytes = png.read_bytes()
        finally:
            mesh.unlink(missing_ok=True)
            png.unlink(missing_ok=True)
        rgba = np.asarray(Image.open(io.BytesIO(rgba_bytes)).convert("RGBA"))
        if rgba.shape != (settings.res, settings.res, 4):
            raise RenderError(f"render has shape {list(rgba.shape)}, expected {settings.res}x{settings.res} RGBA")
        sample = build_sample(plan, geom, crop, rgba, rgba_bytes, space, settings, engine, background_set)
        return sample, seconds

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with writer, Progress(*columns, disable=not progress, transient=True) as bar, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task(f"rendering hands ({engine}, {settings.res} px)", total=len(todo))
            futures = {pool.submit(render_one, i): i for i in todo}
            for fut in as_completed(futures):
                index = futures[fut]
                try:
                    sample, seconds = fut.result()
                except Exception as e:  # noqa: BLE001 - every failure of one sample is a reject
                    _reject(out, index, e)
                    summary.rejected += 1
                else:
                    writer.write(sample)
                    summary.rendered += 1
                    summary.render_seconds.append(seconds)
                    if on_written is not None:
                        on_written(sample.key)
                bar.advance(task)
    finally:
        for w in all_workers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        write_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _reject(out: Path, index: int, error: BaseException) -> None:
    """Append one line to OUT/rejects.jsonl (flushed and synced, so a crash keeps it)."""
    record = {"key": f"{SOURCE}/{stem_of(index)}", "index": index, "error": f"{type(error).__name__}: {error}",
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(out / "rejects.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rejects(out: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out) / "rejects.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


