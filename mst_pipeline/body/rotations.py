"""Rotation representations: axis-angle, rotation matrices and the continuous 6-D representation.

Pure torch functions (and a numpy twin for records), shared by skinning (`lbs`), the pose prior,
SMPLify-P, PARE and the open model's construction. Shapes: [..., 3] axis-angle, [..., 3, 3]
matrices, [..., 6] 6-D.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """Continuous 6-D rotation representation -> rotation matrices.

    x: [..., 6], read as a 3×2 matrix whose columns a1, a2 are orthonormalised (Gram–Schmidt);
    the result's columns are (b1, b2, b1 × b2). -> [..., 3, 3].
    """
    m = x.reshape(*x.shape[:-1], 3, 2)
    b1 = F.normalize(m[..., 0], dim=-1)
    a2 = m[..., 1]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rotmat(aa: Tensor, eps: float = 1e-12) -> Tensor:
    """Rodrigues' formula: [..., 3] axis-angle (direction = axis, norm = angle in radians) -> [..., 3, 3].

    EPS is added to the squared angle, so the zero vector maps to the identity with finite
    gradients. Skinning uses smplx's `batch_rodrigues` (`mst_pipeline.body.lbs`); this one takes any
    leading shape and leaves small rotations unbiased (smplx adds 1e-8 to each component).
    """
    angle = torch.sqrt((aa * aa).sum(-1, keepdim=True) + eps)
    axis = aa / angle
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    o = torch.zeros_like(x)
    K = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def axis_angle_to_rotmat_np(aa: np.ndarray) -> np.ndarray:
    """numpy twin of `axis_angle_to_rotmat` for records: [..., 3] -> [..., 3, 3]."""
    return axis_angle_to_rotmat(torch.as_tensor(np.asarray(aa, dtype=np.float64))).numpy()


def rotmat_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> axis-angle [..., 3] (angle in [0, π]), via the quaternion
    of the largest diagonal element, which stays accurate near 0 and π."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr,
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 + 2 * m[..., 2, 2] - tr], -1),
    ], -2)  # [..., 4 candidates, 4 (w, x, y, z) scaled by 4·q_i]
    diag = torch.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)[..., None].expand(*diag.shape[:-1], 1, 4)
    q = F.normalize(torch.gather(cands, -2, best)[..., 0, :], dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, π]
    vec = q[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-12), torch.full_like(angle, 2.0))
    return vec * scale
