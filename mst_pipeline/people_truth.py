"""Checking aligned renders against their truth: truth.jsonl of `mst render-people` vs fitted H.

`read_truth` reads the exact H of every rendered image; `truth_errors` compares the H the MST
fitted for each aligned sample with it (`corner_error`, in full-body units).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
