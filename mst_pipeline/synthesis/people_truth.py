"""Checking aligned renders against their truth: truth.jsonl of `mst render-people` vs fitted H.

`read_truth` reads the exact H of every rendered image; `truth_errors` compares the H the MST
fitted for each aligned sample with it (`corner_error`, in full-body units). `truth_views` gives
the same people's views, exact H and keypoints without rendering a pixel (for fitting
benchmarks and tests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.layout import HAND_SLOTS
from uh_train.format.geometry import apply_homography


def read_truth(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """truth.jsonl as {image path relative to the render folder: record}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    out = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rec["H"] = np.asarray(rec["H"], dtype=np.float64).reshape(3, 3)
            out[rec["image"]] = rec
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a truth record ({e})") from None
    return out


def corner_error(H: np.ndarray, H_true: np.ndarray, width: int, height: int) -> float:
    """Largest distance, in full-body units, between where H and the true H put the image's corners."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    return float(np.linalg.norm(apply_homography(H, corners) - apply_homography(H_true, corners), axis=1).max())


def truth_errors(truth: dict[str, dict[str, Any]], shards: Sequence[dict[str, Any]],
                 folders: dict[str, str]) -> dict[str, list[float]]:
    """Corner errors per source of aligned samples against the renders' truth.

    shards: manifest rows (key, source, H [9]); folders: source -> the render view folder its
    images came from (e.g. {"people-full": "full"}). Sources not in FOLDERS are ignored.
    """
    errors: dict[str, list[float]] = {s: [] for s in folders}
    for row in shards:
        source = row["source"]
        if source not in folders:
            continue
        stem = row["key"].split("/", 1)[1]
        rec = truth.get(f"{folders[source]}/{stem}.png")
        if rec is None:
            continue
        H = np.asarray(row["H"], dtype=np.float64).reshape(3, 3)
        errors[source].append(corner_error(H, rec["H"], rec["width"], rec["height"]))
    return errors


def truth_views(model: Any, n: int, seed: int = 0, res: int = 128, space: Any = None,
                kinds: Sequence[str] = ("full", "upper", "face")) -> list[dict[str, Any]]:
    """The views `mst render-people --n N --size R --seed S` renders, without their pixels: one record
    per view with index, view, width, height, H (image pixels -> full-body space) and the
    keypoints its OpenPose JSON holds in the fit's layout: targets [37, 2] in the image's
    normalised coordinates and confidence [37] (1 inside the image, 0 outside)."""
    from mst_pipeline.space import default_space, pixels_to_normalised
    from mst_pipeline.synthesis.people_plan import plan_person, pose_person, views

    space = space if space is not None else default_space(model)
    out = []
    for index in range(n):
        plan = plan_person(index, seed, model.num_betas, space.pitch)
        geom = pose_person(model, plan, space)
        points = np.concatenate([geom.body25, geom.hands["left"], geom.hands["right"]])  # [25 + 2 * 6, 2]
        assert len(points) == 25 + 2 * len(HAND_SLOTS)
        for view in views(geom, plan, res):
            if view.name not in kinds:
                continue
            px = apply_homography(np.linalg.inv(view.H), points)
            inside = (px[:, 0] >= 0) & (px[:, 0] <= view.width) & (px[:, 1] >= 0) & (px[:, 1] <= view.height)
            out.append({"index": index, "view": view.name, "width": view.width, "height": view.height,
                        "H": view.H, "targets": np.where(inside[:, None], pixels_to_normalised(px, view.width,
                                                                                               view.height), 0.0),
                        "confidence": inside.astype(np.float64)})
    return out
