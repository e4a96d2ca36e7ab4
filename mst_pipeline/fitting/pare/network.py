"""PARE's network, the released configuration (`hrnet_w32-conv` backbone, part-segmentation
attention, one locally connected 6-D rotation regressor per joint), with the official checkpoint's
parameter names (`mst_pipeline.fitting.pare.checkpoint` loads it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mst_pipeline.body.rotations import rot6d_to_rotmat, rotmat_to_axis_angle
from mst_pipeline.fitting.pare.crops import crop_person

NUM_JOINTS = 24
NUM_BETAS = 10
HRNET_W32 = (32, 64, 128, 256)  # branch channels of stages 2..4
NUM_MODULES = {2: 1, 3: 4, 4: 3}  # high-resolution modules per stage


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
