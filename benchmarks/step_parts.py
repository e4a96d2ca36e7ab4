"""Where a training step's time goes: short `uh_train.train.train` runs with a `StepClock`, shared by
`bench_train.py` (CPU presets) and `bench_gpu.py` (the paper preset on a GPU)."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

import uh_train.train as tr
from uh_train.training.config import TrainConfig
from uh_train.training.monitor import StepClock

# The parts in the order a step runs them (nested parts are also inside their enclosing part).
PART_ORDER = (
    "data", "G forward", "G forward (D step)", "D forward/backward: reals, fakes, CutMix", "R1",
    "D forward: fakes for G", "teacher forward", "pixel loss: L1 + LPIPS (Eq. 8)",
    "backward to the image: D, pixel loss", "G backward", "optimiser", "EMA",
)
NESTED_PARTS: tuple[str, ...] = ()  # parts timed inside another part, so not added to the step's sum


def random_lpips(device: torch.device):
    """LPIPS with a randomly initialised AlexNet: the cost of the real one, for machines without its
    weights (only for timing)."""
    import lpips

    return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).to(device).eval().requires_grad_(False)


def timed_run(out: Path, steps: int, lpips_for_timing: bool = True, **config) -> tuple[StepClock, dict]:
    """`steps` training steps with a StepClock. With `lpips_for_timing` and a teacher, LPIPS runs even
    where its AlexNet weights are absent (random backbone, same cost)."""
    cfg = TrainConfig(out=str(out), kimg=config["batch"] * steps / 1000, snapshot_kimg=1e9, **config)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    clock = StepClock(device)
    original = tr.make_lpips
    if lpips_for_timing and cfg.lpips != "off":
        tr.make_lpips = lambda mode, dev, preset="tiny": random_lpips(dev)
    try:
        summary = tr.train(cfg, clock=clock)
    finally:
        tr.make_lpips = original
    return clock, summary


def step_seconds(clock: StepClock, skip: int = 1) -> dict[str, float]:
    """Median seconds per part over the steps after the first `skip` (warm-up, compilation), and the
    total; steps with R1 (every r1_interval, the first one included) are counted apart."""
    steps = clock.steps[skip:] or clock.steps
    plain = [s for s in steps if "R1" not in s] or steps
    out = {name: statistics.median(s.get(name, 0.0) for s in plain) for name in PART_ORDER
           if any(name in s for s in plain)}
    out["step (sum of the top-level parts)"] = statistics.median(_top_level(s) for s in plain)
    with_r1 = [s for s in clock.steps if "R1" in s]
    if with_r1:
        out["R1 (on its steps)"] = statistics.median(s["R1"] for s in with_r1)
    return out


def _top_level(step: dict[str, float]) -> float:
    return sum(v for k, v in step.items() if k not in NESTED_PARTS)


def parts_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per part, one column per run (seconds per step)."""
    names = [n for n in (*PART_ORDER, "R1 (on its steps)", "step (sum of the top-level parts)")
             if any(n in c for c in columns.values())]
    head = "| part | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = []
    for n in names:
        cells = [f"{c[n]:.3f}" if n in c else "–" for c in columns.values()]
        label = f"**{n}**" if n.startswith("step") else n
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
