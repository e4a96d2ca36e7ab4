"""Pose prior: VPoser v2 key layout (V02_05 snapshots load strictly), rotation helpers, and
`train_prior` learning a pose distribution (body-model vertex reconstruction + KL, as VPoser)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mst_pipeline.body.rotations import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_axis_angle
from mst_pipeline.body.smpl_file import write_model_npz
from mst_pipeline.cli import app
from mst_pipeline.fitting.prior import CheckpointError, PosePrior, VertexLoss, load_prior, save_prior, train_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small batches: one thread is faster

# VPoser v2 (V02_05) state-dict keys after removing `vp_model.`, with shapes.
V02_05 = {
    "encoder_net.1.weight": [63], "encoder_net.1.bias": [63], "encoder_net.1.running_mean": [63],
    "encoder_net.1.running_var": [63], "encoder_net.1.num_batches_tracked": [],
    "encoder_net.2.weight": [512, 63], "encoder_net.2.bias": [512],
    "encoder_net.4.weight": [512], "encoder_net.4.bias": [512], "encoder_net.4.running_mean": [512],
    "encoder_net.4.running_var": [512], "encoder_net.4.num_batches_tracked": [],
    "encoder_net.6.weight": [512, 512], "encoder_net.6.bias": [512],
    "encoder_net.7.weight": [512, 512], "encoder_net.7.bias": [512],
    "encoder_net.8.mu.weight": [32, 512], "encoder_net.8.mu.bias": [32],
    "encoder_net.8.logvar.weight": [32, 512], "encoder_net.8.logvar.bias": [32],
    "decoder_net.0.weight": [512, 32], "decoder_net.0.bias": [512],
    "decoder_net.3.weight": [512, 512], "decoder_net.3.bias": [512],
    "decoder_net.5.weight": [126, 512], "decoder_net.5.bias": [126],
}


def test_state_dict_matches_vposer_v2_and_its_parameter_count():
    sd = PosePrior().state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == V02_05
    assert sum(p.numel() for p in PosePrior().parameters()) == 936_252  # V02_05.log


def test_lightning_snapshot_loads_with_prefix_and_trainer_buffers_dropped(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"vp_model." + k: torch.randn(s, generator=g) if s else torch.tensor(7) for k, s in V02_05.items()}
    state = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}
    state["bm_train.v_template"] = torch.zeros(10, 3)
    torch.save({"state_dict": state, "epoch": 13}, tmp_path / "V02_05_epoch=13_val_loss=0.03.ckpt")
    prior = load_prior(tmp_path)  # an experiment folder: its newest snapshot
    torch.testing.assert_close(prior.decoder_net[5].weight, state["vp_model.decoder_net.5.weight"])
    out = prior.decode(torch.zeros(2, 32))
    assert out.pose_body.shape == (2, 21, 3) and out.pose_body_matrot.shape == (2, 21, 3, 3)


def test_wrong_keys_are_reported_by_name(tmp_path):
    state = {k: v for k, v in PosePrior().state_dict().items() if k != "decoder_net.5.bias"}
    state["decoder_net.9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing 1: decoder_net\.5\.bias.*unexpected 1: decoder_net\.9"):
        load_prior(tmp_path / "bad.pt")


def test_rotation_helpers_round_trip():
    aa = torch.randn(200, 3, dtype=torch.float64)
    aa = aa / aa.norm(dim=1, keepdim=True) * torch.rand(200, 1, dtype=torch.float64) * 3.1
    R = axis_angle_to_rotmat(aa)
    torch.testing.assert_close(rotmat_to_axis_angle(R), aa, atol=1e-6, rtol=1e-6)
    six = R[..., :2].reshape(200, 6)  # the first two columns, read back as a 3x2 matrix
    torch.testing.assert_close(rot6d_to_rotmat(six), R)


def _poses(n: int, seed: int) -> np.ndarray:
    """A narrow synthetic pose distribution: a fixed mean plus small noise on 21 joints."""
    rng = np.random.default_rng(seed)
    mean = np.random.default_rng(99).normal(0, 0.4, 63)
    return mean + rng.normal(0, 0.05, (n, 63))


def _rotated(joint: int, angle: float, axis: int = 0) -> torch.Tensor:
    """Rest pose [1, 21, 3, 3] with one body joint (1..21) turned by ANGLE about AXIS (0 = x)."""
    aa = torch.zeros(1, 21, 3)
    aa[0, joint - 1, axis] = angle
    return axis_angle_to_rotmat(aa)


def test_reconstruction_loss_is_the_vertex_error_not_the_rotation_error(toy):
    """Two decoded poses with the same rotation-matrix error (one joint off by 0.3 rad) cost what
    their vertices move: the elbow moves the forearm and hand, the wrist only the hand, the
    left foot (toes) only vertices outside every-4th-vertex subset of the stick figure."""
    rest = torch.zeros(1, 63)
    full = VertexLoss(toy, step=1)
    target = full.vertices(rest)
    elbow, wrist = _rotated(18, 0.3, 2), _rotated(20, 0.3, 2)  # the T-pose arm swings
    eye = torch.eye(3).expand(1, 21, 3, 3)
    assert ((elbow - eye) ** 2).sum() == pytest.approx(float(((wrist - eye) ** 2).sum()))
    assert float(full(eye, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(full(elbow, target)) > 2 * float(full(wrist, target)) > 0
    sparse = VertexLoss(toy, step=4)  # stick-figure vertices 0, 4, 8, ...: no toe
    toes = [24 + 5, 24 + 6]  # LBigToe, LSmallToe: what the left foot joint (10) moves
    assert not set(toes) & set(range(0, toy.num_vertices, 4))
    assert float(sparse(_rotated(10, 0.5), sparse.vertices(rest))) == pytest.approx(0.0, abs=1e-6)
    assert float(full(_rotated(10, 0.5), target)) > 1e-4  # the full mesh sees the toes move


def test_training_learns_the_pose_distribution(tmp_path, toy):
    """Trained on vertices, the prior reconstructs held-out poses' vertices and samples bodies
    near the training poses' (measured on vertices: the stick figure cannot see a bone's twist)."""
    torch.manual_seed(0)
    data = _poses(256, 0)
    untrained = PosePrior().eval()
    held_out = torch.as_tensor(_poses(64, 1), dtype=torch.float32)
    loss = VertexLoss(toy, step=1)
    target = loss.vertices(held_out)
    mean = loss.vertices(torch.as_tensor(data.mean(0, keepdims=True), dtype=torch.float32))

    def measure(prior: PosePrior) -> tuple[float, float]:
        with torch.no_grad():
            rec = float(loss(prior.reconstruct(held_out).pose_body_matrot, target))
            samples = loss.vertices(prior.sample(128, torch.Generator().manual_seed(1)).pose_body.reshape(128, 63))
            return rec, float((samples - mean).abs().mean())

    rec_before, spread_before = measure(untrained)
    prior, stats = train_prior(data, epochs=20, batch_size=128, lr=2e-3, seed=0, body=toy, vertex_step=1, min_steps=0,
                               mirror=False)  # a one-sided distribution: sampled near its mean
    rec_after, spread_after = measure(prior)
    assert stats.num_vertices == toy.num_vertices
    assert rec_after < 0.3 * rec_before, (rec_before, rec_after)
    assert spread_after < 0.5 * spread_before, (spread_before, spread_after)
    path = save_prior(prior, tmp_path / "prior.ckpt")
    again = load_prior(path)
    torch.testing.assert_close(again.decoder_net[0].weight, prior.decoder_net[0].weight)


def test_early_rotation_term_fixes_the_twists_vertices_cannot_see(toy):
    """Eq. 1 compares θ with θ̂ as rotations, twists included; vertices alone leave a bone's twist
    where initialisation put it, so VPoser's early rotation term must be there."""
    data = _poses(256, 0)
    held_out = torch.as_tensor(_poses(64, 1), dtype=torch.float32)

    def rotation_error(rot_weight: float) -> float:
        prior, _ = train_prior(data, epochs=20, batch_size=128, lr=2e-3, seed=0, body=toy, vertex_step=1, min_steps=0,
                               rot_weight=rot_weight)
        with torch.no_grad():
            return float((prior.reconstruct(held_out).pose_body.reshape(64, 63) - held_out).abs().mean())

    with_term, without = rotation_error(2.0), rotation_error(0.0)
    assert with_term < 0.5 * without, (with_term, without)


def test_fit_prior_cli_from_a_pose_file(tmp_path, toy):
    np.savez(tmp_path / "poses.npz", pose=np.concatenate([np.zeros((64, 3)), _poses(64, 2), np.zeros((64, 6))], 1))
    write_model_npz(toy.data(), tmp_path / "toy.npz")
    result = CliRunner().invoke(app, ["fit-prior", str(tmp_path / "poses.npz"), "--out", str(tmp_path / "p.ckpt"),
                                      "--epochs", "2", "--batch-size", "32", "--body-model", str(tmp_path / "toy.npz"),
                                      "--vertex-step", "1", "--min-steps", "10"])
    assert result.exit_code == 0, result.output
    assert "vertex error" in result.output
    assert load_prior(tmp_path / "p.ckpt").latent_dim == 32
    meta = torch.load(tmp_path / "p.ckpt", weights_only=True)["meta"]
    assert meta["loss"] == "vertices" and meta["num_vertices"] == toy.num_vertices
    assert meta["mirrored"] is True and meta["num_poses"] == 64 and "mirror images" in result.output
    # 128 poses at batch 32: 4 steps per epoch, so --min-steps 10 takes 3 epochs, not 2
    assert meta["epochs"] == 3 and meta["steps"] == 12 and "3 epochs (12 steps)" in result.output
    result = CliRunner().invoke(app, ["fit-prior", str(tmp_path / "poses.npz"), "--out", str(tmp_path / "q.ckpt"),
                                      "--epochs", "1", "--body-model", str(tmp_path / "toy.npz"), "--no-mirror",
                                      "--min-steps", "0"])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "q.ckpt", weights_only=True)["meta"]["mirrored"] is False


def test_mirror_pose_reflects_the_body_in_its_sagittal_plane(toy):
    """The mirrored pose's joints are the original's reflected (x -> -x) with left and right swapped,
    on the (left-right symmetric) stick figure; twice mirrored is the original; the prior's 63-value
    layout and the body pose's 69 mirror as the full 72 do."""
    from mst_pipeline.body.poses import MIRROR_ORDER, mirror_pose

    pose = np.random.default_rng(3).normal(0, 0.4, (5, 72))
    pose[:, 0] += np.pi  # facing the camera, as fitted poses are

    def joints(p: np.ndarray) -> np.ndarray:
        p = torch.as_tensor(p, dtype=torch.float32)
        return toy(betas=torch.zeros(len(p), toy.num_betas), global_orient=p[:, :3], body_pose=p[:, 3:]).joints[:, :24]

    mirrored = mirror_pose(pose)
    reflected = joints(pose).numpy()[:, list(MIRROR_ORDER)] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(joints(mirrored).numpy(), reflected, atol=1e-5)
    assert np.abs(joints(mirrored).numpy() - joints(pose).numpy()).max() > 0.05  # the pose did change
    np.testing.assert_allclose(mirror_pose(mirrored), pose, atol=1e-12)
    np.testing.assert_allclose(mirror_pose(pose[:, 3:]), mirrored[:, 3:])
    np.testing.assert_allclose(mirror_pose(pose[:, 3:66]), mirrored[:, 3:66])
    with pytest.raises(ValueError, match="72"):
        mirror_pose(pose[:, :60])


def test_mirrored_training_leaves_no_sideways_bias(toy):
    """Trained on poses that all bend the spine to one side, the prior samples that lean; trained
    with their mirror images as well (the default), its samples lean neither way on average."""
    lean = 0.3
    data = np.random.default_rng(4).normal(0, 0.05, (256, 63))
    for joint in ("spine1", "spine2", "spine3"):  # sideways: rotations about the model's z axis
        data[:, 3 * (_JOINT[joint] - 1) + 2] += lean

    def mean_lean(mirror: bool) -> float:
        prior, stats = train_prior(data, epochs=60, batch_size=128, lr=2e-3, seed=0, body=toy, vertex_step=1,
                                   min_steps=0, mirror=mirror)
        assert stats.mirrored == mirror and stats.num_poses == 256
        with torch.no_grad():
            s = prior.sample(512, torch.Generator().manual_seed(0)).pose_body.reshape(512, 21, 3)
        return float(s[:, [_JOINT[j] - 1 for j in ("spine1", "spine2", "spine3")], 2].mean())

    biased, mirrored = mean_lean(False), mean_lean(True)
    assert biased > 0.6 * lean, biased
    assert abs(mirrored) < 0.15 * lean, mirrored


_JOINT = {"spine1": 3, "spine2": 6, "spine3": 9}  # SMPL joint indices


def test_symmetric_reconstruction_mirrors_with_the_pose():
    """θ̂ made symmetric: the mirror image of a pose gets exactly the mirror image of its θ̂, which a
    network's own reconstruction does not (an untrained one here, as asymmetric as any)."""
    from mst_pipeline.fitting.prior import mirror_body_pose

    torch.manual_seed(0)
    prior = PosePrior().eval()
    theta = 0.3 * torch.randn(4, 21, 3)
    mirrored = mirror_body_pose(theta)
    with torch.no_grad():
        hat = prior.reconstruct_symmetric(theta.reshape(4, 63))
        hat_mirrored = prior.reconstruct_symmetric(mirrored.reshape(4, 63))
        plain = prior.reconstruct(theta.reshape(4, 63)).pose_body.reshape(4, 21, 3)
        plain_mirrored = prior.reconstruct(mirrored.reshape(4, 63)).pose_body.reshape(4, 21, 3)
    torch.testing.assert_close(hat_mirrored, mirror_body_pose(hat), atol=1e-5, rtol=0)
    assert (plain_mirrored - mirror_body_pose(plain)).abs().max() > 1e-2
    from mst_pipeline.body.poses import mirror_pose

    np.testing.assert_allclose(mirrored.reshape(4, 63).numpy(), mirror_pose(theta.reshape(4, 63).numpy()), atol=1e-6)


def test_a_small_set_trains_at_least_min_steps_steps(toy):
    """A set no larger than a batch takes one step per epoch; min_steps adds epochs until it has taken
    that many steps (and a set whose epochs already take them is not extended)."""
    data = _poses(10, 5)
    _, short = train_prior(data, epochs=3, seed=0, body=toy, vertex_step=1, min_steps=0)
    _, extended = train_prior(data, epochs=3, seed=0, body=toy, vertex_step=1, min_steps=7)
    _, enough = train_prior(data, epochs=3, batch_size=4, seed=0, body=toy, vertex_step=1, min_steps=7)
    assert (short.epochs, short.steps) == (3, 3)  # 20 poses with their mirror images: one batch
    assert (extended.epochs, extended.steps) == (7, 7)
    assert (enough.epochs, enough.steps) == (3, 15)  # batches of 4: five steps per epoch



def _prior_bending_rest(bend: float, gain: float) -> PosePrior:
    """A hand-made prior whose typical pose (the latent origin's) bends spine1 forward by BEND and
    encodes back to the origin, while the rest pose encodes to z0 = BEND and decodes bent by
    atan(tan BEND + GAIN · BEND): a prior that reproduces what it learnt and guesses elsewhere."""
    prior = PosePrior().eval()
    spine1_x = 3 * 2  # the prior's joint 2 (spine1), its x (forward) axis-angle component
    lift = 10.0  # keeps the one hidden unit used positive through the LeakyReLUs
    with torch.no_grad():
        for m in prior.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
        enc1, enc2, enc3, head = prior.encoder_net[2], prior.encoder_net[6], prior.encoder_net[7], prior.encoder_net[8]
        enc1.weight[0, spine1_x], enc1.bias[0] = 1.0, lift  # h = θ_spine1,x + lift
        enc2.weight[0, 0] = enc3.weight[0, 0] = 1.0
        head.mu.weight[0, 0], head.mu.bias[0] = -1.0, lift + bend  # z0 = bend − θ_spine1,x
        dec1, dec2, last = prior.decoder_net[0], prior.decoder_net[3], prior.decoder_net[5]
        dec1.weight[0, 0], dec1.bias[0] = 1.0, lift
        dec2.weight[0, 0] = 1.0
        rest6d = torch.eye(3)[:, :2].reshape(-1).repeat(21)  # the 6-D representation: a 3×2 matrix, row by row
        last.bias.copy_(rest6d)
        col2_z = 6 * 2 + 5  # spine1's second column, z: (0, 1, tan angle) is a bend about x
        last.bias[col2_z] = math.tan(bend) - gain * lift
        last.weight[col2_z, 0] = gain
    return prior


def test_a_face_crops_theta_hat_is_the_priors_typical_pose_not_its_guess_at_rest():
    """Where no body joint is seen (a face crop), θ̂ is the prior's typical pose, which a prior
    reproduces; the rest pose, far from the poses a prior learns from, decodes to whatever its
    training made of it, and the old completion (unseen joints at rest) took that guess."""
    from mst_pipeline.fitting.energy import prior_target

    bend = 0.2
    prior = _prior_bending_rest(bend, gain=3.0)
    invisible = torch.ones(2, 21)
    with torch.no_grad():
        typical = prior.typical_pose()
        hat = prior_target(prior, 0.3 * torch.randn(2, 21, 3), invisible, symmetric=True)
        at_rest = prior.reconstruct_symmetric(torch.zeros(1, 63))
    assert typical[2, 0].item() == pytest.approx(bend, abs=1e-4)
    assert typical.abs().sum().item() == pytest.approx(bend, abs=1e-3)  # nothing else bent
    torch.testing.assert_close(hat, typical.expand_as(hat), atol=1e-3, rtol=0)
    assert at_rest[0, 2, 0].item() > 2 * bend  # the rest pose's guess: atan(tan 0.2 + 0.6)

