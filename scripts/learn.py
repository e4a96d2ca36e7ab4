"""`just learn`: does training learn people, and does stage 2 learn any resolution? A long CPU run on
data the project makes, with its curves.

Makes the data (rendered people in full, upper-body and face views, the partial views aligned by the
MST; synthetic hands composited onto upper-body patches; the same people's full views again at
`dense_res` px, so that a full-body view is dense enough for 8r) and trains stage 1. Then stage 2,
from that stage-1 network (the teacher), in two arms: every source, and the full-body sources alone
(both with the dense full views, weighted up and read zoomed in). Each arm
trains once per seed for `kimg2` (the ablation); the first seed's all-sources run goes on to
`kimg_ship` and is the shipped generator. Every chosen snapshot is evaluated (quick protocol: FID of
whole images, kFID per keypoint group, scale consistency at 2r, 4r and 8r) and drawn: a fixed-seed
grid (the whole body, a zoomed face, a zoomed hand) and the whole body rendered at 8r in one pass.
Writes OUT/learn.json (every number), OUT/learn.md (the tables), OUT/curves.png and the pictures;
--docs copies them into docs/benchmarks.md and docs/img/learn/, --ship writes the shipped run's
final generator with its provenance to checkpoints/.

Every step resumes, so the whole may span several sittings: data stages whose outputs exist are
reused, training runs continue from their last snapshot, evaluated snapshots are not evaluated again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import stage_plan  # noqa: E402  (the data stages are the demo's, at a larger size)

BIN = Path(sys.executable).parent
PARTIAL_SOURCES = ("people-upper", "people-face", "hands")
KFID_GROUPS = ("face", "hand")  # the groups the partial sources are for
GRID_SEEDS = tuple(range(6))
GRID_CELL = 96  # px per grid cell
# The grid's columns: name -> (centre v, scale s) in full-body space.
GRID_VIEWS = {"full body": ((0.5, 0.5), 1.0), **stage_plan.ZOOMS}
DEFAULT_SHIP = ROOT / "checkpoints" / "learned-tiny.safetensors"


@dataclass(frozen=True)
class Plan:
    people: int = 96
    hands: int = 48
    res: int = 128
    preset: str = "tiny"
    batch: int = 16  # the pilot's winner on 2 CPU cores (tiny at 8 and 16, small at 8; docs/training.md)
    minutes1: float = 50.0  # with a pilot: stage 1 wall budget (the pilot's minutes of the winner included)
    minutes2: float = 7.0  # with a pilot: per stage-2 ablation run
    pilot_minutes: float = 0.0  # per candidate; 0: no pilot, train `preset` at `batch`
    candidates: str = "tiny:8,tiny:16,small:8"
    kimg1: float | None = None  # stage 1; default: from the pilot's rate and minutes1, else 60
    kimg2: float | None = None  # each stage-2 ablation run (per arm and seed); default: as kimg1, else 20
    kimg_ship: float | None = 150.0  # the first seed's all-sources stage 2 goes on to this (the run to ship from)
    seeds: str = "0,1,2"  # stage-2 seeds of each ablation arm
    snap1: float | None = None  # default: a tenth of the stage
    snap2: float | None = None  # default: a quarter of kimg2
    fid_n: int = 256
    kfid_n: int = 48
    consistency_n: int = 16
    lambda_p: float = 50.0  # stage 2's teacher weight (the paper's is 5; docs/training.md, "Stage 2 diagnosis")
    ema2: float = 1.0  # stage 2's G_ema half-life in kimg (docs/training.md, "Stage 2 diagnosis")
    seed: int = 0  # stage 1's seed
    # The same people's full views rendered again at dense_res px (0: not) as a stage-2 source of its own
    # (DENSE_SOURCE), weighted dense_weight and read at s >= dense_s_min: the legs at 8r (docs/training.md).
    dense_res: int = 256
    dense_weight: float = 4.0
    dense_s_min: float = 2.0


DEFAULT_KIMG1, DEFAULT_KIMG2 = 60.0, 20.0  # without a pilot

QUICK = Plan(people=6, hands=2, res=64, pilot_minutes=0.0, kimg1=0.048, kimg2=0.024, kimg_ship=0.036, seeds="0",
             snap1=0.016, snap2=0.012, fid_n=8, kfid_n=4, consistency_n=2, batch=4, dense_res=128)
DENSE_SOURCE = "people-fullhr"
# A stage-2 step costs more than a stage-1 step (the teacher's render and the pixel loss): the demo's
# default run trains stage 1 at 1.33 and stage 2 at 1.0 kimg per minute on 2 cores.
STAGE2_RATE = 0.75


def log(text: str) -> None:
    print(f"[learn {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data and training


def make_data(out: Path, plan: Plan) -> Path:
    size = replace(stage_plan.Size(), people=plan.people, hands=plan.hands, res=plan.res, hand_res=plan.res)
    # the rendered people and hands only (no photographs: their kind is inferred), no preview image
    wanted = stage_plan.data_stages(out, size, photos=False, preview=False)
    wanted += dense_stages(out, plan) if plan.dense_res else []
    for number, stage in enumerate(wanted, 1):
        res = stage_plan.run_stage(stage, f"[data {number}/{len(wanted)}] ")
        if res["status"] not in ("ok", "reused"):
            raise SystemExit(f"data stage '{stage.name}' failed; fix the error above and run again (it resumes)")
    return out / "shards"


def dense_stages(out: Path, plan: Plan) -> list:
    """The same people's full views at plan.dense_res px (`mst render-people` is deterministic per index
    and seed), entered as the aligned full-body source DENSE_SOURCE in OUT/shards-dense."""
    render, shards, mst = out / "data" / "people-dense", out / "shards-dense", str(BIN / "mst")
    return [
        stage_plan.Stage("render people, dense", f"The same {plan.people} people's full views at {plan.dense_res} px.",
                         [mst, "render-people", "--out", str(render), "--n", str(plan.people), "--size",
                          str(plan.dense_res)], [render / "truth.jsonl"]),
        stage_plan.Stage("align full, dense", "mst align --aligned: the dense full views as a source of their own.",
                         [mst, "align", str(render / "full"), "--out", str(shards), "--source", DENSE_SOURCE,
                          "--aligned", "--detector", "openpose-json", "--space", str(out / "space.json")],
                         [shards / f"{DENSE_SOURCE}-000-000000.tar"]),
    ]


def dense_args(shards: Path, plan: Plan) -> tuple[str, ...]:
    """Stage 2's arguments for the dense source (none without it)."""
    dense = shards.parent / "shards-dense"
    if not plan.dense_res or not any(dense.glob(f"{DENSE_SOURCE}-*.tar")):
        return ()
    return ("--shards", str(dense), "--mix", f"{DENSE_SOURCE}={plan.dense_weight:g}",
            "--view", f"{DENSE_SOURCE}:s_min={plan.dense_s_min:g},whole=0.1")


def trained_nimg(run: Path) -> int:
    latest = run / "latest.json"
    return json.loads(latest.read_text())["nimg"] if latest.exists() else 0


def train(run: Path, shards: Path, plan: Plan, stage: int, kimg: float, snapshot: float,
          teacher: Path | None = None, extra: tuple[str, ...] = (), seed: int | None = None) -> float:
    """Train (or continue) a run up to `kimg`; the wall seconds this call spent. The length is free to
    grow on resume (`--kimg` is not part of what a run learns)."""
    if trained_nimg(run) >= int(kimg * 1000):
        return 0.0
    cmd = [str(BIN / "uh-train"), "--shards", str(shards), "--out", str(run), "--stage", str(stage), "--preset",
           plan.preset, "--kimg", f"{kimg:g}", "--batch", str(plan.batch), "--snapshot-kimg", f"{snapshot:g}",
           "--seed", str(plan.seed if seed is None else seed), "--lpips", "off" if stage == 1 else "auto", *extra]
    if stage == 2:
        cmd += ["--lambda-p", f"{plan.lambda_p:g}", "--ema-kimg", f"{plan.ema2:g}", *dense_args(shards, plan)]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    log("$ " + " ".join(stage_plan.shown(c) for c in cmd))
    start = time.time()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"uh-train exited with {code}; run again to resume")
    return time.time() - start


def pilot(out: Path, shards: Path, plan: Plan, candidates: list[tuple[str, int]], minutes: float,
          record: dict) -> tuple[str, int]:
    """Train each (preset, batch) candidate's stage 1 for the same wall time, evaluate its last snapshot,
    and return the candidate with the lowest FID: the configuration that learns most per CPU minute."""
    from uh_train.networks.presets import get_preset

    # FID at one resolution for all (FIDs at different resolutions are not comparable): the largest r.
    fid_res = max(get_preset(p).generator.img_resolution for p, _ in candidates)
    results = record.setdefault("pilot", {})
    evaluator = None  # one Inception load for every candidate

    def score(ckpt: Path) -> dict:
        nonlocal evaluator
        evaluator = evaluator or Evaluator(shards, out / "eval-cache", plan, fid_res, kfid=False)
        return evaluator(ckpt)

    for preset, batch in candidates:
        name = f"{preset}-b{batch}"
        run = out / "pilot" / name
        if name in results:
            if results[name].get("fid_res") != fid_res and snapshots(run):  # evaluated otherwise before
                results[name].update(score(snapshots(run)[-1][1]))
                save_record(out, record)
                log(f"pilot {name}: FID {results[name]['fid']:.1f} at {fid_res} px")
            continue
        shutil.rmtree(run, ignore_errors=True)  # a half-done pilot is redone: its wall time must be whole
        snap = plan.snap1 or (0.25 if preset == "tiny" else 0.05)
        cmd = [str(BIN / "uh-train"), "--shards", str(shards), "--out", str(run), "--stage", "1", "--preset", preset,
               "--kimg", "1000", "--batch", str(batch), "--snapshot-kimg", f"{snap:g}", "--seed", str(plan.seed),
               "--lpips", "off"]
        log(f"pilot {name}: {minutes:g} min of stage 1")
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(out / "pilot" / f"{name}.log", "w") as console:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=console, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=minutes * 60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
        found = snapshots(run)
        if not found:
            raise SystemExit(f"pilot {name} wrote no snapshot in {minutes:g} min; see {out / 'pilot' / name}.log")
        nimg, ckpt = found[-1]
        row = score(ckpt)
        results[name] = {"preset": preset, "batch": batch, "kimg": nimg / 1000, "minutes": minutes, **row}
        save_record(out, record)
        log(f"pilot {name}: {nimg / 1000:.2f} kimg, FID {row['fid']:.1f} at {fid_res} px")
    best = min(results.values(), key=lambda r: r["fid"])
    return best["preset"], best["batch"]


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(nimg, network file) of every snapshot of a run, in training order."""
    found = []
    for path in run.glob("network-*.safetensors"):
        match = re.fullmatch(r"network-(\d+)k-(\d+)\.safetensors", path.name)  # network-KKKKKKk-NNN
        if match:
            found.append((int(match.group(1)) * 1000 + int(match.group(2)), path))
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Evaluation


FACTORS = (2, 4, 8)  # scale consistency: renders at k·r reduced to r, against the render at r


class Evaluator:
    """FID and kFID (quick protocol) of generator files against the shards, real statistics cached.
    `fid_res`: the resolution of the FID images (default: the generator's r); `kfid`: also kFID."""

    def __init__(self, shards: Path, cache: Path, plan: Plan, fid_res: int | None = None, kfid: bool = True) -> None:
        from uh_train.metrics import InceptionFeatures
        from uh_train.metrics.stats import StatsCache

        self.shards, self.plan, self.fid_res, self.kfid = shards, plan, fid_res, kfid
        self.features = InceptionFeatures(None, device="cpu", batch=32)
        self.cache = StatsCache(cache)

    def __call__(self, ckpt: Path) -> dict:
        from uh_train.checkpoint import load_generator
        from uh_train.metrics import EvalConfig, evaluate
        from uh_train.metrics.fakes import GeneratorSampler

        G = load_generator(ckpt, device="cpu")
        sampler = GeneratorSampler(G, 1.0, "cpu")
        cfg = EvalConfig(metrics=("fid",), n=self.plan.fid_n, seed=self.plan.seed, batch=32, fid_res=self.fid_res)
        fid = evaluate(sampler, [self.shards], cfg, self.features, self.cache)["fid"]
        row = {"fid": fid["value"], "fid_res": fid.get("resolution")}
        if self.kfid:
            cfg = EvalConfig(metrics=("kfid",), n=self.plan.kfid_n, seed=self.plan.seed, batch=32,
                             kfid_groups=KFID_GROUPS)
            kfid = evaluate(sampler, [self.shards], cfg, self.features, self.cache)["kfid"]
            row.update(kfid_mean=kfid["mean"], **{f"kfid_{g}": v["value"] for g, v in kfid["groups"].items()})
            from uh_train.metrics.consistency import scale_consistency

            consistency = scale_consistency(sampler, n=self.plan.consistency_n, seed=0, factors=FACTORS)
            row.update({f"psnr_k{k}": v["psnr"] for k, v in consistency["factors"].items()})
        return row


def draw_grid(ckpt: Path, path: Path) -> None:
    """Rows: fixed seeds; columns: the whole body and the zoomed regions rendered at the training
    resolution r (what the network learned, enlarged to GRID_CELL px without smoothing), then the
    whole body rendered at GRID_CELL px in one pass (the continuous image at a density never trained
    in stage 1)."""
    import numpy as np
    import torch
    from PIL import Image

    from uh_train.checkpoint import load_generator
    from uh_train.generate import write_png
    from uh_train.render import render_region, seed_latents, to_uint8

    G = load_generator(ckpt, device="cpu")
    r = G.img_resolution
    size = max(r, (GRID_CELL // r) * r)
    with torch.no_grad():
        ws = G.mapping(seed_latents(GRID_SEEDS, G.z_dim))
        cols = [[np.asarray(Image.fromarray(im).resize((size, size), Image.NEAREST))
                 for im in to_uint8(render_region(G, ws, r, centre, scale, mode="single"))]
                for centre, scale in GRID_VIEWS.values()]
        cols.append(list(to_uint8(render_region(G, ws, size, (0.5, 0.5), 1.0, mode="single"))))
    pad = 2
    grid = np.full((len(GRID_SEEDS) * (size + pad) - pad, len(cols) * (size + pad) - pad, 3), 255, np.uint8)
    for j, col in enumerate(cols):
        for i, img in enumerate(col):
            grid[i * (size + pad): i * (size + pad) + size, j * (size + pad): j * (size + pad) + size] = img
    write_png(path, grid)


DENSE_SEEDS = GRID_SEEDS[:4]


def draw_dense(ckpt: Path, path: Path, factor: int = 8) -> None:
    """The whole body of DENSE_SEEDS rendered at factor·r in one pass each, side by side: whether the
    network holds the figure at a density stage 1 never trained."""
    import numpy as np
    import torch

    from uh_train.checkpoint import load_generator
    from uh_train.generate import write_png
    from uh_train.render import render_region, seed_latents, to_uint8

    G = load_generator(ckpt, device="cpu")
    size = factor * G.img_resolution
    with torch.no_grad():
        ws = G.mapping(seed_latents(DENSE_SEEDS, G.z_dim))
        images = list(to_uint8(render_region(G, ws, size, (0.5, 0.5), 1.0, mode="single")))
    pad = 2
    strip = np.full((size, len(images) * (size + pad) - pad, 3), 255, np.uint8)
    for j, img in enumerate(images):
        strip[:, j * (size + pad): j * (size + pad) + size] = img
    write_png(path, strip)


def redraw_grids(out: Path, runs: dict[str, Path], record: dict) -> None:
    """Draw the grid of every evaluated snapshot again (after a change of the grid's layout)."""
    for name, run in runs.items():
        by_nimg = dict(snapshots(run))
        for key, row in record.get("curves", {}).get(name, {}).items():
            if int(key) in by_nimg:
                draw_grid(by_nimg[int(key)], out / row["grid"])


def chosen(found: list[tuple[int, Path]], every: float, most: int) -> list[tuple[int, Path]]:
    """The snapshots to evaluate: the first at or after 0.5 kimg, 1 kimg and each multiple of `every`
    kimg, and the last; thinned evenly to at most `most` (the first and last kept)."""
    if not found:
        return []
    step = max(1, int(round(every * 1000)))
    points = {500, 1000} | set(range(step, found[-1][0] + 1, step))
    picked = sorted({min((f for f in found if f[0] >= p), default=found[-1]) for p in points} | {found[-1]})
    if len(picked) > 1 and picked[-1][0] - picked[-2][0] < step / 10:
        picked.pop(-2)  # the last snapshot a few steps after a chosen one: one of them is enough
    if len(picked) > most:
        picked = [picked[round(i * (len(picked) - 1) / (most - 1))] for i in range(most)]
    return picked


def evaluate_runs(out: Path, runs: dict[str, Path], shards: Path, plan: Plan, record: dict,
                  ablation_nimg: int | None = None) -> None:
    """Evaluate and draw the chosen snapshots not yet in `record` (saved after each): a curve along
    stage 1 and along the shipped run; each ablation run at its last snapshot and at its snapshot
    nearest `ablation_nimg` (the ablation's common length), where the shipped run is evaluated too."""
    evaluator = None
    for name, run in runs.items():
        done = record.setdefault("curves", {}).setdefault(name, {})
        found = snapshots(run)
        if name == "stage1":
            picked = chosen(found, plan.snap1, 6)
        elif name == ship_run(plan):
            picked = chosen(found, plan.snap2, 8)
        else:
            picked = found[-1:]
        if name != "stage1" and ablation_nimg and found:
            nearest = min((f for f in found if f[0] <= ablation_nimg * 1.05), default=found[0],
                          key=lambda f: abs(f[0] - ablation_nimg))
            picked = sorted(set(picked) | {nearest})
        for nimg, ckpt in picked:
            key = str(nimg)
            if key in done:
                continue
            evaluator = evaluator or Evaluator(shards, out / "eval-cache", plan)
            start = time.time()
            row = evaluator(ckpt)
            grid = out / "grids" / f"{name}-{nimg:08d}.png"
            draw_grid(ckpt, grid)
            row.update(kimg=nimg / 1000, grid=str(grid.relative_to(out)))
            if name != "stage1":
                dense = out / "grids" / f"{name}-{nimg:08d}-8r.png"
                draw_dense(ckpt, dense)
                row["dense"] = str(dense.relative_to(out))
            row["seconds"] = round(time.time() - start, 1)
            done[key] = row
            save_record(out, record)
            log(f"{name} at {nimg / 1000:.2f} kimg: FID {row['fid']:.1f}, kFID face {row['kfid_face']:.1f}, "
                f"hand {row['kfid_hand']:.1f}, consistency PSNR k=2/4/8 {row['psnr_k2']:.1f}/{row['psnr_k4']:.1f}/"
                f"{row['psnr_k8']:.1f} dB ({row['seconds']:.0f} s)")


def save_record(out: Path, record: dict) -> None:
    tmp = out / "learn.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / "learn.json")


# ---------------------------------------------------------------------------------------------
# Report


def rows(record: dict, name: str) -> list[dict]:
    return sorted(record.get("curves", {}).get(name, {}).values(), key=lambda r: r["kimg"])


def seeds_of(plan: Plan) -> list[int]:
    return [int(s) for s in str(plan.seeds).split(",") if s.strip()]


def run_names(plan: Plan) -> dict[str, tuple[str, int]]:
    """Stage-2 run name -> (arm, seed); the first is the shipped run."""
    return {f"stage2-{arm}-s{seed}": (arm, seed) for seed in seeds_of(plan) for arm in ARMS}


ARMS = ("all", "full")  # every source; the full-body source alone
ARM_TEXT = {"all": "all sources", "full": "full-body source only"}


def ship_run(plan: Plan) -> str:
    return f"stage2-all-s{seeds_of(plan)[0]}"


def plot_curves(record: dict, path: Path) -> None:
    """FID, kFID face and hand, and the scale consistency against kimg: stage 1, then every stage-2 run
    (kimg counted on from stage 1's end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=90)
    offset = record.get("stage1_kimg", 0.0)
    names = ["stage1"] + sorted(n for n in record.get("curves", {}) if n.startswith("stage2-"))
    for name in names:
        data = rows(record, name)
        if not data:
            continue
        style = "-o" if name == "stage1" else ("-s" if "-all-" in name else "--^")
        x = [r["kimg"] + (offset if name != "stage1" else 0.0) for r in data]
        for ax, key in zip(axes[:3], ("fid", "kfid_face", "kfid_hand"), strict=True):
            ax.plot(x, [r[key] for r in data], style, ms=3, label=name)
        if name != "stage1":
            for k, dash in zip(FACTORS, ("-", "--", ":"), strict=True):
                if all(f"psnr_k{k}" in r for r in data):
                    axes[3].plot(x, [r[f"psnr_k{k}"] for r in data], dash, marker="s" if "-all-" in name else "^",
                                 ms=3, label=f"{name}, k = {k}")
    titles = ("FID of whole images (lower is better)", "kFID face, s = 8 (lower is better)",
              "kFID hand, s = 8 (lower is better)", "scale consistency (higher is better)")
    for ax, title, unit in zip(axes, titles, ("FID", "kFID", "kFID", "PSNR of k·r reduced to r (dB)"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kimg (stage 2 counted on from stage 1)")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(record: dict, name: str) -> str:
    data = rows(record, name)
    groups = [k.removeprefix("kfid_") for k in (data[0] if data else {}) if k.startswith("kfid_") and k != "kfid_mean"]
    factors = [k for k in FACTORS if data and f"psnr_k{k}" in data[0]]
    head = ["kimg", "FID", *(f"kFID {g}" for g in groups), *(f"PSNR {k}r (dB)" for k in factors)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data:
        cells = [f"{r['kimg']:.2f}", f"{r['fid']:.1f}", *(_num(r.get("kfid_" + g)) for g in groups),
                 *(_num(r.get(f"psnr_k{k}"), 2) for k in factors)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ABLATION_KEYS = (("fid", "FID"), ("kfid_face", "kFID face"), ("kfid_hand", "kFID hand"), ("psnr_k2", "PSNR 2r"),
                 ("psnr_k4", "PSNR 4r"), ("psnr_k8", "PSNR 8r"))


def ablation_rows(record: dict, plan: Plan) -> dict[str, list[dict]]:
    """Arm -> the row of each seed's run at its snapshot nearest kimg2."""
    target = (plan.kimg2 or 0) * 1000
    out: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for name, (arm, seed) in run_names(plan).items():
        data = [r for r in rows(record, name) if r["kimg"] * 1000 <= target * 1.05]
        if data:
            row = min(data, key=lambda r: abs(r["kimg"] * 1000 - target))
            out[arm].append({**row, "seed": seed, "run": name})
    return out


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def ablation_table(record: dict, plan: Plan) -> str:
    by_arm = ablation_rows(record, plan)
    head = ["arm", "seed", "kimg", *(label for _, label in ABLATION_KEYS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, data in by_arm.items():
        for r in data:
            lines.append("| " + " | ".join([ARM_TEXT[arm], str(r["seed"]), f"{r['kimg']:.2f}",
                                            *(_num(r.get(k)) for k, _ in ABLATION_KEYS)]) + " |")
        if data:
            lines.append("| " + " | ".join([f"**{ARM_TEXT[arm]}**", "mean ± sd", "",
                                            *(mean_sd([r[k] for r in data if r.get(k) is not None])
                                              for k, _ in ABLATION_KEYS)]) + " |")
    return "\n".join(lines)


def ship_pick(record: dict, plan: Plan) -> dict | None:
    """The shipped run's snapshot to ship: among its evaluated snapshots whose FID is within 10 % of the
    stage-1 teacher's, the one whose worst scale consistency (the lowest PSNR over 2r, 4r, 8r) is
    highest; without any within 10 %, the one with the lowest FID. Model selection on the two
    measured criteria of the shipped checkpoint, recorded in its provenance."""
    s1, s2 = rows(record, "stage1"), rows(record, ship_run(plan))
    if not s2:
        return None
    teacher_fid = s1[-1]["fid"] if s1 else float("inf")
    worst = [min(r.get(f"psnr_k{k}", float("-inf")) for k in FACTORS) for r in s2]
    near = [(w, r) for w, r in zip(worst, s2, strict=True) if r["fid"] <= 1.1 * teacher_fid]
    if near:
        return max(near, key=lambda wr: wr[0])[1]
    return min(s2, key=lambda r: r["fid"])


SHIP_MIN_PSNR = 27.0  # dB at every k: a generator that holds its figure at 2r, 4r and 8r
SHIP_MAX_FID_RATIO = 1.1  # against the stage-1 teacher's FID


def ship_verdict(record: dict, plan: Plan) -> tuple[bool, str]:
    """Whether the picked snapshot is good enough to replace the shipped checkpoint, and why (a
    sentence): scale consistency of at least SHIP_MIN_PSNR dB at each k and FID within 10 % of the
    teacher's."""
    picked, s1 = ship_pick(record, plan), rows(record, "stage1")
    if picked is None or not s1:
        return False, "no evaluated snapshot of the shipped run"
    worst = min(picked.get(f"psnr_k{k}", float("-inf")) for k in FACTORS)
    ratio = picked["fid"] / s1[-1]["fid"]
    ok = worst >= SHIP_MIN_PSNR and ratio <= SHIP_MAX_FID_RATIO
    why = (f"its snapshot at {picked['kimg']:.2f} kimg has a worst-k consistency of {worst:.1f} dB (at least "
           f"{SHIP_MIN_PSNR:g} asked) and {ratio:.2f}x the teacher's FID (at most {SHIP_MAX_FID_RATIO:g} asked)")
    return ok, why


def ship(final: Path, dest: Path, record: dict) -> None:
    """The final generator with its provenance in the file's metadata."""
    from uh_train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(final)
    config = dict(ckpt.config)
    config.pop("format", None)
    config.pop("networks", None)
    config["provenance"] = record["provenance"]
    from uh_train.checkpoint import load_generator

    save_checkpoint(dest, {"G_ema": load_generator(final)}, config=config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "learn", help="work folder (default: learn/)")
    parser.add_argument("--quick", action="store_true", help="a minutes-long run of every step (for tests)")
    parser.add_argument("--no-ablation", action="store_true", help="train only the shipped run in stage 2")
    parser.add_argument("--ship", type=Path, nargs="?", const=DEFAULT_SHIP, default=None,
                        help="write the final generator with its provenance here "
                             f"(default {DEFAULT_SHIP.relative_to(ROOT)})")
    parser.add_argument("--ship-anyway", action="store_true",
                        help=f"ship even when the pick misses {SHIP_MIN_PSNR:g} dB at some k or the FID bound")
    parser.add_argument("--redraw-grids", action="store_true", help="draw the evaluated snapshots' grids again")
    parser.add_argument("--data-only", action="store_true", help="make the data and stop")
    parser.add_argument("--until", choices=("stage1", "ship", "ablation"), default="ablation",
                        help="stop training after stage 1, after the shipped run, or after every ablation run "
                             "(default); evaluation and the report cover what exists")
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md and its images")
    for field, kind in (("people", int), ("hands", int), ("batch", int), ("preset", str), ("minutes1", float),
                        ("minutes2", float), ("pilot_minutes", float), ("candidates", str), ("kimg1", float),
                        ("kimg2", float), ("kimg_ship", float), ("seeds", str), ("snap1", float), ("snap2", float),
                        ("fid_n", int), ("kfid_n", int), ("consistency_n", int), ("lambda_p", float), ("ema2", float),
                        ("dense_res", int), ("dense_weight", float), ("dense_s_min", float)):
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, **{k: v for k, v in vars(args).items() if k in Plan.__dataclass_fields__ and v is not None})
    if not seeds_of(plan):
        raise SystemExit("--seeds needs at least one seed, e.g. 0,1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    record = json.loads((out / "learn.json").read_text()) if (out / "learn.json").exists() else {}
    record["plan"] = plan.__dict__
    start = time.time()
    wall = record.setdefault("wall_s", {})

    t = time.time()
    shards = make_data(out, plan)
    wall["data"] = wall.get("data", 0.0) + time.time() - t
    save_record(out, record)
    if args.data_only:
        return 0

    if plan.pilot_minutes > 0:
        candidates = [(p, int(b)) for p, b in (c.split(":") for c in plan.candidates.split(","))]
        preset, batch = pilot(out, shards, plan, candidates, plan.pilot_minutes, record)
        rate = record["pilot"][f"{preset}-b{batch}"]["kimg"] / plan.pilot_minutes  # kimg per minute
        log(f"pilot winner: {preset}, batch {batch} ({rate:.2f} kimg/min in stage 1)")
        plan = replace(plan, preset=preset, batch=batch,
                       kimg1=plan.kimg1 or round(rate * plan.minutes1, 1),
                       kimg2=plan.kimg2 or round(rate * STAGE2_RATE * plan.minutes2, 1))
    plan = replace(plan, kimg1=plan.kimg1 or DEFAULT_KIMG1, kimg2=plan.kimg2 or DEFAULT_KIMG2)
    kimg_ship = max(plan.kimg_ship or plan.kimg2, plan.kimg2)
    plan = replace(plan, kimg_ship=kimg_ship, snap1=plan.snap1 or round(plan.kimg1 / 10, 3),
                   snap2=plan.snap2 or round(plan.kimg2 / 4, 3))
    record["plan"] = plan.__dict__
    save_record(out, record)

    runs = {"stage1": out / "runs" / "stage1"}
    winner = out / "pilot" / f"{plan.preset}-b{plan.batch}"
    if plan.pilot_minutes > 0 and winner.is_dir() and not runs["stage1"].exists():
        shutil.copytree(winner, runs["stage1"])  # stage 1 continues the winning pilot run
        wall["stage1"] = wall.get("stage1", 0.0) + plan.pilot_minutes * 60
    # A snapshot at 1 kimg first: FID there is the yardstick of "falls by at least half".
    first = min(1.0, plan.kimg1)
    for kimg, snap in ((first, first / 2), (plan.kimg1, plan.snap1)):
        wall["stage1"] = wall.get("stage1", 0.0) + train(runs["stage1"], shards, plan, 1, kimg, snap)
        save_record(out, record)
    record["stage1_kimg"] = trained_nimg(runs["stage1"]) / 1000
    teacher = runs["stage1"] / "network-latest.safetensors"

    # Stage 2: the shipped run first (it goes on to kimg_ship), then each ablation run to kimg2.
    names = run_names(plan)
    order = [ship_run(plan)] + ([n for n in names if n != ship_run(plan)] if not args.no_ablation else [])
    if args.until == "stage1":
        order = []
    elif args.until == "ship":
        order = order[:1]
    # The full-body arm zeroes each partial source the data has (a source whose every fit was rejected
    # has no shards, and a weight for an unknown source is refused).
    zero = tuple(a for s in PARTIAL_SOURCES if any(shards.glob(f"{s}-*.tar")) for a in ("--mix", f"{s}=0"))
    for name in order:
        arm, seed = names[name]
        runs[name] = out / "runs" / name
        length = kimg_ship if name == ship_run(plan) else plan.kimg2
        wall[name] = wall.get(name, 0.0) + train(runs[name], shards, plan, 2, length, plan.snap2, teacher,
                                                 zero if arm == "full" else (), seed=seed)
        save_record(out, record)
    for name in names:  # runs of an earlier call are evaluated and reported too
        if (out / "runs" / name).is_dir():
            runs[name] = out / "runs" / name
    if args.redraw_grids:
        redraw_grids(out, runs, record)
    t = time.time()
    evaluate_runs(out, runs, shards, plan, record, ablation_nimg=int(plan.kimg2 * 1000))
    wall["evaluation"] = wall.get("evaluation", 0.0) + time.time() - t
    record["provenance"] = provenance(plan, record)
    save_record(out, record)
    plot_curves(record, out / "curves.png")
    (out / "learn.md").write_text(report(record, out))
    log(f"wrote {stage_plan.shown(out / 'learn.md')} ({time.time() - start:.0f} s this call)")
    picked = ship_pick(record, plan)
    final = None
    if picked is not None:
        final = dict(snapshots(out / "runs" / ship_run(plan))).get(round(picked["kimg"] * 1000))
    good, why = ship_verdict(record, plan)
    if args.ship and final is not None and final.exists() and (good or args.ship_anyway):
        ship(final, args.ship.resolve(), record)
        log(f"wrote {stage_plan.shown(args.ship.resolve())}: {why}")
    elif args.ship:
        log(f"not shipped ({stage_plan.shown(args.ship.resolve())} stays as it is): {why}; --ship-anyway ships it")
    if args.docs:
        write_docs(record, out)
    return 0


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(plan: Plan, record: dict) -> dict:
    ship_rows, s1_rows = rows(record, ship_run(plan)), rows(record, "stage1")
    picked = ship_pick(record, plan)
    return {
        "command": "just learn",
        "commit": git_commit(),
        "data": f"{plan.people} rendered people (full {plan.res} px, upper-body and face views aligned by the MST), "
                f"{plan.hands} synthetic hands"
                + (f", the people's full views again at {plan.dense_res} px (stage 2, weight {plan.dense_weight:g}, "
                   f"s >= {plan.dense_s_min:g})" if plan.dense_res else "") + "; all made by the command",
        "preset": plan.preset, "batch": plan.batch, "seed": plan.seed, "stage2_seed": seeds_of(plan)[0],
        "stage1_kimg": record.get("stage1_kimg"),
        "stage2_kimg": (picked or {}).get("kimg"),
        "stage2_trained_kimg": ship_rows[-1]["kimg"] if ship_rows else None,
        "picked": "the stage-2 snapshot with the best worst-k scale consistency among those within 10 % of the "
                  "teacher's FID",
        "consistency_psnr_db": {f"{k}r": round(picked[f"psnr_k{k}"], 2) for k in FACTORS
                                if picked.get(f"psnr_k{k}") is not None} if picked else None,
        "fid": round(picked["fid"], 2) if picked else None,
        "teacher_fid": round(s1_rows[-1]["fid"], 2) if s1_rows else None,
        "lambda_p": plan.lambda_p,
        "ema2": plan.ema2,
        "date": time.strftime("%Y-%m-%d"),
    }


def report(record: dict, out: Path, images: str | None = None) -> str:
    """The Markdown section: plan, wall times, the shipped run's consistency, the ablation, tables, curves,
    pictures (image paths relative to `images`)."""
    plan = Plan(**record["plan"])
    wall = record["wall_s"]
    images = images if images is not None else ""
    others = max(0, len(record.get("pilot") or {}) - 1) * plan.pilot_minutes * 60  # the pilot's losing candidates
    total = sum(wall.values()) + others
    stage2_wall = sum(v for k, v in wall.items() if k.startswith("stage2-"))
    text = [
        f"`just learn` ({wall_text(total)} of stage times in all on this machine, over one or more sittings, "
        "runs that shared the machine counted each: data "
        f"{wall_text(wall.get('data', 0))}, stage 1 {wall_text(wall.get('stage1', 0))}, the stage-2 runs "
        f"{wall_text(stage2_wall)}, evaluation {wall_text(wall.get('evaluation', 0))}"
        + (f", the pilot's other candidates {wall_text(others)}" if others else "") + ").",
        "",
        f"Data made by the command: {plan.people} rendered people (full body at {plan.res} px; upper-body and face "
        f"views aligned into full-body space by the MST), {plan.hands} synthetic hands composited onto upper-body "
        f"patches. Preset `{plan.preset}`, batch {plan.batch}; stage 1 {record.get('stage1_kimg', 0):g} kimg of "
        f"whole full-body images (seed {plan.seed}); stage 2 from that network (the teacher) in two arms, every "
        f"source and the full-body source alone, {plan.kimg2:g} kimg per arm and seed (seeds {plan.seeds}); the "
        f"first seed's all-sources run goes on to {plan.kimg_ship:g} kimg: the run a shipped generator comes from. "
        f"Quick protocol: FID of {plan.fid_n} whole images at r px; kFID of {plan.kfid_n} patches per keypoint "
        f"group at "
        f"s = 8; scale consistency of {plan.consistency_n} latents (the whole image rendered at k·r in one pass, "
        "reduced to r by Lanczos, against the render at r; PSNR in dB).",
        "",
    ]
    text += summary(record, plan)
    pilot = record.get("pilot") or {}
    if pilot:
        res = {r.get("fid_res") for r in pilot.values()}
        text += [f"Pilot: each candidate trained stage 1 from scratch for {plan.pilot_minutes:g} minutes of wall time "
                 f"(start-up included); FID of {plan.fid_n} images at {'/'.join(str(r) for r in res)} px. The "
                 "lowest FID continued as stage 1.", "",
                 "| candidate | kimg in the pilot | FID |", "|---|---|---|"]
        text += [f"| {name} | {r['kimg']:.2f} | {r['fid']:.1f} |" for name, r in pilot.items()] + [""]
    if any(ablation_rows(record, plan).values()):
        text += [f"The ablation, each run at its snapshot nearest {plan.kimg2:g} kimg of stage 2 (same stage-1 "
                 "teacher; lower FID/kFID and higher PSNR are better):", "", ablation_table(record, plan), ""]
    for name in ["stage1", *run_names(plan)]:
        if rows(record, name):
            what = "Stage 1" if name == "stage1" else (f"Stage 2, {ARM_TEXT[run_names(plan)[name][0]]}, seed "
                                                       f"{run_names(plan)[name][1]}"
                                                       + (" (the run to ship from)" if name == ship_run(plan) else ""))
            text += [f"{what}:", "", table(record, name), ""]
    text += [f"![FID, kFID and scale consistency against kimg]({images}curves.png)", ""]
    picks = grid_picks(record, plan)
    if picks:
        text += ["Pictures at the start, middle and end. Grids: rows are seeds "
                 f"{GRID_SEEDS[0]}-{GRID_SEEDS[-1]}; columns: the whole body, the face zoomed 8x and a hand zoomed "
                 "8x, each rendered at the training resolution r and enlarged without smoothing; last, the whole body "
                 f"rendered at {GRID_CELL} px in one pass. Stage-2 strips: the whole body of seeds "
                 f"{DENSE_SEEDS[0]}-{DENSE_SEEDS[-1]} rendered at 8r in one pass.", ""]
        for label, row in picks:
            line = f"{label} ({row['kimg']:.2f} kimg): ![{label}]({images}{Path(row['grid']).name})"
            if row.get("dense"):
                line += f" ![{label}, 8r]({images}{Path(row['dense']).name})"
            text += [line, ""]
    return "\n".join(text)


def summary(record: dict, plan: Plan) -> list[str]:
    """The measured facts the section's reader looks for, as sentences."""
    s1, s2 = rows(record, "stage1"), rows(record, ship_run(plan))
    out = []
    if s1:
        first = min(s1, key=lambda r: abs(r["kimg"] - 1.0))
        out.append(f"* Stage 1: FID {first['fid']:.1f} at {first['kimg']:.2f} kimg, {s1[-1]['fid']:.1f} at its end "
                   f"({s1[-1]['kimg']:.1f} kimg).")
    if s1 and s2:
        a, b = s2[0], s2[-1]
        out.append(f"* The run to ship from (stage 2, all sources): scale consistency from "
                   f"{a['psnr_k2']:.1f} / {a['psnr_k4']:.1f} / {a['psnr_k8']:.1f} dB (2r / 4r / 8r) at "
                   f"{a['kimg']:.2f} kimg to {b['psnr_k2']:.1f} / {b['psnr_k4']:.1f} / {b['psnr_k8']:.1f} dB at "
                   f"{b['kimg']:.2f} kimg; FID {b['fid']:.1f} against the teacher's {s1[-1]['fid']:.1f} "
                   f"({b['fid'] / s1[-1]['fid']:.2f}x).")
    if s2:
        good, why = ship_verdict(record, plan)
        out.append(("* Shipped as `checkpoints/learned-tiny.safetensors`: " if good else
                    "* **Not shipped** (`checkpoints/learned-tiny.safetensors` stays the earlier run's): ") + why + ".")
    by_arm = ablation_rows(record, plan)
    if by_arm["all"] and by_arm["full"]:
        parts = []
        for key, label in (("kfid_face", "kFID face"), ("kfid_hand", "kFID hand"), ("fid", "FID")):
            a = [r[key] for r in by_arm["all"]]
            f = [r[key] for r in by_arm["full"]]
            parts.append(f"{label} {mean_sd(a)} with the partial sources vs {mean_sd(f)} without")
        out.append(f"* Ablation at {plan.kimg2:g} kimg ({len(by_arm['all'])} and {len(by_arm['full'])} seeds): "
                   + "; ".join(parts) + ".")
    return out + [""] if out else []


def grid_picks(record: dict, plan: Plan) -> list[tuple[str, dict]]:
    s1, s2 = rows(record, "stage1"), rows(record, ship_run(plan))
    picks = []
    if s1:
        picks += [("stage 1, end", s1[-1])]
    if s2:
        label = "stage 2 (run to ship from)"
        picks += [(f"{label}, start", s2[0]), (f"{label}, middle", s2[len(s2) // 2]), (f"{label}, end", s2[-1])]
    full = rows(record, f"stage2-full-s{seeds_of(plan)[0]}")
    if full:
        picks += [("stage 2 on the full-body source only (ablation), end", full[-1])]
    seen, unique = set(), []
    for label, row in picks:
        if row["grid"] not in seen:
            seen.add(row["grid"])
            unique.append((label, row))
    return unique


def wall_text(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def write_docs(record: dict, out: Path) -> None:
    import bench  # scripts/ is on the path (see the top)

    plan = Plan(**record["plan"])
    images = ROOT / "docs" / "img" / "learn"
    shutil.rmtree(images, ignore_errors=True)  # pictures of an earlier run are not referenced any more
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "curves.png", images / "curves.png")
    for _, row in grid_picks(record, plan):
        for key in ("grid", "dense"):
            if row.get(key):
                shutil.copy2(out / row[key], images / Path(row[key]).name)
    body = "## Does training learn people?\n\n" + report(record, out, images="img/learn/")
    bench.write_section("learn", body, sum(record["wall_s"].values()))
    log("wrote docs/benchmarks.md (section learn) and docs/img/learn/")


if __name__ == "__main__":
    sys.exit(main())
