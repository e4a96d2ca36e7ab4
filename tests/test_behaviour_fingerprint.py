"""`scripts/behaviour_fingerprint.py`: the hashes a refactor must leave unchanged. The run is
reproducible (two runs give the same hashes, the precondition of comparing before and after) and
covers every stage it promises."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_render_hands import toy_model_data

from mst_pipeline.body.smpl_file import write_model_npz

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "behaviour_fingerprint.py"


def load_script():
    spec = importlib.util.spec_from_file_location("behaviour_fingerprint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_console_script_resolves_to_a_callable_of_this_tree():
    fp = load_script()
    for name in ("mst", "uh-train", "uh-generate"):
        cmd = fp.command(name)
        code = cmd[-1].replace(" as m; m.", " as m; assert callable(m.").rstrip("()") + ")"
        check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert check.returncode == 0, (name, check.stderr)


def test_rejects_are_hashed_without_their_time(tmp_path):
    fp = load_script()
    for when in ("10:00", "11:00"):
        folder = tmp_path / when
        folder.mkdir()
        (folder / "rejects.jsonl").write_text(json.dumps({"key": "a/b", "reason": "x", "time": when}) + "\n")
    assert fp.shard_hashes(tmp_path / "10:00", "s") == fp.shard_hashes(tmp_path / "11:00", "s")


@pytest.mark.slow
def test_two_runs_give_the_same_fingerprint_covering_every_stage(tmp_path):
    model = tmp_path / "toy.npz"
    write_model_npz(toy_model_data(), model)
    results = []
    for run, extra in (("a", []), ("b", ["--compare", str(tmp_path / "a.json")])):
        cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / run), "--body-model", str(model),
               "--people", "2", "--save", str(tmp_path / f"{run}.json"), *extra]
        results.append(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT))
        assert results[-1].returncode == 0, results[-1].stdout[-2000:] + results[-1].stderr[-2000:]
    first = json.loads((tmp_path / "a.json").read_text())
    assert first == json.loads((tmp_path / "b.json").read_text()) and "identical" in results[1].stdout
    for prefix in ("people/full/", "people/face/", "shards/full-", "shards/upper-", "shards/face-", "synthetic/",
                   "sr/", "stage1/step1/losses", "stage2/step1/losses", "gen-stitched/", "gen-single/", "gen-face/"):
        assert any(name.startswith(prefix) for name in first), prefix
    assert "G/pixel_l1" in first["stage2/step1/losses (repr)"]
