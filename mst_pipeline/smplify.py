"""SMPLify-P (paper §3.1, Eq. 1): fit the body model to 2-D keypoints of whole or partial bodies.

E(α_opt) = λv · Σ_vis MSE(J_i, J'_i) + λi · Σ_invis MSE(θ_i, θ̂_i) + λr · MSE(o, ô),  λ = (1, 10, 10)

* J: the body model's joints projected with the weak-perspective camera α = (s, tx, ty); J': the
  detected keypoints, in the image's normalised coordinates (`space.normalisation`); a keypoint
  counts when its confidence passes a threshold and it lies inside the image.
* θ̂: the pose prior's reconstruction of the current pose (`prior.PosePrior.reconstruct`),
  compared on the body joints none of whose keypoints is visible.
* o: pitch of the global orientation (`space.pitch_of_rotation`), ô: the full-body set's mean.

Fitting is batched: many images are optimised together (Adam or L-BFGS) on any device; each image
stops when its loss has converged, and its losses, visible-keypoint count and iterations are
recorded in a `FitResult`. The keypoint-based start (`keypoint_init`) is the offline default
initialisation; PARE's prediction (`mst_pipeline.pare`) can replace it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, HAND_SLOTS, NUM_SMPL_JOINTS, NUM_TARGETS, SMPL_JOINT_NAMES
from mst_pipeline.body.rotations import axis_angle_to_rotmat
from mst_pipeline.prior import PosePrior
from mst_pipeline.space import pitch_of_rotation, upright_orientation

# Fitting targets (`layout.NUM_TARGETS`): BODY_25, then wrist + 5 fingertips (`layout.HAND_SLOTS`)
# of the left and the right hand.
LHAND = slice(25, 25 + len(HAND_SLOTS))
RHAND = slice(25 + len(HAND_SLOTS), NUM_TARGETS)


def _model_joint(name: str) -> int:
    if name in SMPL_JOINT_NAMES:
        return SMPL_JOINT_NAMES.index(name)
    return NUM_SMPL_JOINTS + EXTRA_VERTEX_NAMES.index(name)


# Indices into the model's 45 joints of the 12 hand targets (after BODY_25).
HAND_MODEL_JOINTS = tuple(
    _model_joint(n) for n in ("left_wrist", "lthumb", "lindex", "lmiddle", "lring", "lpinky",
                              "right_wrist", "rthumb", "rindex", "rmiddle", "rring", "rpinky")
)  # fmt: skip

# Body joints 1..21 (the prior's joints) and the targets whose position they determine: a joint
# with none of them visible is "invisible" and pulled towards the prior's reconstruction.
_B = {n: i for i, n in enumerate((
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
    "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe",
    "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"))}
_HEAD = ("Nose", "REye", "LEye", "REar", "LEar")
_JOINT_TARGETS: dict[str, tuple[int, ...]] = {
    "left_hip": (_B["LKnee"],), "right_hip": (_B["RKnee"],),
    "spine1": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_knee": (_B["LAnkle"],), "right_knee": (_B["RAnkle"],),
    "spine2": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_ankle": (_B["LBigToe"], _B["LSmallToe"], _B["LHeel"]),
    "right_ankle": (_B["RBigToe"], _B["RSmallToe"], _B["RHeel"]),
    "spine3": (_B["Neck"], _B["LShoulder"], _B["RShoulder"]),
    "left_foot": (_B["LBigToe"], _B["LSmallToe"]), "right_foot": (_B["RBigToe"], _B["RSmallToe"]),
    "neck": tuple(_B[n] for n in _HEAD), "left_collar": (_B["LShoulder"],),
    "right_collar": (_B["RShoulder"],), "head": tuple(_B[n] for n in _HEAD),
    "left_shoulder": (_B["LElbow"],), "right_shoulder": (_B["RElbow"],),
    "left_elbow": (_B["LWrist"], LHAND.start), "right_elbow": (_B["RWrist"], RHAND.start),
    "left_wrist": tuple(range(LHAND.start + 1, LHAND.stop)),
    "right_wrist": tuple(range(RHAND.start + 1, RHAND.stop)),
}  # fmt: skip
JOINT_TARGET_MASK = np.zeros((21, NUM_TARGETS), dtype=bool)  # [21 body joints, targets]
for _j, _name in enumerate(SMPL_JOINT_NAMES[1:22]):
    JOINT_TARGET_MASK[_j, list(_JOINT_TARGETS[_name])] = True

# Targets for the camera start, in order of preference: torso and face, then hands.
TORSO_FACE = tuple(_B[n] for n in ("Neck", "RShoulder", "LShoulder", "MidHip", "RHip", "LHip") + _HEAD)
HANDS = tuple(range(25, NUM_TARGETS))


@dataclass
class SmplifyConfig:
    """Weights of Eq. 1 and the optimiser. λ = (1, 10, 10) as in the paper."""

    lambda_visible: float = 1.0
    lambda_invisible: float = 10.0
    lambda_pitch: float = 10.0
    # Weak-perspective keypoints cannot tell body size from camera scale; a small pull of the
    # shape towards the mean keeps s comparable with ᾱ (not part of Eq. 1).
    lambda_shape: float = 1e-3
    optimizer: str = "adam"  # adam | lbfgs
    iterations: int = 200
    camera_iterations: int = 60  # first stage: camera and global orientation only
    lr: float = 0.05
    lr_decay: float = 1.0  # Adam: final rate / initial rate of each stage
    tolerance: float = 1e-6  # converged when the loss changes less than this (relative) ...
    patience: int = 10  # ... for this many iterations in a row
    confidence: float = 0.3  # keypoints below this confidence are not visible
    max_error: float = 0.1  # mean reprojection error (normalised units) above which a fit failed
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
# Pure pieces


def fitting_joints(joints: Tensor, body25: Tensor) -> Tensor:
    """Model joints in the target layout. joints [B,45,3], body25 [B,25,3] -> [B,37,3]."""
    return torch.cat([body25, joints[:, list(HAND_MODEL_JOINTS)]], dim=1)


def visibility(targets: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Visible keypoints: confident and inside the image's normalised box.

    targets [B,N,2] normalised, confidence [B,N] -> bool [B,N]. Points outside [-1, 1]² lie outside
    the padded square; points in the padding of a non-square image are rejected by the caller
    passing the image's own box through `inside`.
    """
    inside = np.all(np.abs(targets) <= 1.0, axis=-1)
    return (confidence >= threshold) & inside & np.all(np.isfinite(targets), axis=-1)


def invisible_joints(visible: Tensor) -> Tensor:
    """Body joints 1..21 with no visible target among those they move. visible [B,37] -> [B,21]."""
    mask = torch.as_tensor(JOINT_TARGET_MASK, device=visible.device)
    return ~(visible[:, None, :] & mask[None]).any(-1)


def pitch_regulariser(global_orient: Tensor, mean_pitch: float) -> Tensor:
    """(o − ô)² per image, o the pitch of global_orient [B,3] (Eq. 1's third term). -> [B]."""
    return (pitch_of_rotation(axis_angle_to_rotmat(global_orient)) - mean_pitch) ** 2


def project(points: Tensor, cam: Tensor) -> Tensor:
    """Weak-perspective u = s · (X_xy + t). points [B,N,3], cam [B,3] -> [B,N,2]."""
    return cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:])


def keypoint_init(rest_joints: Tensor, targets: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Camera (s, tx, ty) aligning the rest body's joints to the visible keypoints.

    rest_joints [B,37,3] (already oriented), targets [B,37,2], visible [B,37] bool -> (cam [B,3],
    ok [B] bool). Uses torso and face keypoints when at least two are visible, otherwise the hand
    keypoints (wrist + fingertips), otherwise everything visible. Least squares in scale and
    translation: s = Σ⟨u−ū, X−X̄⟩ / Σ|X−X̄|², t = ū/s − X̄.
    """
    B = targets.shape[0]
    torso = torch.zeros(NUM_TARGETS, dtype=torch.bool, device=targets.device)
    torso[list(TORSO_FACE)] = True
    hands = torch.zeros_like(torso)
    hands[list(HANDS)] = True
    use = visible & torso
    few = use.sum(1) < 2
    use = torch.where(few[:, None], visible & hands, use)
    few = use.sum(1) < 2
    use = torch.where(few[:, None], visible, use)
    w = use.to(targets.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1)
    X = rest_joints[..., :2]
    Xm = (w[..., None] * X).sum(1) / n
    um = (w[..., None] * targets).sum(1) / n
    dX, du = X - Xm[:, None], targets - um[:, None]
    num = (w[..., None] * dX * du).sum((1, 2))
    den = (w[..., None] * dX * dX).sum((1, 2))
    s = num / den.clamp_min(1e-9)
    ok = (use.sum(1) >= 2) & (s > 1e-3) & torch.isfinite(s)
    s = torch.where(ok, s, torch.ones_like(s))
    t = um / s[:, None] - Xm
    return torch.cat([s[:, None], t], dim=1).reshape(B, 3), ok


def facing_from_keypoints(targets: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which way each person faces, from the left/right order of paired keypoints.

    Facing the camera, the person's left side appears on the image's right (larger x). Returns
    (back [B] bool, ambiguous [B] bool): ambiguous when the shoulders (or, without them, the
    hips, ears or eyes) are closer together than a quarter of the torso length or unknown.
    """
    B = targets.shape[0]
    back = np.zeros(B, dtype=bool)
    ambiguous = np.ones(B, dtype=bool)
    pairs = [("LShoulder", "RShoulder"), ("LHip", "RHip"), ("LEar", "REar"), ("LEye", "REye")]
    for b in range(B):
        for left, right in pairs:
            li, ri = _B[left], _B[right]
            if not (visible[b, li] and visible[b, ri]):
                continue
            dx = targets[b, li, 0] - targets[b, ri, 0]
            scale = _torso_length(targets[b], visible[b])
            back[b] = dx < 0
            ambiguous[b] = scale is not None and abs(dx) < 0.25 * scale if left == "LShoulder" else False
            break
    return back, ambiguous


def _torso_length(t: np.ndarray, v: np.ndarray) -> float | None:
    neck, hip = _B["Neck"], _B["MidHip"]
    if v[neck] and v[hip]:
        return float(np.linalg.norm(t[neck] - t[hip]))
    ls, rs = _B["LShoulder"], _B["RShoulder"]
    if v[ls] and v[rs] and v[_B["Nose"]]:
        return 2.5 * float(np.linalg.norm(0.5 * (t[ls] + t[rs]) - t[_B["Nose"]]))
    return None


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


def _fit(model, targets: np.ndarray, vis: np.ndarray, confidence: np.ndarray, init: FitInit,
         prior: PosePrior | None, mean_pitch: float, cfg: SmplifyConfig, dev: torch.device) -> list[FitResult]:
    torch.manual_seed(cfg.seed)
    B = targets.shape[0]
    f32 = torch.float32
    tgt = torch.as_tensor(targets, dtype=f32, device=dev)
    visible = torch.as_tensor(vis, device=dev)
    w = visible.to(f32) * torch.as_tensor(np.clip(confidence, 0, 1), dtype=f32, device=dev)
    invisible = invisible_joints(visible)  # [B, 21]
    n_vis = visible.sum(1)
    if prior is not None:
        prior = prior.to(dev).eval()
        for p in prior.parameters():
            p.requires_grad_(False)

    # Conditioning: a face crop has s ≈ 10, so a rotation moves its keypoints ten times further
    # (in normalised units) than in a full-body image. Pose and shape are optimised as offsets
    # scaled by 1/s₀ and the translation as s·t, so one step moves any crop's keypoints alike.
    cam0 = init.cam.to(dev, f32)
    k = (1.0 / cam0[:, :1]).clamp(0.05, 2.0)
    log_s = torch.log(cam0[:, :1].clamp_min(1e-4)).clone().requires_grad_(True)
    offset = (cam0[:, :1] * cam0[:, 1:]).clone().requires_grad_(True)  # s·t, normalised units
    go0 = init.global_orient.to(dev, f32)
    body0 = init.body_pose.to(dev, f32)[:, :63]
    hands = init.body_pose.to(dev, f32)[:, 63:].clone()
    betas0 = init.betas.to(dev, f32)
    d_go = torch.zeros_like(go0, requires_grad=True)
    d_body = torch.zeros_like(body0, requires_grad=True)
    d_betas = torch.zeros_like(betas0, requires_grad=True)
    params = [log_s, offset, d_go, d_body, d_betas]

    def current() -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = log_s.exp()
        return torch.cat([s, offset / s], 1), go0 + k * d_go, body0 + k * d_body, betas0 + k * d_betas

    def energy() -> tuple[Tensor, dict[str, Tensor], Tensor]:
        cam, go, body, betas = current()
        out = model(betas=betas, global_orient=go, body_pose=torch.cat([body, hands], 1))
        J = project(fitting_joints(out.joints, out.body25), cam)
        sq = ((J - tgt) ** 2).sum(-1)  # [B, 37]
        e_vis = (w * sq).sum(1) / w.sum(1).clamp_min(1e-6)
        theta = body.view(B, 21, 3)
        if prior is not None:
            theta_hat = prior.reconstruct(body).pose_body
        else:
            theta_hat = torch.zeros_like(theta)
        inv = invisible.to(f32)
        e_inv = (inv[..., None] * (theta - theta_hat) ** 2).sum((1, 2)) / (3 * inv.sum(1)).clamp_min(1)
        e_pitch = pitch_regulariser(go, mean_pitch)
        e_shape = (betas ** 2).mean(1)
        terms = {"keypoints": cfg.lambda_visible * e_vis, "prior": cfg.lambda_invisible * e_inv,
                 "pitch": cfg.lambda_pitch * e_pitch, "shape": cfg.lambda_shape * e_shape}
        per_image = sum(terms.values())
        return per_image, terms, sq

    iterations = np.zeros(B, dtype=np.int64)
    converged = np.zeros(B, dtype=bool)
    stages = [([log_s, offset, d_go], min(cfg.camera_iterations, cfg.iterations)),
              (params, cfg.iterations - min(cfg.camera_iterations, cfg.iterations))]
    for stage_params, n_iter in stages:
        if n_iter <= 0:
            continue
        converged[:] = False
        if cfg.optimizer == "lbfgs":
            _run_lbfgs(energy, stage_params, n_iter, cfg, iterations, converged)
        elif cfg.optimizer == "adam":
            _run_adam(energy, stage_params, n_iter, cfg, iterations, converged)
        else:
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', not {cfg.optimizer!r}")

    with torch.no_grad():
        per_image, terms, sq = energy()
        cam_t, go, body, betas = current()
    dist = sq.sqrt()
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
        results.append(FitResult(
            betas=beta_np[b], pose=pose[b], cam=cam[b],
            losses={k: float(v[b]) for k, v in terms_np.items()}, visible=nv,
            iterations=int(iterations[b]), reprojection=float(reproj[b]), converged=bool(converged[b]),
            failure=failure,
        ))
    return results


def _run_adam(energy, params: list[Tensor], n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
              converged: np.ndarray) -> None:
    """Batched Adam; an image whose loss stalls is frozen (its parameters restored after each step)."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    # Adam's steps do not shrink with the gradient: decay the rate so the fit settles.
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay ** (1.0 / max(1, n_iter)))
    prev = None
    still = np.zeros(len(iterations), dtype=np.int64)
    for _ in range(n_iter):
        opt.zero_grad(set_to_none=True)
        per_image, _, _ = energy()
        per_image.sum().backward()
        frozen = torch.as_tensor(converged, device=per_image.device)
        saved = [p.detach().clone() for p in params]
        opt.step()
        decay.step()
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p[frozen] = s[frozen]
        loss = per_image.detach().cpu().numpy()
        iterations[~converged] += 1
        if prev is not None:
            rel = np.abs(prev - loss) / np.maximum(np.abs(prev), 1e-12)
            still = np.where(rel < cfg.tolerance, still + 1, 0)
            converged |= still >= cfg.patience
        prev = loss
        if converged.all():
            break


def _run_lbfgs(energy, params: list[Tensor], n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
               converged: np.ndarray) -> None:
    """L-BFGS (strong Wolfe) on the summed energy: images are independent, so the sum's minimum is
    every image's minimum. Stops when the total stalls."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_change=1e-12, tolerance_grad=1e-10)

    def closure():
        opt.zero_grad(set_to_none=True)
        total = energy()[0].sum()
        total.backward()
        return total

    prev = None
    start = 0
    for _ in range(max(1, math.ceil(n_iter / 20))):
        loss = float(opt.step(closure).detach())
        done = int(opt.state[params[0]].get("n_iter", 0))
        iterations += done - start
        start = done
        if not math.isfinite(loss):
            break
        if prev is not None and abs(prev - loss) <= cfg.tolerance * max(abs(prev), 1e-12):
            converged[:] = True
            break
        prev = loss
