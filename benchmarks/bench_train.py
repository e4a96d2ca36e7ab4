"""Trainer: where a training step's time goes (per part, `tiny` and `small`, stage 1 and 2), the data
pipeline's throughput per loader process (synthetic and photo-sized JPEG sources) and how many
loader processes a GPU step needs, and a short learning curve on CPU."""

from __future__ import annotations

import glob
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import uh_train.train as tr
from mst_pipeline.shards.writer import ShardWriter, encode_image, encode_sample, write_manifest
from mst_pipeline.synthesis.synthetic import random_figure, render, write_synthetic
from uh_train.checkpoint import load_generator
from uh_train.data.patches import PatchConfig
from uh_train.data.streams import PatchBatches
from uh_train.diagnostics import sliced_wasserstein
from uh_train.format.geometry import density, full_image_homography, image_region, scale_translate
from uh_train.training.config import TrainConfig
from uh_train.training.models import build_networks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_parts import NESTED_PARTS, PART_ORDER, parts_table, step_seconds, timed_run  # noqa: E402

BATCH, RES = 32, 64
# preset, stage, batch, steps
PART_RUNS = (("tiny", 1, 8, 4), ("tiny", 2, 8, 4), ("small", 1, 8, 3), ("small", 2, 8, 3))
# Assumed GPU speed of a `paper` step (s/kimg, one GPU, batch 32): StyleGAN3-T alone is published at 12.3
# s/kimg on 8 A100s at 512 px (about 25 s/kimg for one A100 at 256 px, a quarter of the pixels); our step
# adds the U-Net D's three passes and, in stage 2, the teacher. `bench gpu` measures the real number.
ASSUMED_S_PER_KIMG = (10.0, 25.0, 40.0)


def loader_rate(shards: Path, batches: int = 8) -> float:
    it = iter(PatchBatches([shards], batch=BATCH, cfg=PatchConfig(res=RES, stage=2), seed=0))
    next(it)  # warm-up: shuffle buffers fill
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t0)


def learning_curve(shards: Path, out: Path, kimg: float = 0.48, snapshots: int = 4) -> list[tuple[float, float]]:
    cfg = TrainConfig(shards=[str(shards)], out=str(out), stage=1, preset="tiny", batch=8, kimg=kimg,
                         snapshot_kimg=kimg / snapshots, lpips="off", seed=0)
    torch.manual_seed(cfg.seed)
    G0, _ = build_networks(cfg)
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


def photo_shards(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """Photo-sized sources as the trainer meets them: 512 x 1024 JPEG full bodies (density 1024) and
    1024 x 1024 JPEG upper-body crops at 2.5x that density, with sensor-like noise so the JPEGs are as
    costly to decode as photographs."""
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, "photo_full", max_count=100, update_manifest=False) as full, \
            ShardWriter(folder, "photo_crop", max_count=100, update_manifest=False) as crop:
        for i in range(n):
            fig = random_figure(rng)
            d_up = 2.5 * 1024
            for writer, kind, H, w, h in ((full, "full", full_image_homography(512, 1024), 512, 1024),
                                          (crop, "upper", scale_translate(1 / d_up, 1 / d_up,
                                                                          fig.joints["neck"][0] - 0.2,
                                                                          fig.head_centre[1] - 0.1), 1024, 1024)):
                image = render(fig, H, w, h).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
                image = image.clip(0, 255).astype(np.uint8)
                data = encode_image(image, "jpg")
                region = image_region(H, w, h)
                fields = {"kind": kind, "tier": "HR", "H": H, "region": region, "density": density(H, w, h),
                          "keypoints": None, "smpl": None, "fit": None,
                          "orig": {"path": f"photo/{i}.jpg", "sha256": hashlib.sha256(data).hexdigest(),
                                   "width": w, "height": h}}
                writer.write(encode_sample(writer.source, f"p{i:04d}", image, fields, ext="jpg", encoded=data))
    write_manifest(folder)
    return folder


def loader_rates(shards: Path, res: int, batch: int = 16, batches: int = 4) -> dict[int, float]:
    """Samples/s of one loader process (DataLoader with workers=0 is the same code a worker runs),
    stage 1 and stage 2, at patch size `res`."""
    out = {}
    for stage in (1, 2):
        it = iter(PatchBatches([shards], batch=batch, cfg=PatchConfig(res=res, stage=stage), seed=0))
        next(it)  # warm-up: shuffle buffers fill
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        out[stage] = batches * batch / (time.perf_counter() - t0)
    return out


def part_columns(shards: Path, root: Path) -> dict[str, dict[str, float]]:
    teachers = {}
    columns = {}
    for preset, stage, batch, steps in PART_RUNS:
        if stage == 1:
            clock, summary = timed_run(root / f"parts-{preset}-1", steps, shards=[str(shards)], stage=1,
                                       preset=preset, batch=batch, lpips="off", seed=0)
            teachers[preset] = Path(summary["out"])
        else:
            clock, _ = timed_run(root / f"parts-{preset}-2", steps, shards=[str(shards)], stage=2,
                                 teacher=str(teachers[preset]), preset=preset, batch=batch, lpips="on", seed=0)
        columns[f"{preset}, stage {stage}"] = step_seconds(clock, skip=1)
    return columns


def largest_parts(columns: dict[str, dict[str, float]]) -> str:
    """One sentence: the two largest parts of each column's step, with their shares."""
    said = []
    for name, col in columns.items():
        total = col["step (sum of the top-level parts)"]
        parts = sorted(((v, k) for k, v in col.items() if k in PART_ORDER and k not in NESTED_PARTS), reverse=True)
        said.append(f"{name}: " + ", ".join(f"{k} {v / total:.0%}" for v, k in parts[:2]))
    return "Largest parts of a step: " + "; ".join(said) + "."


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic(tmp / "shards", n=48, res=256, seed=0)
        samples_per_s = loader_rate(tmp / "shards")
        columns = part_columns(tmp / "shards", tmp)
        photo = loader_rates(photo_shards(tmp / "photo"), res=256)
        write_synthetic(tmp / "small", n=32, res=64, seed=0)
        curve = learning_curve(tmp / "small", tmp / "curve")
    rows = "\n".join(f"| {k:.2f} | {d:.3f} |" for k, d in curve)
    small2 = columns["small, stage 2"]
    small2_batch = next(b for p, s, b, _ in PART_RUNS if (p, s) == ("small", 2))
    train_per_s = small2_batch / small2["step (sum of the top-level parts)"]
    need = "\n".join(f"| {a:.0f} | {1000 / a:.0f} | {1000 / a / photo[1]:.1f} | {1000 / a / photo[2]:.1f} |"
                     for a in ASSUMED_S_PER_KIMG)
    runs = ", ".join(f"{p} stage {s}: batch {b}, {n} steps" for p, s, b, n in PART_RUNS)
    return f"""## Trainer

`.venv/bin/python scripts/bench.py train`

### Where a step's time goes

Seconds per training step by part (`uh_train.training.monitor.StepClock`; median over the steps after the first,
without R1; R1 runs every 16 steps and its own row is the median over the steps that ran it). {runs};
CPU, synthetic shards. Stage 2 starts from the stage-1 run and includes the teacher and Eq. 8 with LPIPS
(its AlexNet randomly initialised where the weights are absent: the same cost). Eq. 9's consistency
term is in the D part; the G step's backward through D and the pixel loss (to the image) is in
"backward to the image: D, pixel loss", the rest of it in "G backward". Absolute times depend on what else
runs on the machine (on a shared 2-core machine they can be several times a quiet one's); compare
parts within a column, and the trainers against each other only interleaved ("train_speedup").

{parts_table(columns)}
{largest_parts(columns)} The D step trains on the G step's fakes (one render per step) and runs reals,
fakes and CutMix images in one pass. The step against the previous trainer is in the "train_speedup"
section.

### Data pipeline

Data pipeline alone vs training, stage 2, r = {RES} (`small` preset), one loader process, synthetic
multi-source shards (full body 256 px, upper-body and face crops at 2.5x and 4x density):

| | samples/s |
|---|---|
| data pipeline (decode + patch sampling + resampling through H^-1), batch {BATCH} | {samples_per_s:.0f} |
| training (the `small, stage 2` step above) | {train_per_s:.1f} |
| ratio | {samples_per_s / train_per_s:.0f}x |

Photo-sized sources, r = 256 (`paper`): 512 x 1024 JPEG full bodies and 1024 x 1024 JPEG upper-body
crops (mixed 1:1 in stage 2), per loader process (`--workers N` runs N of them):

| stage | samples/s per loader process |
|---|---|
| 1 (full bodies, whole) | {photo[1]:.0f} |
| 2 (patches at sampled (v, s)) | {photo[2]:.0f} |

Loader processes one GPU needs at `paper`, batch 32, for assumed step speeds (not measured here: no GPU;
`bench gpu` measures it). The assumption starts from StyleGAN3-T's published 12.3 s/kimg on 8 A100s at
512 px, about 25 s/kimg on one A100 at 256 px; our step adds the U-Net D's passes and, in stage 2,
the teacher, and newer GPUs are faster, hence the range:

| s/kimg (assumed) | samples/s needed | processes, stage 1 | processes, stage 2 |
|---|---|---|---|
{need}

Round up and add one: each process also decodes while the step runs, and the rates above are of a
machine shared with other jobs.

### Learning curve

Stage 1, `tiny` preset (r = 32), batch 8, on 32 synthetic people; sliced Wasserstein
distance of 7x7 patch descriptors (`uh_train.diagnostics`) between 128 real images and 128 images of
G_ema for fixed z (lower is better; step 0 is the untrained network):

| kimg | SWD |
|---|---|
{rows}
"""
