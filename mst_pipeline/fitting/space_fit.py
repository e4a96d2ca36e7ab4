"""`mst space`: the full-body space of a full-body set (paper §3.1): ᾱ, the mean pitch ô and the fits.

ô is measured first (`image_pitches`: through the detector's calibrated pitch response, else the
feet; or PARE's global orientation), then every image is fitted with
SMPLify-P (Eq. 1, pitch term towards ô) and the fits are averaged into a `FullBodySpace`
(`space_from_fits`). The geometry itself (H of Eq. 2, the space record) is `mst_pipeline.space`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.detect.images import Rejected, list_images, stem_of
from mst_pipeline.detect.pool import batches, detect_image
from mst_pipeline.fitting import FIT_BATCH
from mst_pipeline.space import FullBodySpace, pitch_of_rotation

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

    from mst_pipeline.body.rotations import axis_angle_to_rotmat
    from mst_pipeline.fitting.smplify import initial_guess
    from mst_pipeline.fitting.targets import facing_from_keypoints, visibility

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


def image_pitches(model: Any, targets: np.ndarray, confidence: np.ndarray, threshold: float = 0.3,
                  device: str = "cpu") -> tuple[np.ndarray, str]:
    """Per full-view image, its measured camera pitch [B] (radians, NaN where unmeasurable) and what
    measured it: the posture of the keypoints through the calibration's pitch response
    (`mst_pipeline.body.posture`; "posture") when MODEL's keypoints are calibrated with one, else
    the feet (`feet_pitch`; "feet"). A detector's feet can see less of the pitch than the body model's:
    mediapipe's read about a third of it (docs/benchmarks.md), which the posture response corrects."""
    from mst_pipeline.body.posture import estimate, features

    response = getattr(getattr(model, "keypoints", None), "pitch", None)
    if response is not None:
        return estimate(response, features(targets, confidence, threshold)), "posture"
    return feet_pitch(model, targets, confidence, threshold, device), "feet"


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
    """ô = mean of the finite per-image pitches [N] within Tukey's fences (`inliers`) and their
    spread (with the number of outliers left out); 0 (upright) when none is finite, recorded as such."""
    p = np.asarray(pitches, dtype=np.float64)
    finite = p[np.isfinite(p)]
    if len(finite) == 0:
        return 0.0, {"from": f"upright (no image measured by {source})", "count": 0}
    spread = pitch_spread(finite, source)
    kept = finite[inliers(finite)]
    spread["outliers"] = int(len(finite) - len(kept))
    return float(kept.mean()), spread


def inliers(p: np.ndarray, fence: float = 1.5) -> np.ndarray:
    """Which of the pitches [N] lie within Tukey's fences (FENCE interquartile ranges beyond the
    quartiles): raised heels (fashion photos) tip a foot forward by 10-30°, and a few such images
    must not move ô."""
    if len(p) < 4:
        return np.ones(len(p), dtype=bool)
    q1, q3 = np.percentile(p, [25, 75])
    width = max(q3 - q1, np.radians(0.5))
    return (p >= q1 - fence * width) & (p <= q3 + fence * width)


def build_space(root: str | os.PathLike, model: Any, *, detector: str = "mediapipe",
                keypoints_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = FIT_BATCH,
                config: Any = None, prior: Any = None, detect: Any = None,
                pare: str | os.PathLike | None = None, pitch: float | None = None) -> tuple[FullBodySpace, int]:
    """`mst space`: measure the mean pitch ô, then fit every full-body image of ROOT with Eq. 1's
    pitch term pulling towards it and average the fits (see `space_from_fits`).

    ô is the mean of per-image pitches: the keypoints' (`image_pitches`), or with PARE (a checkpoint path),
    the pitch of PARE's global orientation where PARE starts the fit (the paper's estimate); PITCH
    (radians), when given, is used as ô instead (recorded as "given"). Each
    full-body image is its own full-body frame (padded to a square), so its fitted camera is
    directly a sample of ᾱ. Returns (space, number of rejected images).
    """
    from mst_pipeline.body import view_confidence
    from mst_pipeline.body.rotations import axis_angle_to_rotmat_np
    from mst_pipeline.detect import make_detector
    from mst_pipeline.fitting.smplify import FitInit, SmplifyConfig, smplify_p

    root = Path(root)
    cfg = config or SmplifyConfig()
    detect = detect or make_detector(detector, keypoints_dir, root)
    net = None
    if pare is not None:
        from mst_pipeline.fitting.pare.checkpoint import load_pare_checkpoint
        from mst_pipeline.fitting.pare.start import pare_start

        net = load_pare_checkpoint(pare, device, strict=True)[0]
    # Pass 1: keypoints (and PARE's start) of every image, and its pitch.
    detected, pitches = [], []
    rejected = 0
    source = "pare" if pare is not None else "feet"
    for batch in batches(list_images(root), batch_size):
        items = []
        for path in batch:
            try:
                items.append(detect_image(path, stem_of(path, root), "space/x", detect))
            except Rejected:
                rejected += 1
        if not items:
            continue
        targets = np.stack([i.targets for i in items])
        confidence = view_confidence(model, "full", np.stack([i.confidence for i in items]))
        init = None
        if net is not None:
            init, from_pare = pare_start(net, model, [i.image for i in items], targets, confidence, cfg.confidence)
            go = axis_angle_to_rotmat_np(init.global_orient.detach().cpu().numpy().astype(np.float64))
            pitches.append(np.where(from_pare, pitch_of_rotation(go), np.nan))
        else:
            measured, source = image_pitches(model, targets, confidence, cfg.confidence, device)
            pitches.append(measured)
        dens = np.array([float(max(i.image.shape[:2])) for i in items])
        detected.append((targets, confidence, init, dens))
    measured, spread = mean_pitch(np.concatenate(pitches) if pitches else np.zeros(0), source)
    if pitch is None:
        pitch = measured
    else:  # a known pitch: the measured one is kept beside it, for comparison
        spread.update({"from": "given", "measured_from": source}
                      | ({"measured_mean": measured} if spread["count"] else {}))
    # Pass 2: Eq. 1 with ô as measured (or given).
    cams, poses, betas, dens_ok = [], [], [], []
    for targets, confidence, init, dens in detected:
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
