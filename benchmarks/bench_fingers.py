"""Finger poses: `fit_finger_poses` (what `mst fit-hands` runs) on hands posed with known angles."""

from __future__ import annotations

import time

import numpy as np
import torch

from mst_pipeline.body import load_body_model
from mst_pipeline.body.fingers import articulate_np, finger_rigs, fit_finger_poses, project

TIPS = [4, 8, 12, 16, 20]
HANDS = 64
HAND_SCALE = 2000.0  # pixels per metre: an open hand of ~0.14 m spans ~280 px


def synthetic_keypoints(rest: np.ndarray, rig, n: int, seed: int = 0) -> np.ndarray:
    """[n, 21, 3] keypoints of hands with random flexion (0-80° per joint) seen at random rotations."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        angles = np.zeros((15, 3))
        angles[:, 0] = rng.uniform(0, 1.4, 15)
        _, kp = articulate_np(rest, rig, angles)
        uv = project(torch.as_tensor(kp)[None], torch.as_tensor(rng.normal(0, 0.8, (1, 3))),
                     torch.tensor([np.log(HAND_SCALE)], dtype=torch.float64),
                     torch.tensor([[100.0, 100.0]], dtype=torch.float64))[0].numpy()
        out.append(np.concatenate([uv, np.ones((21, 1))], axis=1))
    return np.array(out)


def run() -> str:
    torch.set_num_threads(1)
    model = load_body_model(log=None)
    rig = finger_rigs(model)["right"]
    rest = model.v_template.cpu().numpy().astype(np.float64)
    kps = synthetic_keypoints(rest, rig, HANDS)
    size = float(np.median([np.ptp(k[:, :2], axis=0).max() for k in kps]))
    rows = []
    for n in (1, HANDS):
        t0 = time.perf_counter()
        fit = fit_finger_poses(rig, rest, kps[:n])
        wall = time.perf_counter() - t0
        err = np.linalg.norm(fit.keypoints[:, TIPS] - kps[:n, TIPS, :2], axis=2)
        rows.append(f"| {n} | {wall:.1f} | {np.median(err):.1f} | {np.percentile(err, 90):.1f} | {err.max():.1f} |")
    table = "\n".join(rows)
    return f"""## Finger poses

`.venv/bin/python scripts/bench.py fingers` — `fit_finger_poses` (300 steps: 8 starts screened by
Adam, L-BFGS on the best) with the open model's right-hand finger skeleton on {HANDS} hands posed
with random flexion (0–80° per joint) and seen at random rotations; hands about {size:.0f} px across;
one torch thread. Errors: fingertip reprojection in pixels.

| hands | wall (s) | median tip error | 90th percentile | max |
|---|---|---|---|---|
{table}
"""


if __name__ == "__main__":
    print(run())
