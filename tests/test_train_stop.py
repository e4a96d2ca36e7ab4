"""uh-train stops on a signal with a checkpoint: SIGTERM mid-run finishes the step, writes a checkpoint
at that step and exits 143, and the same command resumes from it and logs what an uninterrupted run
logs; under torchrun a signal to one process stops every process after the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import uh_train.train as tr
from uh_train.training import distributed

from train_helpers import read_log, small_cfg, write_train_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def rank_of(pid: int) -> int | None:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


def test_torchrun_one_summary_and_a_signal_to_one_process_stops_both_at_the_same_step(shards, tmp_path):
    """Two processes (gloo): only rank 0 prints the summary; SIGTERM to rank 1 alone stops both after
    the same step, rank 0 writes the checkpoint there, and both end in step (weights in sync)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
           "-m", "uh_train.train", "--shards", str(shards), "--out", str(out), "--preset", "tiny",
           "--kimg", "0.08", "--batch", "8", "--snapshot-kimg", "0.04", "--lpips", "off", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 300
        while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "training ended before the signal"
            time.sleep(0.05)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        rank1 = next(int(p) for p in children if rank_of(int(p)) == 1)
        os.kill(rank1, signal.SIGTERM)
        err = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert err.count("uh-train: stage 1") == 1, err[-3000:]
    assert "batch     8 per step = 4 per process x 2 processes x 1 accumulation round" in err
    assert json.loads((out / "run.json").read_text())["start_summary"]["processes"] == 2
    stopped_at = read_log(out)[-1]["step"]
    assert stopped_at < 10 and f"stopped by SIGTERM after step {stopped_at}" in err, err[-3000:]
    assert json.loads((out / "latest.json").read_text())["step"] == stopped_at
    assert "generator weights in sync across 2 processes" in err  # both processes stopped after the same step


def test_a_stop_signal_is_recorded_once_and_the_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in distributed.STOP_SIGNALS}
    with distributed.stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a later one is ignored: the run is already stopping
        deadline = time.time() + 5
        while stop.received is None and time.time() < deadline:
            time.sleep(0.01)
        assert stop.received == signal.SIGUSR1
        assert stop.agreed(distributed.Dist(), None) == signal.SIGUSR1
    assert {sig: signal.getsignal(sig) for sig in distributed.STOP_SIGNALS} == before


def test_sigterm_mid_run_writes_a_checkpoint_at_that_step_and_the_run_resumes_from_it(shards, tmp_path):
    kw = dict(kimg=0.04, stage=2, snapshot_kimg=0.016, workers=1)  # 10 steps, a snapshot every 4
    reference = read_log(tr.train(small_cfg(shards, tmp_path / "full", **kw))["out"])
    assert len(reference) == 10

    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "uh_train.train", "--shards", str(shards), "--out", str(out), "--stage", "2",
           "--preset", "tiny", "--kimg", "0.04", "--batch", "4", "--snapshot-kimg", "0.016", "--lpips", "off",
           "--seed", "1", "--no-teacher", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "training ended before the signal"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the run, its data loader too, as SLURM signals
        err = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    logged = read_log(out)
    stopped_at = logged[-1]["step"]
    assert 1 <= stopped_at < 10, "the run should stop mid-run"
    latest = json.loads((out / "latest.json").read_text())
    assert latest["step"] == stopped_at  # the checkpoint is at the step it stopped, not the last snapshot
    assert (out / latest["state"]).is_file() and (out / latest["network"]).is_file()
    assert f"stopped by SIGTERM after step {stopped_at}" in err and "saved training-state-" in err

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {latest['state']} (step {stopped_at}," in resumed.stderr
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 11))
    for a, b in zip(reference, log, strict=True):  # as if it had never stopped
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
