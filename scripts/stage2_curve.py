"""Stage-2 learning curve of demo runs: every stage-2 snapshot evaluated with `uh-eval` (quick protocol).

    .venv/bin/python scripts/stage2_curve.py demo/ [other-demo/ ...] [--n 32] [--metrics fid,kfid]

For each demo folder, each `runs/stage2/network-*k-*.safetensors` (in kimg order) is evaluated against
that folder's shards, with the real statistics cached in the folder's `eval-cache`. Prints one Markdown
table: rows are snapshots, columns are the folders' metrics.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
SNAPSHOT = re.compile(r"network-(\d+)k-(\d+)\.safetensors")


def snapshots(run: Path) -> list[tuple[float, Path]]:
    found = []
    for path in run.glob("network-*k-*.safetensors"):
        m = SNAPSHOT.fullmatch(path.name)
        if m:
            found.append((int(m[1]) + int(m[2]) / 1000, path))
    return sorted(found)


def evaluate(demo: Path, ckpt: Path, n: int, metrics: str) -> dict[str, float]:
    out = demo / "curve" / ckpt.stem
    if not (out / "metrics.json").exists():
        subprocess.run([str(BIN / "uh-eval"), "--ckpt", str(ckpt), "--shards", str(demo / "shards"), "--metrics",
                        metrics, "--n", str(n), "--out", str(out), "--cache", str(demo / "eval-cache")], check=True)
    result = json.loads((out / "metrics.json").read_text())
    row = {}
    for name in ("fid", "pfid"):
        if isinstance(result.get(name), dict) and result[name].get("value") is not None:
            row[name.upper()] = float(result[name]["value"])
    if isinstance(result.get("kfid"), dict) and result["kfid"].get("mean") is not None:
        row["kFID mean"] = float(result["kfid"]["mean"])
        for group, entry in result["kfid"].get("groups", {}).items():
            if entry.get("value") is not None and group in ("face", "hand"):
                row[f"kFID {group}"] = float(entry["value"])
    if isinstance(result.get("pr"), dict):
        row["precision"] = float(result["pr"]["precision"])
        row["recall"] = float(result["pr"]["recall"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demos", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--metrics", default="fid,kfid")
    args = ap.parse_args()
    table: dict[float, dict[str, str]] = {}
    columns: list[str] = []
    for demo in args.demos:
        for kimg, ckpt in snapshots(demo / "runs" / "stage2"):
            row = evaluate(demo, ckpt, args.n, args.metrics)
            for name, value in row.items():
                col = f"{demo.name} {name}"
                if col not in columns:
                    columns.append(col)
                table.setdefault(kimg, {})[col] = f"{value:.2f}" if name in ("precision", "recall") else f"{value:.1f}"
    lines = ["| stage-2 kimg | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kimg in sorted(table):
        lines.append(f"| {kimg:.3f} | " + " | ".join(table[kimg].get(c, "–") for c in columns) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
