"""What the trainer's tests share: a small synthetic shard set, a four-step tiny config, the log."""

from __future__ import annotations

import json
from pathlib import Path

from mst_pipeline.synthesis.synthetic import write_synthetic
from uh_train.training.config import TrainConfig


def write_train_shards(folder: Path) -> Path:
    """8 synthetic people at 64 px in three sources (full body and denser crops)."""
    write_synthetic(folder, n=8, res=64, seed=0, max_count=4)
    return folder


def small_cfg(shards, out, **kw) -> TrainConfig:
    """Tiny preset, batch 4, 0.016 kimg (4 steps), a snapshot every 2 steps, no LPIPS, seed 1."""
    args = dict(shards=[str(shards)], out=str(out), preset="tiny", kimg=0.016, batch=4, snapshot_kimg=0.008,
                lpips="off", seed=1)
    args.update(kw)
    return TrainConfig(**args)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
