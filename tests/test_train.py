"""uh-train: both stages end to end on shards made by `mst`, exact resume after a kill, the NaN guard,
and 2-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import uh_train.train as tr
from mst_pipeline.synthesis.synthetic import write_synthetic
from uh_train.checkpoint import load_generator
from uh_train.networks.presets import PRESETS
from uh_train.training import cli, models, monitor
from uh_train.training.config import TrainConfig, config_changes

from train_helpers import read_log, small_cfg, write_train_shards

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def test_stage_one_then_stage_two_with_the_teacher(shards, tmp_path):
    s1 = tr.train(small_cfg(shards, tmp_path / "s1"))
    assert s1["steps"] == 4
    ckpt = tmp_path / "s1" / "network-latest.safetensors"
    assert ckpt.exists() and (tmp_path / "s1" / "samples-000000k-016.png").exists()
    log1 = read_log(tmp_path / "s1")
    assert "G/pixel_l1" not in log1[-1] and "D/consistency" in log1[-1]

    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(tmp_path / "s2"),
                                         "--stage", "2", "--teacher", str(ckpt), "--preset", "tiny", "--kimg", "0.008",
                                         "--batch", "4", "--lpips", "off"])
    assert result.exit_code == 0, result.output
    log2 = read_log(tmp_path / "s2")
    assert len(log2) == 2 and log2[-1]["G/pixel_l1"] > 0
    # the stage-2 generator starts from the teacher: at step 0 it renders the teacher's image
    G = load_generator(tmp_path / "s2" / "network-latest.safetensors", device="cpu")
    teacher = load_generator(ckpt, device="cpu")
    z = torch.randn(2, G.z_dim)
    assert torch.nn.functional.l1_loss(G(z, None), teacher(z, None)) < 0.5


def test_stage_one_needs_a_full_body_source(tmp_path):
    from mst_pipeline.shards.writer import ShardWriter, encode_sample

    from shard_helpers import random_image, sample_fields

    with ShardWriter(tmp_path / "faces", "faces") as w:
        w.write(encode_sample("faces", "a", random_image(), sample_fields(kind="face")))
    with pytest.raises(ValueError, match="stage 1 needs a full-body source"):
        tr.train(small_cfg(tmp_path / "faces", tmp_path / "out"))


def test_killed_run_resumes_with_the_same_next_step_losses(shards, tmp_path):
    full = tr.train(small_cfg(shards, tmp_path / "full", kimg=0.024, stage=2, snapshot_kimg=0.004))
    assert full["steps"] == 6
    reference = read_log(tmp_path / "full")

    out = tmp_path / "killed"
    cmd = [str(BIN / "uh-train"), "--shards", str(shards), "--out", str(out), "--stage", "2", "--preset", "tiny",
           "--kimg", "0.024", "--batch", "4", "--snapshot-kimg", "0.004", "--lpips", "off", "--seed", "1",
           "--no-teacher"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "training-state-000000k-008.safetensors").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "latest.json").read_text())
    assert state["step"] < 6
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = read_log(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(reference, resumed, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(shards, tmp_path, monkeypatch):
    real = tr.losses.nonsaturating_g_loss
    monkeypatch.setattr(tr.losses, "nonsaturating_g_loss", lambda x: real(x) * float("nan"))
    cfg = small_cfg(shards, tmp_path / "nan", kimg=0.04, max_bad_steps=3)
    with pytest.raises(RuntimeError, match="3 non-finite steps in a row"):
        tr.train(cfg)
    # skipped steps leave the weights as they were initialised
    torch.manual_seed(cfg.seed)
    fresh, _ = models.build_networks(cfg)
    saved = load_generator(tmp_path / "nan" / "network-latest.safetensors")
    for (name, a), b in zip(fresh.named_parameters(), saved.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_two_process_ddp_on_cpu_with_gloo(shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "uh_train.train", "--shards", str(shards), "--out", str(out), "--preset", "tiny",
           "--kimg", "0.016", "--batch", "8", "--snapshot-kimg", "0.016", "--lpips", "off", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]  # 16 images at a global batch of 8
    assert "weights in sync across 2 processes" in proc.stderr
    assert proc.stderr.count("uh-train: stage 1") == 1  # the start-up summary, from the main process only
    assert "batch     8 per step = 4 per process x 2 processes x 1 accumulation round" in proc.stderr


def test_lpips_is_never_dropped_silently(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no cached AlexNet weights here
    with pytest.raises(RuntimeError, match="alexnet-owt-7be5be79.pth .missing.*--lpips off"):
        models.make_lpips("on", torch.device("cpu"), "tiny")
    # auto may fall back to L1 for the CPU presets only; the paper preset stops at start-up
    assert models.make_lpips("auto", torch.device("cpu"), "tiny") is None
    assert models.make_lpips("auto", torch.device("cpu"), "small") is None
    with pytest.raises(RuntimeError, match="paper preset trains with LPIPS.*checkpoints.alexnet-owt-7be5be79.pth"):
        models.make_lpips("auto", torch.device("cpu"), "paper")
    assert models.make_lpips("off", torch.device("cpu"), "paper") is None


def test_stage_two_starts_from_stage_one_g_g_ema_and_d(shards, tmp_path, monkeypatch):
    """Stage 2 resumes the stage-1 G, G_ema and D (D is not new), the teacher is the stage-1 G_ema,
    the EMA has no ramp-up, and the run records how it started and which pixel loss it uses."""
    from uh_train.train_state import load_state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    tr.train(small_cfg(shards, tmp_path / "s1", kimg=0.008))
    start = models.find_stage_one(tmp_path / "s1" / "network-latest.safetensors")
    assert start.state == tmp_path / "s1" / "training-state-000000k-008.safetensors"
    assert models.find_stage_one(tmp_path / "s1").state == start.state
    state = load_state(start.state)
    cfg = small_cfg(shards, tmp_path / "s2", stage=2, teacher=str(tmp_path / "s1"), kimg=0.004, lpips="auto")
    G, D = models.build_networks(cfg)
    import copy

    G_ema = copy.deepcopy(G)
    teacher, note = models.start_from_stage_one(start, G, G_ema, D, torch.device("cpu"))
    for name, module in (("G", G), ("G_ema", G_ema), ("D", D)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[name][key]), (name, key)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, state["G_ema"][key]), key
    assert "D from training-state-000000k-008" in note

    tr.train(cfg)  # one step of 4 images
    info = json.loads((tmp_path / "s2" / "run.json").read_text())
    assert info["ema_rampup"] is None and "D from" in info["start"]
    assert info["pixel_loss"].startswith("L1 only") and "fell back" in info["pixel_loss"]
    after = load_state(tmp_path / "s2" / "training-state-000000k-004.safetensors")
    moved = sum((after["G"][k] - state["G"][k]).abs().sum() for k in state["G"] if state["G"][k].is_floating_point())
    ema_moved = sum((after["G_ema"][k] - state["G_ema"][k]).abs().sum() for k in state["G_ema"]
                    if k in dict(G_ema.named_parameters()))
    # without ramp-up the EMA (half-life 1.25 kimg) moves by ~0.2 % of G's step; with it, G_ema = G
    assert moved > 0 and ema_moved < 0.05 * moved


def test_mirror_and_views_reach_the_patch_sampler(shards, tmp_path):
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(tmp_path / "v"), "--stage", "2",
                                         "--preset", "tiny", "--kimg", "0.004", "--batch", "4", "--lpips", "off",
                                         "--view", "synth_face:scale=uniform-size,s_min=2", "--mirror", "--no-teacher"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "v" / "run.json").read_text())["config"]
    assert cfg["mirror"] is True and cfg["views"] == ["synth_face:scale=uniform-size,s_min=2"]
    bad = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(tmp_path / "b"), "--stage", "2",
                                      "--view", "synth_face:zoom=2", "--no-teacher"])
    assert bad.exit_code != 0 and "unknown setting 'zoom'" in bad.output


def test_a_short_cpu_run_moves_the_generator_towards_the_data(tmp_path):
    """Evidence that it learns: the patch-feature distance to real images drops below step 0's."""
    from uh_train.data import PatchBatches, PatchConfig
    from uh_train.diagnostics import sliced_wasserstein

    write_synthetic(tmp_path / "shards", n=32, res=64, seed=0)
    cfg = small_cfg(tmp_path / "shards", tmp_path / "run", kimg=0.48, batch=8, snapshot_kimg=0.48, seed=0)
    torch.manual_seed(cfg.seed)
    G0, _ = models.build_networks(cfg)
    real = next(iter(PatchBatches([tmp_path / "shards"], 128, PatchConfig(res=32, stage=1), seed=99)))["image"]
    z = torch.randn(128, G0.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = sliced_wasserstein(real, G0.eval()(z, None))
    tr.train(cfg)
    with torch.no_grad():
        after = sliced_wasserstein(real, load_generator(tmp_path / "run" / "network-latest.safetensors")(z, None))
    assert after < 0.75 * before, (before, after)


def test_log_restarts_without_a_checkpoint_and_tolerates_a_torn_line_on_resume(shards, tmp_path):
    out = tmp_path / "log"
    out.mkdir()
    # a run killed before its first checkpoint left steps 1-3 behind: the re-run starts the log afresh
    (out / "log.jsonl").write_text("".join(json.dumps({"step": s, "kimg": s * 0.004}) + "\n" for s in (1, 2, 3)))
    tr.train(small_cfg(shards, out, kimg=0.004))
    assert [r["step"] for r in read_log(out)] == [1]
    # a crash after the step-1 checkpoint: step 2 and a torn step 3 logged, never checkpointed
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "kimg": 0.008}) + "\n" + '{"step": 3, "ki')
    tr.train(small_cfg(shards, out, kimg=0.008))  # a longer run resumes (--kimg may change)
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_resume_with_other_settings_is_refused_unless_allowed_and_recorded(shards, tmp_path):
    out = tmp_path / "cfg"
    tr.train(small_cfg(shards, out, kimg=0.004))
    with pytest.raises(ValueError, match=r"other settings \(batch 4 -> 8\).*--allow-config-change"):
        tr.train(small_cfg(shards, out, kimg=0.016, batch=8))
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(out), "--preset", "small",
                                         "--kimg", "0.016", "--batch", "4", "--lpips", "off", "--seed", "1"])
    assert result.exit_code == 1 and "preset 'tiny' -> 'small'" in result.output
    summary = tr.train(small_cfg(shards, out, kimg=0.012, batch=8, allow_config_change=True))
    assert summary["steps"] == 2  # 4 images at batch 4, then 8 at batch 8
    run = json.loads((out / "run.json").read_text())
    assert run["config_changes"] == [{"step": 1, "changes": {"batch": [4, 8]}}]
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_mirror_is_on_by_default_for_the_paper_preset_only():
    base = dict(shards=["s"], out="o")
    assert TrainConfig(**base, preset="paper").mirror is True
    assert TrainConfig(**base, preset="tiny").mirror is False
    assert TrainConfig(**base, preset="paper", mirror=False).mirror is False
    assert TrainConfig(**base, preset="small", mirror=True).mirror is True


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_python_api_and_the_cli_train_the_same_run_for_each_preset(preset, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tr, "train", lambda cfg: seen.append(cfg) or {"steps": 0, "kimg": 0.0})
    (tmp_path / "shards").mkdir()
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"),
                                         "--preset", preset])
    assert result.exit_code == 0, result.output
    api = TrainConfig(shards=[str(tmp_path / "shards")], out=str(tmp_path / "run"), preset=preset)
    assert asdict(seen[0]) == asdict(api)
    defaults = PRESETS[preset].training
    assert (api.batch, api.kimg, api.snapshot_kimg, api.mirror) == (
        defaults.batch, defaults.kimg, defaults.snapshot_kimg, defaults.mirror)


def test_cli_help_shows_each_presets_defaults():
    result = CliRunner().invoke(cli.app, ["run", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    for name, p in PRESETS.items():
        assert f"{name} {p.training.batch:g}" in text and f"{name} {p.training.kimg:g}" in text
        assert f"{name} {p.training.snapshot_kimg:g}" in text
        assert f"{name} {'on' if p.training.mirror else 'off'}" in text


def test_an_older_runs_config_resumes_unchanged_with_the_preset_defaults_resolved(tmp_path):
    """Saved configs hold concrete batch/kimg/snapshot values and `mirror: null` (the preset's)."""
    cfg = TrainConfig(shards=["s"], out=str(tmp_path), preset="paper")
    saved = json.loads(json.dumps(asdict(cfg)))
    assert config_changes({**saved, "mirror": None}, cfg) == {}
    assert config_changes({**saved, "mirror": None}, TrainConfig(**{**asdict(cfg), "mirror": False})) == {
        "mirror": [True, False]}
    # an older default batch, stored as a number, is still a change of batch
    assert config_changes({**saved, "batch": 16}, cfg) == {"batch": [16, 32]}


def _count_calls(monkeypatch):
    from uh_train.networks import Discriminator, Generator

    calls = {"G": [], "D": []}
    g_forward, d_forward = Generator.forward, Discriminator.forward

    def g(self, z, transform=None, *args, **kwargs):
        calls["G"].append((z.shape[0], kwargs.get("update_emas", False), torch.is_grad_enabled()))
        return g_forward(self, z, transform, *args, **kwargs)

    def d(self, img, chunks=1):
        calls["D"].append((img.shape[0], chunks))
        return d_forward(self, img, chunks)

    monkeypatch.setattr(Generator, "forward", g)
    monkeypatch.setattr(Discriminator, "forward", d)
    return calls


def test_a_step_renders_once_and_runs_d_once_over_reals_fakes_and_cutmix(shards, tmp_path, monkeypatch):
    """Step 1 (R1): reals alone (R1 needs their own graph), fakes + CutMix in one pass, fakes for G.
    Step 2: reals, fakes and CutMix in one pass (minibatch statistics per chunk), fakes for G. The
    generator renders once per step, with the EMA update, for both the D and the G step."""
    calls = _count_calls(monkeypatch)
    clock = monitor.StepClock()
    tr.train(small_cfg(shards, tmp_path / "run", kimg=0.008, snapshot_kimg=1.0), clock=clock)
    snapshot_renders = 4  # sample grid at the end: fixed z at 4 views
    assert calls["G"][:-snapshot_renders] == [(4, True, True)] * 2
    assert calls["D"] == [(4, 1), (8, 2), (4, 1), (12, 3), (4, 1)]
    assert len(clock.steps) == 2 and "R1" in clock.steps[0] and "R1" not in clock.steps[1]
    for part in ("data", "G forward", "D forward/backward: reals, fakes, CutMix", "D forward: fakes for G",
                 "backward to the image: D, pixel loss", "G backward", "optimiser", "EMA"):
        assert clock.steps[1][part] >= 0
    assert "teacher forward" not in clock.totals  # stage 1


def test_no_share_fakes_renders_the_d_steps_fakes_from_fresh_z(shards, tmp_path, monkeypatch):
    calls = _count_calls(monkeypatch)
    tr.train(small_cfg(shards, tmp_path / "run", kimg=0.004, snapshot_kimg=1.0, share_fakes=False))
    # the G step's render (no EMA update, with gradients), then the D step's (EMA update, no gradients)
    assert calls["G"][:2] == [(4, False, True), (4, True, False)]


def test_a_setting_newer_than_the_checkpoint_counts_as_unchanged_at_its_default(tmp_path):
    cfg = TrainConfig(shards=["s"], out=str(tmp_path))
    saved = json.loads(json.dumps(asdict(cfg)))
    del saved["share_fakes"]  # a checkpoint written before the setting existed
    assert config_changes(saved, cfg) == {}
    assert config_changes(saved, TrainConfig(shards=["s"], out=str(tmp_path), share_fakes=False)) == {
        "share_fakes": [True, False]}


def test_a_second_run_on_the_same_out_stops_at_once_and_the_first_finishes_untouched(shards, tmp_path):
    reference = tr.train(small_cfg(shards, tmp_path / "reference"))
    out = tmp_path / "run"
    cmd = [str(BIN / "uh-train"), "--shards", str(shards), "--out", str(out), "--preset", "tiny", "--kimg", "0.016",
           "--batch", "4", "--snapshot-kimg", "0.008", "--lpips", "off", "--seed", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while f"pid {first.pid}" not in ((out / ".lock").read_text() if (out / ".lock").exists() else ""):
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.02)
        started = time.time()
        second = CliRunner().invoke(cli.app, ["run", *cmd[1:]])
        assert time.time() - started < 5
        lines = [line for line in second.output.splitlines() if line.strip()]
        assert second.exit_code == 1 and len(lines) == 1 and f"pid {first.pid}" in lines[0], second.output
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert [r["step"] for r in read_log(out)] == list(range(1, reference["steps"] + 1))
    for a, b in zip(read_log(tmp_path / "reference"), read_log(out), strict=True):  # as if it ran alone
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    tr.train(small_cfg(shards, out, kimg=0.024))  # the lock went with the first run: it resumes


def test_mix_with_every_source_at_zero_is_a_short_error(shards, tmp_path):
    from uh_train.shard_reader import read_manifests

    sources = sorted(set(read_manifests([shards]).column("source").to_pylist()))
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(tmp_path / "o"), "--stage", "2",
                                         "--kimg", "0.004", "--batch", "4", "--lpips", "off", "--no-teacher",
                                         *[a for s in sources for a in ("--mix", f"{s}=0")]])
    assert result.exit_code == 1 and "no source with a positive weight" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o" / "latest.json").exists()


@pytest.mark.parametrize("latest", ["[]", '{"state": 5}', '{"network": "n.safetensors"}', "{", '{"state": "../x"}'])
def test_a_malformed_latest_json_is_a_one_line_error(shards, tmp_path, latest):
    out = tmp_path / "o"
    out.mkdir()
    (out / "latest.json").write_text(latest)
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(out), "--kimg", "0.004",
                                         "--batch", "4", "--lpips", "off"])
    assert result.exit_code == 1 and "latest.json" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output


def test_a_checkpoint_write_cut_off_by_a_kill_leaves_no_tmp_after_the_next_run(shards, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".training-state-000000k-004.safetensors.abc123.tmp").write_bytes(b"half a state")
    tr.train(small_cfg(shards, out, kimg=0.004))
    assert not list(out.glob(".*.tmp")) and (out / "latest.json").exists()


def test_every_precision_trains_a_step_on_a_cpu_and_is_recorded(shards, tmp_path):
    """fp32, bf16 and auto each train; bf16 really changes the arithmetic (other losses than fp32's,
    same seed), auto is fp32 on a CPU, and run.json says which arithmetic ran."""
    first = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / precision
        tr.train(small_cfg(shards, out, kimg=0.004, snapshot_kimg=0.004, precision=precision))
        run = json.loads((out / "run.json").read_text())
        assert run["config"]["precision"] == precision
        assert run["precision"] == ("fp32" if precision == "auto" else precision)
        first[precision] = read_log(out)[0]
        assert all(np.isfinite(v) for k, v in first[precision].items() if k.startswith(("D/", "G/")))
    assert first["auto"]["D/global"] == first["fp32"]["D/global"]
    assert first["bf16"]["D/global"] != first["fp32"]["D/global"]


def test_the_paper_preset_trains_in_fp32_unless_told_and_an_unknown_precision_is_refused():
    assert TrainConfig(shards=["s"], out="o", preset="paper").precision == "fp32"
    assert TrainConfig(shards=["s"], out="o", preset="tiny").precision == "auto"
    assert TrainConfig(shards=["s"], out="o", preset="paper", precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="--precision 'fp16'"):
        TrainConfig(shards=["s"], out="o", precision="fp16")


def test_the_paper_preset_stops_on_a_stage_two_teacher_or_a_new_d_unless_told(shards, tmp_path, monkeypatch):
    """A stage-2 network as teacher, or a teacher without its stage-1 training state (D would be new):
    the paper preset stops with the reason and the switch; the switch lets it start; a CPU preset notes."""
    tr.train(small_cfg(shards, tmp_path / "s1", kimg=0.004, snapshot_kimg=0.004))
    tr.train(small_cfg(shards, tmp_path / "s2", stage=2, teacher=str(tmp_path / "s1"), kimg=0.004,
                       snapshot_kimg=0.004))
    lone = tmp_path / "lone" / "generator.safetensors"  # a stage-1 generator without its training state
    lone.parent.mkdir()
    lone.write_bytes((tmp_path / "s1" / "network-latest.safetensors").read_bytes())
    started = []  # the configs that got as far as building networks
    monkeypatch.setattr(models, "start_from_stage_one", lambda *a: (None, "started"))

    def start(teacher, **kw):
        cfg = TrainConfig(shards=[str(shards)], out=str(tmp_path / "run"), stage=2, teacher=str(teacher), **kw)
        monkeypatch.setattr(models, "build_networks", lambda c: (started.append(c), (torch.nn.Linear(1, 1),) * 2)[1])
        return models.start_networks(cfg, torch.device("cpu"))

    for teacher, reason, switch in ((tmp_path / "s2", "is a stage-2 network", "teacher_any_stage"),
                                    (lone, "D would start new", "new_d")):
        with pytest.raises(ValueError, match=reason) as e:
            start(teacher, preset="paper")
        assert f"--{switch.replace('_', '-')}" in str(e.value) and not started
        start(teacher, preset="paper", **{switch: True})
        start(teacher, preset="tiny")  # noted, not stopped
        assert len(started) == 2
        started.clear()
    start(tmp_path / "s1", preset="paper")  # the paper's own start
    assert len(started) == 1


def test_cutmix_options_reach_the_loop_and_the_cli(shards, tmp_path, monkeypatch):
    """--cutmix-prob/--cutmix-ramp-kimg/--cutmix-global train, and change the D losses the default gives."""
    tr.train(small_cfg(shards, tmp_path / "default", kimg=0.008))
    tr.train(small_cfg(shards, tmp_path / "unet", kimg=0.008, cutmix_prob=0.5, cutmix_ramp_kimg=0.004,
                       cutmix_global=True))
    a, b = read_log(tmp_path / "default"), read_log(tmp_path / "unet")
    assert all(np.isfinite(v) for row in b for k, v in row.items() if k.startswith("D/"))
    assert a[0]["D/global"] == b[0]["D/global"]  # step 0: the ramp mixes no whole view yet
    assert a[-1]["D/global"] != b[-1]["D/global"]  # then mixed images are fakes to the global head too
    seen = []
    monkeypatch.setattr(tr, "train", lambda cfg: seen.append(cfg) or {"steps": 0, "kimg": 0.0})
    result = CliRunner().invoke(cli.app, ["run", "--shards", str(shards), "--out", str(tmp_path / "c"),
                                         "--cutmix-prob", "0.5", "--cutmix-ramp-kimg", "100", "--cutmix-global",
                                         "--aug", "ada", "--precision", "bf16", "--ema-kimg", "1"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.cutmix_prob, cfg.cutmix_ramp_kimg, cfg.cutmix_global, cfg.aug, cfg.precision, cfg.ema_kimg) == (
        0.5, 100.0, True, "ada", "bf16", 1.0)
