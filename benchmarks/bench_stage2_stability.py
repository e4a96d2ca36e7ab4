"""Stage 2 on the demo's shards and stage-1 network for 20 kimg: do the losses stay finite and calm?

Runs (or resumes) `uh-train --stage 2 --preset tiny --teacher demo/runs/stage1 --kimg 20 --batch 8
--lpips off` into demo/runs/stage2-stability, then reports the largest magnitude of every loss term
per 2.5 kimg and the scale consistency at each snapshot, and commits a thinned copy of the log
(every 10th step, and every snapshot's line) to docs/logs/stage2-stability.jsonl. Needs `just demo`
(or `scripts/demo.py`) to have made demo/shards and demo/runs/stage1 first; says so otherwise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
RUN = DEMO / "runs" / "stage2-stability"
LOG_COPY = ROOT / "docs" / "logs" / "stage2-stability.jsonl"
KIMG, BATCH, WINDOW = 20.0, 8, 2.5
TERMS = ("D/global", "D/pixel", "D/cutmix", "D/consistency", "D/r1", "G/adv", "G/pixel_l1")


def command() -> list[str]:
    return [str(Path(sys.executable).parent / "uh-train"), "--shards", str(DEMO / "shards"), "--out", str(RUN),
            "--stage", "2", "--preset", "tiny", "--teacher", str(DEMO / "runs" / "stage1"), "--kimg", f"{KIMG:g}",
            "--batch", str(BATCH), "--snapshot-kimg", "2.5", "--lpips", "off"]


def summarise(rows: list[dict]) -> str:
    windows: dict[int, dict[str, float]] = {}
    for row in rows:
        w = int(min(row["kimg"], KIMG - 1e-9) // WINDOW)
        worst = windows.setdefault(w, {})
        for k in TERMS:
            if k in row:
                worst[k] = max(worst.get(k, 0.0), abs(row[k]) if math.isfinite(row[k]) else math.inf)
    head = ["kimg", *TERMS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in sorted(windows):
        lines.append("| " + " | ".join([f"{w * WINDOW:g}–{(w + 1) * WINDOW:g}",
                                        *(f"{windows[w].get(k, float('nan')):.3g}" for k in TERMS)]) + " |")
    snaps = [r for r in rows if "consistency/psnr_k2" in r]
    cons = ["| kimg | PSNR 2r | PSNR 4r | PSNR 8r |", "|---|---|---|---|"]
    cons += [f"| {r['kimg']:.1f} | {r['consistency/psnr_k2']:.2f} | {r['consistency/psnr_k4']:.2f} | "
             f"{r['consistency/psnr_k8']:.2f} |" for r in snaps]
    finite = all(math.isfinite(v) for r in rows for k, v in r.items() if k in TERMS)
    largest = max((windows[w].get(k, 0.0) for w in windows for k in TERMS if k != "D/r1"), default=0.0)
    return ("\n".join(lines) + "\n\nScale consistency of G_ema at each snapshot (4 latents; the run's own log):\n\n"
            + "\n".join(cons) + f"\n\nEvery term finite: {'yes' if finite else 'NO'}; the largest adversarial or "
            f"teacher term over the run: {largest:.3g}.\n")


def run() -> str | None:
    if not (DEMO / "shards" / "manifest.parquet").exists() or not (DEMO / "runs" / "stage1" / "latest.json").exists():
        print("bench stage2_stability: needs demo/shards and demo/runs/stage1; run `just demo` first")
        return None
    done = subprocess.run(command(), cwd=ROOT)
    rows = [json.loads(line) for line in (RUN / "log.jsonl").read_text().splitlines()]
    LOG_COPY.parent.mkdir(parents=True, exist_ok=True)
    kept = [r for r in rows if r["step"] % 10 == 0 or "consistency/psnr_k2" in r]
    tmp = LOG_COPY.with_name(LOG_COPY.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept))
    tmp.replace(LOG_COPY)
    status = "finished" if done.returncode == 0 else f"stopped with exit code {done.returncode}"
    shown = " ".join(c if not c.startswith(str(ROOT)) else str(Path(c).relative_to(ROOT)) for c in command()[1:])
    return f"""## Stage 2 stays finite: 20 kimg on the demo's data

`.venv/bin/python scripts/bench.py stage2_stability` (after `just demo`) runs `uh-train {shown}`
({len(rows)} steps, {status}): stage 2 from the demo's stage-1 network on the demo's shards, the
run that diverged before the consistency term (Eq. 9) trained both of its sides (docs/training.md,
"Stage 2 diagnosis"). The largest magnitude of each logged term per {WINDOW:g} kimg (R1 is a squared
gradient norm, not a logit):

{summarise(rows)}
The log, every 10th step and every snapshot: [logs/stage2-stability.jsonl](logs/stage2-stability.jsonl).
"""
