"""SMPLify-P (paper §3.1, Eq. 1): fit the body model to 2-D keypoints of whole or partial bodies.

E(α_opt) = λv · Σ_vis ρ(J_i − J'_i) + λi · Σ_invis MSE(θ_i, θ̂_i) + λr · MSE(o, ô),  λ = (1, 10, 10)

* J: the body model's joints projected with the weak-perspective camera α = (s, tx, ty); J': the
  detected keypoints, in the image's normalised coordinates (`space.normalisation`); a keypoint
  counts when its confidence passes a threshold and it lies inside the image.
* θ̂: the pose prior's reconstruction of the current pose (`SmplifyConfig.prior_mode="complete"`:
  of the pose with the invisible joints at rest, `prior_target`), compared on the body joints that
  are not seen (`invisible_joints`: no visible keypoint on one side of the joint). The prior should
  be trained with mirror images (`mst fit-prior`'s default): one with a sideways bias moves face
  crops sideways by it.
* o: pitch of the global orientation (`space.pitch_of_rotation`), ô: the full-body set's mean.

The keypoint term is robust: each coordinate's residual goes through the Geman-McClure function
(`geman_mcclure`, σ = `SmplifyConfig.robust_sigma`), as in SMPLify, so a wrong keypoint costs at
most σ². Fitting is batched: many images are optimised together on any device, by default with
L-BFGS keeping one curvature history and one step size per image (`_run_batched_lbfgs`); each image
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

from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, HAND_SLOTS, NUM_SMPL_JOINTS, NUM_TARGETS, SMPL_JOINT_NAMES
from mst_pipeline.body.rotations import axis_angle_to_rotmat
from mst_pipeline.fitting.prior import PosePrior
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
# A joint's rotation is relative to its parent's: it is seen only when keypoints on both sides of
# it are, those it moves and one on the parent's side. Without the pelvis a spine bend is
# indistinguishable from the global orientation; without the shoulders a neck bend from a spine
# bend, and a head turn or tilt from either: a face alone fixes the head's orientation in the
# camera, not how the unseen chain below it (spine, neck, head) shares it. That share decides
# where the face sits above the pelvis, so it is left to the prior rather than given to the head.
_PELVIS = (_B["MidHip"], _B["RHip"], _B["LHip"])
_SHOULDERS = (_B["RShoulder"], _B["LShoulder"])
_CHEST = (_B["Neck"],) + _SHOULDERS
_PARENT_TARGETS: dict[str, tuple[int, ...]] = {
    "left_hip": _PELVIS, "right_hip": _PELVIS, "spine1": _PELVIS, "spine2": _PELVIS, "spine3": _PELVIS,
    "left_knee": (_B["LHip"],), "right_knee": (_B["RHip"],),
    "left_ankle": (_B["LKnee"],), "right_ankle": (_B["RKnee"],),
    "left_foot": (_B["LAnkle"], _B["LHeel"]), "right_foot": (_B["RAnkle"], _B["RHeel"]),
    "neck": _SHOULDERS, "head": _SHOULDERS,
    "left_collar": (_B["Neck"], _B["RShoulder"]), "right_collar": (_B["Neck"], _B["LShoulder"]),
    "left_shoulder": (_B["LShoulder"],), "right_shoulder": (_B["RShoulder"],),
    "left_elbow": (_B["LElbow"],), "right_elbow": (_B["RElbow"],),
    "left_wrist": (_B["LWrist"], LHAND.start), "right_wrist": (_B["RWrist"], RHAND.start),
}  # fmt: skip
JOINT_TARGET_MASK = np.zeros((21, NUM_TARGETS), dtype=bool)  # [21 body joints, targets it moves]
PARENT_TARGET_MASK = np.zeros((21, NUM_TARGETS), dtype=bool)  # [21 body joints, targets on the parent's side]
for _j, _name in enumerate(SMPL_JOINT_NAMES[1:22]):
    JOINT_TARGET_MASK[_j, list(_JOINT_TARGETS[_name])] = True
    PARENT_TARGET_MASK[_j, list(_PARENT_TARGETS[_name])] = True

# Targets for the camera start, in order of preference: torso and face, then hands.
TORSO_FACE = tuple(_B[n] for n in ("Neck", "RShoulder", "LShoulder", "MidHip", "RHip", "LHip") + _HEAD)
HANDS = tuple(range(25, NUM_TARGETS))


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
    # θ̂ of the invisible joints: "reconstruct" (the prior's reconstruction of the current pose as it
    # is, Eq. 1) or "complete" (`prior_target`: reconstruction with the invisible joints at rest)
    prior_mode: str = "reconstruct"
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
    """Body joints 1..21 with no visible target among those they move, or none on their parent's
    side. visible [B,37] -> [B,21]."""
    moved = torch.as_tensor(JOINT_TARGET_MASK, device=visible.device)
    parent = torch.as_tensor(PARENT_TARGET_MASK, device=visible.device)
    return ~((visible[:, None, :] & moved[None]).any(-1) & (visible[:, None, :] & parent[None]).any(-1))


def pitch_regulariser(global_orient: Tensor, mean_pitch: float) -> Tensor:
    """(o − ô)² per image, o the pitch of global_orient [B,3] (Eq. 1's third term). -> [B]."""
    return (pitch_of_rotation(axis_angle_to_rotmat(global_orient)) - mean_pitch) ** 2


def lean_regulariser(global_orient: Tensor) -> Tensor:
    """Squared sideways lean of the body's up axis in the image plane, atan2(up_x, −up_y)², per
    image. global_orient [B,3] -> [B]. Applied to images of a head alone (see `_fit`)."""
    R = axis_angle_to_rotmat(global_orient)
    return torch.atan2(R[:, 0, 1], -R[:, 1, 1]) ** 2


def prior_target(prior: PosePrior, theta: Tensor, invisible: Tensor) -> Tensor:
    """θ̂ of Eq. 1 for the invisible joints: the prior's reconstruction of the pose with the invisible
    joints at rest (zero), so it completes them from the seen joints and their own current values
    cannot vouch for themselves (a plain reconstruction accepts any pose the prior can reproduce,
    which, from a prior with a sideways bias, includes spine bends that slide an unseen body under
    a face crop). theta [B,21,3], invisible
    [B,21] (1 = invisible) -> [B,21,3]."""
    seen = torch.where(invisible[..., None] > 0, torch.zeros_like(theta), theta)
    return prior.reconstruct(seen.reshape(len(theta), 63)).pose_body.reshape(len(theta), 21, 3)


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


def geman_mcclure(residual: Tensor, sigma: float) -> Tensor:
    """Geman-McClure ρ(r) = σ²·r² / (σ² + r²), elementwise: ≈ r² for |r| ≪ σ, at most σ² however far
    a keypoint lies, so one wrong keypoint cannot pull the fit further than σ allows (SMPLify's data
    term). residual [...] -> [...]."""
    sq = residual ** 2
    return sigma ** 2 * sq / (sigma ** 2 + sq)


def _fit(model, targets: np.ndarray, vis: np.ndarray, confidence: np.ndarray, init: FitInit,
         prior: PosePrior | None, mean_pitch: float, cfg: SmplifyConfig, dev: torch.device) -> list[FitResult]:
    torch.manual_seed(cfg.seed)
    B = targets.shape[0]
    f32 = torch.float32
    tgt = torch.as_tensor(targets, dtype=f32, device=dev)
    visible = torch.as_tensor(vis, device=dev)
    w = visible.to(f32) * torch.as_tensor(np.clip(confidence, 0, 1), dtype=f32, device=dev)
    inv = invisible_joints(visible).to(f32)  # [B, 21]
    # A head seen alone (no shoulder or pelvis keypoint; the Neck point only shows the neck's
    # direction) says nothing about the body's sideways lean: it is pulled to upright, as the pitch
    # is to ô, so a tilted head bends the unseen chain rather than swinging the whole body about
    # the pelvis.
    head_only = (~visible[:, list(_PELVIS + _SHOULDERS)].any(1)).to(f32)
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
        """Eq. 1 per image for the images `rows` at parameters x [len(rows), P]."""
        cam, go, body, betas = current(x, rows)
        out = model(betas=betas, global_orient=go, body_pose=torch.cat([body, hands[rows]], 1))
        r = project(fitting_joints(out.joints, out.body25), cam) - tgt[rows]  # [b, 37, 2]
        rho = geman_mcclure(r, sigma[0]).sum(-1) if sigma[0] else (r ** 2).sum(-1)
        wr = w[rows]
        e_vis = (wr * rho).sum(1) / wr.sum(1).clamp_min(1e-6)
        theta = body.view(len(rows), 21, 3)
        ir = inv[rows]
        if prior is None:
            theta_hat = torch.zeros_like(theta)
        elif cfg.prior_mode == "reconstruct":
            theta_hat = prior.reconstruct(body).pose_body.view_as(theta)
        else:
            theta_hat = prior_target(prior, theta, ir)
        e_inv = (ir[..., None] * (theta - theta_hat) ** 2).sum((1, 2)) / (3 * ir.sum(1)).clamp_min(1)
        terms = {"keypoints": cfg.lambda_visible * e_vis, "prior": cfg.lambda_invisible * e_inv,
                 "pitch": cfg.lambda_pitch * (pitch_regulariser(go, mean_pitch)
                                              + head_only[rows] * lean_regulariser(go)),
                 "shape": cfg.lambda_shape * (betas ** 2).mean(1)}
        return sum(terms.values()), terms, (r ** 2).sum(-1)

    if cfg.prior_mode not in PRIOR_MODES:
        raise ValueError(f"prior_mode must be one of {', '.join(PRIOR_MODES)}, not {cfg.prior_mode!r}")
    solvers = {"adam": _run_adam, "lbfgs": _run_lbfgs, "batched-lbfgs": _run_batched_lbfgs}
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


def _run_adam(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
              converged: np.ndarray) -> Tensor:
    """Batched Adam; an image whose loss stalls is frozen (its parameters restored after each step)."""
    x = x.detach().clone().requires_grad_(True)
    x.register_hook(lambda g: g * free)
    rows = torch.arange(x.shape[0], device=x.device)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    # Adam's steps do not shrink with the gradient: decay the rate so the fit settles.
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay ** (1.0 / max(1, n_iter)))
    prev = None
    still = np.zeros(len(iterations), dtype=np.int64)
    for _ in range(n_iter):
        opt.zero_grad(set_to_none=True)
        per_image = energy(x, rows)[0]
        per_image.sum().backward()
        frozen = torch.as_tensor(converged, device=x.device)
        saved = x.detach().clone()
        opt.step()
        decay.step()
        with torch.no_grad():
            x[frozen] = saved[frozen]
        loss = per_image.detach().cpu().numpy()
        iterations[~converged] += 1
        if prev is not None:
            rel = np.abs(prev - loss) / np.maximum(np.abs(prev), 1e-12)
            still = np.where(rel < cfg.tolerance, still + 1, 0)
            converged |= still >= cfg.patience
        prev = loss
        if converged.all():
            break
    return x.detach()


def _run_lbfgs(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
               converged: np.ndarray) -> Tensor:
    """torch's L-BFGS (strong Wolfe) on the summed energy, as smplify-x runs it on one image. Over a
    batch, the images share one line search; stops when the total stalls."""
    x = x.detach().clone().requires_grad_(True)
    x.register_hook(lambda g: g * free)
    rows = torch.arange(x.shape[0], device=x.device)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_change=1e-12, tolerance_grad=1e-10)

    def closure():
        opt.zero_grad(set_to_none=True)
        total = energy(x, rows)[0].sum()
        total.backward()
        return total

    prev = None
    start = 0
    for _ in range(max(1, math.ceil(n_iter / 20))):
        loss = float(opt.step(closure).detach())
        done = int(opt.state[x].get("n_iter", 0))
        iterations += done - start
        start = done
        if not math.isfinite(loss):
            break
        if prev is not None and abs(prev - loss) <= cfg.tolerance * max(abs(prev), 1e-12):
            converged[:] = True
            break
        prev = loss
    return x.detach()


_MAX_STEP = 0.2  # batched-lbfgs: largest change of any parameter in one iteration (radians, log s, ...)


def _run_batched_lbfgs(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
                       converged: np.ndarray) -> Tensor:
    """L-BFGS with one history and one backtracking (Armijo) line search per image, all images in
    one batched evaluation; an image leaves the batch when it has converged, so later iterations
    cost only what is still moving. An image converges when its energy falls by less than
    `tolerance` (relative) in `patience` iterations in a row, or when no step lowers it."""
    B, P = x.shape
    dev = x.device
    m = cfg.history
    x = x.detach().clone()

    def value_grad(xs: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        xs = xs.detach().requires_grad_(True)
        f = energy(xs, rows)[0]
        (g,) = torch.autograd.grad(f.sum(), xs)
        return f.detach(), g * free

    f, g = value_grad(x, torch.arange(B, device=dev))
    S = torch.zeros(m, B, P, device=dev)
    Y = torch.zeros(m, B, P, device=dev)
    rho = torch.zeros(m, B, device=dev)  # 0 marks an empty or skipped pair: it leaves the two loops unchanged
    gamma = torch.ones(B, device=dev)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # no curvature pair yet: a cautious first step
    next_t = torch.full((B,), math.nan, device=dev)  # each image's first trial step; NaN: a cautious one
    still = torch.zeros(B, dtype=torch.long, device=dev)
    done = torch.as_tensor(converged, device=dev).clone()
    head = 0
    for it in range(n_iter):
        act = torch.nonzero(~done).flatten()
        if len(act) == 0:
            break
        ga = g[act]
        # Two-loop recursion over the stored pairs, newest first, every image at once.
        q = -ga
        alphas = []
        for j in range(min(it, m)):
            i = (head - 1 - j) % m
            a = rho[i, act] * (S[i, act] * q).sum(1)
            q = q - a[:, None] * Y[i, act]
            alphas.append((i, a))
        d = q * gamma[act, None]
        for i, a in reversed(alphas):
            bta = rho[i, act] * (Y[i, act] * d).sum(1)
            d = d + S[i, act] * (a - bta)[:, None]
        slope = (ga * d).sum(1)
        uphill = ~(slope < 0)  # a lost descent direction: fall back to the gradient
        d = torch.where(uphill[:, None], -ga, d)
        slope = torch.where(uphill, -(ga * ga).sum(1), slope)
        # First trial: twice the step the image's last line search accepted (at most the unit step),
        # or where the last trial failed the step it backtracked to; 1/|g|₁ without curvature.
        cautious = (1.0 / ga.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        t = torch.where(uphill | torch.isnan(next_t[act]), cautious, next_t[act])
        # No parameter moves more than _MAX_STEP per iteration: a poor curvature estimate early on
        # (or across a Geman-McClure knee) must not throw the pose far off in one step.
        t = torch.minimum(t, _MAX_STEP / d.abs().amax(1).clamp_min(1e-12))
        x_new, f_new, g_new = x[act].clone(), f[act].clone(), ga.clone()
        accepted = torch.zeros(len(act), dtype=torch.bool, device=dev)
        for _ in range(cfg.line_search_steps):
            try_ = torch.nonzero(~accepted).flatten()
            if len(try_) == 0:
                break
            xt = x[act[try_]] + t[try_, None] * d[try_]
            ft, gt = value_grad(xt, act[try_])
            f0, sl, tt = f[act[try_]], slope[try_], t[try_]
            ok = torch.isfinite(ft) & (ft <= f0 + 1e-4 * tt * sl)
            good = try_[ok]
            x_new[good], f_new[good], g_new[good] = xt[ok], ft[ok], gt[ok]
            accepted[good] = True
            # Backtrack to the minimum of the quadratic through f(0), f'(0) and f(t), within [t/10, t/2].
            quad = -sl * tt ** 2 / (2 * (ft - f0 - sl * tt)).clamp_min(1e-30)
            t[try_] = torch.where(ok, tt, torch.where(torch.isfinite(quad), quad.clamp(0.1 * tt, 0.5 * tt), 0.1 * tt))
        next_t[act] = torch.where(accepted, (2.0 * t).clamp(max=1.0), t)
        iterations[act.cpu().numpy()] += 1
        # Curvature pair s, y of the accepted step (kept only when sᵀy > 0, so H stays positive).
        s_k, y_k = x_new - x[act], g_new - ga
        sy = (s_k * y_k).sum(1)
        keep = accepted & (sy > 1e-10)
        S[head, act], Y[head, act] = s_k, y_k
        rho[head] = 0.0
        rho[head, act] = torch.where(keep, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma[act] = torch.where(keep, sy / (y_k * y_k).sum(1).clamp_min(1e-20), gamma[act])
        head = (head + 1) % m
        # An image whose trials keep failing resumes the search at the next iteration from the
        # shorter step; once no step of any useful length lowers the energy, it restarts from the
        # gradient, and from there it has converged.
        failed = ~accepted & (t * d.abs().amax(1) < 1e-9)
        stuck = failed & fresh[act]
        rho[:, act[failed & ~stuck]] = 0.0
        next_t[act[failed]] = math.nan
        fresh[act] = torch.where(failed, torch.ones_like(failed), fresh[act] & ~keep)
        rel = (f[act] - f_new) / f[act].abs().clamp_min(1e-12)
        still[act] = torch.where(accepted & (rel < cfg.tolerance), still[act] + 1, torch.zeros_like(still[act]))
        done[act] = stuck | (still[act] >= cfg.patience)
        x[act], f[act], g[act] = x_new, f_new, g_new
    converged[:] = done.cpu().numpy()
    return x
