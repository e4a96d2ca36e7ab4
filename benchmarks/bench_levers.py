"""Candidate speed levers of the training step on this machine, each against the default, interleaved.

One training-like pass per repetition: G renders a batch of patches (with gradient), D scores reals,
fakes and CutMix images in one pass, and the summed logits are differentiated back to both networks
(the shape of a step without the data, the losses' arithmetic and the optimiser). Variants:

* default: float32, contiguous (NCHW) tensors, eager execution, as the trainer runs on a CPU;
* channels_last D: D's weights and inputs in channels-last memory order;
* bf16 autocast: `torch.autocast("cpu", torch.bfloat16)` around both networks;
* torch.compile: G and D compiled (inductor); its one-off compile time is reported apart.

Medians over repetitions after a warm-up pass; variants alternate within each repetition, so a
machine whose speed drifts affects them alike.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

PRESETS = ("tiny", "small")
BATCH = 8
REPEATS = int(os.environ.get("UH_BENCH_REPEATS", "5"))
VARIANTS = ("default", "channels_last D", "bf16 autocast", "torch.compile")


def _networks(preset: str, variant: str):
    from uh_train.networks import Discriminator, Generator, get_preset
    from uh_train.training.models import channels_last_inputs

    torch.manual_seed(0)
    p = get_preset(preset)
    G, D = Generator(p.generator).train(), Discriminator(p.discriminator).train()
    G_run, D_run = G, D
    if variant == "channels_last D":  # as the trainer runs D on a CPU
        D_run = channels_last_inputs(D.to(memory_format=torch.channels_last))
    elif variant == "torch.compile":
        G_run, D_run = torch.compile(G), torch.compile(D)
    return G, G_run, D_run


def _pass(G, G_run, D_run, z: torch.Tensor, T: torch.Tensor, real: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fake = G_run(z, T)
        mixed = 0.5 * (real + fake)
        g, p = D_run(torch.cat([real, fake, mixed]), chunks=3)
        (g.float().mean() + p.float().mean()).backward()
    G.zero_grad(set_to_none=True)


def measure(preset: str) -> dict[str, dict[str, float]]:
    from uh_train.format.geometry import patch_transform

    nets = {v: _networks(preset, v) for v in VARIANTS}
    G0 = nets["default"][0]
    z = torch.randn(BATCH, G0.z_dim, generator=torch.Generator().manual_seed(1))
    T = torch.stack([torch.as_tensor(patch_transform((0.5, 0.3 + 0.05 * i), 1.0 + i / 4), dtype=torch.float32)
                     for i in range(BATCH)])
    real = torch.rand(BATCH, 3, G0.img_resolution, G0.img_resolution, generator=torch.Generator().manual_seed(2))
    real = real * 2 - 1
    first = {}
    for v, (G, G_run, D_run) in nets.items():  # warm-up (and, for torch.compile, the compile)
        t0 = time.perf_counter()
        _pass(G, G_run, D_run, z, T, real, v == "bf16 autocast")
        first[v] = time.perf_counter() - t0
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(REPEATS):
        order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
        for v in order:
            G, G_run, D_run = nets[v]
            t0 = time.perf_counter()
            _pass(G, G_run, D_run, z, T, real, v == "bf16 autocast")
            times[v].append(time.perf_counter() - t0)
    return {v: {"median": statistics.median(times[v]), "first": first[v]} for v in VARIANTS}


def run() -> str:
    rows = []
    for preset in PRESETS:
        res = measure(preset)
        base = res["default"]["median"]
        for v in VARIANTS:
            r = res[v]
            extra = f"{r['first']:.0f} s compile + first pass" if v == "torch.compile" else "–"
            rows.append(f"| {preset} | {v} | {r['median']:.3f} | {base / r['median']:.2f}x | {extra} |")
    table = "\n".join(rows)
    return f"""## Speed levers of the training step on a CPU

`.venv/bin/python scripts/bench.py levers` — one training-like pass (G renders {BATCH} patches with
gradient, D scores reals, fakes and CutMix images in one pass, both networks differentiated),
median of {REPEATS} repetitions after a warm-up pass, the variants alternating within each
repetition; {torch.get_num_threads()} torch threads. A ratio above 1 is faster than the default.
The default is what the trainer runs on a CPU; `--compile` turns on torch.compile.

| preset | variant | s per pass | vs default | one-off cost |
|---|---|---|---|---|
{table}
"""
