"""`mst validate` on one process against one per CPU core, interleaved (same folder, same report)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.synthesis.synthetic import write_synthetic

REPEATS = 3


def run() -> str:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        write_synthetic(folder, n=400, res=256, seed=0, max_count=25)  # 3 sources x 16 shards
        rates: dict[int, list[float]] = {1: [], cores: []}
        reports = {}
        for rep in range(REPEATS):
            for workers in ((1, cores) if rep % 2 == 0 else (cores, 1)):
                t0 = time.perf_counter()
                report = validate_folder(folder, workers=workers)
                rates[workers].append(report.samples / (time.perf_counter() - t0))
                reports[workers] = report.to_dict()
        assert reports[1] == reports[cores]
        samples, shards = reports[1]["samples"], reports[1]["shards"]
    one, all_ = statistics.median(rates[1]), statistics.median(rates[cores])
    return f"""## Shard validation

`.venv/bin/python scripts/bench.py validate`

`mst validate` checks shards in a process pool (`--workers`, default one per core); the report is the
same, in the same order. {samples} synthetic samples (256 px full bodies, denser crops) in {shards}
shards, one process against {cores}, alternating, median of {REPEATS}:

| processes | samples/s |
|---|---|
| 1 | {one:.0f} |
| {cores} | {all_:.0f} |
| speed-up | {all_ / one:.2f}x |

On a machine shared with other jobs the pool gets the cores that are free; the speed-up is bounded
by the number of idle cores, not by the code.
"""
