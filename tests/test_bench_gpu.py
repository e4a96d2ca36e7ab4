"""The GPU check's script, run on a CPU with the `tiny` preset: every measurement it makes on a GPU
(both training stages, per-part times, the three ways to render a large image) comes out sane."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_measures_both_stages_and_the_three_renderings_on_cpu_with_tiny():
    bench = _load("bench_gpu")
    m = bench.measure("tiny", "cpu", batch=4, steps=2, tiles=2, compile_modes=(False,), workers=0, people=4)
    assert set(m["runs"]) == {(False, "bf16"), (False, "fp32")}  # each --precision is timed
    s1, s2 = m["runs"][False, "bf16"]
    assert (s1["stage"], s2["stage"]) == (1, 2) and s1["batch_gpu"] == 4
    for s in (s1, s2):
        assert s["s_per_kimg"] > 0 and math.isfinite(s["s_per_kimg"])
        assert {"data", "G forward", "G backward", "optimiser", "EMA"} <= set(s["parts"])
    # stage 2 has the teacher and its pixel loss (LPIPS with a random AlexNet when the weights are absent)
    assert {"teacher forward", "pixel loss: L1 + LPIPS (Eq. 8)"} <= set(s2["parts"])
    assert "teacher forward" not in s1["parts"]
    r = m["render"]
    assert r["size"] == 64 and set(r["seconds"]) == {"sequential patches", "stitched, batched", "single pass"}
    assert r["psnr"]["stitched, batched"] > 60  # the same patches, only batched differently
    assert r["psnr"]["single pass"] > 30  # one pass agrees with stitching up to the patch margins
    text = bench.report(m)
    assert "| eager, bf16 | 2 | 4 |" in text and "| eager, fp32 | 1 | 4 |" in text
    assert "single pass" in text and "G backward" in text


def test_gpu_check_skips_cleanly_without_cuda(monkeypatch, capsys):
    bench = _load("bench_gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.run() is None
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_entries_replace_their_own_gpu_and_keep_the_others():
    bench = _load("bench_gpu")
    old = bench.INTRO + "\n### GPU A: `paper` preset, batch 32, bf16 autocast\nold A\n\n" \
        "### GPU B: `paper` preset, batch 32, bf16 autocast\nold B\n\n_Machine: x_\n"
    new = bench.merge_entries(old, "### GPU A: `paper` preset, batch 32, bf16 autocast\nnew A\n")
    assert "new A" in new and "old A" not in new and "old B" in new and "_Machine" not in new
