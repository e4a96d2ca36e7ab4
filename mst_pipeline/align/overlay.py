"""`mst align --overlay DIR`: a picture per aligned image to check its fit by eye.

On the input image: the fitted body's silhouette (its mesh projected with the fit's camera and
rasterised, semi-transparent), the detected keypoints (dots coloured by confidence, BODY_25 and
hand skeletons), the fitted model's projected joints with a line from each visible keypoint to its
joint (the residual of Eq. 1's data term, coloured green → yellow → red by its size,
`draw_residuals`), and a legend with kind, tier, visible keypoints, fit loss and the joints that
fit worst, so a failed joint can be named.
The silhouette is rasterised by pyrender (`mst_pipeline.synthesis.mesh_render`, as `mst render-people`);
drawing uses PIL.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mst_pipeline.body.layout import BODY25_NAMES
from mst_pipeline.fitting.targets import fitting_joints, project
from mst_pipeline.space import normalised_to_pixels
from mst_pipeline.synthesis.mesh_render import triangle_ids
from uh_train.format.atomic import atomic_write_bytes

# OpenPose BODY_25 limbs (pairs of keypoint indices) and the 21-point hand: wrist to each finger.
BODY25_LIMBS = (
    (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (10, 11), (11, 24), (11, 22), (22, 23), (8, 12), (12, 13), (13, 14),
    (14, 21), (14, 19), (19, 20),
)  # fmt: skip
HAND_LIMBS = tuple((0 if j % 4 == 1 else j - 1, j) for j in range(1, 21))

SILHOUETTE_RGB = (60, 200, 120)
SILHOUETTE_ALPHA = 0.35
JOINT_RGB = (40, 90, 230)  # the fitted model's projected joints (and their error lines)
LIMB_RGBA = (255, 255, 255, 170)
# Names of the 37 fitting targets: BODY_25, then wrist and fingertips of the left and right hand.
TARGET_NAMES: tuple[str, ...] = BODY25_NAMES + tuple(
    f"{side}{point}" for side in "LR"
    for point in ("HandWrist", "ThumbTip", "IndexTip", "MiddleTip", "RingTip", "PinkyTip"))
RESIDUAL_RED = 0.05  # a residual of this fraction of the image's longer side is drawn red (half of it yellow)
WORST_NAMED = 3  # joints named in the legend


# ---------------------------------------------------------------------------------------------
# Geometry


def fitted_bodies(model, fits, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The fitted meshes and fitting joints of a batch, in each image's normalised coordinates.

    fits: FitResults (betas [K], pose [72], cam [3]) -> (vertices [B,V,2], joints [B,37,2]).
    """
    f32 = torch.float32
    betas = torch.as_tensor(np.stack([f.betas for f in fits]), dtype=f32, device=device)
    pose = torch.as_tensor(np.stack([f.pose for f in fits]), dtype=f32, device=device)
    cam = torch.as_tensor(np.stack([f.cam for f in fits]), dtype=f32, device=device)
    with torch.no_grad():
        out = model(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:])
        verts = project(out.vertices, cam)
        joints = project(fitting_joints(out.joints, out.body25), cam)
    return verts.cpu().numpy().astype(np.float64), joints.cpu().numpy().astype(np.float64)


def front_faces(vertices_px: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The faces [F', 3] turned towards the camera. vertices_px [V, 2] (x right, y down), faces [F, 3].

    The body faces the camera along −z, so an outward (counter-clockwise) face seen from the
    front winds clockwise in y-down pixels; for a closed mesh these faces alone cover its
    silhouette, at about half the cost.
    """
    faces = np.asarray(faces, dtype=np.int64)
    a, b, c = (vertices_px[faces[:, k]] for k in range(3))
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return faces[cross < 0]


def silhouette_mask(vertices_px: np.ndarray, faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels whose centre the mesh covers: bool [height, width] (rasterised by pyrender)."""
    points = np.concatenate([vertices_px, np.zeros((len(vertices_px), 1))], axis=1)  # depth is moot
    return triangle_ids(points, front_faces(vertices_px, faces), width, height) >= 0


# ---------------------------------------------------------------------------------------------
# Drawing


def confidence_colour(c: float) -> tuple[int, int, int]:
    """Red (unsure) through yellow to green (confident)."""
    c = float(np.clip(c, 0, 1))
    return (int(230 * min(1.0, 2 - 2 * c)), int(200 * min(1.0, 2 * c)), 40)


def residual_colour(residual: float, size: float) -> tuple[int, int, int]:
    """Green (no residual) through yellow (RESIDUAL_RED / 2 of SIZE, the image's longer side) to
    red (RESIDUAL_RED of it and more)."""
    return confidence_colour(1.0 - float(residual) / (RESIDUAL_RED * size))


def residuals(targets_px: np.ndarray, joints_px: np.ndarray, visible: np.ndarray) -> list[tuple[int, float]]:
    """(target index, residual in pixels) of each visible target, largest first (ties: lower index).
    targets_px, joints_px [37, 2]; visible [37] bool."""
    r = np.linalg.norm(np.asarray(targets_px, np.float64) - np.asarray(joints_px, np.float64), axis=1)
    return sorted(((int(i), float(r[i])) for i in np.flatnonzero(visible)), key=lambda t: (-t[1], t[0]))


def draw_residuals(draw: ImageDraw.ImageDraw, targets_px: np.ndarray, joints_px: np.ndarray, visible: np.ndarray,
                   size: float, width: int) -> str:
    """Draw a line from each visible keypoint to its projected joint, coloured by its length
    (`residual_colour`), the longest on top and thicker; returns the legend line naming the
    WORST_NAMED worst joints, e.g. "worst: RElbow 41 px, LWrist 18 px, Nose 6 px"."""
    found = residuals(targets_px, joints_px, visible)
    for rank, (i, r) in reversed(list(enumerate(found))):
        thick = 2 * width if rank < WORST_NAMED else width
        draw.line([tuple(targets_px[i]), tuple(joints_px[i])], fill=residual_colour(r, size) + (255,), width=thick)
    if not found:
        return "worst: none visible"
    return "worst: " + ", ".join(f"{TARGET_NAMES[i]} {r:.0f} px" for i, r in found[:WORST_NAMED])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def draw_overlay(image: np.ndarray, keypoints: dict[str, np.ndarray], joints_px: np.ndarray,
                 targets_px: np.ndarray, visible: np.ndarray, silhouette: np.ndarray | None,
                 legend: str) -> Image.Image:
    """The overlay picture (RGB, the input's size).

    image [h,w,3] uint8; keypoints: groups as `PersonKeypoints.groups()` ([N,3] pixels +
    confidence); joints_px [37,2] projected fitting joints and targets_px [37,2] their keypoints,
    with visible [37] bool (which pairs get an error line); silhouette bool [h,w] or None.
    """
    h, w = image.shape[:2]
    base = image.astype(np.float32)
    if silhouette is not None:
        a = SILHOUETTE_ALPHA * silhouette[..., None]
        base = base * (1 - a) + np.asarray(SILHOUETTE_RGB, np.float32) * a
    canvas = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8)).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    L = max(w, h)
    r = max(2.0, L / 256)
    width = max(1, round(L / 400))

    def dot(p, radius, fill):
        d.ellipse([p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius], fill=fill)

    for name, arr in keypoints.items():
        limbs = BODY25_LIMBS if name == "body" else HAND_LIMBS if name in ("lhand", "rhand") else ()
        for i, j in limbs:
            if arr[i, 2] > 0 and arr[j, 2] > 0:
                d.line([tuple(arr[i, :2]), tuple(arr[j, :2])], fill=LIMB_RGBA, width=width)
    legend = f"{legend}\n{draw_residuals(d, targets_px, joints_px, visible, L, width)}"
    for name, arr in keypoints.items():
        for x, y, c in arr:
            if c > 0:
                dot((x, y), r if name != "face" else 0.6 * r, confidence_colour(c) + (255,))
    for p in joints_px:
        dot(p, 0.7 * r, JOINT_RGB + (255,))
    font = _font(max(10, L // 48))
    box = d.textbbox((0, 0), legend, font=font)
    pad = max(2, L // 200)
    d.rectangle([0, 0, box[2] + 2 * pad, box[3] + 2 * pad], fill=(0, 0, 0, 150))
    d.text((pad, pad), legend, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(canvas, layer).convert("RGB")


def write_overlay(path: Path, picture: Image.Image, quality: int = 90) -> None:
    """Save as JPEG atomically (temp file + rename), creating the folders of nested stems."""
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def overlay_picture(image: np.ndarray, keypoints: dict[str, np.ndarray], targets_px: np.ndarray,
                    visible: np.ndarray, vertices: np.ndarray, joints: np.ndarray, faces: np.ndarray,
                    legend: str) -> Image.Image:
    """One image's overlay from its fitted body in normalised coordinates (`fitted_bodies`):
    vertices [V,2], joints [37,2]; faces [F,3] of the body model."""
    h, w = image.shape[:2]
    silhouette = silhouette_mask(normalised_to_pixels(vertices, w, h), faces, w, h)
    return draw_overlay(image, keypoints, normalised_to_pixels(joints, w, h), targets_px, visible,
                        silhouette, legend)
