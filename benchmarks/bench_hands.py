"""Synthetic hands: `mst render-hands` wall time and per-render time with Cycles on the CPU."""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import complete_shards, read_shard
from mst_pipeline.space import default_space
from mst_pipeline.synthesis import hand_geometry, hands
from uh_train.format.geometry import apply_homography

RUNS = ((64, 8), (128, 16))  # (resolution, number of hands)


def _model():
    from mst_pipeline.body import load_body_model

    return load_body_model(), "open default body model"


def run() -> str:
    model, model_name = _model()
    space = default_space(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res, n in RUNS:
            out = Path(tmp) / f"r{res}"
            t0 = time.perf_counter()
            summary = hands.render_hands(out, n=n, seed=0, model=model, progress=False,
                                         settings=hands.RenderSettings(res=res, engine="cycles", samples=16))
            wall = time.perf_counter() - t0
            assert validate_folder(out).ok and summary.rendered == n
            coverage, dist = [], []
            for shard in complete_shards(out):
                for key, fields in read_shard(shard):
                    meta = json.loads(fields["meta.json"])
                    mask = np.asarray(Image.open(io.BytesIO(fields["mask.png"]))) > 127
                    ys, xs = np.nonzero(mask)
                    c = apply_homography(np.asarray(meta["H"]), np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]))[0]
                    plan = hand_geometry.plan_hand(int(key[-6:]), 0, model.num_betas, space.pitch)
                    wrist = hand_geometry.pose_hand(model, plan, space).wrist
                    coverage.append(mask.mean())
                    dist.append(np.linalg.norm(c - wrist))
            rows.append(f"| {res} | {n} | {wall:.1f} | {np.mean(summary.render_seconds):.2f} | "
                        f"{np.mean(coverage):.2f} ({np.min(coverage):.2f}–{np.max(coverage):.2f}) | "
                        f"{np.mean(dist):.3f} (max {np.max(dist):.3f}) |")
    table = "\n".join(rows)
    return f"""## Synthetic hands

`.venv/bin/python scripts/bench.py hands` — `render_hands` with Cycles (16 samples, CPU), one
worker, {model_name}. Wall time includes starting the Blender worker, posing, compositing and
writing shards; "per render" is Blender's time for one image. Coverage: share of the image under
the hand's mask. Distance: the mask's centroid mapped through H to the posed wrist, in
full-body units (the hand is about 0.05–0.06 units long).

| res (px) | hands | wall (s) | per render (s) | coverage mean (range) | centroid–wrist mean |
|---|---|---|---|---|---|
{table}
"""
