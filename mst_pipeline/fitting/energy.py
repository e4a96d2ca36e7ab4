"""Eq. 1 of the paper, SMPLify-P's energy, as pure functions over a batch of images:

E(α_opt) = λv · Σ_vis ρ(J_i − J'_i) + λi · Σ_invis MSE(θ_i, θ̂_i) + λr · MSE(o, ô)

`smplify_p_energy` assembles it from its named terms: `visible_keypoint_term` (J against J', robust
through `geman_mcclure`), `invisible_pose_term` (θ against the prior's θ̂ on the unseen joints,
`pose_prior_target`) and `pitch_term` (o against ô, `pitch_regulariser`; a head seen alone is also
pulled upright, `lean_regulariser`), plus a small pull of the shape to the mean (not in Eq. 1).
`mst_pipeline.fitting.smplify` minimises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mst_pipeline.body.rotations import axis_angle_to_rotmat
from mst_pipeline.fitting.prior import PosePrior
from mst_pipeline.fitting.targets import fitting_joints, project
from mst_pipeline.space import pitch_of_rotation

if TYPE_CHECKING:
    from mst_pipeline.fitting.smplify import SmplifyConfig


@dataclass
class Eq1Batch:
    """What Eq. 1 compares with, per image of a batch (made once per fit)."""

    targets: Tensor  # J' [B,37,2], the keypoints in normalised image coordinates
    weights: Tensor  # [B,37] visibility × confidence
    invisible: Tensor  # [B,21] float, 1 where the body joint's rotation is unseen
    head_only: Tensor  # [B] float, 1 where only a head is seen (its lean is pulled upright)
    mean_pitch: float  # ô


def visible_keypoint_term(joints_2d: Tensor, targets: Tensor, weights: Tensor,
                          sigma: float | None) -> tuple[Tensor, Tensor]:
    """Σ_vis ρ(J_i − J'_i) of Eq. 1, the confidence-weighted mean over the visible keypoints.
    joints_2d, targets [b,37,2], weights [b,37] -> (term [b], squared residuals [b,37])."""
    r = joints_2d - targets
    rho = geman_mcclure(r, sigma).sum(-1) if sigma else (r ** 2).sum(-1)
    return (weights * rho).sum(1) / weights.sum(1).clamp_min(1e-6), (r ** 2).sum(-1)


def pose_prior_target(prior: PosePrior | None, body_pose: Tensor, invisible: Tensor, mode: str,
                      symmetric: bool = True) -> Tensor:
    """θ̂ of Eq. 1: zero without a prior; the prior's reconstruction of the pose ("reconstruct"), or
    of the pose with the invisible joints at the prior's typical pose ("complete", `prior_target`). symmetric: the
    reconstruction made left-right symmetric (`PosePrior.reconstruct_symmetric`). body_pose [b,63],
    invisible [b,21] -> [b,21,3]."""
    theta = body_pose.view(len(body_pose), 21, 3)
    if prior is None:
        return torch.zeros_like(theta)
    if mode == "reconstruct":
        if symmetric:
            return prior.reconstruct_symmetric(body_pose)
        return prior.reconstruct(body_pose).pose_body.view_as(theta)
    return prior_target(prior, theta, invisible, symmetric)


def invisible_pose_term(theta: Tensor, theta_hat: Tensor, invisible: Tensor) -> Tensor:
    """Σ_invis MSE(θ_i, θ̂_i) of Eq. 1 over the unseen body joints. theta, theta_hat [b,21,3],
    invisible [b,21] -> [b]."""
    return (invisible[..., None] * (theta - theta_hat) ** 2).sum((1, 2)) / (3 * invisible.sum(1)).clamp_min(1)


def pitch_term(global_orient: Tensor, mean_pitch: float, head_only: Tensor) -> Tensor:
    """MSE(o, ô) of Eq. 1, plus the sideways lean of images that show a head alone. -> [b]."""
    return pitch_regulariser(global_orient, mean_pitch) + head_only * lean_regulariser(global_orient)


def smplify_p_energy(model, prior: PosePrior | None, cfg: SmplifyConfig, batch: Eq1Batch, rows: Tensor,
                     cam: Tensor, global_orient: Tensor, body_pose: Tensor, betas: Tensor, hand_pose: Tensor,
                     sigma: float | None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Eq. 1 per image, for the images `rows` of the batch at the given parameters: cam [b,3],
    global_orient [b,3], body_pose [b,63], betas [b,K], hand_pose [b,6]. Returns (E [b], the weighted
    terms {keypoints, prior, pitch, shape} [b] each, the squared keypoint residuals [b,37])."""
    out = model(betas=betas, global_orient=global_orient, body_pose=torch.cat([body_pose, hand_pose], 1))
    J = project(fitting_joints(out.joints, out.body25), cam)
    e_vis, sq = visible_keypoint_term(J, batch.targets[rows], batch.weights[rows], sigma)
    invisible = batch.invisible[rows]
    theta = body_pose.view(len(rows), 21, 3)
    e_inv = invisible_pose_term(theta, pose_prior_target(prior, body_pose, invisible, cfg.prior_mode,
                                                                  cfg.prior_symmetric), invisible)
    terms = {"keypoints": cfg.lambda_visible * e_vis, "prior": cfg.lambda_invisible * e_inv,
             "pitch": cfg.lambda_pitch * pitch_term(global_orient, batch.mean_pitch, batch.head_only[rows]),
             "shape": cfg.lambda_shape * (betas ** 2).mean(1)}
    return sum(terms.values()), terms, sq


def geman_mcclure(residual: Tensor, sigma: float) -> Tensor:
    """Geman-McClure ρ(r) = σ²·r² / (σ² + r²), elementwise: ≈ r² for |r| ≪ σ, at most σ² however far
    a keypoint lies, so one wrong keypoint cannot pull the fit further than σ allows (SMPLify's data
    term). residual [...] -> [...]."""
    sq = residual ** 2
    return sigma ** 2 * sq / (sigma ** 2 + sq)


def pitch_regulariser(global_orient: Tensor, mean_pitch: float) -> Tensor:
    """(o − ô)² per image, o the pitch of global_orient [B,3] (Eq. 1's third term). -> [B]."""
    return (pitch_of_rotation(axis_angle_to_rotmat(global_orient)) - mean_pitch) ** 2


def lean_regulariser(global_orient: Tensor) -> Tensor:
    """Squared sideways lean of the body's up axis in the image plane, atan2(up_x, −up_y)², per
    image. global_orient [B,3] -> [B]. Applied to images of a head alone (see `_fit`)."""
    R = axis_angle_to_rotmat(global_orient)
    return torch.atan2(R[:, 0, 1], -R[:, 1, 1]) ** 2


def prior_target(prior: PosePrior, theta: Tensor, invisible: Tensor, symmetric: bool = False) -> Tensor:
    """θ̂ of Eq. 1 for the invisible joints: the prior's reconstruction of the pose with the invisible
    joints set to the prior's typical pose (`PosePrior.typical_pose`), so it completes them from the
    seen joints and their own current values cannot vouch for themselves (a plain reconstruction
    accepts any pose the prior can reproduce, which, from a prior with a sideways bias, includes
    spine bends that slide an unseen body under a face crop). Not the rest pose: a body at rest is
    far from the poses a prior learns from, and what a prior makes of it is whatever its training
    happened to make; a face crop, which sees no body joint at all, then took the spine of that
    guess (forward bends summed over the spine and neck from -0.4° to 10° between two priors learnt
    from the same kind of set, face crops 1.44 against 2.45 %; docs/mst.md, SMPLify-P). symmetric:
    as `PosePrior.reconstruct_symmetric`. theta [B,21,3], invisible [B,21] (1 = invisible) -> [B,21,3]."""
    typical = prior.typical_pose().to(theta.dtype).expand_as(theta)
    seen = torch.where(invisible[..., None] > 0, typical, theta).reshape(len(theta), 63)
    if symmetric:
        return prior.reconstruct_symmetric(seen)
    return prior.reconstruct(seen).pose_body.reshape(len(theta), 21, 3)
