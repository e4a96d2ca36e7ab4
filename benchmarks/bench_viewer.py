"""`uh-view`: time to a 512 x 512 view, from the request to the PNG, for the `tiny` and `small` presets.

Each view is a new window (no cache hit): it goes through the viewer's render queue on the device and
`render_seed`, as a pan or zoom does, then to PNG. Untrained weights (the time does not depend on them).

    python benchmarks/bench_viewer.py [--device cpu] [--views 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from uh_train.generate import random_generator
from uh_train.viewer.queue import ViewCache
from uh_train.viewer.request import View
from uh_train.viewer.server import Viewer, png_bytes

SIZE = 512
PRESETS = ("tiny", "small")


def view_latency(preset: str, device: str, views: int = 12, size: int = SIZE, mode: str = "single") -> dict:
    """p50/p95 seconds from asking for a new view to its PNG bytes, over `views` windows (after one warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        viewer = Viewer(G=random_generator(preset, 0, device), ckpt=Path("random.safetensors"), device=device,
                        mode=mode, save_dir=Path(tmp), size=size, cache=ViewCache(256 << 20))
        rng = np.random.default_rng(0)
        seconds = []
        for i in range(views + 1):
            s = float(rng.uniform(1, 8))
            half = 0.5 / s
            view = View(seed=i, psi=0.8, v=(float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half))),
                        s=s, size=size).check(viewer.r)
            start = time.perf_counter()
            png_bytes(viewer.render(view).result())
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        seconds = sorted(seconds[1:])
    return {"preset": preset, "device": device, "mode": mode, "views": views, "r": viewer.r,
            "p50": statistics.median(seconds), "p95": seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]}


def table(rows: list[dict]) -> str:
    lines = ["| preset | r | device | mode | views | p50 (s) | p95 (s) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| `{m['preset']}` | {m['r']} | {m['device']} | {m['mode']} | {m['views']} | {m['p50']:.2f} | "
              f"{m['p95']:.2f} |" for m in rows]
    return "\n".join(lines) + "\n"


def run() -> str:
    rows = [view_latency(preset, "cpu", views=views, mode=mode) for preset in PRESETS
            for mode, views in (("single", 12), ("stitched", 5))]
    return f"""## The viewer: time to a view

`.venv/bin/python scripts/bench.py viewer` (`just bench viewer`) — `uh-view`'s time from asking for a new
{SIZE} x {SIZE} view (a window T(v, s) with s from 1 to 8, never cached) to its PNG: the render queue,
`render_seed` (the function `uh-generate` writes with) and PNG encoding, {torch.get_num_threads()} torch
threads. `single` is `uh-view`'s default (`--mode`), `stitched` is `uh-generate`'s; a view shown in the
browser equals `uh-generate --patch` with the same `--mode`. The GPU figure is in "GPU check" (`just bench gpu`).

{table(rows)}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--views", type=int, default=12)
    args = ap.parse_args()
    print(table([view_latency(p, args.device, args.views) for p in PRESETS]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
