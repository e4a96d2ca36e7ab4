"""`mst fit-hands`: finger poses of the full-body set, for `mst render-hands` (paper App. A).

The paper renders its synthetic hands with the hand poses estimated on the full-body set. Here
the hands' 2D keypoints (OpenPose's 21-point layout) that `mst align` detected and stored in the
shards are fitted with the body model's finger rig (`mst_pipeline.body.fingers`): each confident
hand gives 15 × 3 finger angles. The pose set is an .npz:

    format   "unitedhuman-hand-poses/1"
    angles   [N, 15, 3] float32: flexion, abduction, twist per finger joint (thumb..pinky, palm out)
    side     [N] uint8: 0 the person's left hand, 1 the right (the angles fit either hand)
    key      [N] str: the shard sample the hand came from
    error    [N] float32: RMS reprojection error of the fit, in units of the hand's 2D size
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.fingers import NUM_FINGER_JOINTS, NUM_HAND_KEYPOINTS, fit_finger_poses
from mst_pipeline.body.poses import read_npz
from mst_pipeline.shards.writer import complete_shards
from uh_train.format.atomic import atomic_write

FORMAT = "unitedhuman-hand-poses/1"
SIDES = ("left", "right")
SLOTS = {"left": "lhand", "right": "rhand"}
SYNTHETIC_SOURCE = "hands"  # the source `mst render-hands` writes


@dataclass
class HandKeypoints:
    """Hands found in shards: keys [N], sides [N] ("left"/"right"), keypoints [N, 21, 3]."""

    keys: list[str]
    sides: list[str]
    keypoints: np.ndarray


def usable_hand(kp: np.ndarray, min_points: int, min_confidence: float) -> bool:
    """Enough confident keypoints to fit fingers, the wrist among them."""
    seen = kp[:, 2] >= min_confidence
    return bool(seen.sum() >= min_points and seen[0])


def shard_metas(shard: str | os.PathLike) -> Iterable[tuple[str, dict[str, Any]]]:
    """(key, meta) of every sample of one shard file (only the meta.json members are read)."""
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".meta.json"):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name[: -len(".meta.json")], json.loads(f.read())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ValueError(f"{shard}: unreadable shard ({e})") from None


def iter_shard_metas(folder: str | os.PathLike) -> Iterable[tuple[str, dict[str, Any]]]:
    """(key, meta) of every sample in the complete shards of FOLDER."""
    for shard in complete_shards(folder):
        yield from shard_metas(shard)


def collect_hand_keypoints(folders: Iterable[str | os.PathLike], min_points: int = 15,
                           min_confidence: float = 0.3) -> HandKeypoints:
    """The usable hands of every sample in FOLDERS' shards (keypoints as `mst align` stored them),
    except those of synthetic hands (source "hands")."""
    keys, sides, kps = [], [], []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ValueError(f"{folder} is not a folder")
        if not complete_shards(folder):
            raise ValueError(f"{folder} holds no shards (write them with `mst align`)")
        for key, meta in iter_shard_metas(folder):
            if meta.get("source") == SYNTHETIC_SOURCE:
                continue  # our own rendered hands are not data
            for side in SIDES:
                kp = np.asarray((meta.get("keypoints") or {}).get(SLOTS[side]) or [], dtype=np.float64)
                if kp.shape != (NUM_HAND_KEYPOINTS, 3) or not usable_hand(kp, min_points, min_confidence):
                    continue
                kp = kp.copy()
                kp[kp[:, 2] < min_confidence, 2] = 0.0
                keys.append(key)
                sides.append(side)
                kps.append(kp)
    return HandKeypoints(keys, sides, np.array(kps).reshape(-1, NUM_HAND_KEYPOINTS, 3))


def fit_hand_poses(folders: Iterable[str | os.PathLike], out: str | os.PathLike, model: Any, rigs: dict[str, Any],
                   min_points: int = 15, min_confidence: float = 0.3, max_error: float = 0.06,
                   iterations: int = 300, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Fit the finger rig RIGS ({"left", "right"}) of MODEL to every usable hand; write OUT.

    Fits whose RMS reprojection error exceeds MAX_ERROR (hand sizes) are dropped: a detection the
    hand model cannot explain is more likely wrong than a strange pose.
    """
    say = log or (lambda m: None)
    hands = collect_hand_keypoints(folders, min_points, min_confidence)
    if not hands.keys:
        raise ValueError(f"no hand with {min_points} keypoints of confidence >= {min_confidence} (the wrist "
                         "included) in the shards: nothing to fit")
    rest = model.v_template.cpu().numpy().astype(np.float64)
    angles = np.zeros((len(hands.keys), NUM_FINGER_JOINTS, 3))
    error = np.zeros(len(hands.keys))
    sides = np.array(hands.sides)
    for side in SIDES:
        pick = np.flatnonzero(sides == side)
        if len(pick):
            say(f"fitting {len(pick)} {side} hands")
            fit = fit_finger_poses(rigs[side], rest, hands.keypoints[pick], iterations=iterations)
            angles[pick], error[pick] = fit.angles, fit.error
    keep = error <= max_error
    if not keep.any():
        raise ValueError(f"every hand fit has an error above {max_error} hand sizes; the keypoints do not look "
                         "like hands")
    arrays = {"format": np.array(FORMAT), "angles": angles[keep].astype(np.float32),
              "side": (sides[keep] == "right").astype(np.uint8),
              "key": np.array(hands.keys)[keep].astype(str), "error": error[keep].astype(np.float32)}
    out = Path(out)
    atomic_write(out, lambda f: np.savez(f, **arrays))
    return {"hands": len(hands.keys), "kept": int(keep.sum()), "dropped": int((~keep).sum())}


def load_hand_poses(path: str | os.PathLike) -> np.ndarray:
    """The finger angles [N, 15, 3] of a pose set written by `mst fit-hands`."""
    data = read_npz(path, "hand pose set")
    if str(data.get("format", "")) != FORMAT or "angles" not in data:
        raise ValueError(f"{path} is not a hand pose set ({FORMAT}, written by `mst fit-hands`)")
    angles = np.asarray(data["angles"], dtype=np.float64)
    if angles.ndim != 3 or angles.shape[1:] != (NUM_FINGER_JOINTS, 3) or len(angles) == 0:
        raise ValueError(f"{path}: angles have shape {list(angles.shape)}, expected [N>0, 15, 3]")
    if not np.all(np.isfinite(angles)):
        raise ValueError(f"{path}: angles are not all finite")
    return angles
