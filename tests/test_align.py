"""`mst align` end to end on a folder whose OpenPose JSON comes from a posed body with known H:
shards pass `mst validate`, crops land where the ground truth puts them, failures go to
rejects.jsonl, re-runs skip done images and --part slices are disjoint."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_space import make_crops
from typer.testing import CliRunner

from mst_pipeline.align.folder import align_folder
from mst_pipeline.align.settings import AlignSettings
from mst_pipeline.body.smpl_file import write_model_npz
from mst_pipeline.cli import app
from mst_pipeline.detect.images import list_images
from mst_pipeline.fitting.smplify import SmplifyConfig
from mst_pipeline.shards.rejects import read_rejects
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.space import default_space, normalised_to_pixels
from uh_train.format.geometry import image_region
from uh_train.format.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batched fits: one thread is faster


def write_dataset(folder, model, space, n=2):
    """Images (plain noise) with OpenPose JSON of a posed person; returns {stem: (kind, H_true)}."""
    truth = {}
    rng = np.random.default_rng(0)
    for kind, person, W, Hh, H_true, targets, conf in make_crops(model, space, n=n, seed=5):
        stem = f"{kind}{person}"
        sub = folder / ("crops" if kind != "full" else "people")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (Hh // 4, W // 4, 3), dtype=np.uint8)).resize((W, Hh)).save(
            sub / f"{stem}.jpg")
        px = normalised_to_pixels(targets, W, Hh)
        body = np.concatenate([px[:25], conf[:25, None]], 1)
        lhand, rhand = np.zeros((21, 3)), np.zeros((21, 3))
        for hand, rows in ((lhand, slice(25, 31)), (rhand, slice(31, 37))):
            hand[[0, 4, 8, 12, 16, 20]] = np.concatenate([px[rows], conf[rows, None]], 1)
        doc = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": body.ravel().tolist(),
                                           "hand_left_keypoints_2d": lhand.ravel().tolist(),
                                           "hand_right_keypoints_2d": rhand.ravel().tolist(),
                                           "face_keypoints_2d": []}]}
        (sub / f"{stem}_keypoints.json").write_text(json.dumps(doc))
        truth[f"{sub.name}_{stem}"] = (kind, H_true, W, Hh)
    return truth


def add_bad_inputs(folder):
    (folder / "bad").mkdir()
    (folder / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("RGB", (64, 64)).save(folder / "bad" / "nobody.png")
    (folder / "bad" / "nobody_keypoints.json").write_text('{"people": []}')
    Image.new("RGB", (64, 64)).save(folder / "bad" / "malformed.jpg")
    (folder / "bad" / "malformed_keypoints.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    Image.new("RGB", (64, 64)).save(folder / "bad" / "nojson.jpg")


def test_align_writes_valid_shards_in_the_right_place_and_rejects_bad_images(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space)
    add_bad_inputs(data)
    out = tmp_path / "shards"
    settings = AlignSettings(detector="openpose-json", batch_size=4, smplify=SmplifyConfig(iterations=200))
    summary = align_folder(data, out, "synth", space, toy, settings)
    assert summary.written == len(truth) and summary.rejected == 4
    report = validate_folder(out)
    assert report.ok, report.to_dict()
    rejects = {r["path"]: r["reason"] for r in read_rejects(out)}
    assert "unreadable" in rejects["bad/corrupt.jpg"]
    assert "no person" in rejects["bad/nobody.png"]
    assert "expected 75" in rejects["bad/malformed.jpg"]
    assert "no OpenPose JSON" in rejects["bad/nojson.jpg"]
    metas = {k: json.loads(f["meta.json"]) for shard in complete_shards(out) for k, f in read_shard(shard)}
    for stem, (kind, H_true, W, Hh) in truth.items():
        meta = metas[f"synth/{stem}"]
        err = np.abs(image_region(np.array(meta["H"]), W, Hh) - image_region(H_true, W, Hh)).max()
        assert err < 0.02, (stem, err)
        assert meta["kind"] == kind
        if kind in ("full", "face"):  # 512 px over the whole space vs over 0.12 of it
            assert meta["tier"] == {"full": "LR", "face": "HR"}[kind]
        assert meta["fit"]["visible"] >= 3 and meta["orig"]["path"].endswith(".jpg")

    # A re-run does nothing new; the rejected images are retried (and rejected again).
    again = align_folder(data, out, "synth", space, toy, settings)
    assert again.written == 0 and again.skipped == len(truth) and again.rejected == 4
    assert read_manifest(out).num_rows == len(truth)


def test_parts_are_disjoint_and_cover_the_folder(tmp_path):
    for i in range(20):
        (tmp_path / f"d{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 3}" / f"img{i}.jpg").write_bytes(b"x")
    parts = [set(list_images(tmp_path, (k, 3))) for k in range(3)]
    assert set().union(*parts) == set(list_images(tmp_path)) and sum(map(len, parts)) == 20
    with pytest.raises(ValueError):
        list_images(tmp_path, (3, 3))


def test_cli_align_with_a_body_model_file(tmp_path, toy):
    model_file = tmp_path / "toy.npz"
    write_model_npz(toy.data(), model_file)
    data = tmp_path / "mydata"
    write_dataset(data, toy, default_space(toy), n=1)
    out = tmp_path / "shards"
    args = ["align", str(data), "--out", str(out), "--detector", "openpose-json", "--body-model", str(model_file),
            "--iterations", "120", "--part", "0/1", "--overlay", str(tmp_path / "overlay")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 aligned" in result.output
    keys = [k for shard in complete_shards(out) for k, _ in read_shard(shard)]
    assert all(k.startswith("mydata/") for k in keys) and len(keys) == 3
    assert validate_folder(out).ok
    assert len(list((tmp_path / "overlay").rglob("*.jpg"))) == 3
    bad = CliRunner().invoke(app, ["align", str(data), "--part", "2/2", "--body-model", str(model_file)])
    assert bad.exit_code == 2
    bad = CliRunner().invoke(app, ["align", str(data), "--workers", "-1", "--body-model", str(model_file)])
    assert bad.exit_code == 2 and "--workers" in bad.output


def test_cli_align_names_the_builtins_it_uses_and_each_sample_records_what_aligned_it(tmp_path, toy):
    model_file = tmp_path / "toy.npz"
    write_model_npz(toy.data(), model_file)
    data = tmp_path / "mydata"
    write_dataset(data, toy, default_space(toy), n=1)
    args = ["align", str(data), "--detector", "openpose-json", "--body-model", str(model_file), "--iterations", "60"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1
    assert "no --space: the built-in full-body space (ô = 0°" in notes[0] and "no --prior" in notes[0]
    metas = [json.loads(f["meta.json"]) for shard in complete_shards(tmp_path / "a") for _, f in read_shard(shard)]
    assert metas and all(m["aligned_with"] == {"space": default_space(toy).digest(), "space_source": "default",
                                               "prior": None, "keypoints": "model"} for m in metas)
    space_file = tmp_path / "space.json"
    space = default_space(toy)
    space.pitch, space.source = 0.05, "mine"
    space.save(space_file)
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--space", str(space_file)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "no --space" not in notes[0] and "no --prior" in notes[0]
    metas = [json.loads(f["meta.json"]) for shard in complete_shards(tmp_path / "b") for _, f in read_shard(shard)]
    assert {m["aligned_with"]["space"] for m in metas} == {space.digest()} != {default_space(toy).digest()}


# ---------------------------------------------------------------------------------------------
# --overlay: check pictures of the fits


def _diff(a, b, x0, y0, x1, y1):
    """Mean absolute difference of two images over a box."""
    return float(np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1].astype(int)).mean())


def _marked(a, b, x, y):
    """Pixels of the 5×5 box around (x, y) recoloured far beyond JPEG noise."""
    box = (slice(y - 2, y + 3), slice(x - 2, x + 3))
    return int((np.abs(a[box].astype(int) - b[box].astype(int)).sum(-1) > 120).sum())


def test_overlays_show_the_fit_on_each_aligned_image_only(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space, n=1)
    add_bad_inputs(data)
    out, pictures = tmp_path / "shards", tmp_path / "overlay"
    settings = AlignSettings(detector="openpose-json", batch_size=4, overlay=pictures,
                             smplify=SmplifyConfig(iterations=120))
    summary = align_folder(data, out, "synth", space, toy, settings)
    assert summary.written == len(truth) == 3
    written = sorted(p.relative_to(pictures).as_posix() for p in pictures.rglob("*") if p.is_file())
    assert written == sorted(f"{stem.replace('_', '/', 1)}.jpg" for stem in truth)  # nested like the input
    for stem in truth:
        rel = stem.replace("_", "/", 1)
        source = np.asarray(Image.open(data / f"{rel}.jpg").convert("RGB"))
        picture = np.asarray(Image.open(pictures / f"{rel}.jpg").convert("RGB"))
        assert picture.shape == source.shape
        h, w = source.shape[:2]
        doc = json.loads((data / f"{rel}_keypoints.json").read_text())
        body = np.asarray(doc["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
        seen = body[(body[:, 2] > 0) & (body[:, 0] > 4) & (body[:, 0] < w - 4) & (body[:, 1] > 4)
                    & (body[:, 1] < h - 4)]
        # Every visible keypoint is marked (a dot over the noise).
        for x, y, _ in seen:
            assert _marked(picture, source, int(x), int(y)) >= 5, (stem, x, y)
        if stem.startswith("people_"):  # the whole body is in view: its bottom corners are bare ground
            assert _diff(picture, source, 0, h - 24, 24, h) < 12
            assert _diff(picture, source, w - 24, h - 24, w, h) < 12
    assert not (pictures / "bad").exists()  # rejected images get no overlay

    # Resume: images already aligned are skipped, their overlays are not redrawn.
    (pictures / "people" / "full0.jpg").unlink()
    again = align_folder(data, out, "synth", space, toy, settings)
    assert again.written == 0 and not (pictures / "people" / "full0.jpg").exists()


def _cube():
    """A unit cube around the origin, faces wound counter-clockwise seen from outside."""
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        n = np.cross(v[b] - v[a], v[c] - v[a])
        if np.dot(n, v[a] + v[b] + v[c] + v[d]) < 0:  # wound inwards: flip
            a, b, c, d = d, c, b, a
        faces += [(a, b, c), (a, c, d)]
    return v, np.array(faces)


def test_front_faces_are_those_towards_the_camera_and_cover_the_silhouette():
    from mst_pipeline.align.overlay import front_faces, silhouette_mask
    from mst_pipeline.body.rotations import axis_angle_to_rotmat
    from mst_pipeline.space import upright_orientation
    from mst_pipeline.synthesis.mesh_render import triangle_ids

    v, faces = _cube()
    # The body model's front (+z) posed as a person facing the camera, then a little turned.
    R = axis_angle_to_rotmat(torch.as_tensor(upright_orientation("front"))[None]).numpy()[0]
    turn = axis_angle_to_rotmat(torch.tensor([[0.2, 0.5, 0.0]])).numpy()[0]
    px = 20 + 8 * (v @ (R @ turn).T)[:, :2]
    front = {tuple(f) for f in front_faces(px, faces)}
    assert len(front) == 6  # three of the six sides are seen
    assert all(tuple(f) in front for f in faces if np.all(v[f][:, 2] == 1))  # the model's +z: its front
    assert not any(tuple(f) in front for f in faces if np.all(v[f][:, 2] == -1))
    every_face = triangle_ids(np.concatenate([px, np.zeros((8, 1))], 1), faces, 40, 40)
    assert silhouette_mask(px, faces, 40, 40).sum() > 100
    assert np.array_equal(silhouette_mask(px, faces, 40, 40), every_face >= 0)


def test_overlay_tints_the_body_silhouette_and_leaves_the_rest():
    from mst_pipeline.align.overlay import SILHOUETTE_ALPHA, SILHOUETTE_RGB, overlay_picture

    image = np.full((120, 100, 3), 128, dtype=np.uint8)
    empty = {"body": np.zeros((25, 3))}
    # A square "body" of two triangles in normalised coordinates (the square of side 120 around
    # the image is [-1, 1]²): pixels x 40..80, y 50..90.
    verts = np.array([[40, 50], [80, 50], [80, 90], [40, 90]], dtype=np.float64)
    verts = (verts - [50, 60]) * 2 / 120
    faces = np.array([[0, 2, 1], [0, 3, 2]])  # clockwise in y-down pixels: facing the camera
    picture = np.asarray(overlay_picture(image, empty, np.zeros((37, 2)), np.zeros(37, bool), verts,
                                         np.full((37, 2), 5.0), faces, "full | LR | 0 visible | loss 0"))
    tint = np.round(128 * (1 - SILHOUETTE_ALPHA) + np.asarray(SILHOUETTE_RGB) * SILHOUETTE_ALPHA)
    assert np.abs(picture[52:88, 42:78].astype(int) - tint).max() <= 1
    assert (picture[95:, :] == 128).all() and (picture[40:, :35] == 128).all()
    assert (picture[:12, :40] != 128).any()  # the legend


# ---------------------------------------------------------------------------------------------
# --workers: detection in worker processes


class CrashingDetector:
    """OpenPose JSON, except that one image kills the process (as a native crash would)."""

    def __init__(self, root, stem):
        from mst_pipeline.detect import make_detector

        self.inner, self.stem = make_detector("openpose-json", None, root), stem

    def __call__(self, image, path):
        if path.stem == self.stem:
            os._exit(3)
        return self.inner(image, path)


def _samples(out):
    return {k: (f.get("img.jpg") or f["img.png"], json.loads(f["meta.json"])["H"])
            for shard in complete_shards(out) for k, f in read_shard(shard)}


def test_workers_write_the_same_shards_and_reject_what_a_worker_cannot_read(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space, n=1)
    add_bad_inputs(data)
    settings = AlignSettings(detector="openpose-json", batch_size=2, smplify=SmplifyConfig(iterations=120))
    one = align_folder(data, tmp_path / "one", "synth", space, toy, settings)
    two = align_folder(data, tmp_path / "two", "synth", space, toy, replace(settings, workers=2))
    assert one.written == two.written == len(truth) and two.rejected == 4
    assert read_manifest(tmp_path / "two").column("key").to_pylist() == \
        read_manifest(tmp_path / "one").column("key").to_pylist()
    assert _samples(tmp_path / "two") == _samples(tmp_path / "one")
    rejects = {r["path"]: r["reason"] for r in read_rejects(tmp_path / "two")}
    assert "expected 75" in rejects["bad/malformed.jpg"] and "unreadable" in rejects["bad/corrupt.jpg"]


def test_an_image_that_kills_a_worker_is_rejected_and_the_run_goes_on(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space, n=1)
    settings = AlignSettings(detector="openpose-json", batch_size=2, workers=2,
                             smplify=SmplifyConfig(iterations=120))
    summary = align_folder(data, tmp_path / "out", "synth", space, toy, settings,
                           detector=CrashingDetector(data, "upper0"))
    assert summary.written == len(truth) - 1 and summary.rejected == 1
    (reject,) = read_rejects(tmp_path / "out")
    assert reject["path"] == "crops/upper0.jpg" and "worker crashed" in reject["reason"]
    assert "exit code 3" in reject["reason"]
    assert sorted(read_manifest(tmp_path / "out").column("key").to_pylist()) == \
        sorted(f"synth/{s}" for s in truth if s != "crops_upper0")


def test_an_interrupted_run_with_workers_stops_them_and_resumes(tmp_path, toy):
    import multiprocessing

    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space, n=1)
    settings = AlignSettings(detector="openpose-json", batch_size=2, workers=2,
                             smplify=SmplifyConfig(iterations=120))

    def ctrl_c_after_first_batch(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        align_folder(data, tmp_path / "out", "synth", space, toy, settings, progress=ctrl_c_after_first_batch)
    assert not multiprocessing.active_children()  # the workers are stopped
    assert not list((tmp_path / "out").glob("*.tmp"))  # the first batch is in a complete shard
    kept = {k for shard in complete_shards(tmp_path / "out") for k, _ in read_shard(shard)}
    assert len(kept) == 2
    rest = align_folder(data, tmp_path / "out", "synth", space, toy, settings)
    assert rest.skipped == 2 and rest.written == len(truth) - 2
    assert read_manifest(tmp_path / "out").num_rows == len(truth) and validate_folder(tmp_path / "out").ok


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")
def test_real_portraits_through_mediapipe_and_the_open_model_land_on_the_body(tmp_path, open_model):
    """The issue's acceptance run: `mst align photos/` with every default (mediapipe, the open body
    model, the built-in space) on a real portrait, its mirror and a face crop, plus a picture with no
    person and a corrupt file."""
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    data = tmp_path / "photos"
    data.mkdir()
    photo.save(data / "portrait.jpg")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / "mirror.jpg")
    photo.crop((130, 40, 400, 310)).resize((512, 512)).save(data / "face.jpg")
    Image.new("RGB", (300, 300), (120, 140, 160)).save(data / "wall.jpg")
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "shards"
    res = CliRunner().invoke(app, ["align", str(data), "--out", str(out), "--overlay", str(tmp_path / "ov")])
    assert res.exit_code == 0, res.output
    assert validate_folder(out).ok
    rejects = {r["key"]: r["reason"] for r in read_rejects(out)}
    assert set(rejects) == {"photos/wall", "photos/corrupt"}
    assert "no person" in rejects["photos/wall"] and "unreadable" in rejects["photos/corrupt"]
    metas = {k: json.loads(f["meta.json"]) for shard in complete_shards(out) for k, f in read_shard(shard)}
    kinds = {key: meta["kind"] for key, meta in metas.items()}
    assert kinds == {"photos/portrait": "upper", "photos/mirror": "upper", "photos/face": "face"}
    for key, meta in metas.items():
        nose = np.asarray(meta["keypoints"]["body"])[0]  # already in full-body space
        assert 0.4 < nose[0] < 0.6 and 0.02 < nose[1] < 0.2, (key, nose)  # on the default space's head
        assert (tmp_path / "ov" / f"{key.split('/')[1]}.jpg").is_file()
    again = CliRunner().invoke(app, ["align", str(data), "--out", str(out)])
    assert again.exit_code == 0 and "3 already done" in again.output
    assert sorted(_samples(out)) == sorted(metas)


def test_an_empty_folder_is_a_one_line_error_and_writes_nothing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    res = CliRunner().invoke(app, ["align", str(tmp_path / "empty"), "--out", str(tmp_path / "shards"),
                                   "--detector", "openpose-json"])
    assert res.exit_code == 1 and "no images" in res.output
    assert not (tmp_path / "shards").exists()


# ---------------------------------------------------------------------------------------------
# --aligned: the full-body set is full-body space, used as it is


def _openpose_json(path, body_px):
    """NAME_keypoints.json with BODY_25 points at BODY_PX ({index: (x, y)}), confidence 1."""
    body = np.zeros((25, 3))
    for i, (x, y) in body_px.items():
        body[i] = (x, y, 1.0)
    doc = {"people": [{"pose_keypoints_2d": body.ravel().tolist(), "hand_left_keypoints_2d": [],
                       "hand_right_keypoints_2d": [], "face_keypoints_2d": []}]}
    path.with_name(path.stem + "_keypoints.json").write_text(json.dumps(doc))


def _no_fit(*args, **kwargs):
    raise AssertionError("an aligned full-body image must not be fitted")


def test_an_aligned_portrait_enters_full_body_space_as_it_is(tmp_path, monkeypatch):
    import mst_pipeline.align.folder as align_module
    from uh_train.format.geometry import full_image_homography

    monkeypatch.setattr(align_module, "smplify_p", _no_fit)
    data = tmp_path / "shhq"
    data.mkdir()
    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 256, (1024, 512, 3), dtype=np.uint8)  # W×H = 512×1024
    Image.fromarray(portrait).save(data / "a.png")
    Image.fromarray(portrait[::2, ::2]).save(data / "b.jpg", quality=90)  # 256×512, stored bytes as they are
    _openpose_json(data / "a.png", {0: (256.0, 64.0), 15: (240.0, 50.0), 11: (200.0, 1000.0)})  # nose, eye, ankle
    Image.fromarray(portrait[:900, :600 - 88]).save(data / "c.png")  # 512×900: any portrait aspect
    Image.fromarray(portrait[:512, :512]).save(data / "wide.png")  # square: the whole square
    Image.fromarray(portrait[:400, :512]).save(data / "landscape.png")
    out = tmp_path / "shards"
    settings = AlignSettings(detector="openpose-json", aligned=True)
    summary = align_folder(data, out, "shhq", None, None, settings)
    assert summary.written == 4 and summary.rejected == 1 and summary.without_keypoints == 3
    (reject,) = read_rejects(out)
    assert reject["path"] == "landscape.png" and "landscape" in reject["reason"]
    report = validate_folder(out)
    assert report.ok, report.to_dict()
    samples = {k: f for shard in complete_shards(out) for k, f in read_shard(shard)}
    meta = json.loads(samples["shhq/a"]["meta.json"])
    H = np.asarray(meta["H"])
    assert np.array_equal(H, full_image_homography(512, 1024))
    assert np.array_equal(np.asarray(meta["region"]), [[0.25, 0], [0.75, 0], [0.75, 1], [0.25, 1]])
    assert np.array_equal(image_region(H, 512, 1024), meta["region"])
    assert meta["kind"] == "full" and meta["tier"] == "LR" and meta["density"] == 1024
    assert meta["smpl"] is None and meta["fit"] is None and meta["aligned"] is True
    # The original bytes, hence the original pixels: no resampling.
    assert samples["shhq/a"]["img.png"] == (data / "a.png").read_bytes()
    assert samples["shhq/b"]["img.jpg"] == (data / "b.jpg").read_bytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(samples["shhq/a"]["img.png"]))), portrait)
    # Keypoints in full-body space through the same H.
    body = np.asarray(meta["keypoints"]["body"])
    assert np.allclose(body[0], [0.25 + 256 / 1024, 64 / 1024, 1])
    assert np.allclose(body[11], [0.25 + 200 / 1024, 1000 / 1024, 1])
    meta_c = json.loads(samples["shhq/c"]["meta.json"])
    assert np.allclose(meta_c["region"], [[(900 - 512) / 1800, 0], [(900 + 512) / 1800, 0],
                                          [(900 + 512) / 1800, 1], [(900 - 512) / 1800, 1]], atol=1e-15)
    assert np.array_equal(json.loads(samples["shhq/wide"]["meta.json"])["region"], [[0, 0], [1, 0], [1, 1], [0, 1]])
    assert json.loads(samples["shhq/b"]["meta.json"])["keypoints"] is None  # no JSON: kept without keypoints

    # Resumable: a re-run writes nothing new and retries only the rejected image.
    again = align_folder(data, out, "shhq", None, None, settings)
    assert again.written == 0 and again.skipped == 4 and again.rejected == 1


def test_an_aligned_image_that_is_not_plain_rgb_is_stored_losslessly(tmp_path):
    data = tmp_path / "set"
    data.mkdir()
    grey = np.random.default_rng(1).integers(0, 256, (64, 32), dtype=np.uint8)
    Image.fromarray(grey).save(data / "grey.png")  # mode L: the shard needs RGB
    rotated = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown as a portrait after the EXIF rotation
    rotated.save(data / "turned.png", exif=exif)
    out = tmp_path / "shards"
    summary = align_folder(data, out, "set", None, None, AlignSettings(detector="none", aligned=True))
    assert summary.written == 2 and validate_folder(out).ok
    samples = {k: f for shard in complete_shards(out) for k, f in read_shard(shard)}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(samples["set/grey"]["img.png"]))),
                          np.repeat(grey[..., None], 3, axis=2))
    turned = np.asarray(Image.open(io.BytesIO(samples["set/turned"]["img.png"])))
    assert turned.shape == (64, 32, 3)
    assert np.array_equal(turned, np.asarray(rotated.transpose(Image.Transpose.ROTATE_270)))


def test_cli_aligned_needs_no_body_model_and_refuses_fit_options(tmp_path):
    data = tmp_path / "shhq"
    data.mkdir()
    Image.new("RGB", (32, 64), (200, 100, 50)).save(data / "p.png")
    out = tmp_path / "shards"
    res = CliRunner().invoke(app, ["align", str(data), "--out", str(out), "--aligned", "--detector", "none",
                                   "--body-model", str(tmp_path / "no-such-model.npz")])
    assert res.exit_code == 0, res.output
    assert "1 aligned (full 1)" in res.output and validate_folder(out).ok
    for extra in (["--kind", "upper"], ["--prior", "p.ckpt"], ["--overlay", "ov"]):
        bad = CliRunner().invoke(app, ["align", str(data), "--aligned", *extra])
        assert bad.exit_code == 2 and "aligned" in bad.output, extra
    bad = CliRunner().invoke(app, ["align", str(data), "--detector", "none"])
    assert bad.exit_code == 2 and "--aligned" in bad.output


def test_mst_space_and_align_aligned_read_the_same_folder(tmp_path, toy, monkeypatch):
    """`mst space` estimates ᾱ, ô and the pose set from an aligned full-body folder, and
    `mst align --aligned` stores the same folder with the exact padded-identity H, which the
    space's own fits reproduce to within fit noise."""
    import mst_pipeline.align.folder as align_module
    from mst_pipeline.fitting.space_fit import build_space

    data = tmp_path / "data"
    truth = {stem: t for stem, t in write_dataset(data, toy, default_space(toy), n=3).items() if t[0] == "full"}
    fulls = data / "people"  # 512×1024 portraits of people placed through ᾱ: an aligned set
    space, rejected = build_space(fulls, toy, detector="openpose-json", config=SmplifyConfig(iterations=150))
    assert rejected == 0 and space.count == 3 and space.poses.shape == (3, 72)
    assert np.allclose(space.cam_bar, default_space(toy).cam_bar, rtol=0.05, atol=0.02)
    monkeypatch.setattr(align_module, "smplify_p", _no_fit)
    summary = align_folder(fulls, tmp_path / "shards", "people", space, None,
                           AlignSettings(detector="openpose-json", aligned=True))
    assert summary.written == 3
    for meta in (json.loads(f["meta.json"]) for s in complete_shards(tmp_path / "shards") for _, f in read_shard(s)):
        _, H_true, W, Hh = truth[f"people_{meta['key'].split('/')[1]}"]
        assert np.array_equal(np.asarray(meta["H"]), H_true)  # exact, where a fit is off by up to 2 %
        assert meta["density"] == space.density and meta["tier"] == "LR"


def test_a_folder_of_mixed_inferred_kinds_is_reported_and_kind_silences_it(tmp_path, toy):
    """Without --kind each image's kind is inferred from its visible keypoints; when they differ in one
    folder (a face folder whose crops show shoulders reads as upper bodies) align says so."""
    model_file = tmp_path / "toy.npz"
    write_model_npz(toy.data(), model_file)
    data = tmp_path / "mixed"
    truth = write_dataset(data, toy, default_space(toy), n=1)
    kinds = sorted({kind for kind, *_ in truth.values() if kind != "full"})
    assert len(kinds) > 1  # the crops folder holds more than one kind
    base = ["align", str(data / "crops"), "--detector", "openpose-json", "--body-model", str(model_file),
            "--iterations", "60"]
    mixed = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert mixed.exit_code == 0, mixed.output
    assert "inferred image by image and differs" in mixed.output and "--kind" in mixed.output
    told = CliRunner().invoke(app, [*base, "--kind", kinds[0], "--out", str(tmp_path / "b")], env={"COLUMNS": "200"})
    assert told.exit_code == 0, told.output
    assert "differs" not in told.output


def test_align_says_what_runs_inside_a_batch_before_its_images_are_counted(tmp_path, toy):
    """The bar counts images written, a batch at a time; meanwhile each detection and the batch's fit
    are announced, so a CPU run never sits at 0/N without a word."""
    space = default_space(toy)
    data = tmp_path / "data"
    write_dataset(data, toy, space, n=1)
    settings = AlignSettings(detector="openpose-json", batch_size=16, smplify=SmplifyConfig(iterations=30))
    events = []
    align_folder(data, tmp_path / "out", "synth", space, toy, settings,
                 progress=lambda done, total: events.append(("count", done)), phase=lambda t: events.append(t))
    first_count = next(i for i, e in enumerate(events) if e == ("count", 3))
    before = events[:first_count]
    assert "detecting 1/3" in before and "detecting 3/3" in before and "fitting 3 (SMPLify-P)" in before
    assert before.index("detecting 3/3") < before.index("fitting 3 (SMPLify-P)")
