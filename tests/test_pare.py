"""PARE as SMPLify-P's start: the network has the released checkpoint's key layout, the Lightning
file loads without running its pickle, the crop camera moves to the full image exactly, and
`mst align --pare` runs end to end."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from test_align import write_dataset
from typer.testing import CliRunner

from mst_pipeline.body.rotations import axis_angle_to_rotmat, rot6d_to_rotmat
from mst_pipeline.body.smpl_file import write_model_npz
from mst_pipeline.cli import app
from mst_pipeline.fitting.pare.checkpoint import PareCheckpointError, load_pare_checkpoint
from mst_pipeline.fitting.pare.crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_RES,
    KEYPOINT_BOX_SCALE,
    bbox_from_keypoints,
    crop_cam_to_full_image,
    crop_person,
)
from mst_pipeline.fitting.pare.network import Pare, PareOutput, part_attention
from mst_pipeline.fitting.pare.start import pare_start
from mst_pipeline.fitting.targets import fitting_joints, project
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.space import normalised_to_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CfgNode(dict):
    """Stands for yacs' CfgNode in a Lightning checkpoint's hyper_parameters: a dict subclass with
    its own attributes, i.e. a global that weights_only refuses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["_immutable"] = False


class RunsCode:
    """Unpickling this creates a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


EXTRA_KEYS = {"model.smpl.smpl.betas": torch.zeros(1, 10), "model.smpl.smpl.faces_tensor": torch.zeros(5, 3),
              "smpl_native.v_template": torch.zeros(4, 3), "J_regressor": torch.zeros(24, 4)}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Pare().eval()


@pytest.fixture(scope="module")
def lightning_file(net, tmp_path_factory):
    """A checkpoint in the official Lightning layout, with SMPL buffers and pickled hyper_parameters."""
    path = tmp_path_factory.mktemp("pare") / "pare_checkpoint.ckpt"
    state = {"model." + k: v for k, v in net.state_dict().items()}
    state.update(EXTRA_KEYS)
    hparams = CfgNode(METHOD="pare", PARE=CfgNode(BACKBONE="hrnet_w32-conv", NUM_FEATURES_SMPL=64))
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.1.8", "state_dict": state,
                "hyper_parameters": hparams}, path)
    return path


def rotation(rng):
    q = rng.normal(size=4)
    return axis_angle_to_rotmat(torch.as_tensor(q[1:] / np.linalg.norm(q[1:]) * rng.uniform(0.1, 3.0)))


# ---------------------------------------------------------------------------------------------
# Layout


def test_state_dict_has_the_released_checkpoint_layout(net):
    sd = net.state_dict()
    backbone = [k for k in sd if k.startswith("backbone.")]
    head = [k for k in sd if k.startswith("head.")]
    assert (len(backbone), len(head), len(sd)) == (1868, 37, 1905)
    expected = {  # the released PARE checkpoint's shapes (docs/mst.md, "PARE start")
        "backbone.conv1.weight": [64, 3, 3, 3], "backbone.layer1.0.downsample.0.weight": [256, 64, 1, 1],
        "backbone.layer1.3.conv3.weight": [256, 64, 1, 1],
        "backbone.transition1.0.0.weight": [32, 256, 3, 3], "backbone.transition1.1.0.0.weight": [64, 256, 3, 3],
        "backbone.transition2.2.0.0.weight": [128, 64, 3, 3], "backbone.transition3.3.0.0.weight": [256, 128, 3, 3],
        "backbone.stage2.0.branches.1.3.conv2.weight": [64, 64, 3, 3],
        "backbone.stage3.3.fuse_layers.0.2.0.weight": [32, 128, 1, 1],
        "backbone.stage4.2.fuse_layers.3.0.1.0.weight": [32, 32, 3, 3],
        "backbone.stage4.2.fuse_layers.3.0.2.0.weight": [256, 32, 3, 3],
        "backbone.stage4.2.fuse_layers.2.1.0.1.running_var": [128],
        "backbone.final_layer.weight": [24, 32, 1, 1], "backbone.final_layer.bias": [24],
        "backbone.upsample_stage_2.1.weight": [64, 64, 3, 3], "backbone.upsample_stage_3.5.weight": [128, 128, 3, 3],
        "backbone.upsample_stage_4.9.weight": [256, 256, 3, 3], "backbone.upsample_stage_4.10.num_batches_tracked": [],
        "head.temperature": [], "head.init_pose": [1, 144], "head.init_shape": [1, 10], "head.init_cam": [1, 3],
        "head.keypoint_deconv_layers.0.weight": [128, 480, 3, 3], "head.keypoint_deconv_layers.4.running_mean": [128],
        "head.smpl_deconv_layers.3.weight": [128, 128, 3, 3],
        "head.keypoint_final_layer.weight": [25, 128, 1, 1], "head.smpl_final_layer.bias": [64],
        "head.shape_mlp.weight": [10, 1536], "head.cam_mlp.weight": [3, 1536],
        "head.pose_mlp.weight": [1, 6, 128, 24, 1, 1],
    }
    assert {k: list(sd[k].shape) for k in expected} == expected
    # None entries keep the official indices: no transition for existing branches, no self-fuse.
    assert not any(k.startswith(("backbone.transition2.0", "backbone.transition3.1")) for k in sd)
    assert not any(".fuse_layers.1.1." in k for k in sd) and "head.pose_mlp.bias" not in sd


def test_forward_gives_documented_shapes_and_proper_rotations(net):
    x = torch.randn(1, 3, IMG_RES, IMG_RES)
    with torch.no_grad():
        features = net.backbone(x)
        rot6d, betas, cam, segm = net.head(features)
        out = net(x)
    assert features.shape == (1, 480, 56, 56) and segm.shape == (1, 25, 56, 56) and rot6d.shape == (1, 24, 6)
    assert out.rotmat.shape == (1, 24, 3, 3) and out.pose.shape == (1, 72)
    assert out.betas.shape == (1, 10) and out.cam.shape == (1, 3)
    R = out.rotmat.double()
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(1, 24, dtype=R.dtype), atol=1e-5)
    assert torch.allclose(axis_angle_to_rotmat(out.pose.view(1, 24, 3).double()), R, atol=1e-4)


def test_rot6d_reads_the_first_two_columns_like_pare():
    rng = np.random.default_rng(1)
    R = torch.stack([rotation(rng) for _ in range(5)]).float()
    six = R[..., :2].reshape(5, 6)  # PARE: x.reshape(-1, 3, 2), a1 = [:, :, 0], a2 = [:, :, 1]
    assert torch.allclose(rot6d_to_rotmat(six), R, atol=1e-5)


def test_part_attention_pools_each_part_where_its_logits_peak():
    torch.manual_seed(2)
    feats = torch.randn(1, 7, 5, 6)
    segm = torch.zeros(1, 3, 5, 6)
    peaks = [(0, 0), (4, 5), (2, 3)]
    for p, (y, x) in enumerate(peaks):
        segm[0, p, y, x] = 50.0
    pooled = part_attention(feats, segm)
    assert pooled.shape == (1, 7, 3)
    for p, (y, x) in enumerate(peaks):
        assert torch.allclose(pooled[0, :, p], feats[0, :, y, x], atol=1e-5)
    flat = part_attention(feats, torch.zeros(1, 3, 5, 6))  # uniform logits: the mean
    assert torch.allclose(flat[0, :, 1], feats[0].mean((1, 2)), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_lightning_checkpoint_loads_without_its_pickled_config(net, lightning_file):
    with pytest.raises(pickle.UnpicklingError):  # the case the stubbing reader is for
        torch.load(lightning_file, weights_only=True)
    loaded, report = load_pare_checkpoint(lightning_file, "cpu", strict=True)
    assert report.ok and report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.loaded == 1905 and report.ignored == len(EXTRA_KEYS)
    ours, theirs = net.state_dict(), loaded.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(1, 3, IMG_RES, IMG_RES)
    with torch.no_grad():
        assert torch.allclose(loaded(x).cam, net(x).cam)


def test_stripped_state_dict_loads_and_defects_are_reported_by_name(net, tmp_path):
    plain = tmp_path / "stripped.pt"
    torch.save(net.state_dict(), plain)  # weights_only reads it directly
    assert load_pare_checkpoint(plain)[1].ok

    state = {"model." + k: v for k, v in net.state_dict().items()}
    del state["model.head.cam_mlp.weight"]
    state["model.head.shape_mlp.bias"] = torch.zeros(11)
    state["model.head.fc1.weight"] = torch.zeros(1024, 10)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, bad)
    loaded, report = load_pare_checkpoint(bad)
    assert report.missing == ["head.cam_mlp.weight"] and report.unexpected == ["head.fc1.weight"]
    assert report.mismatched == ["head.shape_mlp.bias: [11] vs [10]"] and not report.ok
    assert torch.equal(loaded.head.pose_mlp.weight, net.head.pose_mlp.weight)  # the matching keys still load
    with pytest.raises(PareCheckpointError, match=r"missing 1: head\.cam_mlp\.weight.*unexpected 1: head\.fc1"):
        load_pare_checkpoint(bad, strict=True)


def test_wrong_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(PareCheckpointError, match="cannot read") as unreadable:
        load_pare_checkpoint(text)
    assert "weights_only" not in str(unreadable.value) and "\n" not in str(unreadable.value)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"vp_model.encoder_net.1.weight": torch.zeros(3)}}, other)
    with pytest.raises(PareCheckpointError, match=r"not a PARE checkpoint.*vp_model\.encoder_net\.1\.weight"):
        load_pare_checkpoint(other)
    with pytest.raises(PareCheckpointError, match="not a file"):
        load_pare_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(net, tmp_path):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(RunsCode(control)))  # a plain unpickler does run it
    assert control.exists()
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.head.cam_mlp.bias": torch.zeros(3)}, "callbacks": RunsCode(marker)}, path)
    with pytest.raises(PareCheckpointError, match=r"refusing to call (builtins|io)\.open") as refused:
        load_pare_checkpoint(path)
    assert not marker.exists()
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)  # no advice to load unsafely


# ---------------------------------------------------------------------------------------------
# Crops and cameras


def test_crop_camera_projects_to_the_same_pixels_in_the_full_image():
    rng = np.random.default_rng(3)
    w, h = 640, 480
    X = torch.as_tensor(rng.normal(0, 0.5, (4, 30, 3)), dtype=torch.float64)
    cam = np.column_stack([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.2, (4, 2))])
    bbox = np.column_stack([rng.uniform(0, w, 4), rng.uniform(0, h, 4), rng.uniform(50, 700, 4)])
    u_crop = project(X, torch.as_tensor(cam)).numpy()
    px_crop = bbox[:, None, :2] + u_crop * bbox[:, None, 2:] / 2  # the crop covers c ± side/2
    full = crop_cam_to_full_image(cam, bbox, (w, h))
    px_full = normalised_to_pixels(project(X, torch.as_tensor(full)).numpy(), w, h)
    assert np.abs(px_crop - px_full).max() < 1e-9
    assert np.allclose(full[:, 0], cam[:, 0] * bbox[:, 2] / w)  # scale: crop side over L = max(w, h)


def test_crop_samples_the_box_and_normalises_like_imagenet():
    h, w = 300, 400
    image = np.zeros((h, w, 3), np.uint8)
    image[120:124, 250:254] = 255  # a bright square centred at pixel coordinates (252, 122)
    bbox = np.array([230.0, 150.0, 200.0])
    crop = crop_person(image, bbox)
    assert crop.shape == (3, IMG_RES, IMG_RES) and crop.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = crop * std + mean
    q = np.unravel_index(int(rgb[0].argmax()), rgb[0].shape)
    peak = bbox[:2] - bbox[2] / 2 + (np.array([q[1], q[0]]) + 0.5) * bbox[2] / IMG_RES
    assert np.abs(peak - (252, 122)).max() < 2.0
    assert torch.allclose(rgb[:, 0, 0], torch.zeros(3), atol=1e-6)  # black image corner
    outside = crop_person(image, np.array([-500.0, -500.0, 100.0]))  # entirely off the image: black
    assert torch.allclose(outside * std + mean, torch.zeros_like(outside), atol=1e-6)


def test_bbox_from_keypoints_squares_the_confident_points():
    xy = np.array([[100.0, 50.0], [140.0, 250.0], [120.0, 150.0], [900.0, 900.0]])
    conf = np.array([0.9, 0.8, 0.5, 0.1])  # the far point is not confident
    cx, cy, side = bbox_from_keypoints(xy, conf, 640, 480)
    assert (cx, cy) == (120.0, 150.0) and side == pytest.approx(KEYPOINT_BOX_SCALE * 200.0)
    assert list(bbox_from_keypoints(xy, np.zeros(4), 640, 480)) == [320.0, 240.0, 640.0]


# ---------------------------------------------------------------------------------------------
# The SMPLify-P start


class _FixedPare:
    """A PARE stand-in whose prediction is given (what a trained network would regress)."""

    def __init__(self, pose):
        self.pose = torch.as_tensor(pose, dtype=torch.float32)

    def predict(self, images, bboxes):
        B = len(images)
        R = axis_angle_to_rotmat(self.pose.view(B, 24, 3))
        return PareOutput(rotmat=R, pose=self.pose, betas=torch.zeros(B, 10), cam=torch.ones(B, 3), bboxes=bboxes)


def test_pare_start_keeps_a_good_regression_and_falls_back_on_a_bad_one(toy):
    from test_smplify import pose_targets, random_pose

    rng = np.random.default_rng(4)
    pose = random_pose(rng, 2, spread=0.3)
    pose[:, 66:] = 0
    cam = np.array([[0.9, 0.02, 0.05], [1.1, -0.03, 0.0]])
    targets = pose_targets(toy, pose, np.zeros((2, 10)), cam)
    conf = np.ones(targets.shape[:2])
    images = [np.zeros((256, 256, 3), np.uint8)] * 2
    init, from_pare = pare_start(_FixedPare(pose), toy, images, targets, conf)
    assert from_pare.tolist() == [True, True]
    assert torch.allclose(init.body_pose, torch.as_tensor(pose[:, 3:], dtype=torch.float32), atol=1e-5)
    assert torch.allclose(init.cam, torch.as_tensor(cam, dtype=torch.float32), atol=1e-3)  # least squares
    with torch.no_grad():
        out = toy(global_orient=init.global_orient, body_pose=init.body_pose)
        J = project(fitting_joints(out.joints, out.body25), init.cam)
    assert np.abs(J.numpy() - targets).max() < 1e-3

    wrong = pose.copy()
    wrong[1, :3] = [0.0, 0.0, 0.0]  # upside down: worse than the rest pose upright
    init, from_pare = pare_start(_FixedPare(wrong), toy, images, targets, conf)
    assert from_pare.tolist() == [True, False]
    assert torch.allclose(init.body_pose[1], torch.zeros(69)) and abs(float(init.global_orient[1, 0])) > 3.1


def steer_pose(net, pose: np.ndarray, path):
    """A checkpoint whose network regresses POSE [72] for any image: each joint's pose_mlp row is
    that joint's 6-D rotation for every input channel, so the output is it times the sum of the
    (non-negative) pooled features, and the 6-D reading is scale-invariant."""
    R = axis_angle_to_rotmat(torch.as_tensor(pose, dtype=torch.float32).view(24, 3))
    six = R[..., :2].reshape(24, 6)  # [J, 6]
    state = {"model." + k: v.clone() for k, v in net.state_dict().items()}
    state["model.head.pose_mlp.weight"] = six.T[None, :, None, :, None, None].expand(1, 6, 128, 24, 1, 1).clone()
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture()
def align_args(tmp_path, toy):
    """`mst align` arguments for a one-person folder (full, upper, face) and the toy body model."""
    from mst_pipeline.space import default_space

    model_file = tmp_path / "toy.npz"
    write_model_npz(toy.data(), model_file)
    data = tmp_path / "mydata"
    write_dataset(data, toy, default_space(toy), n=1)
    return ["align", str(data), "--detector", "openpose-json", "--body-model", str(model_file), "--iterations", "120"]


def test_align_with_random_pare_weights_runs_end_to_end(tmp_path, align_args, lightning_file):
    out = tmp_path / "shards"
    args = align_args + ["--out", str(out), "--pare"]
    result = CliRunner().invoke(app, args + [str(lightning_file)])
    assert result.exit_code == 0, result.output
    assert "3 aligned" in result.output
    assert validate_folder(out).ok
    metas = [json.loads(f["meta.json"]) for shard in complete_shards(out) for _, f in read_shard(shard)]
    assert len(metas) == 3
    for meta in metas:
        assert meta["fit"]["init"] in ("pare", "keypoints") and meta["fit"]["converged"] is not None
        assert meta["fit"]["reprojection_px"] < 0.02 * max(meta["orig"]["width"], meta["orig"]["height"])

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, bad)
    failed = CliRunner().invoke(app, args + [str(bad)])
    assert failed.exit_code == 1 and "not a PARE checkpoint" in failed.output
    missing = CliRunner().invoke(app, args + [str(tmp_path / "nope.ckpt")])
    assert missing.exit_code == 2 and "not a file" in missing.output


def test_align_starts_from_a_pare_that_regresses_the_true_pose(tmp_path, align_args, net):
    from test_smplify import random_pose

    pose = random_pose(np.random.default_rng(5), 1, spread=0.12)[0]  # make_crops' person (seed 5)
    pose[66:] = 0
    out = tmp_path / "shards"
    result = CliRunner().invoke(app, align_args + ["--out", str(out), "--pare",
                                                   str(steer_pose(net, pose, tmp_path / "steered.ckpt"))])
    assert result.exit_code == 0 and "3 aligned" in result.output, result.output
    fits = {k: json.loads(f["meta.json"]) for shard in complete_shards(out) for k, f in read_shard(shard)}
    assert fits["mydata/people_full0"]["fit"]["init"] == "pare" and fits["mydata/crops_upper0"]["fit"]["init"] == "pare"
    assert all(m["fit"]["reprojection_px"] < 0.02 * max(m["orig"]["width"], m["orig"]["height"])
               for m in fits.values())
