"""Full-body image space of the MST (paper §3.1, Eq. 2; DESIGN §3).

A sample's image is described by a weak-perspective camera α = (s, tx, ty) in its *normalised*
coordinates: the square of side L = max(width, height) centred on the image, mapped to [-1, 1]²
(so a 1024×512 portrait padded to a square is exactly the full-body training image). A model
point X lands at u = s · (X_xy + t).

The full-body dataset has an average camera ᾱ = (s̄, t̄x, t̄y). The same body seen through ᾱ lands
at u_full = (s̄/s) · u + s̄ · (t̄ − t), which is a scale + translation of the image: the homography
H(α, ᾱ) of Eq. 2, conjugated by the pixel ↔ normalised maps of both sides. Full-body space is the
unit square, x = (u_full + 1) / 2.

`FullBodySpace` is what `mst space` writes (ᾱ, the mean pitch ô of the global orientation with
its spread over the set, the fitted poses for `mst fit-prior`, the full-body set's density);
`default_space` is the built-in space of the SHHQ layout used when no space file is given.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uh_train.format.atomic import atomic_write, atomic_write_text
from uh_train.format.geometry import apply_homography, density, image_region, scale_translate

# SHHQ layout of the built-in space: head top and feet of the mean body, in full-body y.
DEFAULT_HEAD_TOP, DEFAULT_FEET = 0.04, 0.96
# A 1024×512 SHHQ portrait padded to a square: 1024 source pixels per full-body unit.
DEFAULT_DENSITY = 1024.0
SPACE_FORMAT = "unitedhuman-space/1"


# ---------------------------------------------------------------------------------------------
# Pure geometry


def normalisation(width: int | float, height: int | float) -> np.ndarray:
    """3×3 map from image pixels to the image's normalised coordinates.

    The square of side L = max(width, height) centred on the image becomes [-1, 1]²:
    u = (p − (w/2, h/2)) · 2/L. Pixel centres sit at integer + 0.5 (DESIGN §3).
    """
    L = float(max(width, height))
    return scale_translate(2.0 / L, 2.0 / L, -float(width) / L, -float(height) / L)


# Normalised full-body coordinates [-1, 1]² -> full-body space [0, 1]².
FULL_FROM_NORMALISED = scale_translate(0.5, 0.5, 0.5, 0.5)


def camera_transfer(cam: np.ndarray, cam_bar: np.ndarray) -> np.ndarray:
    """3×3 map u_full = (s̄/s) · u + s̄ · (t̄ − t) between normalised coordinates (DESIGN §3).

    cam, cam_bar: [3] as (s, tx, ty).
    """
    s, tx, ty = (float(c) for c in np.asarray(cam, dtype=np.float64).reshape(3))
    sb, tbx, tby = (float(c) for c in np.asarray(cam_bar, dtype=np.float64).reshape(3))
    if not (s > 0 and sb > 0 and all(math.isfinite(v) for v in (tx, ty, tbx, tby))):
        raise ValueError(f"camera scales must be positive and finite (s={s}, s̄={sb})")
    return scale_translate(sb / s, sb / s, sb * (tbx - tx), sb * (tby - ty))


def homography(cam: np.ndarray, cam_bar: np.ndarray, width: int, height: int) -> np.ndarray:
    """H(α, ᾱ) of paper Eq. 2: image pixels of a width×height image -> full-body space. [3, 3]."""
    return FULL_FROM_NORMALISED @ camera_transfer(cam, cam_bar) @ normalisation(width, height)


def camera_of_homography(H: np.ndarray, cam_bar: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of `homography` for scale + translation maps: the camera α [3] of an image whose H
    is known (e.g. a crop of a full-body image)."""
    A = np.linalg.inv(FULL_FROM_NORMALISED) @ np.asarray(H, dtype=np.float64) @ np.linalg.inv(
        normalisation(width, height))
    sb, tbx, tby = (float(c) for c in np.asarray(cam_bar, dtype=np.float64).reshape(3))
    k = 0.5 * (A[0, 0] + A[1, 1])
    s = sb / k
    return np.array([s, tbx - A[0, 2] / sb, tby - A[1, 2] / sb])


def pixels_to_normalised(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image pixels [..., 2] -> normalised coordinates [..., 2]."""
    return apply_homography(normalisation(width, height), points)


def normalised_to_pixels(u: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised coordinates [..., 2] -> image pixels [..., 2]."""
    return apply_homography(np.linalg.inv(normalisation(width, height)), u)


def region_and_density(H: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """(polygon [4, 2] the image covers in full-body space, source pixels per full-body unit)."""
    return image_region(H, width, height), density(H, width, height)


def pitch_of_rotation(R: Any) -> Any:
    """Pitch o of a global orientation (paper Eq. 1's regulariser term), in radians; 0 for an
    upright person.

    R: [..., 3, 3] rotation model -> camera (numpy or torch). The camera frame has x right, y down
    (image rows) and z away from the camera (depth); the model's up axis is +Y, so an upright body
    has up = R[:, 1] = (0, −1, 0). o = atan2(up_z, −up_y): positive when the head is further from
    the camera than the feet, as a camera below the person's centre looking up sees them; negative
    when the head leans towards the camera, as a camera above looking down sees them. For a body
    turned by rot_x(π − o) (upright, facing the camera, then leaned), this returns o.
    """
    up_y, up_z = R[..., 1, 1], R[..., 2, 1]
    if isinstance(R, np.ndarray):
        return np.arctan2(up_z, -up_y)
    import torch

    return torch.atan2(up_z, -up_y)


def upright_orientation(facing: str = "front") -> np.ndarray:
    """Axis-angle [3] of an upright body facing the camera ("front") or turned away ("back")."""
    if facing == "front":
        return np.array([math.pi, 0.0, 0.0])
    if facing == "back":
        return np.array([0.0, 0.0, math.pi])  # rot_z(π) = rot_x(π) · rot_y(π)
    raise ValueError(f"facing must be 'front' or 'back', not {facing!r}")


# ---------------------------------------------------------------------------------------------
# The full-body space record


@dataclass
class FullBodySpace:
    """ᾱ = (s̄, t̄x, t̄y), the mean pitch ô (radians), the full-body set's density (source pixels per
    full-body unit) and optionally its fitted poses [N, 72] and betas [N, K] for `mst fit-prior`."""

    cam_bar: tuple[float, float, float]
    pitch: float = 0.0
    density: float = DEFAULT_DENSITY
    poses: np.ndarray | None = None
    betas: np.ndarray | None = None
    count: int = 0
    source: str = "default"
    # How ô was measured: {"from": "feet" | "pare" | ..., "count", "std", "p5" .. "p95"} (radians).
    pitch_spread: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def homography(self, cam: np.ndarray, width: int, height: int) -> np.ndarray:
        return homography(cam, np.asarray(self.cam_bar), width, height)

    def to_full_body(self, points: np.ndarray) -> np.ndarray:
        """[..., 3] model points (after the global orientation) -> [..., 3]: full-body x, y and depth
        z, all in full-body units: p = (s̄ · (X_xy + t̄) + 1) / 2."""
        s, tx, ty = self.cam_bar
        p = np.asarray(points, dtype=np.float64)
        x = (s * (p[..., 0] + tx) + 1.0) / 2.0
        y = (s * (p[..., 1] + ty) + 1.0) / 2.0
        return np.stack([x, y, s * p[..., 2] / 2.0], axis=-1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (JSON) and, when poses are known, `path` with suffix .npz (pose, betas)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "format": SPACE_FORMAT, "cam_bar": [float(c) for c in self.cam_bar], "pitch": float(self.pitch),
            "density": float(self.density), "count": int(self.count), "source": self.source, **self.extra,
        }
        if self.pitch_spread is not None:
            record["pitch_spread"] = self.pitch_spread
        if self.poses is not None:
            poses_path = path.with_suffix(".npz")
            arrays = {"pose": np.asarray(self.poses, dtype=np.float32)}
            if self.betas is not None:
                arrays["betas"] = np.asarray(self.betas, dtype=np.float32)
            atomic_write(poses_path, lambda f: np.savez(f, **arrays))
            record["poses"] = poses_path.name
        atomic_write_text(path, json.dumps(record, indent=2))
        return path


def load_space(path: str | os.PathLike) -> FullBodySpace:
    """Read `mst space`'s JSON (and its pose .npz when present)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read full-body space {path}: {e}") from None
    if not isinstance(data, dict) or "cam_bar" not in data:
        raise ValueError(f"{path} has no 'cam_bar' (the full-body set's average camera s, tx, ty)")
    cam = np.asarray(data["cam_bar"], dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(cam)) and cam[0] > 0):
        raise ValueError(f"{path}: cam_bar {cam.tolist()} is not a valid camera (s > 0)")
    poses = betas = None
    if data.get("poses"):
        with np.load(path.parent / data["poses"], allow_pickle=False) as z:
            poses = z["pose"].astype(np.float64)
            betas = z["betas"].astype(np.float64) if "betas" in z.files else None
    known = {"format", "cam_bar", "pitch", "density", "count", "source", "poses", "pitch_spread"}
    spread = data.get("pitch_spread")  # absent in files written before ô was measured
    return FullBodySpace(
        cam_bar=(float(cam[0]), float(cam[1]), float(cam[2])), pitch=float(data.get("pitch", 0.0)),
        density=float(data.get("density", DEFAULT_DENSITY)), poses=poses, betas=betas,
        count=int(data.get("count", 0)), source=str(data.get("source", path.name)),
        pitch_spread=spread if isinstance(spread, dict) else None,
        extra={k: v for k, v in data.items() if k not in known},
    )


def default_space(model: Any) -> FullBodySpace:
    """The built-in full-body space (SHHQ layout): the model's mean body, upright, facing the camera
    and at rest, centred horizontally with its head top at y = 0.04 and its feet at y = 0.96."""
    import torch

    with torch.no_grad():
        out = model(global_orient=torch.as_tensor(upright_orientation("front")[None], dtype=torch.float32))
    v = out.vertices[0].cpu().numpy().astype(np.float64)
    top, bottom = float(v[:, 1].min()), float(v[:, 1].max())
    s = 2 * (DEFAULT_FEET - DEFAULT_HEAD_TOP) / (bottom - top)
    tx = -0.5 * (float(v[:, 0].min()) + float(v[:, 0].max()))
    ty = (2 * DEFAULT_HEAD_TOP - 1) / s - top
    return FullBodySpace(cam_bar=(s, tx, ty), pitch=0.0, density=DEFAULT_DENSITY, source="default")


# Feet of BODY_25 (ankle, big toe, small toe, heel), left then right: the rigid points whose
# depth offsets make the camera's pitch visible in 2-D keypoints.
FEET_BODY25 = ((14, 19, 20, 21), (11, 22, 23, 24))


def pitch_spread(pitches: np.ndarray, source: str) -> dict[str, Any]:
    """Summary of per-image pitches [N] (radians) for space.json: count, std and percentiles."""
    p = np.asarray(pitches, dtype=np.float64)
    p = p[np.isfinite(p)]
    record: dict[str, Any] = {"from": source, "count": int(len(p))}
    if len(p):
        q = np.percentile(p, [5, 25, 50, 75, 95])
        record["std"] = float(p.std())
        record.update({f"p{k}": float(v) for k, v in zip((5, 25, 50, 75, 95), q, strict=True)})
    return record


def feet_pitch(model: Any, targets: np.ndarray, confidence: np.ndarray, threshold: float = 0.3,
               device: str = "cpu", iterations: int = 100) -> np.ndarray:
    """Per image, the pitch o of its feet: the measured camera pitch of a standing person.

    Standing people's feet rest flat on the floor, which is the rest pose's foot orientation, so
    the rotation R of a foot in the camera frame has the camera's pitch relative to the floor
    (`pitch_of_rotation(R)`; for an upright body that is the pitch of its global orientation). Per
    foot whose ankle, heel and big toe are visible, R is fitted (3 parameters, weak perspective) to
    the keypoints' offsets from the ankle, u_k − u_ankle = s · [R (X_k − X_ankle)]_xy, with X the
    mean body's rest keypoints and s the scale of the image's keypoint start (`initial_guess`).
    Unlike the body's global orientation, which Eq. 1 can trade for hip and spine rotations, a foot's
    orientation is fixed by its own keypoints.

    targets [B, 37, 2] normalised, confidence [B, 37] as `smplify_p` takes them. Returns [B]:
    the mean pitch of the image's measured feet (radians), NaN where no foot is visible.
    """
    import torch

    from mst_pipeline.prior import axis_angle_to_rotmat
    from mst_pipeline.smplify import facing_from_keypoints, initial_guess, visibility

    if hasattr(model, "joint_model"):
        model = model.joint_model()
    dev = torch.device(device)
    targets = np.asarray(targets, dtype=np.float64)
    vis = visibility(targets, np.asarray(confidence, dtype=np.float64), threshold)
    B = len(targets)
    if B == 0:
        return np.zeros(0)
    targets = np.where(vis[..., None], targets, 0.0)
    back, _ = facing_from_keypoints(targets, vis)
    init = initial_guess(model, targets, vis, back, dev)
    with torch.no_grad():
        rest = model().body25[0].double()  # [25, 3] mean body at rest (model frame, Y up)
    feet = torch.as_tensor(FEET_BODY25, device=dev)  # [2, 4]: ankle, big toe, small toe, heel
    offsets = rest[feet[:, 1:]] - rest[feet[:, :1]]  # [2, 3, 3]
    u = torch.as_tensor(targets[:, :25], dtype=torch.float64, device=dev)
    seen = torch.as_tensor(vis[:, :25], device=dev)
    s = init.cam[:, :1].double()[:, :, None]  # [B, 1, 1]
    observed = (u[:, feet[:, 1:]] - u[:, feet[:, :1]]) / s[..., None]  # [B, 2, 3, 2] model units
    weight = (seen[:, feet[:, 1:]] & seen[:, feet[:, :1]]).double()  # [B, 2, 3]
    usable = weight[..., 0].bool() & weight[..., 2].bool()  # ankle, big toe and heel seen
    weight = weight * usable[..., None]
    start = init.global_orient.double()[:, None].expand(B, 2, 3)
    delta = torch.zeros(B, 2, 3, dtype=torch.float64, device=dev, requires_grad=True)
    R0 = axis_angle_to_rotmat(start)

    def rotation() -> torch.Tensor:
        return R0 @ axis_angle_to_rotmat(delta)  # [B, 2, 3, 3]

    def loss() -> torch.Tensor:
        pred = torch.einsum("bfij,fkj->bfki", rotation(), offsets)[..., :2]
        return (weight[..., None] * (pred - observed) ** 2).sum()

    opt = torch.optim.LBFGS([delta], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        pitch = pitch_of_rotation(rotation())  # [B, 2]
    pitch = torch.where(usable, pitch, torch.full_like(pitch, float("nan"))).cpu().numpy()
    out = np.full(B, np.nan)
    some = usable.any(1).cpu().numpy()
    out[some] = np.nanmean(pitch[some], axis=1)
    return out


def space_from_fits(cams: np.ndarray, poses: np.ndarray, betas: np.ndarray, densities: np.ndarray,
                    source: str, pitch: float = 0.0, spread: dict[str, Any] | None = None) -> FullBodySpace:
    """Average a full-body set's fits into its space: ᾱ = mean camera, density = median density;
    ô and its spread as measured (`build_space`). cams [N, 3], poses [N, 72], betas [N, K],
    densities [N] (pixels per unit)."""
    cams = np.asarray(cams, dtype=np.float64)
    if len(cams) == 0:
        raise ValueError("no fitted full-body images: cannot build a full-body space")
    return FullBodySpace(
        cam_bar=tuple(float(c) for c in cams.mean(0)), pitch=float(pitch),
        density=float(np.median(densities)), poses=np.asarray(poses, dtype=np.float64),
        betas=np.asarray(betas, dtype=np.float64), count=len(cams), source=source, pitch_spread=spread,
    )


def mean_pitch(pitches: np.ndarray, source: str) -> tuple[float, dict[str, Any]]:
    """ô = mean of the finite per-image pitches [N] and their spread; 0 (upright) when none is
    finite, recorded as such."""
    p = np.asarray(pitches, dtype=np.float64)
    finite = p[np.isfinite(p)]
    if len(finite) == 0:
        return 0.0, {"from": "upright (no image showed a foot)", "count": 0}
    return float(finite.mean()), pitch_spread(finite, source)


def build_space(root: str | os.PathLike, model: Any, *, detector: str = "mediapipe",
                keypoints_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 16,
                config: Any = None, prior: Any = None, detect: Any = None,
                pare: str | os.PathLike | None = None) -> tuple[FullBodySpace, int]:
    """`mst space`: measure the mean pitch ô, then fit every full-body image of ROOT with Eq. 1's
    pitch term pulling towards it and average the fits (see `space_from_fits`).

    ô is the mean of per-image pitches: the feet's (`feet_pitch`), or with PARE (a checkpoint path),
    the pitch of PARE's global orientation where PARE starts the fit (the paper's estimate). Each
    full-body image is its own full-body frame (padded to a square), so its fitted camera is
    directly a sample of ᾱ. Returns (space, number of rejected images).
    """
    from mst_pipeline.align import Rejected, _batches, _detect, list_images, stem_of
    from mst_pipeline.detect import make_detector
    from mst_pipeline.prior import axis_angle_to_rotmat_np
    from mst_pipeline.smplify import FitInit, SmplifyConfig, smplify_p

    root = Path(root)
    cfg = config or SmplifyConfig()
    detect = detect or make_detector(detector, keypoints_dir, root)
    net = None
    if pare is not None:
        from mst_pipeline.pare import load_pare_checkpoint, pare_start

        net = load_pare_checkpoint(pare, device, strict=True)[0]
    # Pass 1: keypoints (and PARE's start) of every image, and its pitch.
    batches, pitches = [], []
    rejected = 0
    for batch in _batches(list_images(root), batch_size):
        items = []
        for path in batch:
            try:
                items.append(_detect(path, stem_of(path, root), "space/x", detect))
            except Rejected:
                rejected += 1
        if not items:
            continue
        targets = np.stack([i.targets for i in items])
        confidence = np.stack([i.confidence for i in items])
        init = None
        if net is not None:
            init, from_pare = pare_start(net, model, [i.image for i in items], targets, confidence, cfg.confidence)
            go = axis_angle_to_rotmat_np(init.global_orient.detach().cpu().numpy().astype(np.float64))
            pitches.append(np.where(from_pare, pitch_of_rotation(go), np.nan))
        else:
            pitches.append(feet_pitch(model, targets, confidence, cfg.confidence, device))
        dens = np.array([float(max(i.image.shape[:2])) for i in items])
        batches.append((targets, confidence, init, dens))
    pitch, spread = mean_pitch(np.concatenate(pitches) if pitches else np.zeros(0),
                               "pare" if net is not None else "feet")
    # Pass 2: Eq. 1 with ô as measured.
    cams, poses, betas, dens_ok = [], [], [], []
    for targets, confidence, init, dens in batches:
        start = None if init is None else FitInit(*(t.detach() for t in (init.cam, init.global_orient,
                                                                          init.body_pose, init.betas)))
        fits = smplify_p(model, targets, confidence, prior=prior, mean_pitch=pitch, config=cfg, init=start,
                         device=device)
        for fit, d in zip(fits, dens, strict=True):
            if not fit.ok:
                rejected += 1
                continue
            cams.append(fit.cam)
            poses.append(fit.pose)
            betas.append(fit.betas)
            dens_ok.append(d)
    return space_from_fits(np.array(cams), np.array(poses), np.array(betas), np.array(dens_ok), root.name,
                           pitch=pitch, spread=spread), rejected
