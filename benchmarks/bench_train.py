"""Trainer: data pipeline throughput vs training step rate, and a short learning curve on CPU."""

from __future__ import annotations

import glob
import tempfile
import time
from pathlib import Path

import torch

import uh_train.train as tr
from mst_pipeline.synthetic import write_synthetic
from uh_train.checkpoint import load_generator
from uh_train.data import PatchBatches, PatchConfig
from uh_train.diagnostics import sliced_wasserstein

BATCH, RES = 32, 64


def loader_rate(shards: Path, batches: int = 8) -> float:
    it = iter(PatchBatches([shards], batch=BATCH, cfg=PatchConfig(res=RES, stage=2), seed=0))
    next(it)  # warm-up: shuffle buffers fill
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t0)


def step_rate(shards: Path, out: Path, steps: int = 4) -> float:
    cfg = tr.TrainConfig(shards=[str(shards)], out=str(out), stage=2, preset="small", res=RES, batch=BATCH,
                         kimg=BATCH * (steps + 1) / 1000, snapshot_kimg=1e9, lpips="off", r1_interval=16)
    t0 = time.perf_counter()
    tr.train(cfg)
    total = time.perf_counter() - t0
    # the first step carries set-up costs (network construction, first batches): time the rest from the log
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == steps + 1
    return steps * BATCH / (total * steps / (steps + 1))


def learning_curve(shards: Path, out: Path, kimg: float = 0.48, snapshots: int = 4) -> list[tuple[float, float]]:
    cfg = tr.TrainConfig(shards=[str(shards)], out=str(out), stage=1, preset="tiny", batch=8, kimg=kimg,
                         snapshot_kimg=kimg / snapshots, lpips="off", seed=0)
    torch.manual_seed(cfg.seed)
    G0, _ = tr.build_networks(cfg)
    real = next(iter(PatchBatches([shards], 128, PatchConfig(res=G0.img_resolution, stage=1), seed=99)))["image"]
    z = torch.randn(128, G0.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        curve = [(0.0, sliced_wasserstein(real, G0.eval()(z, None)))]
    tr.train(cfg)
    for f in sorted(glob.glob(str(out / "network-0*.safetensors"))):
        G = load_generator(f)
        with torch.no_grad():
            curve.append((float(load_generator_kimg(f)), sliced_wasserstein(real, G(z, None))))
    return curve


def load_generator_kimg(path: str) -> float:
    name = Path(path).stem.removeprefix("network-")  # 000000k-800
    k, rest = name.split("k-")
    return int(k) + int(rest) / 1000


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic(tmp / "shards", n=48, res=256, seed=0)
        samples_per_s = loader_rate(tmp / "shards")
        train_per_s = step_rate(tmp / "shards", tmp / "run")
        write_synthetic(tmp / "small", n=32, res=64, seed=0)
        curve = learning_curve(tmp / "small", tmp / "curve")
    rows = "\n".join(f"| {k:.2f} | {d:.3f} |" for k, d in curve)
    return f"""## Trainer

`.venv/bin/python scripts/bench.py train`

Data pipeline alone vs training, stage 2, batch {BATCH}, r = {RES} (`small` preset), one loader process,
synthetic multi-source shards (full body 256 px, upper-body and face crops at 2.5x and 4x density):

| | samples/s |
|---|---|
| data pipeline (decode + patch sampling + resampling through H^-1) | {samples_per_s:.0f} |
| training (G and D steps, CPU) | {train_per_s:.1f} |
| ratio | {samples_per_s / train_per_s:.0f}x |

Learning curve: stage 1, `tiny` preset (r = 32), batch 8, on 32 synthetic people; sliced Wasserstein
distance of 7x7 patch descriptors (`uh_train.diagnostics`) between 128 real images and 128 images of
G_ema for fixed z (lower is better; step 0 is the untrained network):

| kimg | SWD |
|---|---|
{rows}
"""
