"""Weak-perspective camera of PARE/HMR (DESIGN §3).

A camera α = (s, tx, ty) maps a 3-D point X to the crop's normalised [-1, 1] coordinates by
u = s · (X_xy + t): orthographic projection along the camera axis, then scale. The body's
frame is SMPL's (Y up, facing +Z), and image y points down, so the model is first turned to
face the camera by the caller's global orientation (a 180° turn about X for an upright person,
as PARE predicts it).
"""

from __future__ import annotations

from torch import Tensor


def weak_perspective_projection(points: Tensor, cam: Tensor) -> Tensor:
    """Project 3-D points with a weak-perspective camera.

    points: [B, N, 3], cam: [B, 3] as (s, tx, ty) -> [B, N, 2] in normalised crop coordinates.
    """
    s = cam[:, None, :1]
    t = cam[:, None, 1:]
    return s * (points[..., :2] + t)


def normalised_to_pixels(u: Tensor, size: int | float) -> Tensor:
    """Map normalised [-1, 1] crop coordinates to pixel coordinates of a square crop.

    Pixel centres are at integer + 0.5, so -1 is the left edge of pixel 0 and +1 the right edge
    of pixel size-1. u: [..., 2] -> [..., 2].
    """
    return (u + 1.0) * (0.5 * size)
