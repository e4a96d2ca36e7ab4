"""Pose prior of SMPLify-P: a VAE with VPoser v2's architecture (paper §3.1, App. B).

21 body joints (SMPL joints 1..21, axis-angle, [B, 63]) -> latent 32 -> 21 rotations through the
continuous 6-D representation. The module and parameter names follow VPoser v2, so the official
V02_05 snapshot loads with `load_prior` (keys `vp_model.*`, trainer buffers dropped), and a prior
trained here by `mst fit-prior` (`train_prior`: body-model vertex reconstruction + KL on the
full-body set's fitted poses, as VPoser trains) is saved in the same layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mst_pipeline.body.poses import MIRROR_ORDER
from mst_pipeline.body.rotations import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_axis_angle
from mst_pipeline.fitting import MIN_STEPS
from mst_pipeline.fitting.state_keys import compare_state
from uh_train.format.atomic import atomic_path

NUM_BODY_JOINTS = 21
LATENT_DIM = 32
HIDDEN = 512
CHECKPOINT_PREFIX = "vp_model."


# ---------------------------------------------------------------------------------------------
# VPoser-v2-architecture VAE


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class _NormalHead(nn.Module):
    """Latent posterior N(mu, softplus(logvar(x))) — VPoser v2 uses softplus for the scale."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.mu = nn.Linear(n_in, n_out)
        self.logvar = nn.Linear(n_in, n_out)

    def forward(self, x: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mu(x), F.softplus(self.logvar(x)))


class _Rot6d(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return rot6d_to_rotmat(x.reshape(x.shape[0], -1, 6))


@dataclass
class PriorOutput:
    """pose_body [B, 21, 3] axis-angle, pose_body_matrot [B, 21, 3, 3]."""

    pose_body: Tensor
    pose_body_matrot: Tensor


class PosePrior(nn.Module):
    """VPoser v2 layout: encoder_net.{1 BN, 2 Linear, 4 BN, 6/7 Linear, 8 Normal head},
    decoder_net.{0, 3, 5 Linear} (see the indices below; dropout 0.1, LeakyReLU 0.01)."""

    def __init__(self, num_neurons: int = HIDDEN, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        n_in = NUM_BODY_JOINTS * 3
        self.latent_dim = latent_dim
        self.encoder_net = nn.Sequential(
            _Flatten(), nn.BatchNorm1d(n_in), nn.Linear(n_in, num_neurons), nn.LeakyReLU(),
            nn.BatchNorm1d(num_neurons), nn.Dropout(0.1), nn.Linear(num_neurons, num_neurons),
            nn.Linear(num_neurons, num_neurons), _NormalHead(num_neurons, latent_dim),
        )
        self.decoder_net = nn.Sequential(
            nn.Linear(latent_dim, num_neurons), nn.LeakyReLU(), nn.Dropout(0.1),
            nn.Linear(num_neurons, num_neurons), nn.LeakyReLU(), nn.Linear(num_neurons, NUM_BODY_JOINTS * 6),
            _Rot6d(),
        )

    def encode(self, pose_body: Tensor) -> torch.distributions.Normal:
        """pose_body [B, 63] (or [B, 21, 3]) axis-angle -> posterior over the latent [B, 32]."""
        return self.encoder_net(pose_body)

    def decode(self, z: Tensor) -> PriorOutput:
        """z [B, 32] -> PriorOutput (axis-angle [B, 21, 3] and matrices [B, 21, 3, 3])."""
        R = self.decoder_net(z)
        return PriorOutput(pose_body=rotmat_to_axis_angle(R), pose_body_matrot=R)

    def reconstruct(self, pose_body: Tensor) -> PriorOutput:
        """θ̂ of Eq. 1: the decoded posterior mean of a pose [B, 63]."""
        return self.decode(self.encode(pose_body).mean)

    def reconstruct_symmetric(self, pose_body: Tensor) -> Tensor:
        """θ̂ made left-right symmetric: the mean of the reconstruction of a pose [B, 63] and the mirror
        image of its mirror image's reconstruction, axis-angle [B, 21, 3]. A mirrored pose then gets
        exactly the mirrored θ̂, and an upright one an upright θ̂, however the network was trained.
        One pass over the batch and its mirror images (eval-mode batch norm treats them independently)."""
        theta = pose_body.reshape(len(pose_body), NUM_BODY_JOINTS, 3)
        both = self.reconstruct(torch.cat([theta, mirror_body_pose(theta)]).reshape(-1, NUM_BODY_JOINTS * 3))
        own, other = both.pose_body.reshape(2, len(theta), NUM_BODY_JOINTS, 3)
        return 0.5 * (own + mirror_body_pose(other))

    def typical_pose(self) -> Tensor:
        """The pose at the latent space's origin (where N(0, I) is densest), made left-right
        symmetric, axis-angle [21, 3]: the prior's guess for a body of which nothing is seen."""
        dev = next(self.parameters()).device
        theta = self.decode(torch.zeros(1, self.latent_dim, device=dev)).pose_body.reshape(NUM_BODY_JOINTS, 3)
        return 0.5 * (theta + mirror_body_pose(theta))

    def sample(self, n: int, generator: torch.Generator | None = None) -> PriorOutput:
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=dev)
        return self.decode(z)


def mirror_body_pose(theta: Tensor) -> Tensor:
    """The left-right mirror image of the prior's 21 body joints [..., 21, 3] (axis-angle), as
    `mst_pipeline.body.poses.mirror_pose`: left and right joints swap, (a, b, c) -> (a, -b, -c)."""
    sign = theta.new_tensor([1.0, -1.0, -1.0])
    return theta[..., _MIRROR_BODY, :] * sign


_MIRROR_BODY = [MIRROR_ORDER[1 + k] - 1 for k in range(NUM_BODY_JOINTS)]  # joints 1..21 among themselves


# ---------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(ValueError):
    """A prior checkpoint that does not match the architecture; the message lists the keys."""


def load_prior(path: str | os.PathLike, device: str | torch.device = "cpu") -> PosePrior:
    """Load a VPoser v2 snapshot (e.g. V02_05's `snapshots/*.ckpt`) or a `mst fit-prior` file.

    Tensors only (`weights_only=True`); `state_dict` of a Lightning checkpoint is used when
    present, the `vp_model.` prefix is removed and the trainer's body-model buffers (`bm_train.*`)
    are dropped; every other key must match exactly.
    """
    path = Path(path)
    if path.is_dir():  # an experiment folder: newest snapshot, as VPoser's own loader does
        snaps = sorted(path.glob("**/*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not snaps:
            raise CheckpointError(f"{path} holds no snapshots/*.ckpt")
        path = snaps[-1]
    if not path.is_file():
        raise CheckpointError(f"prior checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable or unsafe pickle: one clear message
        from uh_train.format.unpickle import describe_load_error

        raise CheckpointError(f"cannot read prior checkpoint {path}: {describe_load_error(e)}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict")
    state = {(k[len(CHECKPOINT_PREFIX):] if k.startswith(CHECKPOINT_PREFIX) else k): v
             for k, v in state.items() if not k.startswith("bm_train.")}
    hidden = int(state["decoder_net.0.weight"].shape[0]) if "decoder_net.0.weight" in state else HIDDEN
    latent = int(state["decoder_net.0.weight"].shape[1]) if "decoder_net.0.weight" in state else LATENT_DIM
    prior = PosePrior(num_neurons=hidden, latent_dim=latent)
    load_strict(prior, state, str(path))
    return prior.to(device).eval()


def load_strict(module: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped key in one error."""
    report, _ = compare_state(module, state)
    if not report.ok:
        raise CheckpointError(f"{name} does not fit {type(module).__name__}: {report.describe()}")
    module.load_state_dict(state, strict=True)


def save_prior(prior: PosePrior, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save in VPoser's snapshot layout ({'state_dict': {'vp_model.' + key: tensor}}), atomically."""
    path = Path(path)
    state = {CHECKPOINT_PREFIX + k: v.detach().cpu() for k, v in prior.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": dict(meta or {})}, tmp)
    return path


# ---------------------------------------------------------------------------------------------
# Training (`mst fit-prior`, App. B: vertex reconstruction + KL, as VPoser)

VERTEX_STEP = 16  # default: every 16th vertex of the mesh enters the reconstruction loss
REC_WEIGHT = 4.0  # VPoser v2 (V02_05): 4 · L1 vertex error + 0.005 · KL
KL_WEIGHT = 5e-3
# VPoser v2 also matches the rotations (in its first 15 epochs): vertices do not see a joint's twist
# about its own bone, so without this term the decoder's twists stay wherever initialisation put them.
# We keep it for every epoch: measured on the demo, it halves the face-crop alignment error of a
# prior that drops it after 15 epochs (docs/mst.md, "Pose prior").
ROT_WEIGHT = 2.0


class VertexLoss(nn.Module):
    """App. B's reconstruction term: the mean L1 distance between the vertices of the mean
    body posed by the decoded rotations and by the input pose (global orientation zero), as
    VPoser trains. The vertices are a subset for speed: every `step`-th vertex of the mesh (1: all);
    the model keeps its joint regressor's vertices too, which the joints need, but only the
    subset is compared.

    body: a `BodyModel`. forward(R [B, 21, 3, 3], target [B, V', 3]) -> scalar; `vertices(pose)`
    gives the target for axis-angle body poses [B, 63].
    """

    def __init__(self, body, step: int = VERTEX_STEP) -> None:
        super().__init__()
        if step < 1:
            raise ValueError(f"vertex step must be at least 1, got {step}")
        from mst_pipeline.body.model import BodyModel
        from mst_pipeline.body.smpl_file import BodyModelData

        d = body.data()
        sample = np.arange(0, len(d.v_template), step)
        keep = np.union1d(np.union1d(np.flatnonzero(np.abs(d.J_regressor).sum(0) > 0), d.extra_vertex_ids), sample)
        self.body = BodyModel(BodyModelData(
            v_template=d.v_template[keep], shapedirs=d.shapedirs[keep], posedirs=d.posedirs[keep],
            J_regressor=d.J_regressor[:, keep], weights=d.weights[keep], parents=d.parents,
            faces=np.zeros((0, 3), np.int64), extra_vertex_ids=np.searchsorted(keep, d.extra_vertex_ids),
            attribution=d.attribution,
        )).to(body.v_template.device)
        self.register_buffer("ids", torch.as_tensor(np.searchsorted(keep, sample), dtype=torch.long,
                                                    device=body.v_template.device))

    @property
    def num_vertices(self) -> int:
        return int(self.ids.numel())

    def vertices(self, pose_body: Tensor) -> Tensor:
        """Compared vertices [B, V', 3] of the mean body posed by pose_body [B, 63] (or [B, 21, 3])."""
        B = pose_body.shape[0]
        pose = torch.cat([pose_body.reshape(B, -1), pose_body.new_zeros(B, 6)], 1)  # hands at rest
        return self.body(body_pose=pose).vertices[:, self.ids]

    def forward(self, R: Tensor, target: Tensor) -> Tensor:
        return (self.vertices(rotmat_to_axis_angle(R).reshape(R.shape[0], -1)) - target).abs().mean()


@dataclass
class PriorTrainingStats:
    epochs: int
    final_reconstruction: float  # mean L1 vertex error (model units, metres), not weighted
    final_kl: float
    num_poses: int
    num_vertices: int = 0  # vertices compared by the reconstruction term
    mirrored: bool = False  # trained on the poses and their mirror images (twice as many)
    steps: int = 0  # optimiser steps taken (`train_prior`'s min_steps can make more than the epochs' steps)


def train_prior(poses: np.ndarray, epochs: int = 100, batch_size: int = 256, lr: float = 1e-3,
                kl_weight: float = KL_WEIGHT, rec_weight: float = REC_WEIGHT, seed: int = 0, device: str = "cpu",
                prior: PosePrior | None = None, body=None, vertex_step: int = VERTEX_STEP,
                rot_weight: float = ROT_WEIGHT, rot_epochs: int | None = None, mirror: bool = True,
                log=None, min_steps: int = MIN_STEPS) -> tuple[PosePrior, PriorTrainingStats]:
    """Fit the VAE to body poses (App. B). poses: [N, 63] (21 joints) or [N, 72] (SMPL; joints 1..21
    used). body: the `BodyModel` whose vertices the loss compares (default: the open model).

    Loss, as VPoser's: rec_weight · mean L1 vertex error of the decoded pose (`VertexLoss`) +
    kl_weight · KL(q(z|θ) ‖ N(0, I)) + rot_weight · the mean squared rotation-matrix error (VPoser's
    rotation term; in the first `rot_epochs` epochs only when given, as VPoser; every epoch by default).

    min_steps: train for more epochs than EPOCHS when those would take fewer optimiser steps (a small
    set; `MIN_STEPS`); `stats.epochs` and `stats.steps` say what was run.

    mirror: train on every pose and its left-right mirror image (`mst_pipeline.body.poses.mirror_pose`).
    People are as likely to lean, turn or raise an arm to the left as to the right; a set of a few
    dozen fitted poses is not, and a prior learnt from it alone completes an unseen spine with the
    set's sideways bias, which moves a face crop sideways in full-body space (docs/mst.md).
    """
    poses = np.asarray(poses, dtype=np.float32)
    if poses.ndim != 2 or poses.shape[1] not in (63, 72):
        raise ValueError(f"poses must be [N, 63] or [N, 72], got {list(poses.shape)}")
    if poses.shape[1] == 72:
        poses = poses[:, 3:66]
    if len(poses) < 2:
        raise ValueError("need at least 2 poses to train the prior")
    num_poses = len(poses)
    if mirror:
        from mst_pipeline.body.poses import mirror_pose

        poses = np.concatenate([poses, mirror_pose(poses).astype(np.float32)])
    if body is None:
        from mst_pipeline.body import load_body_model

        body = load_body_model(None)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prior = (prior or PosePrior()).to(device).train()
    loss_fn = VertexLoss(body.to(device), vertex_step)
    data = torch.as_tensor(poses, device=device)
    with torch.no_grad():  # the targets never change: pose them once
        target = torch.cat([loss_fn.vertices(data[i:i + 1024]) for i in range(0, len(data), 1024)])
        target_R = axis_angle_to_rotmat(data.reshape(-1, 3)).reshape(len(data), -1, 3, 3)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    bs = min(batch_size, len(data))
    per_epoch = len(data) // bs
    epochs = max(epochs, -(-min_steps // per_epoch))  # a small set: enough epochs for min_steps steps
    rec = kl = torch.zeros(())
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=g).to(device)
        for i in range(0, len(data) - bs + 1, bs):
            idx = order[i:i + bs]
            q = prior.encode(data[idx])
            R = prior.decoder_net(q.rsample())
            rec = loss_fn(R, target[idx])
            prior_dist = torch.distributions.Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
            kl = torch.distributions.kl_divergence(q, prior_dist).sum(-1).mean()
            loss = rec_weight * rec + kl_weight * kl
            if rot_weight > 0 and (rot_epochs is None or epoch < rot_epochs):
                loss = loss + rot_weight * (R.reshape(target_R[idx].shape) - target_R[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if log is not None:
            log(epoch, float(rec), float(kl))
    prior.eval()
    return prior, PriorTrainingStats(epochs, float(rec.detach()), float(kl.detach()), num_poses,
                                     loss_fn.num_vertices, mirror, epochs * per_epoch)
