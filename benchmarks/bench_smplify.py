"""SMPLify-P solvers at equal error: the batched solvers (per-image L-BFGS steps in one batch, and
Adam) against a per-image L-BFGS baseline in the style of smplify-x, on keypoints with a known
answer, on the CPU: each solver's mean reprojection error against the seconds it spends per
image, over a range of iteration budgets."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from mst_pipeline.fitting.smplify import SmplifyConfig, smplify_p

N = 64  # images fitted in one batch per set
N_REF = 8  # images fitted one by one (slow): every solver's error is also reported on these
DEFAULT = SmplifyConfig()
SOLVERS = {  # name -> (config for a budget of iterations, batched, budgets)
    "batched L-BFGS (default)": (lambda it: SmplifyConfig(iterations=it), True, (100, 200, 300, 400, 600)),
    "Adam, batched": (lambda it: SmplifyConfig(optimizer="adam", iterations=it, camera_iterations=60), True,
                      (200, 400, 800)),
    "per-image L-BFGS (smplify-x style)": (
        lambda it: SmplifyConfig(optimizer="lbfgs", iterations=it, camera_iterations=20), False, (100, 200, 400)),
}
REFERENCE = ("per-image L-BFGS (smplify-x style)", 200)


def _model():
    from mst_pipeline.body import load_body_model

    return load_body_model(), "open default body model"


def _posed(model, n: int):
    """Posed bodies (random standing poses, mean shape) seen whole by known cameras."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_smplify import pose_targets, random_pose

    rng = np.random.default_rng(0)
    pose = random_pose(rng, n)
    cam = np.stack([rng.uniform(0.9, 1.1, n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.05, 0.05, n)], 1)
    u = pose_targets(model, pose, np.zeros((n, model.num_betas)), cam)
    return u, np.all(np.abs(u) <= 1, -1).astype(float)


def _renders(model, n: int):
    """The keypoints of `mst render-people` views (full, upper, face; shapes and poses varied)."""
    from mst_pipeline.synthesis.people_truth import truth_views

    views = truth_views(model, n // 3 + 1, seed=0, res=128)[:n]  # per person: full, upper, face
    return np.stack([v["targets"] for v in views]), np.stack([v["confidence"] for v in views])


def _fit(model, u, conf, cfg, batched: bool):
    t0 = time.perf_counter()
    if batched:
        res = smplify_p(model, u, conf, config=cfg)
    else:
        res = [r for i in range(len(u)) for r in smplify_p(model, u[i:i + 1], conf[i:i + 1], config=cfg)]
    return (time.perf_counter() - t0) / len(u), np.array([r.reprojection for r in res]), \
        np.mean([r.converged for r in res])


def run() -> str:
    model, name = _model()
    sets = {"posed bodies": _posed(model, N), "render-people views": _renders(model, N)}
    curves: dict[tuple[str, str], list] = {}
    # Interleaved: each budget of each solver on both sets before the next, so load on a shared
    # machine spreads over all solvers alike.
    for solver, (make, batched, budgets) in SOLVERS.items():
        for it in budgets:
            for set_name, (u, conf) in sets.items():
                n = len(u) if batched else N_REF
                sec, err, conv = _fit(model, u[:n], conf[:n], make(it), batched)
                curves.setdefault((solver, set_name), []).append((it, sec, err, conv))
    lines = [
        "## SMPLify-P fitting throughput",
        "",
        f"`.venv/bin/python scripts/bench.py smplify` — {name} (fits run on its `joint_model()`: "
        f"{model.joint_model().num_vertices} of {model.num_vertices} vertices), CPU, {torch.get_num_threads()} "
        f"torch threads. Two sets with a known answer: {N} posed bodies seen whole (random standing poses, "
        f"mean shape, known cameras), and {N} views of `mst render-people` (full, upper-body and face "
        "views; varied shapes; their OpenPose keypoints, computed without rendering). Batched solvers fit "
        f"each set as one batch of {N}; the per-image baseline fits the first {N_REF} images one at a time "
        "(torch's L-BFGS, strong Wolfe, 20 camera-only iterations first). Reprojection error: mean "
        "distance of the visible keypoints in normalised units (1.0 = half the image side), on the "
        f"first {N_REF} images (the ones every solver fitted) and on the whole set. Eq. 1 with the "
        "Geman-McClure keypoint term (σ = 0.1) for all. Solvers run one after another, each budget on "
        "both sets; the seconds are only comparable when nothing else runs on the machine.",
        "",
    ]
    ref_solver, ref_it = REFERENCE
    for set_name in sets:
        ref = next(p for p in curves[(ref_solver, set_name)] if p[0] == ref_it)
        ref_err, ref_sec = ref[2].mean(), ref[1]
        lines += [
            f"**{set_name}** — error against time (reference: per-image L-BFGS, {ref_it} iterations: "
            f"{ref_err:.4f} at {ref_sec:.2f} s per image):",
            "",
            f"| solver | iterations | s per image | images/s | error, first {N_REF} | vs reference | "
            "error, whole set | converged | speed vs reference |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for solver, (_, batched, _) in SOLVERS.items():
            for it, sec, err, conv in curves[(solver, set_name)]:
                whole = f"{err.mean():.4f}" if batched else "–"
                lines.append(f"| {solver} | {it} | {sec:.3f} | {1 / sec:.1f} | {err[:N_REF].mean():.4f} | "
                             f"{err[:N_REF].mean() / ref_err:.2f}× | {whole} | {conv:.0%} | {ref_sec / sec:.1f}× |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
