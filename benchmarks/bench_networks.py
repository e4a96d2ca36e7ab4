"""Generator and discriminator speed on CPU, stitched vs single-pass rendering, and the measured
architectural properties (equivariance, stitched vs single, patch vs twice-resolution image).

Set UH_BENCH_PRESETS (comma-separated, default "tiny,small"; add paper on a machine with more
than 24 GiB, where its train step fits) to choose the presets, and
UH_BENCH_RENDER_PRESET (default "small") for the 2048 px render timing ("paper" takes minutes).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from uh_train.networks import Discriminator, Generator, get_preset, patch_transforms
from uh_train.render import psnr, render_patch, render_region, seed_latents

BATCH = 4


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up: first calls create the convolution kernels
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _train_step(G, D, g_opt, d_opt, r):
    """One non-saturating G step and one D step on both heads (no R1, no augmentation)."""
    z = torch.randn(BATCH, G.z_dim)
    g_logits, p_logits = D(G(z, update_emas=True))
    g_loss = F.softplus(-g_logits).mean() + F.softplus(-p_logits).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    real = torch.randn(BATCH, 3, r, r).clamp(-1, 1)
    with torch.no_grad():
        fake = G(z)
    fg, fp = D(fake)
    rg, rp = D(real)
    d_loss = (F.softplus(fg) + F.softplus(-rg)).mean() + (F.softplus(fp) + F.softplus(-rp)).mean()
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()


def _speed_rows(presets: list[str]) -> list[str]:
    rows = []
    for name in presets:
        torch.manual_seed(0)
        preset = get_preset(name)
        G, D = Generator(preset.generator), Discriminator(preset.discriminator)
        r = G.img_resolution
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        z = torch.randn(BATCH, G.z_dim)
        with torch.no_grad():
            t_gen = _timed(lambda: G(z))  # noqa: B023
        g_opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99))
        d_opt = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
        t_step = _timed(lambda: _train_step(G, D, g_opt, d_opt, r))  # noqa: B023
        rows.append(f"| {name} | {r} | {count(G) / 1e6:.3f} | {count(D) / 1e6:.3f} | {BATCH / t_gen:.2f} "
                    f"| {t_step:.2f} |")
    return rows


def _render_rows(name: str, size: int = 2048) -> list[str]:
    torch.manual_seed(0)
    G = Generator(get_preset(name).generator).eval().requires_grad_(False)
    ws = G.mapping(seed_latents([0], G.z_dim))
    rows = []
    images = {}
    for mode in ("stitched", "single"):
        start = time.perf_counter()
        images[mode] = render_region(G, ws, size, mode=mode)
        rows.append(f"| {name} | {size} | {mode} | {time.perf_counter() - start:.1f} |")
    rows.append(f"| {name} | {size} | PSNR stitched vs single | {psnr(images['stitched'], images['single']):.1f} dB |")
    return rows


def measure_properties(name: str, n: int = 4) -> dict[str, float]:
    """PSNRs (dB, images in [-1, 1]) of an untrained generator of a preset, after calibrating its
    magnitude EMAs; the scale affines get random weights so that scale conditioning is active."""
    torch.manual_seed(0)
    G = Generator(get_preset(name).generator).eval().requires_grad_(False)
    r = G.img_resolution
    with torch.no_grad():
        G(torch.randn(n, G.z_dim), update_emas=True)
        for layer in G.synthesis.layer_names:
            torch.nn.init.normal_(getattr(G.synthesis, layer).scale_affine.weight, std=0.3)
        ws = G.mapping(seed_latents(range(n), G.z_dim))
        out = {}
        k, m = max(1, r // 32), r // 8  # shift by ~3% of the patch; compare the interior
        a = G.synthesis(ws, patch_transforms([[0.5, 0.5]] * n, 1.0))
        b = G.synthesis(ws, patch_transforms([[0.5 + k / r, 0.5]] * n, 1.0))
        out["equivariance (shift v by k px)"] = psnr(b[:, :, m:-m, m : -m - k], a[:, :, m:-m, m + k : -m])
        out["same without re-alignment"] = psnr(b[:, :, m:-m, m:-m], a[:, :, m:-m, m:-m])
        big = render_region(G, ws, 2 * r, mode="single")
        out["patch (v, s=2) vs 2r image"] = psnr(render_patch(G, ws, (0.25, 0.75), 2.0), big[:, :, r:, :r])
        out["stitched vs single at 4r"] = psnr(render_region(G, ws, 4 * r, mode="stitched"),
                                               render_region(G, ws, 4 * r, mode="single"))
    return out


def run() -> str:
    presets = os.environ.get("UH_BENCH_PRESETS", "tiny,small").split(",")
    render_preset = os.environ.get("UH_BENCH_RENDER_PRESET", "small")
    speed = "\n".join(_speed_rows(presets))
    render = "\n".join(_render_rows(render_preset))
    props = []
    for name in [p for p in presets if p != "paper"]:
        for key, value in measure_properties(name).items():
            props.append(f"| {name} | {key} | {value:.1f} |")
    props_table = "\n".join(props)
    return f"""## Networks

`.venv/bin/python scripts/bench.py networks` — untrained networks, float32 on CPU
({torch.get_num_threads()} torch threads), batch {BATCH}. Train step = one G step and one D step with
non-saturating losses on both D heads (no R1, no augmentation, no data loading).

| preset | r | G params (M) | D params (M) | G images/s | G+D train step (s) |
|---|---|---|---|---|---|
{speed}

2048 px render of one image (`render_region`, default memory budget for single-pass blocks):

| preset | size | mode | seconds |
|---|---|---|---|
{render}

Measured properties (PSNR in dB, peak-to-peak 2):

| preset | property | PSNR |
|---|---|---|
{props_table}
"""


if __name__ == "__main__":
    print(run())
