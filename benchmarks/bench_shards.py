"""Shard I/O throughput: writing, validating and reading with the trainer's pipeline."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import ShardWriter, encode_image, encode_sample
from uh_train.format.geometry import density, full_image_homography, image_region
from uh_train.shard_reader import shard_pipeline

N, W, H = 512, 256, 512


def _fields(i: int, data: bytes) -> dict:
    import hashlib

    Hm = full_image_homography(W, H)
    return {"kind": "full", "tier": "LR", "H": Hm, "region": image_region(Hm, W, H), "density": density(Hm, W, H),
            "keypoints": None, "smpl": None, "fit": None,
            "orig": {"path": f"img/{i}.jpg", "sha256": hashlib.sha256(data).hexdigest(), "width": W, "height": H}}


def run() -> str:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        with ShardWriter(folder, "bench", max_count=128) as w:
            for i in range(N):
                img = np.roll(base, i, axis=1)
                w.write(encode_sample("bench", f"s{i:05d}", img, _fields(i, encode_image(img, "jpg")), ext="jpg"))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = validate_folder(folder)
        t_validate = time.perf_counter() - t0
        assert report.ok
        t0 = time.perf_counter()
        n = sum(1 for _ in shard_pipeline([folder], shuffle_buffer=100, split=False))
        t_read = time.perf_counter() - t0
        assert n == N
    return f"""## Shard I/O

`.venv/bin/python scripts/bench.py shards` — {N} JPEG samples of {W}×{H} px (encode + write includes JPEG
encoding and schema checks; read = the trainer's WebDataset pipeline with decode, one process).

| step | samples/s |
|---|---|
| encode + write | {N / t_write:.0f} |
| `mst validate` | {N / t_validate:.0f} |
| read + decode (trainer pipeline) | {N / t_read:.0f} |
"""
