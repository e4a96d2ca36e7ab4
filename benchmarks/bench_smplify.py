"""SMPLify-P fitting throughput: batch 1 vs batch 64 (Adam) against a per-image L-BFGS baseline in
the style of smplify-x, on keypoints projected from posed bodies (known answer), on the CPU."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from mst_pipeline.smplify import SmplifyConfig, smplify_p

N = 64
ITERATIONS = 200


def _model():
    from mst_pipeline.body import load_body_model

    return load_body_model(), "open default body model"


def _problems(model, n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_smplify import pose_targets, random_pose

    rng = np.random.default_rng(0)
    pose = random_pose(rng, n)
    cam = np.stack([rng.uniform(0.9, 1.1, n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.05, 0.05, n)], 1)
    u = pose_targets(model, pose, np.zeros((n, model.num_betas)), cam)
    conf = np.all(np.abs(u) <= 1, -1).astype(float)
    return u, conf, cam


def _time(fn) -> tuple[float, list]:
    t0 = time.perf_counter()
    res = fn()
    return time.perf_counter() - t0, res


def run() -> str:
    model, name = _model()
    u, conf, cam = _problems(model, N)
    adam = SmplifyConfig(iterations=ITERATIONS)
    lbfgs = SmplifyConfig(optimizer="lbfgs", iterations=ITERATIONS, camera_iterations=20)
    n1 = 8  # batch-1 runs are slow: time a subset
    rows = []
    t, res = _time(lambda: [r for i in range(n1) for r in smplify_p(model, u[i:i + 1], conf[i:i + 1], config=adam)])
    rows.append(("SMPLify-P Adam, batch 1", n1, t, res))
    t, res = _time(lambda: smplify_p(model, u, conf, config=adam))
    rows.append((f"SMPLify-P Adam, batch {N}", N, t, res))
    t, res = _time(lambda: smplify_p(model, u, conf, config=lbfgs))
    rows.append((f"SMPLify-P L-BFGS, batch {N}", N, t, res))
    t, res = _time(lambda: [r for i in range(n1) for r in smplify_p(model, u[i:i + 1], conf[i:i + 1], config=lbfgs)])
    rows.append(("per-image L-BFGS (smplify-x style), batch 1", n1, t, res))
    lines = [
        "## SMPLify-P fitting throughput",
        "",
        f"{name} (fits run on its `joint_model()`: {model.joint_model().num_vertices} of "
        f"{model.num_vertices} vertices); {ITERATIONS} iterations per image (first 60 / 20 camera-only), CPU, "
        f"{torch.get_num_threads()} torch threads. Keypoints projected from {N} posed bodies with known "
        "cameras (BODY_25 + hand points inside the image). Reprojection error in normalised units "
        "(1.0 = half the image side); camera error = |s − s_true| / s_true.",
        "",
        "| run | images | seconds | images/s | mean reprojection | mean camera scale error |",
        "|---|---|---|---|---|---|",
    ]
    for label, n, t, res in rows:
        rep = np.mean([r.reprojection for r in res])
        cam_err = np.mean([abs(r.cam[0] - c[0]) / c[0] for r, c in zip(res, cam[:n], strict=True)])
        lines.append(f"| {label} | {n} | {t:.1f} | {n / t:.2f} | {rep:.4f} | {cam_err:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
