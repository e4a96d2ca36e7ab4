"""Linear blend skinning for SMPL-format models: small pure torch functions.

Shapes: B batch, V vertices, J joints, K shape coefficients (betas), P = 9 (J - 1) pose-corrective
inputs. Every function is batched and runs on whatever device its inputs live on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mst_pipeline.body.rotations import axis_angle_to_rotmat

RODRIGUES_EPS = 1e-8  # SMPL's (and smplx's) epsilon under the angle's square root


def blend_shapes(betas: Tensor, shapedirs: Tensor) -> Tensor:
    """Per-vertex offsets of a linear shape space.

    betas: [B, K], shapedirs: [V, 3, K] -> [B, V, 3].
    """
    return torch.einsum("bk,vdk->bvd", betas, shapedirs)


def vertices2joints(J_regressor: Tensor, vertices: Tensor) -> Tensor:
    """Joint locations regressed from vertices.

    J_regressor: [J, V], vertices: [B, V, 3] -> [B, J, 3].
    """
    return torch.einsum("jv,bvd->bjd", J_regressor, vertices)


def batch_rigid_transform(
    rot_mats: Tensor, joints: Tensor, parents: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor]:
    """Forward kinematics of a joint tree whose rest frames are axis-aligned.

    rot_mats: [B, J, 3, 3] local rotations (joint j relative to its parent), joints: [B, J, 3]
    rest joint locations, parents: J ints, parents[0] = -1 and parents[j] < j.
    Returns (posed_joints [B, J, 3], transforms [B, J, 4, 4]) where transforms[:, j] maps a rest
    point rigidly attached to joint j to its posed location.
    """
    parents = [int(p) for p in parents]
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    B, J = joints.shape[:2]
    local = torch.zeros(B, J, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel_joints
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]: joint frames in world coordinates
    posed_joints = world[..., :3, 3]
    # Remove the rest location so the transform applies to rest-space points, not joint-local ones.
    shift = (world[..., :3, :3] @ joints[..., None])[..., 0]
    transforms = world.clone()
    transforms[..., :3, 3] = posed_joints - shift
    return posed_joints, transforms


def lbs(
    betas: Tensor,
    pose: Tensor,
    v_template: Tensor,
    shapedirs: Tensor,
    posedirs: Tensor,
    J_regressor: Tensor,
    parents: Sequence[int] | Tensor,
    lbs_weights: Tensor,
) -> tuple[Tensor, Tensor]:
    """SMPL's forward pass: shape blend, pose correctives, skinning.

    betas: [B, K], pose: [B, J, 3] axis-angle (joint 0 = global orientation), v_template: [V, 3],
    shapedirs: [V, 3, K], posedirs: [P, 3V] with P = 9 (J - 1), J_regressor: [J, V],
    parents: J ints, lbs_weights: [V, J] (rows sum to 1).
    Returns (vertices [B, V, 3], joints [B, J, 3]), both posed and without translation.
    """
    B = betas.shape[0]
    J = pose.shape[1]
    v_shaped = v_template[None] + blend_shapes(betas, shapedirs)
    rest_joints = vertices2joints(J_regressor, v_shaped)
    rot_mats = axis_angle_to_rotmat(pose.reshape(-1, 3), RODRIGUES_EPS).view(B, J, 3, 3)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rot_mats[:, 1:] - eye).reshape(B, -1)  # [B, P]
    v_posed = v_shaped + (pose_feature @ posedirs).view(B, -1, 3)
    posed_joints, transforms = batch_rigid_transform(rot_mats, rest_joints, parents)
    T = torch.einsum("vj,bjpq->bvpq", lbs_weights, transforms)  # [B, V, 4, 4]
    vertices = (T[..., :3, :3] @ v_posed[..., None])[..., 0] + T[..., :3, 3]
    return vertices, posed_joints
