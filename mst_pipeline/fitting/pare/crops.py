"""PARE's input crops and cameras, pure geometry: the person's square box from its keypoints, the
224 px ImageNet-normalised crop, and the crop's weak-perspective camera moved to the whole image."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from uh_train.format.geometry import bilinear_sample

IMG_RES = 224
FOCAL_LENGTH = 5000.0  # PARE's training focal length (pixels of the 224 crop)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PARE's demo box from keypoints: 1.1 × their larger extent (`get_bbox_from_kp2d`), cropped at
# 1.2 × that (`get_single_image_crop_demo`'s default scale).
KEYPOINT_BOX_SCALE = 1.1 * 1.2


def bbox_from_keypoints(xy: np.ndarray, confidence: np.ndarray, width: int, height: int,
                        threshold: float = 0.3, scale: float = KEYPOINT_BOX_SCALE) -> np.ndarray:
    """PARE's person box from keypoints: the square around the confident keypoints' bounding box,
    side `scale` × its larger extent. xy [N, 2] pixels, confidence [N] -> [3] (cx, cy, side).

    With fewer than 2 confident keypoints the whole image (the square of side max(w, h)) is used.
    """
    xy = np.asarray(xy, dtype=np.float64)
    ok = (np.asarray(confidence) >= threshold) & np.all(np.isfinite(xy), axis=1)
    if ok.sum() < 2:
        return np.array([width / 2, height / 2, float(max(width, height))])
    lo, hi = xy[ok].min(0), xy[ok].max(0)
    side = max(scale * float((hi - lo).max()), 8.0)  # a few keypoints in a row still get a crop
    return np.array([*(0.5 * (lo + hi)), side])


def crop_person(image: np.ndarray, bbox: np.ndarray, res: int = IMG_RES) -> Tensor:
    """The square bbox (cx, cy, side; pixels, centres at integer + 0.5) resampled to res × res,
    black outside the image, ImageNet-normalised: [3, res, res] float32."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [h, w, 3], got shape {list(image.shape)}")
    cx, cy, side = (float(v) for v in bbox)
    if not side > 0:
        raise ValueError(f"bbox side must be positive, got {side}")
    h, w = image.shape[:2]
    grid = (np.arange(res) + 0.5) * (side / res) - side / 2
    px, py = np.meshgrid(cx + grid, cy + grid)  # continuous pixel coordinates of the crop's pixels
    inside = (px >= 0) & (px <= w) & (py >= 0) & (py <= h)
    rgb = bilinear_sample(image.astype(np.float32) / 255.0, px - 0.5, py - 0.5) * inside[..., None]
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1), dtype=np.float32))


def crop_cam_to_full_image(cam: np.ndarray, bbox: np.ndarray, image_size: tuple[int, int] | np.ndarray) -> np.ndarray:
    """Weak-perspective camera of a crop -> the same camera in the whole image's normalised
    coordinates (the square of side L = max(w, h) centred on the image is [-1, 1]²; docs/mst.md, "Geometry").

    The crop (cx, cy, side) covers pixels c ± side/2, so a crop point u_c lands at p = c + u_c·side/2
    and at u = (p − (w/2, h/2))·2/L. With u_c = s·(X + t):
        u = s' · (X + t'),  s' = s · side / L,  t' = t + 2 (c − (w/2, h/2)) / (s · side).
    cam [B, 3] (s, tx, ty), bbox [B, 3], image_size (w, h) or [B, 2] -> [B, 3].
    """
    cam = np.asarray(cam, dtype=np.float64).reshape(-1, 3)
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 3)
    wh = np.broadcast_to(np.asarray(image_size, dtype=np.float64).reshape(-1, 2), (len(cam), 2))
    L = wh.max(1)
    s = cam[:, 0]
    out = np.empty_like(cam)
    out[:, 0] = s * bbox[:, 2] / L
    out[:, 1:] = cam[:, 1:] + 2 * (bbox[:, :2] - wh / 2) / (s * bbox[:, 2])[:, None]
    return out
