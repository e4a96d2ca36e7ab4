"""uh-train's start-up summary: what the run trains, printed once and recorded in run.json (under
torchrun, only the main process prints it: tests/test_train.py's two-process run)."""

from __future__ import annotations

import json

import pytest

import uh_train.train as tr
from uh_train.training import monitor

from train_helpers import small_cfg, write_train_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def test_the_start_up_summary_names_what_the_run_trains(shards, tmp_path, capsys):
    out = tmp_path / "s1"
    tr.train(small_cfg(shards, out, batch=4, batch_gpu=2, mix={"synth_full": 3}))
    summary = json.loads((out / "run.json").read_text())["start_summary"]
    G, D = summary["parameters"]["G"], summary["parameters"]["D"]
    assert summary["device"] == "cpu" and summary["processes"] == 1
    assert (summary["batch"], summary["batch_per_process"], summary["accumulation_rounds"]) == (4, 2, 2)
    assert G > 1000 and D > 1000 and summary["shards"] == [str(shards)]
    # stage 1 reads the full-body source only; the partial ones are named as not read
    assert summary["sources"] == {"synth_full": {"weight": 3.0, "share": 1.0, "shards": 2}}
    assert summary["sources_not_read"] == ["synth_face", "synth_upper"]
    assert (summary["stage"], summary["preset"], summary["precision"], summary["teacher"]) == (1, "tiny", "fp32",
                                                                                               None)
    text = capsys.readouterr().err
    assert text.count("uh-train: stage 1, preset tiny, fp32") == 1
    for line in ("device    cpu x 1 process", "batch     4 per step = 2 per process x 1 process x 2 accumulation "
                 "rounds", f"networks  G {G:,} parameters, D {D:,}", "sources   synth_full 100% (weight 3, 2 shards); "
                 "not read: synth_face, synth_upper", "teacher   none; start: new networks"):
        assert line in text, line


def test_the_summary_shares_follow_the_mixing_weights():
    import torch

    s = monitor.start_summary(device=torch.device("cpu"), world=8, batch=32, batch_gpu=4, rounds=1,
                              G=torch.nn.Linear(3, 2), D=torch.nn.Linear(2, 1), shards=["a", "b"],
                              weights={"shhq": 2.0, "celeba": 1.0, "hands": 1.0},
                              shard_counts={"shhq": 10, "celeba": 4, "hands": 1, "deepfashion": 3}, stage=2,
                              preset="paper", precision="bf16", teacher="runs/s1", start="G from stage 1",
                              pixel_loss="L1 + LPIPS (AlexNet)", kimg=25000, resume_step=7)
    text = monitor.start_summary_text(s)
    assert "uh-train: stage 2, preset paper, bf16, resuming at step 7, 25000 kimg" in text
    assert "device    cpu (one device per process) x 8 processes" in text
    assert "batch     32 per step = 4 per process x 8 processes x 1 accumulation round\n" in text
    assert "networks  G 8 parameters, D 3" in text
    assert ("sources   celeba 25% (weight 1, 4 shards), hands 25% (weight 1, 1 shard), shhq 50% (weight 2, 10 "
            "shards); not read: deepfashion") in text
    assert "teacher   runs/s1; start: G from stage 1" in text


