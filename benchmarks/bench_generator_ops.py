"""The generator's two costly operations on a CPU, each way the code can run them, per layer.

For every synthesis layer of `tiny` and `small` (batch 8, the layer's real sizes, filters and
padding), forward and backward of:

* the filtered leaky ReLU (upsample, leaky ReLU, downsample): as the generator runs it on a CPU
  (`filtered_lrelu`: channels-last memory order) against the same operations on contiguous NCHW
  tensors;
* the modulated convolution: one grouped convolution with a weight per sample (`fused=True`)
  against one convolution shared by the batch between input and output scalings (`fused=False`),
  and which of the two `modulated_conv2d` picks by itself.

Medians over repetitions after a warm-up; the variants alternate within each repetition.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

PRESETS = ("tiny", "small")
BATCH = 8
REPEATS = int(os.environ.get("UH_BENCH_REPEATS", "7"))


def _time(fn, args) -> float:
    inputs = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    t0 = time.perf_counter()
    out = fn(*inputs)
    (out * 1e-3).sum().backward()
    return time.perf_counter() - t0


def measure(preset: str) -> list[dict]:
    from uh_train.networks import Generator, get_preset
    from uh_train.networks.ops import filtered_lrelu, grouped_is_faster, modulated_conv2d

    torch.manual_seed(0)
    G = Generator(get_preset(preset).generator)
    rows = []
    for spec in G.synthesis.specs[:-1]:  # ToRGB has neither filter and a 1x1 convolution
        layer = getattr(G.synthesis, spec.name)
        n, size = BATCH, spec.in_size + 2  # the 3x3 convolution's output, with its padding of 2
        x_act = torch.randn(n, spec.out_channels, size, size, requires_grad=True)
        x_conv = torch.randn(n, spec.in_channels, spec.in_size, spec.in_size, requires_grad=True)
        weight = torch.randn(spec.out_channels, spec.in_channels, 3, 3, requires_grad=True)
        styles = torch.randn(n, spec.in_channels, requires_grad=True)

        def act(channels_last, layer=layer):
            return lambda x: filtered_lrelu(x, layer.up_filter, layer.down_filter, None, layer.up_factor,
                                            layer.down_factor, layer.padding, gain=math.sqrt(2), slope=0.2,
                                            clamp=None, channels_last=channels_last)

        def conv(fused):
            return lambda x, w, s: modulated_conv2d(x, w, s, padding=2, fused=fused)

        variants = {"act channels-last": (act(True), [x_act]), "act NCHW": (act(False), [x_act]),
                    "conv grouped": (conv(True), [x_conv, weight, styles]),
                    "conv shared": (conv(False), [x_conv, weight, styles])}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn, args in variants.values():  # warm-up
            _time(fn, args)
        for rep in range(REPEATS):
            for k in (variants if rep % 2 == 0 else reversed(list(variants))):
                fn, args = variants[k]
                times[k].append(_time(fn, args))
        med = {k: statistics.median(v) for k, v in times.items()}
        picked_fused = grouped_is_faster(x_conv.device, spec.in_channels, spec.out_channels)
        upsampled = size * layer.up_factor + sum(layer.padding[:2]) - len(layer.up_filter) + 1  # after the crop
        rows.append({"layer": spec.name, "channels": f"{spec.in_channels}->{spec.out_channels}",
                     "upsampled": f"{upsampled}", **med,
                     "picked": "grouped" if picked_fused else "shared"})
    return rows


def run() -> str:
    parts = []
    for preset in PRESETS:
        rows = measure(preset)
        lines = []
        for r in rows:
            picked = r[f"conv {r['picked']}"]
            lines.append(f"| {r['layer']} | {r['channels']} | {r['upsampled']} | {r['act NCHW'] * 1e3:.1f} | "
                         f"{r['act channels-last'] * 1e3:.1f} | {r['act NCHW'] / r['act channels-last']:.2f}x | "
                         f"{r['conv grouped'] * 1e3:.1f} | {r['conv shared'] * 1e3:.1f} | {r['picked']} "
                         f"({r['conv grouped'] / picked:.2f}x) |")
        tot = {k: sum(r[k] for r in rows) for k in ("act NCHW", "act channels-last", "conv grouped")}
        tot_picked = sum(r[f"conv {r['picked']}"] for r in rows)
        lines.append(f"| **all** | | | {tot['act NCHW'] * 1e3:.1f} | {tot['act channels-last'] * 1e3:.1f} | "
                     f"{tot['act NCHW'] / tot['act channels-last']:.2f}x | {tot['conv grouped'] * 1e3:.1f} | | "
                     f"picked: {tot_picked * 1e3:.1f} ({tot['conv grouped'] / tot_picked:.2f}x) |")
        parts.append(f"`{preset}`, batch {BATCH}:\n\n"
                     "| layer | channels | upsampled px | activation NCHW ms | channels-last ms | speed-up | "
                     "conv grouped ms | conv shared ms | picked (vs grouped) |\n"
                     "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    body = "\n".join(parts)
    return f"""## The generator's operations on a CPU

`.venv/bin/python scripts/bench.py generator_ops` — forward and backward of each synthesis
layer's filtered leaky ReLU (upsample, leaky ReLU, downsample) and modulated 3x3 convolution at the
layer's real sizes, median of {REPEATS} repetitions after a warm-up, the variants alternating;
{torch.get_num_threads()} torch threads. The activation as the generator runs it on a CPU
(channels-last memory order) against the same operations on NCHW tensors; the modulated
convolution as one grouped convolution against one convolution shared by the batch, and the one
`modulated_conv2d` picks (shared where a channel count is not a multiple of 8).

{body}"""
