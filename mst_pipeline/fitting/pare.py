"""PARE's regression as SMPLify-P's initial body (paper §3.1; Kocabas et al., ICCV 2021).

The network is the released configuration (`hrnet_w32-conv` backbone, part-segmentation
attention, one locally connected 6-D rotation regressor per joint), written so that the official
Lightning checkpoint (`pare_checkpoint.ckpt`, `pare_w_3dpw_checkpoint.ckpt`) loads into it: our
`state_dict()` keys are the checkpoint's after removing `model.` (1868 `backbone.*`, 37 `head.*`).

    image ─▶ square 224² crop around the person (from its keypoints) ─▶ ImageNet normalisation
          ─▶ HRNet-W32 [480, 56, 56] ─▶ part attention (24 parts) ─▶ rot6d per joint, betas, camera

* Rotations: 6-D (Zhou et al.) read as a 3×2 matrix, Gram–Schmidt, columns (b1, b2, b1×b2) —
  `body.rotations.rot6d_to_rotmat`, the same convention as PARE's.
* Camera: weak perspective (s, tx, ty) in the crop's normalised [-1, 1] coordinates; PARE's
  perspective translation is (tx, ty, 2f/(224 s)) with f = 5000, whose projection divided by
  112 px is u = s·(X_xy + t), the project's camera (docs/mst.md, "Geometry"). `crop_cam_to_full_image` moves it to
  the whole image's normalised coordinates.
* Body frame: PARE's global orientation maps SMPL's frame (Y up, facing +Z) to the camera's
  (y down), so an upright person facing the camera has a 180° turn about X — the orientation
  `space.upright_orientation("front")` and SMPLify-P use. It is passed on unchanged.

`load_pare_checkpoint` reads tensors only: `torch.load(weights_only=True)`, and where that refuses
the Lightning file's pickled `hyper_parameters` (a yacs CfgNode), the project's allow-list
unpickler (`uh_train.format.unpickle`: tensors, numpy arrays, containers) with every other name
replaced by an inert stub that can hold state but never be called.
`pare_start` turns a batch of predictions into SMPLify-P's `FitInit`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mst_pipeline.body.rotations import rot6d_to_rotmat, rotmat_to_axis_angle
from mst_pipeline.fitting.smplify import (
    FitInit,
    facing_from_keypoints,
    fitting_joints,
    initial_guess,
    keypoint_init,
    project,
    visibility,
)
from mst_pipeline.fitting.state_keys import KeyReport, compare_state
from mst_pipeline.space import normalised_to_pixels
from uh_train.format.geometry import bilinear_sample
from uh_train.format.unpickle import (
    NUMPY_ARRAYS,
    TORCH_SAVE_CONTAINERS,
    AllowListUnpickler,
    describe_load_error,
    torch_pickle_module,
)

IMG_RES = 224
FOCAL_LENGTH = 5000.0  # PARE's training focal length (pixels of the 224 crop)
NUM_JOINTS = 24
NUM_BETAS = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PARE's demo box from keypoints: 1.1 × their larger extent (`get_bbox_from_kp2d`), cropped at
# 1.2 × that (`get_single_image_crop_demo`'s default scale).
KEYPOINT_BOX_SCALE = 1.1 * 1.2
HRNET_W32 = (32, 64, 128, 256)  # branch channels of stages 2..4
NUM_MODULES = {2: 1, 3: 4, 4: 3}  # high-resolution modules per stage
PREFIXES = ("backbone.", "head.")
LIGHTNING_PREFIX = "model."


# ---------------------------------------------------------------------------------------------
# HRNet-W32 (pare/models/backbone/hrnet.py, `hrnet_w32(downsample=False, use_conv=True)`)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU): keys `.0.weight`, `.1.*`."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, planes: int = 64) -> None:
        super().__init__()
        c_out = 4 * planes
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
                           if c_in != c_out else None)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class HighResolutionModule(nn.Module):
    """Parallel branches of 4 BasicBlocks each, then every output sums all branches: higher
    resolutions through stride-2 3×3 convs, lower ones through a 1×1 conv and nearest upsampling."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(c) for _ in range(4))) for c in channels)
        fuse = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                             nn.BatchNorm2d(channels[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 steps; only the last changes the channels and has no ReLU
                    steps = [_conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2,
                                      relu=k < i - j - 1) for k in range(i - j)]
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if layer is not None:
                    y = y + layer(xs[j])
            out.append(F.relu(y))
        return out


class _Transition(nn.ModuleList):
    """Branches into the next stage: existing ones pass through (None), a new one is a stride-2
    conv of the lowest resolution (keys `transitionK.{new}.0.*`)."""

    def forward(self, xs: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        return [xs[i] if layer is None else layer(xs[-1]) for i, layer in enumerate(self)]


def _upsample(c: int, times: int) -> nn.Sequential:
    """`times` × (bilinear ×2, conv 3×3, BN, ReLU): keys 1, 2, 5, 6, 9, 10."""
    layers: list[nn.Module] = []
    for _ in range(times):
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                   nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class HRNetW32(nn.Module):
    """images [B, 3, H, W] -> features [B, 480, H/4, W/4] (the 4 branches upsampled by convs and
    concatenated: 32 + 64 + 128 + 256)."""

    out_channels = sum(HRNET_W32)

    def __init__(self) -> None:
        super().__init__()
        c = HRNET_W32
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(Bottleneck(64), Bottleneck(256), Bottleneck(256), Bottleneck(256))
        self.transition1 = _Transition([_conv_bn(256, c[0], 3), nn.Sequential(_conv_bn(256, c[1], 3, 2))])
        self.stage2 = nn.Sequential(*(HighResolutionModule(c[:2]) for _ in range(NUM_MODULES[2])))
        self.transition2 = _Transition([None, None, nn.Sequential(_conv_bn(c[1], c[2], 3, 2))])
        self.stage3 = nn.Sequential(*(HighResolutionModule(c[:3]) for _ in range(NUM_MODULES[3])))
        self.transition3 = _Transition([None, None, None, nn.Sequential(_conv_bn(c[2], c[3], 3, 2))])
        self.stage4 = nn.Sequential(*(HighResolutionModule(c) for _ in range(NUM_MODULES[4])))
        self.final_layer = nn.Conv2d(c[0], NUM_JOINTS, 1)  # in the checkpoint, unused by PARE
        self.upsample_stage_2 = _upsample(c[1], 1)
        self.upsample_stage_3 = _upsample(c[2], 2)
        self.upsample_stage_4 = _upsample(c[3], 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        xs = self.stage2(self.transition1([self.layer1(x)]))
        xs = self.stage3(self.transition2(xs))
        xs = self.stage4(self.transition3(xs))
        return torch.cat([xs[0], self.upsample_stage_2(xs[1]), self.upsample_stage_3(xs[2]),
                          self.upsample_stage_4(xs[3])], dim=1)


# ---------------------------------------------------------------------------------------------
# PARE head (pare/models/head/pare_head.py, released config)


class LocallyConnected1x1(nn.Module):
    """One linear map per joint (PARE's LocallyConnected2d with kernel 1, no bias).
    weight [1, C_out, C_in, J, 1, 1]; x [B, C_in, J] -> [B, C_out, J]."""

    def __init__(self, c_in: int, c_out: int, joints: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, joints, 1, 1) / c_in ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcj,ocj->boj", x, self.weight[0, ..., 0, 0])


def _head_convs(c_in: int, c: int = 128) -> nn.Sequential:
    """2 × (conv 3×3, BN, ReLU): keys 0, 1, 3, 4."""
    return nn.Sequential(*_conv_bn(c_in, c, 3), *_conv_bn(c, c, 3))


def part_attention(features: Tensor, segm: Tensor) -> Tensor:
    """Features pooled per part by a softmax over H·W of the part's logits (PARE's keypoint
    attention). features [B, C, H, W], segm [B, P, H, W] -> [B, C, P]."""
    att = F.softmax(segm.flatten(2), dim=-1)
    return torch.einsum("bph,bch->bcp", att, features.flatten(2))


class PareHead(nn.Module):
    """features [B, 480, 56, 56] -> (rot6d [B, 24, 6], betas [B, 10], cam [B, 3], segm [B, 25, 56, 56])."""

    def __init__(self, c_in: int = HRNetW32.out_channels, c: int = 128, smpl_features: int = 64) -> None:
        super().__init__()
        self.keypoint_deconv_layers = _head_convs(c_in, c)
        self.smpl_deconv_layers = _head_convs(c_in, c)
        self.keypoint_final_layer = nn.Conv2d(c, NUM_JOINTS + 1, 1)  # background + 24 parts
        self.smpl_final_layer = nn.Conv2d(c, smpl_features, 1)
        # Buffers the checkpoint carries (PARE's mean parameters and softargmax temperature); the
        # released config adds no mean residual, so they do not enter the forward pass.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("init_pose", torch.zeros(1, NUM_JOINTS * 6))
        self.register_buffer("init_shape", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.zeros(1, 3))
        self.shape_mlp = nn.Linear(NUM_JOINTS * smpl_features, NUM_BETAS)
        self.cam_mlp = nn.Linear(NUM_JOINTS * smpl_features, 3)
        self.pose_mlp = LocallyConnected1x1(c, 6, NUM_JOINTS)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        segm = self.keypoint_final_layer(self.keypoint_deconv_layers(features))
        parts = segm[:, 1:]
        smpl_feats = self.smpl_deconv_layers(features)
        pose_feats = part_attention(smpl_feats, parts)  # [B, 128, 24]
        cam_shape = part_attention(self.smpl_final_layer(smpl_feats), parts).flatten(1)  # [B, 64·24]
        rot6d = self.pose_mlp(pose_feats).transpose(1, 2)  # [B, 24, 6]
        return rot6d, self.shape_mlp(cam_shape), self.cam_mlp(cam_shape), segm


@dataclass
class PareOutput:
    """rotmat [B, 24, 3, 3] (SMPL joints, global orientation first), pose [B, 72] the same as
    axis-angle, betas [B, 10] (SMPL's shape space), cam [B, 3] (s, tx, ty) in the crop's
    normalised coordinates, bboxes [B, 3] the crops (cx, cy, side) in image pixels."""

    rotmat: Tensor
    pose: Tensor
    betas: Tensor
    cam: Tensor
    bboxes: np.ndarray | None = None


class Pare(nn.Module):
    """`backbone` + `head`: PARE's network. forward(images [B, 3, 224, 224], ImageNet-normalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = HRNetW32()
        self.head = PareHead()

    def forward(self, images: Tensor) -> PareOutput:
        rot6d, betas, cam, _ = self.head(self.backbone(images))
        R = rot6d_to_rotmat(rot6d)
        return PareOutput(rotmat=R, pose=rotmat_to_axis_angle(R).flatten(1), betas=betas, cam=cam)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], bboxes: np.ndarray) -> PareOutput:
        """RGB uint8 images ([h, w, 3] each) and one person box per image ([B, 3] cx, cy, side in
        pixels, e.g. `bbox_from_keypoints`) -> PareOutput, in eval mode on the module's device."""
        bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 3)
        if len(images) != len(bboxes):
            raise ValueError(f"got {len(images)} images and {len(bboxes)} boxes")
        dev = next(self.parameters()).device
        crops = torch.stack([crop_person(im, bb) for im, bb in zip(images, bboxes, strict=True)]).to(dev)
        was_training = self.training
        out = self.eval()(crops)
        self.train(was_training)
        out.bboxes = bboxes
        return out


# ---------------------------------------------------------------------------------------------
# Input crops and cameras (pure geometry)


def bbox_from_keypoints(xy: np.ndarray, confidence: np.ndarray, width: int, height: int,
                        threshold: float = 0.3, scale: float = KEYPOINT_BOX_SCALE) -> np.ndarray:
    """PARE's person box from keypoints: the square around the confident keypoints' bounding box,
    side `scale` × its larger extent. xy [N, 2] pixels, confidence [N] -> [3] (cx, cy, side).

    With fewer than 2 confident keypoints the whole image (the square of side max(w, h)) is used.
    """
    xy = np.asarray(xy, dtype=np.float64)
    ok = (np.asarray(confidence) >= threshold) & np.all(np.isfinite(xy), axis=1)
    if ok.sum() < 2:
        return np.array([width / 2, height / 2, float(max(width, height))])
    lo, hi = xy[ok].min(0), xy[ok].max(0)
    side = max(scale * float((hi - lo).max()), 8.0)  # a few keypoints in a row still get a crop
    return np.array([*(0.5 * (lo + hi)), side])


def crop_person(image: np.ndarray, bbox: np.ndarray, res: int = IMG_RES) -> Tensor:
    """The square bbox (cx, cy, side; pixels, centres at integer + 0.5) resampled to res × res,
    black outside the image, ImageNet-normalised: [3, res, res] float32."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [h, w, 3], got shape {list(image.shape)}")
    cx, cy, side = (float(v) for v in bbox)
    if not side > 0:
        raise ValueError(f"bbox side must be positive, got {side}")
    h, w = image.shape[:2]
    grid = (np.arange(res) + 0.5) * (side / res) - side / 2
    px, py = np.meshgrid(cx + grid, cy + grid)  # continuous pixel coordinates of the crop's pixels
    inside = (px >= 0) & (px <= w) & (py >= 0) & (py <= h)
    rgb = bilinear_sample(image.astype(np.float32) / 255.0, px - 0.5, py - 0.5) * inside[..., None]
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1), dtype=np.float32))


def crop_cam_to_full_image(cam: np.ndarray, bbox: np.ndarray, image_size: tuple[int, int] | np.ndarray) -> np.ndarray:
    """Weak-perspective camera of a crop -> the same camera in the whole image's normalised
    coordinates (the square of side L = max(w, h) centred on the image is [-1, 1]²; docs/mst.md, "Geometry").

    The crop (cx, cy, side) covers pixels c ± side/2, so a crop point u_c lands at p = c + u_c·side/2
    and at u = (p − (w/2, h/2))·2/L. With u_c = s·(X + t):
        u = s' · (X + t'),  s' = s · side / L,  t' = t + 2 (c − (w/2, h/2)) / (s · side).
    cam [B, 3] (s, tx, ty), bbox [B, 3], image_size (w, h) or [B, 2] -> [B, 3].
    """
    cam = np.asarray(cam, dtype=np.float64).reshape(-1, 3)
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 3)
    wh = np.broadcast_to(np.asarray(image_size, dtype=np.float64).reshape(-1, 2), (len(cam), 2))
    L = wh.max(1)
    s = cam[:, 0]
    out = np.empty_like(cam)
    out[:, 0] = s * bbox[:, 2] / L
    out[:, 1:] = cam[:, 1:] + 2 * (bbox[:, :2] - wh / 2) / (s * bbox[:, 2])[:, None]
    return out


# ---------------------------------------------------------------------------------------------
# SMPLify-P start


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


# ---------------------------------------------------------------------------------------------
# Checkpoints


class PareCheckpointError(ValueError):
    """A file that cannot be read safely or holds no PARE network."""


class _Inert:
    """Stand-in for a global the allow-list does not know: it can be created empty and given
    state (yacs' CfgNode, Lightning's callback classes), but calling it — how a pickle runs a
    function — is refused."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to call {self.origin} while reading a checkpoint")

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_items", []).extend(items)


class _InertDict(_Inert, dict):
    """Inert stand-in that also takes the items of a pickled dict subclass."""


class _StubbingUnpickler(AllowListUnpickler):
    """Tensors, numpy arrays and containers are rebuilt; any other name becomes inert."""

    allowed = {
        **NUMPY_ARRAYS,
        **TORCH_SAVE_CONTAINERS,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    }

    def unknown_global(self, module: str, name: str) -> Any:
        return type(name, (_InertDict,), {"origin": f"{module}.{name}", "__module__": __name__})


_stubbing_pickle_module = torch_pickle_module(_StubbingUnpickler, "mst_pare_restricted_pickle")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load without running code: weights_only first, the stubbing unpickler where that
    refuses a foreign name (the Lightning file's yacs CfgNode)."""
    path = Path(path)
    if not path.is_file():
        raise PareCheckpointError(f"{path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # weights_only refused a global: read again with foreign names stubbed
    except Exception as e:  # noqa: BLE001 - not a torch file at all: one clear message
        raise PareCheckpointError(f"cannot read {path} as a torch checkpoint: {describe_load_error(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stubbing_pickle_module)
    except Exception as e:  # noqa: BLE001
        raise PareCheckpointError(f"cannot read {path} safely: {describe_load_error(e)}") from None


def network_state(ckpt: Any, name: str = "checkpoint") -> tuple[dict[str, Tensor], int]:
    """The `backbone.*` / `head.*` tensors of a Lightning checkpoint (`state_dict` with `model.`
    prefixes), a bare state dict, or an already stripped one -> (state, number of other entries)."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise PareCheckpointError(f"{name} holds no state dict (found {type(ckpt).__name__})")
    net: dict[str, Tensor] = {}
    ignored = 0
    for key, value in state.items():
        k = key[len(LIGHTNING_PREFIX):] if isinstance(key, str) and key.startswith(LIGHTNING_PREFIX) else key
        if isinstance(k, str) and k.startswith(PREFIXES) and isinstance(value, Tensor):
            net[k] = value
        else:
            ignored += 1
    if not net:
        first = ", ".join(str(k) for k in list(state)[:5]) or "none"
        raise PareCheckpointError(
            f"{name} is not a PARE checkpoint: none of its {len(state)} entries is a `model.backbone.*` or "
            f"`model.head.*` tensor (first keys: {first})")
    return net, ignored


def load_pare_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                         strict: bool = False) -> tuple[Pare, KeyReport]:
    """The official PARE checkpoint (or a state dict in its layout) -> (Pare in eval mode, KeyReport).

    Network tensors whose name and shape match are loaded; the report names every missing,
    unexpected and mis-shaped one. `strict`: raise PareCheckpointError listing them instead.
    """
    state, ignored = network_state(read_checkpoint(path), str(path))
    net = Pare()
    report, usable = compare_state(net, state, ignored)
    if strict and not report.ok:
        raise PareCheckpointError(f"{path} does not fit the released PARE network: {report.describe()}")
    net.load_state_dict(usable, strict=False)
    return net.to(device).eval(), report
