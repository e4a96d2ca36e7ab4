"""Linear blend skinning for SMPL-format models: smplx's functions (`smplx.lbs`).

SMPL's forward pass (`lbs`), Rodrigues' formula (`batch_rodrigues`), the linear shape space
(`blend_shapes`), joint regression (`vertices2joints`) and forward kinematics
(`batch_rigid_transform`) are smplx's own. What this module adds is only the calling convention
of the rest of the pipeline: the kinematic tree as any sequence of ints (smplx wants a long tensor,
kept on the CPU so its per-joint loop does not synchronise a GPU) and the pose as [B, J, 3].

Shapes: B batch, V vertices, J joints, K shape coefficients (betas), P = 9 (J - 1) pose-corrective
inputs. Every function is batched and runs on whatever device its inputs live on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from smplx.lbs import batch_rigid_transform as _batch_rigid_transform
from smplx.lbs import batch_rodrigues, blend_shapes, vertices2joints
from smplx.lbs import lbs as _lbs
from torch import Tensor

__all__ = ["batch_rigid_transform", "batch_rodrigues", "blend_shapes", "lbs", "parents_tensor", "vertices2joints"]


def parents_tensor(parents: Sequence[int] | Tensor) -> Tensor:
    """The kinematic tree (parents[0] = -1, parents[j] < j) as smplx takes it: a CPU long tensor."""
    return torch.as_tensor([int(p) for p in parents], dtype=torch.long)


def batch_rigid_transform(
    rot_mats: Tensor, joints: Tensor, parents: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor]:
    """Forward kinematics (smplx's): rot_mats [B, J, 3, 3] local rotations, joints [B, J, 3] rest
    locations -> (posed joints [B, J, 3], transforms [B, J, 4, 4] mapping rest points rigidly
    attached to each joint to their posed location)."""
    return _batch_rigid_transform(rot_mats, joints, parents_tensor(parents), dtype=joints.dtype)


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
    """SMPL's forward pass (smplx's `lbs`): shape blend, pose correctives, skinning.

    betas: [B, K], pose: [B, J, 3] axis-angle (joint 0 = global orientation), v_template: [V, 3],
    shapedirs: [V, 3, K], posedirs: [P, 3V] with P = 9 (J - 1), J_regressor: [J, V],
    parents: J ints, lbs_weights: [V, J] (rows sum to 1).
    Returns (vertices [B, V, 3], joints [B, J, 3]), both posed and without translation.
    """
    return _lbs(betas, pose.reshape(pose.shape[0], -1), v_template, shapedirs, posedirs, J_regressor,
                parents_tensor(parents), lbs_weights)
