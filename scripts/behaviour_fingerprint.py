"""A fingerprint of what the pipeline produces: SHA-256 hashes of a small fixed-seed run.

    python scripts/behaviour_fingerprint.py --out DIR [--body-model MODEL.npz] [--save hashes.json]
    python scripts/behaviour_fingerprint.py --out DIR --compare hashes.json     # exit 1 on any change

Runs, through the command lines only (so it survives any move of the code behind them):
`mst render-people` on a few people, `mst align` of their full views (--aligned) and of their
upper-body and face views (SMPLify-P from their OpenPose JSON), `mst synthetic`, `mst derive-sr`,
one training step of each stage with the tiny preset, and `uh-generate` renders (stitched, single
pass, a zoomed patch).

Hashed: every rendered file, every shard sample's members (name and bytes; not the tar files,
whose headers hold the time of writing), each stage's logged losses (their repr, so a change in
the last bit shows) and each generated PNG's bytes. A refactor that claims to change no
behaviour must leave every hash as it was, on the same machine and library versions (floating
point differs between CPUs, so hashes from another machine are not a reference).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Losses are hashed by name; timings and counters the log may carry besides them are not.
LOSS_PREFIXES = ("D/", "G/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def command(name: str) -> list[str]:
    """The Python command that runs console script NAME as pyproject.toml declares it (not a
    possibly stale installed launcher)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[name].split(":")
    return [sys.executable, "-c", f"import {module} as m; m.{func}()"]


def run(name: str, *args: str | Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = command(name) + [str(a) for a in args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def file_hashes(folder: Path, prefix: str) -> dict[str, str]:
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": sha256(p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_hashes(folder: Path, prefix: str) -> dict[str, str]:
    """One hash per sample member of every complete shard (tar headers left out)."""
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    out[f"{prefix}/{shard.name}/{member.name}"] = sha256(tar.extractfile(member).read())
    rejects = folder / "rejects.jsonl"
    if rejects.exists():  # without the time of each rejection
        kept = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in rejects.read_text().splitlines()]
        out[f"{prefix}/rejects.jsonl"] = sha256(repr(kept).encode())
    return out


def loss_hashes(run_dir: Path, stage: str) -> dict[str, str]:
    """The repr of every logged loss of every step, hashed per step."""
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        losses = {k: v for k, v in sorted(entry.items()) if k.startswith(LOSS_PREFIXES)}
        out[f"{stage}/step{entry['step']}/losses"] = sha256(repr(losses).encode())
        out[f"{stage}/step{entry['step']}/losses (repr)"] = repr(losses)
    return out


def fingerprint(out: Path, body_model: Path | None, people: int, res: int, iterations: int) -> dict[str, str]:
    model = ["--body-model", str(body_model)] if body_model else []
    render, shards = out / "people", out / "shards"
    s1, s2 = out / "stage1", out / "stage2"
    run("mst", "render-people", "--out", render, "--n", str(people), "--size", str(res), "--seed", "0", *model)
    run("mst", "align", render / "full", "--out", shards, "--source", "full", "--aligned",
        "--detector", "openpose-json")
    for view in ("upper", "face"):
        run("mst", "align", render / view, "--out", shards, "--source", view, "--kind", view,
            "--detector", "openpose-json", "--iterations", str(iterations), "--batch", "4", "--device", "cpu", *model)
    # Every setting given, so a change of the presets' defaults does not read as a change of behaviour.
    step = ["--preset", "tiny", "--kimg", "0.004", "--batch", "4", "--snapshot-kimg", "0.004", "--lpips", "off",
            "--device", "cpu", "--seed", "0", "--workers", "0", "--gamma", "2", "--no-mirror"]
    run("uh-train", "--shards", shards, "--out", s1, "--stage", "1", *step)
    run("uh-train", "--shards", shards, "--out", s2, "--stage", "2", "--teacher", s1 / "network-latest.safetensors",
        *step)
    # The other geometry-bearing writers: synthetic figures and the SR lower halves.
    run("mst", "synthetic", "--out", out / "synthetic", "--n", "2", "--size", str(res), "--seed", "0")
    run("mst", "derive-sr", shards, "--out", out / "sr", "--from", "full")
    ckpt = s2 / "network-latest.safetensors"
    # --device cpu wherever a command computes: `auto` would take a GPU where there is one.
    run("uh-generate", "--ckpt", ckpt, "--seeds", "0-1", "--size", "64", "--device", "cpu",
        "--out", out / "gen-stitched")
    run("uh-generate", "--ckpt", ckpt, "--seeds", "0-1", "--size", "64", "--mode", "single", "--device", "cpu",
        "--out", out / "gen-single")
    run("uh-generate", "--ckpt", ckpt, "--seeds", "0", "--patch", "0.5,0.12", "--scale", "4", "--device", "cpu",
        "--out", out / "gen-face")
    hashes = file_hashes(render, "people")
    for name in ("shards", "synthetic", "sr"):
        hashes |= shard_hashes(out / name, name)
    hashes |= loss_hashes(s1, "stage1") | loss_hashes(s2, "stage2")
    for name in ("gen-stitched", "gen-single", "gen-face"):
        hashes |= file_hashes(out / name, name)
    return hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Empty (or new) folder for the run's files.")
    ap.add_argument("--body-model", type=Path, help="SMPL-format model file; default: the open model.")
    ap.add_argument("--people", type=int, default=3)
    ap.add_argument("--res", type=int, default=64, help="Full-body render size (px).")
    ap.add_argument("--iterations", type=int, default=60, help="SMPLify-P iterations per image.")
    ap.add_argument("--save", type=Path, help="Write the hashes as JSON here.")
    ap.add_argument("--compare", type=Path, help="Hashes (JSON) to compare with; exit 1 on any difference.")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty (the commands resume; a fingerprint needs a fresh run)")
    hashes = fingerprint(args.out, args.body_model, args.people, args.res, args.iterations)
    for name, value in hashes.items():
        print(f"{value}  {name}")
    combined = sha256(json.dumps(hashes, sort_keys=True).encode())
    print(f"{combined}  ALL ({len(hashes)} entries)")
    if args.save:
        args.save.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = sorted(k for k in before.keys() | hashes.keys() if before.get(k) != hashes.get(k))
        for name in changed:
            print(f"CHANGED {name}: {before.get(name)} -> {hashes.get(name)}", file=sys.stderr)
        if changed:
            raise SystemExit(1)
        print(f"identical: {len(hashes)} entries")


if __name__ == "__main__":
    main()
