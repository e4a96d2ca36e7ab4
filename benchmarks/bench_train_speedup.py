"""Training step time of this trainer against an earlier commit's, interleaved in one run.

The baseline is the commit in UH_BENCH_BASELINE (default: the last commit before the step was
restructured), unpacked with `git archive` into a temporary folder. Both trainers run the same
script (`train_steps.py`) in fresh processes, alternating old/new per repetition, on the same shards
and stage-1 teacher, so load changes on a shared machine hit both alike; medians are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = os.environ.get("UH_BENCH_BASELINE", "7672b80")
SCRIPT = Path(__file__).resolve().parent / "train_steps.py"
CASES = (("tiny", 1, 8, 10), ("tiny", 2, 8, 10), ("small", 1, 8, 6), ("small", 2, 8, 6))  # preset, stage, batch, steps
REPEATS = int(os.environ.get("UH_BENCH_REPEATS", "2"))


def unpack(revision: str, dest: Path) -> Path:
    archive = dest.with_suffix(".tar")
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", revision], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def steps(tree: Path, shards: Path, out: Path, preset: str, stage: int, batch: int, n: int,
          teacher: Path | None, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--shards", str(shards), "--out", str(out), "--preset", preset,
           "--stage", str(stage), "--batch", str(batch), "--steps", str(n)]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    for item in extra:
        cmd += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(root: Path, old_tree: Path) -> tuple[list[dict], list[dict]]:
    sys.path.insert(0, str(ROOT))
    import uh_train.train as tr
    from mst_pipeline.synthesis.synthetic import write_synthetic
    from uh_train.training.config import TrainConfig

    shards = root / "shards"
    write_synthetic(shards, n=24, res=128, seed=0)
    teachers = {}
    for preset in ("tiny", "small"):  # one stage-1 state per preset: both trainers start stage 2 from it
        teachers[preset] = root / f"s1-{preset}"
        tr.train(TrainConfig(shards=[str(shards)], out=str(teachers[preset]), preset=preset, batch=4,
                                kimg=0.004, snapshot_kimg=1e9, lpips="off", seed=0))
    rows = []
    for preset, stage, batch, n in CASES:
        teacher = teachers[preset] if stage == 2 else None
        times = {"old": [], "new": []}
        losses = {}
        for rep in range(REPEATS):
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for which in order:
                tree = old_tree if which == "old" else ROOT
                r = steps(tree, shards, root / f"{which}-{preset}-{stage}-{rep}", preset, stage, batch, n, teacher)
                times[which] += r["step_s"][1:]  # step 0 also runs R1 (every 16 steps)
                losses[which] = r["losses"]
        rows.append({"preset": preset, "stage": stage, "batch": batch, "old": statistics.median(times["old"]),
                     "new": statistics.median(times["new"]), "n": len(times["old"]), "losses": losses})
    # The first steps' losses: the old trainer against the new one rendering D's own fakes (as the old
    # one did) and against the default (one render shared by both steps).
    checks = []
    for stage in (1, 2):
        teacher = teachers["tiny"] if stage == 2 else None
        same = steps(ROOT, shards, root / f"nonshared-{stage}", "tiny", stage, 8, 3, teacher,
                     ("share_fakes=false",))["losses"]
        old = next(r for r in rows if r["preset"] == "tiny" and r["stage"] == stage)["losses"]["old"]
        new = next(r for r in rows if r["preset"] == "tiny" and r["stage"] == stage)["losses"]["new"]
        checks.append({"stage": stage, "old": old[:3], "no_share": same[:3], "new": new[:3]})
    return rows, checks


def _loss_table(check: dict) -> str:
    keys = [k for k in check["old"][0] if "/" in k]
    out = "| step | loss | old | new, `--no-share-fakes` | new (default) |\n|---|---|---|---|---|\n"
    for i in range(len(check["old"])):
        for k in keys:
            vals = [c[i].get(k) for c in (check["old"], check["no_share"], check["new"])]
            out += f"| {i + 1} | {k} | " + " | ".join("–" if v is None else f"{v:.6f}" for v in vals) + " |\n"
    return out


def run() -> str:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        old_tree = unpack(BASELINE, root / "baseline")
        rows, checks = compare(root, old_tree)
    table = "| preset | stage | batch | old s/step | new s/step | speed-up |\n|---|---|---|---|---|---|\n"
    for r in rows:
        table += (f"| {r['preset']} | {r['stage']} | {r['batch']} | {r['old']:.2f} | {r['new']:.2f} | "
                  f"{r['old'] / r['new']:.2f}x |\n")
    per_case = ", ".join(f"{p} stage {st}: {n}" for p, st, _, n in CASES)
    return f"""## Training step: this trainer against commit {BASELINE}

`.venv/bin/python scripts/bench.py train_speedup` (`UH_BENCH_BASELINE=REV` picks the baseline)

Both trainers ran the same script (`benchmarks/train_steps.py`) in fresh processes, alternating
old and new ({REPEATS} repetition(s) each, median of the steps after the first; the first runs R1),
on the same synthetic shards and the same stage-1 state, L1-only pixel loss (no AlexNet weights here).
On a machine shared with other jobs single numbers are noisy; the interleaving exposes both
trainers to the same load, but a single pair can still be off by the load changing between its two
runs. Where the new step saves: one generator forward per step (and, in stage 2, one teacher
render), one D pass over reals, fakes and CutMix images instead of three, and in the networks'
operations the bias added by the modulated convolution itself, the activation gains carried by
the filters and weights instead of a pass over each layer's largest tensor, and the clamp of
StyleGAN3's activations run only when a value exceeds it; on a CPU D's tensors and the generator's
up/down-sampling filters in channels-last memory order (oneDNN's depthwise filters run several times
faster on it), the upsampling's crop done by the transposed convolution itself (no strided copy, no
zero-filled gradient), the leaky ReLU in place on the fresh upsampled tensor, and the modulated
convolution as one convolution shared by the batch where its channel counts are not multiples of 8
(where oneDNN's grouped convolution is about half as fast). Steps per case: {per_case}. Took {time.time() - t0:.0f} s.

{table}
First losses for the same seed (`tiny`, batch 8). With `--no-share-fakes` the new loop draws the same
random numbers in the same order as the old one and gives the same losses up to float rounding (the
one D pass sums in another order); by default the D step trains on the G step's fakes, so its fakes,
and the CutMix boxes drawn after them, differ from step 1 on, and the generator's magnitude EMAs are
updated before (not after) the G step's render, which moves G/adv slightly.

Stage 1:

{_loss_table(checks[0])}
Stage 2 (teacher: the shared stage-1 state):

{_loss_table(checks[1])}"""
