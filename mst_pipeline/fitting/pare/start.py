"""SMPLify-P's start from PARE: a batch of PARE's predictions turned into a `FitInit`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mst_pipeline.fitting.pare.crops import bbox_from_keypoints, crop_cam_to_full_image
from mst_pipeline.fitting.pare.network import Pare
from mst_pipeline.fitting.smplify import FitInit, initial_guess
from mst_pipeline.fitting.targets import facing_from_keypoints, fitting_joints, keypoint_init, project, visibility
from mst_pipeline.space import normalised_to_pixels


def pare_start(net: Pare, model, images: list[np.ndarray], targets: np.ndarray, confidence: np.ndarray,
               threshold: float = 0.3) -> tuple[FitInit, np.ndarray]:
    """SMPLify-P's start from PARE for a batch of images (`smplify_p(..., init=...)`).

    images: RGB uint8 arrays; targets [B, 37, 2] keypoints in each image's normalised coordinates
    and confidence [B, 37], as `smplify_p` takes them. Per image, PARE's global orientation and
    body joints 1..21, the mean shape (PARE's betas are SMPL's shape space and would break the
    comparison of s with ᾱ that the mean shape keeps; see smplify's shape pull), rest hands (not
    optimised by SMPLify-P) and a camera. The camera is the least-squares fit of PARE's posed
    joints to the visible keypoints (`keypoint_init`), which are the fit's targets; PARE's own
    camera, moved to the full image (`crop_cam_to_full_image`), is used where that is impossible.

    Returns (FitInit, from_pare [B] bool). An image keeps the keypoint start (`initial_guess`)
    where that explains its visible keypoints better than PARE's — a poor regression (a cut-off
    person, a face crop) must not start the fit further away than the keypoints alone would.
    """
    targets = np.asarray(targets, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    B = len(images)
    if targets.shape[0] != B or confidence.shape != targets.shape[:2]:
        raise ValueError(f"{B} images but targets {list(targets.shape)} and confidence {list(confidence.shape)}")
    vis = visibility(targets, confidence, threshold)
    targets = np.where(vis[..., None], targets, 0.0)
    sizes = np.array([im.shape[1::-1] for im in images], dtype=np.float64)  # (w, h)
    boxes = np.stack([
        bbox_from_keypoints(normalised_to_pixels(t, w, h), c, w, h, threshold)
        for t, c, (w, h) in zip(targets, np.where(vis, confidence, 0.0), sizes, strict=True)])
    out = net.predict(images, boxes)
    dev = model.v_template.device
    f32 = torch.float32
    go = out.pose[:, :3].to(dev, f32)
    body = torch.cat([out.pose[:, 3:66], torch.zeros(B, 6, device=out.pose.device)], 1).to(dev, f32)
    tgt = torch.as_tensor(targets, dtype=f32, device=dev)
    visible = torch.as_tensor(vis, device=dev)
    with torch.no_grad():
        posed = model(global_orient=go, body_pose=body)
        J = fitting_joints(posed.joints, posed.body25)
        cam, ok = keypoint_init(J, tgt, visible)
    pare_cam = torch.as_tensor(crop_cam_to_full_image(out.cam.cpu().numpy(), boxes, sizes), dtype=f32, device=dev)
    cam = torch.where(ok[:, None], cam, pare_cam)
    pare = FitInit(cam=cam, global_orient=go, body_pose=body, betas=torch.zeros(B, model.num_betas, device=dev))

    back, _ = facing_from_keypoints(targets, vis)
    keypoints = initial_guess(model, targets, vis, back, dev)
    with torch.no_grad():
        rest = model(global_orient=keypoints.global_orient)
        err_pare = _keypoint_error(project(J, cam), tgt, visible)
        err_kp = _keypoint_error(project(fitting_joints(rest.joints, rest.body25), keypoints.cam), tgt, visible)
    use = (err_pare <= err_kp) & torch.isfinite(err_pare)

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(use[:, None], a, b.to(a))

    init = FitInit(cam=pick(pare.cam, keypoints.cam), global_orient=pick(pare.global_orient, keypoints.global_orient),
                   body_pose=pick(pare.body_pose, keypoints.body_pose), betas=pick(pare.betas, keypoints.betas))
    return init, use.cpu().numpy()


def _keypoint_error(J: Tensor, targets: Tensor, visible: Tensor) -> Tensor:
    """Mean squared distance over the visible keypoints. [B, N, 2] ×2, [B, N] -> [B]."""
    w = visible.to(J.dtype)
    return (w * ((J - targets) ** 2).sum(-1)).sum(1) / w.sum(1).clamp_min(1)
