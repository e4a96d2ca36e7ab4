"""SMPLify-P (paper §3.1, Eq. 1): fit the body model to 2-D keypoints of whole or partial bodies.

E(α_opt) = λv · Σ_vis ρ(J_i − J'_i) + λi · Σ_invis MSE(θ_i, θ̂_i) + λr · MSE(o, ô),  λ = (1, 10, 10)

* J: the body model's joints projected with the weak-perspective camera α = (s, tx, ty); J': the
  detected keypoints, in the image's normalised coordinates (`space.normalisation`); a keypoint
  counts when its confidence passes a threshold and it lies inside the image.
* θ̂: the pose prior's reconstruction of the current pose with the invisible joints set to the
  prior's typical pose (`prior_target`, `SmplifyConfig.prior_mode="complete"`; "reconstruct": of the current pose as it
  is, Eq. 1's literal reading), made left-right symmetric, compared on the body joints that are not
  seen (`invisible_joints`: no visible keypoint on one side of the joint). The prior should be
  trained with mirror images (`mst fit-prior`'s default): one with a sideways bias moves face crops
  sideways by it.
* o: pitch of the global orientation (`space.pitch_of_rotation`), ô: the full-body set's mean.

The keypoint term is robust: each coordinate's residual goes through the Geman-McClure function
(`energy.geman_mcclure`, σ = `SmplifyConfig.robust_sigma`), as in SMPLify, so a wrong keypoint costs at
most σ². Fitting is batched: many images are optimised together on any device, by default with
L-BFGS keeping one curvature history and one step size per image (`solvers.run_batched_lbfgs`); each image
leaves the batch when its energy has converged, and its losses, visible-keypoint count and
iterations are recorded in a `FitResult`. The keypoint-based start (`keypoint_init`) is the offline default
initialisation; PARE's prediction (`mst_pipeline.fitting.pare`) can replace it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mst_pipeline.body.layout import NUM_TARGETS
from mst_pipeline.fitting.energy import Eq1Batch, smplify_p_energy
from mst_pipeline.fitting.plausible import MAX_TAIL, implausible_fit
from mst_pipeline.fitting.prior import PosePrior
from mst_pipeline.fitting.solvers import run_adam, run_batched_lbfgs, run_lbfgs
from mst_pipeline.fitting.targets import (
    PELVIS,
    SHOULDERS,
    facing_from_keypoints,
    fitting_joints,
    invisible_joints,
    keypoint_init,
    project,
    visibility,
)
from mst_pipeline.space import upright_orientation

PRIOR_MODES = ("reconstruct", "complete")  # SmplifyConfig.prior_mode: how θ̂ is made


@dataclass
class SmplifyConfig:
    """Weights of Eq. 1 and the optimiser. λ = (1, 10, 10) as in the paper."""

    lambda_visible: float = 1.0
    lambda_invisible: float = 10.0
    lambda_pitch: float = 10.0
    # Weak-perspective keypoints cannot tell body size from camera scale; a small pull of the
    # shape towards the mean keeps s comparable with ᾱ (not part of Eq. 1). 1e-2 rather than 1e-3:
    # the worst upper-body render of `bench smplify` lands 2.5 % instead of 2.7 % off.
    lambda_shape: float = 1e-2
    # Geman-McClure scale of the keypoint term, in normalised units (1 = half the image side);
    # None: plain squared distances.
    robust_sigma: float | None = 0.1
    sigma_start: float = 5.0  # σ of the first stages, in units of robust_sigma
    robust_fraction: float = 0.5  # share of the iterations after the camera stage fitted with σ itself
    # batched-lbfgs (one history and step size per image) | adam | lbfgs (torch's: one line search
    # for the whole batch, as smplify-x runs it on one image)
    optimizer: str = "batched-lbfgs"
    iterations: int = 400
    camera_iterations: int = 20  # first stage: camera and global orientation only
    lr: float = 0.05  # Adam
    lr_decay: float = 1.0  # Adam: final rate / initial rate of each stage
    tolerance: float = 1e-6  # converged when the loss changes less than this (relative) ...
    patience: int = 10  # ... for this many iterations in a row
    history: int = 20  # batched-lbfgs: curvature pairs kept per image
    # batched-lbfgs: trial steps per iteration; an image whose trials fail resumes from the shorter
    # step at the next iteration, so one evaluation of the batch per iteration suffices.
    line_search_steps: int = 1
    # θ̂ of the invisible joints: "complete" (`prior_target`: the reconstruction of the pose with the
    # invisible joints at the prior's typical pose) or "reconstruct" (of the current pose as it is, Eq. 1's literal
    # reading). "reconstruct" lets unseen joints vouch for themselves: with a prior trained long enough
    # to reproduce its poses it holds an unseen spine to nothing, and a face crop's detector noise
    # moves its pelvis (face crops 2.5-3.2 % against 1.4-1.6 % with "complete" on `bench alignment`'s
    # 48 people, priors of 1000 epochs; docs/mst.md, SMPLify-P).
    prior_mode: str = "complete"
    # θ̂ made left-right symmetric (`PosePrior.reconstruct_symmetric`). A prior learnt from a few dozen
    # poses is not symmetric even when trained on their mirror images, and its sideways lean of an
    # unseen spine moves every face crop sideways in full-body space: on `bench alignment`'s 48 people
    # the faces' mean sideways offset fell from 1.5 % to 0.2 % of full-body space (docs/mst.md, SMPLify-P).
    prior_symmetric: bool = True
    confidence: float = 0.3  # keypoints below this confidence are not visible
    max_error: float = 0.1  # mean reprojection error (normalised units) above which a fit failed
    max_tail: float = MAX_TAIL  # worst visible keypoint's error above which a fit is no body (`plausible`)
    seed: int = 0


@dataclass
class FitInit:
    """Starting values, batched: cam [B,3] (s, tx, ty), global_orient [B,3], body_pose [B,69],
    betas [B,K]."""

    cam: Tensor
    global_orient: Tensor
    body_pose: Tensor
    betas: Tensor


@dataclass
class FitResult:
    """One image's SMPLify-P result. pose [72] axis-angle (global orientation + 23 joints),
    betas [K], cam [3]; losses: the final Eq. 1 terms (weighted); visible: keypoints used;
    reprojection: mean distance of visible keypoints in normalised units (×L/2 for pixels)."""

    betas: np.ndarray
    pose: np.ndarray
    cam: np.ndarray
    losses: dict[str, float]
    visible: int
    iterations: int
    reprojection: float
    converged: bool
    failure: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


# ---------------------------------------------------------------------------------------------
# The fit


def smplify_p(model, targets: np.ndarray, confidence: np.ndarray, *, prior: PosePrior | None = None,
              mean_pitch: float = 0.0, config: SmplifyConfig | None = None, init: FitInit | None = None,
              flip_test: bool = True, device: str | torch.device | None = None) -> list[FitResult]:
    """Fit a batch of images. targets [B,37,2] keypoints in each image's normalised coordinates
    (BODY_25, then wrist + fingertips of the left and right hand; `HAND_SLOTS`), confidence [B,37]
    (0 where unknown or outside the image). Returns one FitResult per image.

    Without `init`, starts from the keypoints (`keypoint_init`, rest pose, facing from
    `facing_from_keypoints`); with `flip_test`, images whose facing is ambiguous are also fitted
    turned around and the lower final energy wins.
    """
    cfg = config or SmplifyConfig()
    dev = torch.device(device) if device is not None else model.v_template.device
    if hasattr(model, "joint_model"):  # the fit needs joints only: skip the other vertices
        model = model.joint_model()
    targets = np.asarray(targets, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    if targets.ndim != 3 or targets.shape[1:] != (NUM_TARGETS, 2) or confidence.shape != targets.shape[:2]:
        raise ValueError(f"targets must be [B,{NUM_TARGETS},2] and confidence [B,{NUM_TARGETS}], got "
                         f"{list(targets.shape)} and {list(confidence.shape)}")
    B = targets.shape[0]
    vis = visibility(targets, confidence, cfg.confidence)
    targets = np.where(vis[..., None], targets, 0.0)
    if init is not None:
        return _fit(model, targets, vis, confidence, init, prior, mean_pitch, cfg, dev)
    back, ambiguous = facing_from_keypoints(targets, vis)
    rows = list(range(B))
    facings = [bool(b) for b in back]
    if flip_test:
        for b in np.flatnonzero(ambiguous & (vis.sum(1) >= 2)):
            rows.append(int(b))
            facings.append(not back[b])
    rows_a = np.array(rows)
    init = initial_guess(model, targets[rows_a], vis[rows_a], np.array(facings), dev)
    results = _fit(model, targets[rows_a], vis[rows_a], confidence[rows_a], init, prior, mean_pitch, cfg, dev)
    best: dict[int, FitResult] = {}
    for row, res in zip(rows, results, strict=True):
        total = sum(res.losses.values()) if res.ok else math.inf
        if row not in best or total < (sum(best[row].losses.values()) if best[row].ok else math.inf):
            best[row] = res
    return [best[b] for b in range(B)]


def initial_guess(model, targets: np.ndarray, vis: np.ndarray, back: np.ndarray,
                  device: torch.device) -> FitInit:
    """Keypoint-based start: rest pose, mean shape, upright facing front or back, camera fitted to
    the visible torso/face (or hand) keypoints. targets [B,37,2], vis [B,37], back [B] bool."""
    B = targets.shape[0]
    orient = np.stack([upright_orientation("back" if b else "front") for b in back])
    go = torch.as_tensor(orient, dtype=torch.float32, device=device)
    with torch.no_grad():
        out = model(global_orient=go)
        rest = fitting_joints(out.joints, out.body25)
        cam, _ = keypoint_init(rest, torch.as_tensor(targets, dtype=torch.float32, device=device),
                               torch.as_tensor(vis, device=device))
    return FitInit(cam=cam, global_orient=go, body_pose=torch.zeros(B, 69, device=device),
                   betas=torch.zeros(B, model.num_betas, device=device))


def keypoint_weights(model) -> np.ndarray:
    """[37] weight of each fitting target in the keypoint term beyond its confidence: in a crop (the
    model following a view kind other than "full"), the calibrated convention's BODY_25 slot
    weights for that kind (`KeypointRegressor.slot_weights`); the hands' targets 1; all ones without
    a calibration and in full views. A full view sees every point, and its loosest ones, the ankles
    and feet, are what fix the body's height in the image, from which the full-body space (ᾱ) is
    measured: weighting them down moved the upper-body crops' worst corner error on `bench
    alignment`'s people from 3.2 to 4.8 % at camera pitch 0° and to 5.3 % at 4° (docs/mst.md,
    SMPLify-P)."""
    w = np.ones(NUM_TARGETS)
    reg = getattr(model, "keypoints", None)
    if reg is not None and reg.view != "full":
        w[:25] = reg.slot_weights()
    return w


def _fit(model, targets: np.ndarray, vis: np.ndarray, confidence: np.ndarray, init: FitInit,
         prior: PosePrior | None, mean_pitch: float, cfg: SmplifyConfig, dev: torch.device) -> list[FitResult]:
    torch.manual_seed(cfg.seed)
    B = targets.shape[0]
    f32 = torch.float32
    visible = torch.as_tensor(vis, device=dev)
    # A head seen alone (no shoulder or pelvis keypoint; the Neck point only shows the neck's
    # direction) says nothing about the body's sideways lean: it is pulled to upright, as the pitch
    # is to ô, so a tilted head bends the unseen chain rather than swinging the whole body about
    # the pelvis.
    eq1 = Eq1Batch(targets=torch.as_tensor(targets, dtype=f32, device=dev),
                   weights=visible.to(f32) * torch.as_tensor(np.clip(confidence, 0, 1) * keypoint_weights(model),
                                                             dtype=f32, device=dev),
                   invisible=invisible_joints(visible).to(f32),
                   head_only=(~visible[:, list(PELVIS + SHOULDERS)].any(1)).to(f32), mean_pitch=mean_pitch)
    n_vis = visible.sum(1)
    if prior is not None:
        prior = prior.to(dev).eval()
        for p in prior.parameters():
            p.requires_grad_(False)

    # Conditioning: a face crop has s ≈ 10, so a rotation moves its keypoints ten times further
    # (in normalised units) than in a full-body image. Pose and shape are optimised as offsets
    # scaled by 1/s₀ and the translation as s·t, so one step moves any crop's keypoints alike.
    # One row of x per image: log s, s·t, then the offsets of the orientation, body and shape.
    cam0 = init.cam.to(dev, f32)
    k = (1.0 / cam0[:, :1]).clamp(0.05, 2.0)
    go0 = init.global_orient.to(dev, f32)
    body0 = init.body_pose.to(dev, f32)[:, :63]
    hands = init.body_pose.to(dev, f32)[:, 63:].clone()
    betas0 = init.betas.to(dev, f32)
    x = torch.cat([torch.log(cam0[:, :1].clamp_min(1e-4)), cam0[:, :1] * cam0[:, 1:],
                   torch.zeros(B, 3 + 63 + betas0.shape[1], device=dev)], 1)
    camera_only = torch.zeros(x.shape[1], device=dev)
    camera_only[:6] = 1.0  # first stage: camera and global orientation
    sigma = [cfg.robust_sigma]  # the current stage's σ (graduated: see the stages below)

    def current(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = x[:, :1].exp()
        kr = k[rows]
        return (torch.cat([s, x[:, 1:3] / s], 1), go0[rows] + kr * x[:, 3:6], body0[rows] + kr * x[:, 6:69],
                betas0[rows] + kr * x[:, 69:])

    def energy(x: Tensor, rows: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Eq. 1 (`smplify_p_energy`) per image for the images `rows` at parameters x [len(rows), P]."""
        cam, go, body, betas = current(x, rows)
        return smplify_p_energy(model, prior, cfg, eq1, rows, cam, go, body, betas, hands[rows], sigma[0])

    if cfg.prior_mode not in PRIOR_MODES:
        raise ValueError(f"prior_mode must be one of {', '.join(PRIOR_MODES)}, not {cfg.prior_mode!r}")
    solvers = {"adam": run_adam, "lbfgs": run_lbfgs, "batched-lbfgs": run_batched_lbfgs}
    if cfg.optimizer not in solvers:
        raise ValueError(f"optimizer must be one of {', '.join(solvers)}, not {cfg.optimizer!r}")
    iterations = np.zeros(B, dtype=np.int64)
    converged = np.zeros(B, dtype=bool)
    # Stages: the camera alone, then everything. Graduated non-convexity: σ starts wide
    # (`sigma_start` × σ) so keypoints far from a poor start still pull, and narrows to σ for the
    # last `robust_fraction` of the iterations, where a keypoint still far off is an outlier.
    n_cam = min(cfg.camera_iterations, cfg.iterations)
    n_rest = cfg.iterations - n_cam
    n_narrow = int(round(cfg.robust_fraction * n_rest)) if cfg.robust_sigma else 0
    wide = cfg.robust_sigma * cfg.sigma_start if cfg.robust_sigma else None
    everything = torch.ones_like(camera_only)
    for free, n_iter, sig in ((camera_only, n_cam, wide), (everything, n_rest - n_narrow, wide),
                              (everything, n_narrow, cfg.robust_sigma)):
        if n_iter <= 0:
            continue
        sigma[0] = sig
        converged[:] = False
        x = solvers[cfg.optimizer](energy, x, free, n_iter, cfg, iterations, converged)

    all_rows = torch.arange(B, device=dev)
    with torch.no_grad():
        per_image, terms, sq = energy(x, all_rows)
        cam_t, go, body, betas = current(x, all_rows)
        posed = model(betas=betas, global_orient=go, body_pose=torch.cat([body, hands], 1))
        # pelvis and nose projected (y down): where the fit puts them in the image
        upright = project(torch.stack([posed.joints[:, 0], posed.body25[:, 0]], 1), cam_t)[..., 1].cpu().numpy()
    dist = sq.sqrt()
    tail = torch.where(visible, dist, torch.zeros_like(dist)).amax(1).cpu().numpy()
    reproj = ((dist * visible).sum(1) / n_vis.clamp_min(1)).cpu().numpy()
    cam = cam_t.cpu().numpy().astype(np.float64)
    pose = torch.cat([go, body, hands], 1).cpu().numpy().astype(np.float64)
    beta_np = betas.cpu().numpy().astype(np.float64)
    terms_np = {k: v.detach().cpu().numpy() for k, v in terms.items()}
    results = []
    for b in range(B):
        failure = None
        nv = int(n_vis[b])
        if nv < 2:
            failure = f"too few visible keypoints ({nv})"
        elif not (np.isfinite(per_image[b].item()) and np.all(np.isfinite(cam[b])) and np.all(np.isfinite(pose[b]))):
            failure = "fit diverged (non-finite values)"
        elif reproj[b] > cfg.max_error:
            failure = f"fit diverged (mean reprojection error {reproj[b]:.3f} > {cfg.max_error} normalised units)"
        else:
            failure = implausible_fit(float(upright[b, 0]), float(upright[b, 1]), pose[b], float(tail[b]),
                                      cfg.max_tail)
        results.append(FitResult(
            betas=beta_np[b], pose=pose[b], cam=cam[b],
            losses={k: float(v[b]) for k, v in terms_np.items()}, visible=nv,
            iterations=int(iterations[b]), reprojection=float(reproj[b]), converged=bool(converged[b]),
            failure=failure,
        ))
    return results
