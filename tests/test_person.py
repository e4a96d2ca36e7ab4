"""Who is fitted: a detection is a person only with a torso or a face; of several people the most
fully visible is fitted and the others named (`--person all` writes each); `mst align` keeps the
libraries' own output off the terminal unless --verbose; the overlay names the joints that fit worst."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_align import write_dataset

from mst_pipeline.align.folder import align_folder
from mst_pipeline.align.overlay import TARGET_NAMES, draw_residuals, residual_colour
from mst_pipeline.align.settings import AlignSettings
from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.body.smpl_file import write_model_npz
from mst_pipeline.detect.images import read_image
from mst_pipeline.detect.persons import is_person, rank_people
from mst_pipeline.fitting.smplify import SmplifyConfig
from mst_pipeline.shards.rejects import read_rejects
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.space import default_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")


def _person_doc(body=None, lhand=None):
    flat = lambda a, n: (a if a is not None else np.zeros((n, 3))).ravel().tolist()  # noqa: E731
    return {"pose_keypoints_2d": flat(body, 25), "hand_left_keypoints_2d": flat(lhand, 21),
            "hand_right_keypoints_2d": [], "face_keypoints_2d": []}


def _write(folder: Path, stem: str, people: list[dict], size=(200, 300)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 110, 130)).save(folder / f"{stem}.jpg")
    (folder / f"{stem}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))


def _hand(x, y):
    hand = np.zeros((21, 3))
    hand[:, 0], hand[:, 1], hand[:, 2] = x + np.arange(21), y + np.arange(21) % 5, 0.9
    return hand


def _samples(out):
    return {k: json.loads(f["meta.json"]) for shard in complete_shards(out) for k, f in read_shard(shard)}


def _standing(kp: PersonKeypoints) -> PersonKeypoints:
    """Puts every BODY_25 point where a person 200 px tall facing the camera has it (no confidence)."""
    kp.body[:, :2] = STANDING
    return kp


# BODY_25 of a person about 200 px tall, facing the camera (x, y in pixels).
STANDING = np.array([
    (100, 20), (100, 45), (80, 45), (72, 80), (70, 112), (120, 45), (128, 80), (130, 112), (100, 110),
    (88, 110), (88, 155), (88, 200), (112, 110), (112, 155), (112, 200), (96, 16), (104, 16), (91, 18),
    (109, 18), (116, 208), (120, 206), (110, 204), (84, 208), (80, 206), (90, 204)], dtype=float)


def test_a_torso_or_a_face_makes_a_person_a_hand_or_feet_alone_do_not():
    kp = _standing(PersonKeypoints.empty())
    kp.lhand = _hand(50, 50)
    kp.body[[11, 14, 19, 22], 2] = 0.9  # ankles and toes: feet in view
    assert not is_person(kp)
    kp.body[[2, 9], 2] = 0.9  # a shoulder and a hip: a torso
    assert is_person(kp)
    face = _standing(PersonKeypoints.empty())
    face.body[[0, 15], 2] = 0.8  # nose and an eye
    assert is_person(face)
    mesh = PersonKeypoints.empty()
    mesh.face[:, 2] = 0.9  # a face-landmark model's face, no body points
    assert is_person(mesh)


def test_a_picture_of_a_hand_or_of_feet_is_rejected_as_no_person(tmp_path, toy):
    """Before, such pictures were fitted (6 hand targets are enough for SMPLify-P) and failed, if at all,
    only because the fitted region left full-body space."""
    data = tmp_path / "data"
    feet = np.zeros((25, 3))
    feet[[11, 14, 19, 20, 21, 22, 23, 24]] = [[60 + 9 * i, 250, 0.9] for i in range(8)]
    _write(data, "keyboard", [_person_doc(lhand=_hand(80, 120))])
    _write(data, "shoes", [_person_doc(body=feet)])
    summary = align_folder(data, tmp_path / "out", "s", default_space(toy), toy,
                           AlignSettings(detector="openpose-json", smplify=SmplifyConfig(iterations=20)))
    assert summary.written == 0 and summary.reasons == {"no person": 2}
    reasons = {r["key"]: r["reason"] for r in read_rejects(tmp_path / "out")}
    assert reasons["s/keyboard"].startswith("no person (only hands found")
    assert reasons["s/shoes"].startswith("no person (only feet found")


def _two_people(toy, data: Path, order=(0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """A full-body image with a second, partly hidden person (head and shoulders only) beside the
    first; returns (whole body, partial body) BODY_25 [25, 3] in pixels."""
    write_dataset(data / "tmp", toy, default_space(toy), n=1)
    doc = json.loads((data / "tmp" / "people" / "full0_keypoints.json").read_text())
    whole = np.asarray(doc["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
    partial = whole.copy()
    partial[:, 0] += 40
    partial[[3, 4, 6, 7, *range(8, 15), *range(19, 25)], 2] = 0  # only head and shoulders seen
    people = [_person_doc(body=whole), _person_doc(body=partial)]
    image = Image.open(data / "tmp" / "people" / "full0.jpg")
    _write(data / "photos", "pair", [people[i] for i in order], size=image.size)
    return whole, partial


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_of_two_people_the_most_visible_is_fitted_and_the_other_named(tmp_path, toy, order):
    whole, partial = _two_people(toy, tmp_path / "data", order)
    settings = AlignSettings(detector="openpose-json", smplify=SmplifyConfig(iterations=100))
    space = default_space(toy)
    summary = align_folder(tmp_path / "data" / "photos", tmp_path / "best", "s", space, toy, settings)
    assert summary.written == 1
    meta = _samples(tmp_path / "best")["s/pair"]
    seen = int((whole[:, 2] >= 0.3).sum())
    assert meta["person"]["index"] == 0 and meta["person"]["visible"] == seen
    assert meta["kind"] == "full"  # the whole body was fitted, not the head and shoulders
    (other,) = meta["other_people"]
    assert other["index"] == 1 and other["visible"] == int((partial[:, 2] >= 0.3).sum()) < seen
    shown = partial[partial[:, 2] > 0]
    np.testing.assert_allclose(other["box"], [*shown[:, :2].min(0), *shown[:, :2].max(0)], atol=0.06)
    assert validate_folder(tmp_path / "best").ok

    every = align_folder(tmp_path / "data" / "photos", tmp_path / "all", "s", space, toy,
                         AlignSettings(detector="openpose-json", smplify=SmplifyConfig(iterations=100), person="all"))
    metas = _samples(tmp_path / "all")
    assert every.written == 2 and sorted(metas) == ["s/pair", "s/pair-p1"]  # same keys whatever the file order
    assert metas["s/pair"]["person"] == meta["person"]
    assert metas["s/pair-p1"]["person"]["index"] == 1 and metas["s/pair-p1"]["other_people"][0]["index"] == 0
    assert metas["s/pair-p1"]["kind"] != "full"
    again = align_folder(tmp_path / "data" / "photos", tmp_path / "all", "s", space, toy,
                         AlignSettings(detector="openpose-json", person="all"))
    assert again.written == 0 and again.skipped == 2


def test_people_are_ranked_by_visibility_then_deterministically_by_place():
    a, b = PersonKeypoints.empty(), PersonKeypoints.empty()
    for kp, x in ((a, 300.0), (b, 100.0)):
        kp.body[[0, 2, 5, 15, 16], :] = [[x, 50, 0.9], [x - 20, 80, 0.9], [x + 20, 80, 0.9], [x - 5, 45, 0.9],
                                         [x + 5, 45, 0.9]]
    assert [p.box[0] for p in rank_people([a, b], 400, 400)] == [80.0, 280.0]  # a tie: leftmost first
    a.body[9] = (290, 150, 0.9)  # one more point seen
    assert rank_people([b, a], 400, 400)[0].keypoints is a
    a.body[9] = (290, 450, 0.9)  # ... but outside the image: not visible
    assert rank_people([a, b], 400, 400)[0].keypoints is b


def _hopper() -> np.ndarray:
    cbook = pytest.importorskip("matplotlib.cbook")
    return read_image(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


@needs_mediapipe
def test_mediapipe_finds_both_people_of_a_double_portrait_and_one_in_a_single():
    from mst_pipeline.detect import make_detector

    photo = _hopper()
    det = make_detector("mediapipe")
    assert len(rank_people(det(photo, Path("one.jpg")), photo.shape[1], photo.shape[0])) == 1
    pair = np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))  # the portrait and its mirror
    w = photo.shape[1]
    people = rank_people(det(pair, Path("pair.jpg")), 2 * w, photo.shape[0])
    assert len(people) == 2
    noses = sorted(p.keypoints.body[0, 0] for p in people)
    assert noses[0] < w < noses[1]  # one on each half
    assert abs((2 * w - noses[1]) - noses[0]) < 0.03 * w  # mirror images of each other


def test_residual_lines_join_each_keypoint_to_its_joint_coloured_by_size_and_the_worst_are_named():
    targets, joints = np.zeros((37, 2)), np.zeros((37, 2))
    visible = np.zeros(37, bool)
    elbow, nose, wrist = TARGET_NAMES.index("RElbow"), TARGET_NAMES.index("Nose"), TARGET_NAMES.index("LWrist")
    targets[elbow], joints[elbow] = (40, 40), (160, 40)  # 120 px off: red
    targets[nose], joints[nose] = (40, 160), (42, 160)  # 2 px off: green
    targets[wrist], joints[wrist] = (100, 100), (100, 125)  # 25 px off (2.5 % of 1000): yellow
    visible[[elbow, nose, wrist]] = True
    knee = TARGET_NAMES.index("LKnee")
    targets[knee], joints[knee] = (10, 190), (190, 190)  # not visible: no line
    layer = Image.new("RGB", (200, 200), (0, 0, 0))
    legend = draw_residuals(ImageDraw.Draw(layer), targets, joints, visible, size=1000, width=1)
    px = np.asarray(layer)
    assert legend == "worst: RElbow 120 px, LWrist 25 px, Nose 2 px"
    assert tuple(px[40, 100]) == residual_colour(120, 1000) and px[40, 100, 0] > 200 and px[40, 100, 1] < 80
    assert tuple(px[112, 100]) == residual_colour(25, 1000) and min(px[112, 100, :2]) > 190  # yellow
    assert tuple(px[160, 41]) == residual_colour(2, 1000) and px[160, 41, 1] > 190 and px[160, 41, 0] < 60
    assert (px[40, 170:] == 0).all() and (px[40, :35] == 0).all()  # the line stops at the two points
    assert (px[190, 20:180] == 0).all()
    assert draw_residuals(ImageDraw.Draw(layer), targets, joints, np.zeros(37, bool), 1000, 1) == \
        "worst: none visible"


@needs_mediapipe
def test_align_keeps_library_logs_off_the_terminal_unless_verbose(tmp_path, toy):
    data = tmp_path / "photos"
    data.mkdir()
    Image.fromarray(_hopper()).resize((256, 300)).save(data / "portrait.jpg")
    model_file = tmp_path / "toy.npz"
    write_model_npz(toy.data(), model_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    library = ("absl", "TensorFlow Lite", "W0000", "inference_feedback_manager")

    def run(out, *flags):
        cmd = [sys.executable, "-c", "from mst_pipeline.cli import main; main()", "align", str(data), "--out",
               str(out), "--body-model", str(model_file), "--iterations", "5", *flags]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stderr

    quiet = run(tmp_path / "quiet")
    assert "wrote" in quiet  # its own summary
    assert not [line for line in quiet.splitlines() if any(m in line for m in library)], quiet
    log = (tmp_path / "quiet" / "logs" / "align.log").read_text()
    assert any(m in log for m in library)  # kept, not lost
    assert "logs/align.log" in quiet and "--verbose" in quiet  # and the terminal says where
    loud = run(tmp_path / "loud", "--verbose")
    assert any(m in loud for m in library) and "wrote" in loud
    assert not (tmp_path / "loud" / "logs").exists()


def test_a_pose_found_with_the_others_greyed_out_is_new_only_with_a_torso_outside_them():
    from mst_pipeline.detect.mediapipe_backend import seen_box, stands_apart

    lm = np.zeros((33, 3))
    lm[[0, 11, 12, 23, 24]] = [[100, 40, 0.9], [80, 80, 0.9], [120, 80, 0.9], [85, 160, 0.9], [115, 160, 0.9]]
    lm[27] = (100, 400, 0.2)  # an ankle guessed outside the image: not part of the box
    assert seen_box(lm, 300, 300) == (76, 28, 124, 172)  # the seen points grown by 10 %
    assert stands_apart(lm, [(200, 0, 300, 300)])
    assert not stands_apart(lm, [(50, 50, 150, 200)])  # its torso lies in someone already found
    lm[[11, 12, 24], 2] = 0.1
    assert not stands_apart(lm, [])  # one torso point: a head-like thing, not a person


def test_cli_person_choice_is_checked_and_refused_for_an_aligned_set(tmp_path):
    from typer.testing import CliRunner

    from mst_pipeline.cli import app

    (tmp_path / "d").mkdir()
    Image.new("RGB", (64, 128)).save(tmp_path / "d" / "a.png")
    res = CliRunner().invoke(app, ["align", str(tmp_path / "d"), "--person", "many"])
    assert res.exit_code == 2 and "--person must be one of best, all" in res.output
    res = CliRunner().invoke(app, ["align", str(tmp_path / "d"), "--aligned", "--detector", "none", "--person", "all"])
    assert res.exit_code == 2 and "one person per image" in res.output
    assert not (tmp_path / "shards").exists()


def test_diverted_stderr_keeps_descriptor_2_in_the_log_and_leaves_no_trace_when_quiet(tmp_path):
    from mst_pipeline.detect.quiet import DivertedStderr

    code = """
import os, sys
from pathlib import Path
from mst_pipeline.detect.quiet import DivertedStderr
with DivertedStderr(Path(sys.argv[1])) as terminal:
    os.write(2, b"W0000 from C++\\n")
    print("ours", file=terminal)
    os.system("echo child-process >&2")
os.write(2, b"after\\n")
"""
    log = tmp_path / "out" / "logs" / "align.log"
    res = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.stderr == "ours\nafter\n"
    assert log.read_text().splitlines()[1:] == ["W0000 from C++", "child-process"]
    quiet = DivertedStderr(tmp_path / "none" / "logs" / "align.log")
    with quiet:
        pass
    assert quiet.kept == 0 and not (tmp_path / "none").exists()


@pytest.mark.parametrize("target", ["reconstruct", "complete", None])
def test_cli_prior_target_reaches_the_fit(tmp_path, monkeypatch, target):
    """`mst align --prior-target` sets θ̂ of the fits (default: the reconstruction with the unseen joints
    at the prior's typical pose), `--plain-prior` turns its symmetry off."""
    from typer.testing import CliRunner

    import mst_pipeline.align.folder
    import mst_pipeline.align.settings
    from mst_pipeline.cli import app

    seen = []

    def fake_align_folder(*args, settings=None, **kwargs):
        seen.append(settings or next(a for a in args if isinstance(a, mst_pipeline.align.settings.AlignSettings)))
        raise ValueError("stop here")

    monkeypatch.setattr(mst_pipeline.align.folder, "align_folder", fake_align_folder)
    (tmp_path / "d").mkdir()
    Image.new("RGB", (64, 128)).save(tmp_path / "d" / "a.png")
    args = ["align", str(tmp_path / "d"), "--out", str(tmp_path / "s")]
    res = CliRunner().invoke(app, args + (["--prior-target", target] if target else []))
    assert len(seen) == 1, res.output
    assert seen[0].smplify.prior_mode == (target or "complete")
    assert seen[0].smplify.prior_symmetric
    seen.clear()
    CliRunner().invoke(app, args + ["--plain-prior"])
    assert len(seen) == 1 and not seen[0].smplify.prior_symmetric
