"""The open body model and what the MST does with it: build time, height along beta 0, joint
regressor error, the fitting reduction, an overlay's cost, and ground-truth crop errors."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def run() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_space import corner_errors, make_crops

    from mst_pipeline.align.overlay import fitted_bodies, overlay_picture
    from mst_pipeline.body.model import BodyModel
    from mst_pipeline.body.open_model import build_open_model
    from mst_pipeline.fitting.smplify import SmplifyConfig
    from mst_pipeline.space import default_space

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_open_model(Path(tmp) / "open.npz")
        build = time.perf_counter() - t0
        model = BodyModel.from_file(path)
        with np.load(path) as z:
            rms = z["joint_regressor_rms"] * 1000
    heights = []
    for b in (-2.0, -1.0, 0.0, 1.0, 2.0):
        v = model(betas=torch.tensor([[b] + [0.0] * 9])).vertices[0]
        heights.append(float(v[:, 1].max() - v[:, 1].min()))
    space = default_space(model)
    crops = make_crops(model, space, n=8, seed=1)
    errors = corner_errors(model, space, crops, SmplifyConfig(iterations=200, seed=0))
    from mst_pipeline.fitting.smplify import smplify_p

    fit = smplify_p(model, crops[0][5][None], crops[0][6][None], config=SmplifyConfig(iterations=50))
    verts, joints = fitted_bodies(model, fit)
    image = np.full((1024, 512, 3), 128, np.uint8)
    t0 = time.perf_counter()
    for _ in range(5):
        overlay_picture(image, {"body": np.zeros((25, 3))}, np.zeros((37, 2)), np.zeros(37, bool),
                        verts[0], joints[0], model.faces, "bench")
    overlay_ms = (time.perf_counter() - t0) / 5 * 1000
    lines = [
        "## Open body model and ground-truth crops",
        "",
        "`.venv/bin/python scripts/bench.py body_model` — `build_open_model` (300 anny phenotypes, seed 0; "
        "anny's own cache already built), then the model's properties, one `mst align --overlay` picture "
        "(512×1024, whole mesh rasterised) and the corner errors of SMPLify-P's H against the truth for "
        "8 posed people cut into full, upper-body and face crops (`tests/test_space.py`'s set, 200 iterations).",
        "",
        "| property | value |",
        "|---|---|",
        f"| build | {build:.0f} s; {model.num_vertices} vertices, {len(model.faces)} triangles |",
        "| height at β0 = −2, −1, 0, 1, 2 | " + ", ".join(f"{h:.3f}" for h in heights) + " m |",
        f"| joint regressor RMS | mean {rms.mean():.1f} mm, worst {rms.max():.1f} mm |",
        f"| vertices a fit uses (`joint_model()`) | {model.joint_model().num_vertices} |",
        f"| one overlay picture | {overlay_ms:.0f} ms |",
        "",
        "| crop | mean corner error | worst |",
        "|---|---|---|",
    ]
    for kind, errs in errors.items():
        lines.append(f"| {kind} | {100 * np.mean(errs):.2f} % | {100 * max(errs):.2f} % |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
