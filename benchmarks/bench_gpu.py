"""GPU check (`just bench gpu`): the `paper` preset on one GPU, in a few minutes.

* training speed, stage 1 and stage 2, batch 32 (accumulating over smaller per-GPU batches when the
  whole batch does not fit): s/kimg, peak memory, where a step's time goes; in bf16 (eager and
  torch.compile) and in fp32 (eager), the two values of `--precision`;
* a 2048 px image rendered three ways: 64 sequential 256 px patches (the paper's way), stitched
  with several patches per generator call, and one pass on an 8x larger canvas; time and PSNR.

Without CUDA, `run()` prints why and returns None (bench.py keeps the section as it is). The same
functions run on a CPU with the `tiny` preset:

    python benchmarks/bench_gpu.py --device cpu --preset tiny --steps 2 --batch 4 --render-tiles 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_parts import NESTED_PARTS, parts_table, step_seconds, timed_run  # noqa: E402

from uh_train.networks import Generator, get_preset  # noqa: E402
from uh_train.render import psnr, render_patch, render_region  # noqa: E402


def make_shards(root: Path, res: int, n: int = 32) -> Path:
    from mst_pipeline.synthesis.synthetic import write_synthetic

    folder = root / "shards"
    write_synthetic(folder, n=n, res=2 * res, seed=0)  # full bodies at 2r, crops denser
    return folder


def measure_training(shards: Path, root: Path, preset: str, device: str, batch: int, steps: int,
                     compile_networks: bool, workers: int, teacher: Path | None = None,
                     precision: str = "bf16") -> dict:
    """Stage 1 (teacher None) or stage 2 for `steps` steps. The per-GPU batch is halved until a step
    fits in memory. Returns s/kimg, peak memory, batch_gpu and the per-part medians."""
    stage = 1 if teacher is None else 2
    batch_gpu = batch
    while True:
        out = root / f"s{stage}-{'compiled' if compile_networks else 'eager'}-{precision}-{batch_gpu}"
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            clock, _ = timed_run(out, steps, shards=[str(shards)], stage=stage,
                                 teacher=str(teacher) if teacher else None, preset=preset, batch=batch,
                                 batch_gpu=batch_gpu, device=device,
                                 compile=compile_networks, workers=workers, lpips="on" if stage == 2 else "off",
                                 seed=0, precision=precision)
            break
        except torch.OutOfMemoryError:
            if batch_gpu == 1:
                raise
            batch_gpu //= 2
    skip = min(2, steps - 1)  # first steps: allocation, compilation
    parts = step_seconds(clock, skip=skip)
    step = parts["step (sum of the top-level parts)"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"stage": stage, "out": out, "batch_gpu": batch_gpu, "s_per_kimg": step / batch * 1000,
            "peak_gib": peak, "parts": parts,
            "first_step_s": sum(v for k, v in clock.steps[0].items() if k not in NESTED_PARTS)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_render(preset: str, device: str, tiles: int = 8, bf16: bool = True) -> dict:
    """A (tiles * r) px image of one person, three ways; seconds and PSNR against the sequential one."""
    torch.manual_seed(0)
    G = Generator(get_preset(preset).generator).to(device).eval()
    r = G.img_resolution
    ws = G.mapping(torch.randn(1, G.z_dim, device=device))
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 and device == "cuda")
    results, images = {}, {}
    with torch.no_grad(), amp:
        render_patch(G, ws, (0.5, 0.5), 1.0)  # warm-up

        def sequential() -> torch.Tensor:  # the paper's way: one patch per generator call, in order
            out = torch.empty(1, 3, tiles * r, tiles * r, device=device)
            for i in range(tiles):
                for j in range(tiles):
                    centre = ((j + 0.5) / tiles, (i + 0.5) / tiles)
                    out[:, :, i * r:(i + 1) * r, j * r:(j + 1) * r] = render_patch(G, ws, centre, tiles).float()
            return out

        for name, fn in (("sequential patches", sequential),
                         ("stitched, batched", lambda: render_region(G, ws, tiles * r, mode="stitched")),
                         ("single pass", lambda: render_region(G, ws, tiles * r, mode="single"))):
            _sync(device)
            t0 = time.perf_counter()
            images[name] = fn().float()
            _sync(device)
            results[name] = time.perf_counter() - t0
    ref = images["sequential patches"]
    return {"size": tiles * r, "seconds": results,
            "psnr": {name: psnr(img.clamp(-1, 1), ref.clamp(-1, 1)) for name, img in images.items()
                     if name != "sequential patches"}}


def measure(preset: str, device: str, batch: int, steps: int, tiles: int, compile_modes=(False, True),
            workers: int = 4, people: int = 32, precisions=("bf16", "fp32")) -> dict:
    """Both stages for each arithmetic (`--precision`), eager, and the first one compiled too."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        res = get_preset(preset).generator.img_resolution
        shards = make_shards(root, res, people)
        runs = {}
        for precision in precisions:
            for compiled in compile_modes if precision == precisions[0] else (False,):
                s1 = measure_training(shards, root, preset, device, batch, steps, compiled, workers,
                                      precision=precision)
                s2 = measure_training(shards, root, preset, device, batch, steps, compiled, workers,
                                      teacher=s1["out"], precision=precision)
                runs[compiled, precision] = (s1, s2)
        render = measure_render(preset, device, tiles)
    from bench_viewer import view_latency

    views = [view_latency(p, device) for p in ("tiny", "small", preset)]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return {"device": name, "preset": preset, "batch": batch, "steps": steps, "runs": runs, "render": render,
            "views": views}


def report(m: dict) -> str:
    lines = [f"### {m['device']}: `{m['preset']}` preset, batch {m['batch']}",
             "", "| run | stage | per-GPU batch | s/kimg | peak memory (GiB) | first step (s) |",
             "|---|---|---|---|---|---|"]
    columns = {}
    for (compiled, precision), stages in m["runs"].items():
        mode = f"{'torch.compile' if compiled else 'eager'}, {precision}"
        for s in stages:
            lines.append(f"| {mode} | {s['stage']} | {s['batch_gpu']} | {s['s_per_kimg']:.1f} | {s['peak_gib']:.1f} | "
                         f"{s['first_step_s']:.1f} |")
            columns[f"{mode}, stage {s['stage']}"] = s["parts"]
    r = m["render"]
    lines += ["", f"Seconds per step by part (median over steps {min(2, m['steps'] - 1) + 1}..{m['steps']}, "
              "the device synchronised around each part; LPIPS with a randomly initialised AlexNet where its "
              "weights are absent, same cost):", "", parts_table(columns),
              f"Rendering one {r['size']} px image (bf16):", "", "| method | seconds | PSNR vs sequential (dB) |",
              "|---|---|---|"]
    for name, sec in r["seconds"].items():
        p = r["psnr"].get(name)
        lines.append(f"| {name} | {sec:.2f} | {'reference' if p is None else f'{p:.1f}'} |")
    if "views" in m:
        from bench_viewer import table

        lines += ["", "`uh-view`: time to a new 512 px view (float32, as `uh-generate` renders):", "",
                  table(m["views"])]
    return "\n".join(lines) + "\n"


INTRO = ("## GPU check\n\n`.venv/bin/python scripts/bench.py gpu` (`just bench gpu`, about 8 minutes): the `paper` "
         "preset's training step and 2048 px rendering on one GPU. Each run replaces its GPU's entry and keeps the "
         "others.\n")


def run() -> str | None:
    if not torch.cuda.is_available():
        print("bench gpu: skipped: no CUDA device here; docs/benchmarks.md keeps its GPU section as it is. "
              "To try the script on a CPU: python benchmarks/bench_gpu.py --device cpu --preset tiny")
        return None
    m = measure("paper", "cuda", batch=32, steps=6, tiles=8)
    return merge_entries(_previous_section(), report(m))


def merge_entries(previous: str, entry: str) -> str:
    """The section with `entry` (one GPU's results, a '### GPU: ...' block) replacing the entry of the
    same GPU and preset, other GPUs' entries kept in their order."""
    title = entry.split("\n", 1)[0]
    kept = []
    for block in previous.split("\n### ")[1:]:
        block = "### " + block.split("\n_Machine:")[0].rstrip() + "\n"
        if block.split("\n", 1)[0] != title:
            kept.append(block)
    return INTRO + "\n" + "\n".join([*kept, entry])


def _previous_section() -> str:
    import re

    path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else ""
    found = re.search(r"<!-- bench:gpu -->\n(.*?)<!-- /bench -->", text, re.S)
    return found.group(1) if found else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--render-tiles", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu --preset tiny to try the script)")
        return 0
    modes = (False,) if args.no_compile else (False, True)
    m = measure(args.preset, args.device, args.batch, args.steps, args.render_tiles, modes)
    print(report(m))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
