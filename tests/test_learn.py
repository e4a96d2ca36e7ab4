"""`just learn` end to end in its quick setting: data, the pilot's choice, both stages, the ablation's
arms, the shipped run's longer stage 2, the consistency measured at each snapshot, the curves and the
shipped checkpoint (a few minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "learn.py"


@pytest.mark.slow
def test_quick_learn_run_picks_by_fid_trains_both_arms_and_ships_its_network(tmp_path):
    from uh_train.checkpoint import load_checkpoint, load_generator
    from uh_train.train_state import load_state

    out, ship = tmp_path / "learn", tmp_path / "ship" / "learned.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--ship", str(ship), "--pilot-minutes", "0.75",
           "--candidates", "tiny:4,tiny:2"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "learn.json").read_text())

    # The pilot trained both candidates for the same time and stage 1 went on with the lower FID.
    pilot = record["pilot"]
    assert set(pilot) == {"tiny-b4", "tiny-b2"}
    assert all(r["kimg"] > 0 and math.isfinite(r["fid"]) for r in pilot.values())
    best = min(pilot.values(), key=lambda r: r["fid"])
    assert (record["plan"]["preset"], record["plan"]["batch"]) == (best["preset"], best["batch"])
    assert json.loads((out / "runs" / "stage1" / "run.json").read_text())["config"]["batch"] == best["batch"]

    # Every run evaluated at several snapshots, each with finite metrics and a grid on disk; stage 2's
    # with its scale consistency and its 8r render.
    for name in ("stage1", "stage2-all-s0", "stage2-full-s0"):
        rows = record["curves"][name].values()
        assert len(rows) >= (1 if name == "stage2-full-s0" else 2), name
        for row in rows:
            assert all(math.isfinite(row[k]) for k in ("fid", "kfid_face", "kfid_hand", "kfid_mean"))
            assert (out / row["grid"]).is_file()
            if name != "stage1":
                assert all(math.isfinite(row[f"psnr_k{k}"]) for k in (2, 4, 8))
                assert (out / row["dense"]).is_file()
    # The shipped run went on past the ablation's length; the ablation run stopped there.
    kimg = {name: max(r["kimg"] for r in record["curves"][name].values()) for name in record["curves"]}
    assert kimg["stage2-all-s0"] == pytest.approx(0.036) and kimg["stage2-full-s0"] == pytest.approx(0.024)

    # The ablation's stream drew full-body patches only; the main stage 2 drew from every source.
    def consumed(run: str) -> set[str]:
        state = sorted((out / "runs" / run).glob("training-state-*.safetensors"))[-1]
        return {key.split("/", 1)[1] for key in load_state(state)["progress"]["data"]["consumed"]}

    # Both arms also read the same people's dense full views (their own source, weighted up).
    assert consumed("stage2-full-s0") == {"people-full", "people-fullhr"}
    dense = json.loads((out / "runs" / "stage2-all-s0" / "run.json").read_text())["config"]
    assert dense["mix"]["people-fullhr"] == 4.0 and any(str(p).endswith("shards-dense") for p in dense["shards"])
    assert dense["views"] == ["people-fullhr:s_min=2,whole=0.1"]
    # ... and the main arm from every source the data has (a CPU where every face fit is rejected has none)
    present = {s for s in ("people-full", "people-upper", "people-face", "hands")
               if any((out / "shards").glob(f"{s}-*.tar"))}
    assert {"people-full", "people-upper", "hands"} <= present
    assert consumed("stage2-all-s0") == present | {"people-fullhr"}

    # The pick: the snapshot with the best worst-k consistency among those within 10 % of the teacher's FID.
    # It replaces the shipped file only when it holds 27 dB at every k within that FID bound.
    ship_rows = list(record["curves"]["stage2-all-s0"].values())
    teacher_fid = max(record["curves"]["stage1"].values(), key=lambda r: r["kimg"])["fid"]
    near = [r for r in ship_rows if r["fid"] <= 1.1 * teacher_fid]
    worst = lambda r: min(r["psnr_k2"], r["psnr_k4"], r["psnr_k8"])  # noqa: E731
    expected = max(near, key=worst) if near else min(ship_rows, key=lambda r: r["fid"])
    good = worst(expected) >= 27.0 and expected["fid"] <= 1.1 * teacher_fid
    assert ship.exists() == good, done.stdout[-2000:]
    if not good:
        assert "not shipped" in done.stdout
    report = (out / "learn.md").read_text()
    assert "full-body source only" in report and "mean ± sd" in report and (out / "curves.png").is_file()

    # Run again with --ship-anyway: everything is reused, nothing is trained or evaluated twice, and the
    # pick is shipped with its provenance in the metadata.
    again = subprocess.run(cmd + ["--ship-anyway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "uh-train --shards" not in again.stdout and ": FID " not in again.stdout
    assert json.loads((out / "learn.json").read_text())["curves"] == record["curves"]
    provenance = load_checkpoint(ship).config["provenance"]
    assert provenance["stage1_kimg"] == pytest.approx(record["stage1_kimg"])
    assert provenance["preset"] == best["preset"] and provenance["command"].startswith("just learn")
    assert provenance["stage2_kimg"] == pytest.approx(expected["kimg"])
    nimg = round(expected["kimg"] * 1000)
    picked_file = out / "runs" / "stage2-all-s0" / f"network-{nimg // 1000:06d}k-{nimg % 1000:03d}.safetensors"
    shipped, picked = load_generator(ship), load_generator(picked_file)
    for (key, a), (_, b) in zip(shipped.state_dict().items(), picked.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
