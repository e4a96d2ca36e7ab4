"""Stage 2's health: the scale-consistency metric, the per-scale-bin training log, and a run that
diverges stopping itself with the snapshot to go back to."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import uh_train.train as tr
from uh_train.metrics.consistency import scale_consistency
from uh_train.resample import reduce as lanczos_reduce
from uh_train.training.monitor import TrainingDiverged

from train_helpers import read_log, small_cfg, write_train_shards


class SmoothPerson:
    """A PatchGenerator whose image is one smooth function of full-body space, sampled at pixel
    centres: every density shows the same picture, so it is consistent by construction."""

    z_dim, img_resolution = 4, 16

    def picture(self, z: torch.Tensor, size: int) -> torch.Tensor:
        c = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        y, x = torch.meshgrid(c, c, indexing="ij")
        out = []
        for zi in z.double():
            blob = torch.exp(-((x - 0.5 - 0.1 * zi[0]) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08))
            wave = 0.3 * torch.sin(2 * math.pi * (2 * x + zi[1]))
            out.append(torch.stack([blob + wave, blob - wave, blob * 0.5]) * 0.8 - 0.2)
        return torch.stack(out).float()

    def render(self, z: torch.Tensor, size: int) -> torch.Tensor:
        return self.picture(z, size)


class IgnoresTransform(SmoothPerson):
    """Draws the whole person in every patch, whatever T says: a dense render is a k x k mosaic of
    small people, the stitched image of a generator that never learned T(v, s)."""

    def render(self, z: torch.Tensor, size: int) -> torch.Tensor:
        k = size // self.img_resolution
        return self.picture(z, self.img_resolution).repeat(1, 1, k, k)


def test_a_consistent_generator_scores_high_and_one_that_ignores_t_scores_low():
    good = scale_consistency(SmoothPerson(), n=4, factors=(2, 4, 8))["factors"]
    bad = scale_consistency(IgnoresTransform(), n=4, factors=(2, 4, 8))["factors"]
    for k in ("2", "4", "8"):
        assert good[k]["psnr"] > 30, good
        assert bad[k]["psnr"] < 22 and bad[k]["psnr"] < good[k]["psnr"] - 10, bad
        assert len(good[k]["psnr_per_seed"]) == 4


def test_lanczos_reduction_of_a_constant_is_the_constant_and_of_a_fine_checkerboard_its_mean():
    flat = torch.full((1, 3, 64, 64), 0.3)
    assert torch.allclose(lanczos_reduce(flat, 8), torch.full((1, 3, 8, 8), 0.3), atol=1e-5)
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(1, 3, 64, 64)
    assert torch.allclose(lanczos_reduce(checker, 8), torch.full((1, 3, 8, 8), 0.5), atol=0.02)


def test_uh_eval_consistency_needs_no_shards_and_reports_each_factor(tmp_path):
    from uh_train.checkpoint import save_checkpoint
    from uh_train.evaluate import app
    from uh_train.networks import Generator, get_preset

    torch.manual_seed(0)
    G = Generator(get_preset("tiny").generator)
    ckpt = tmp_path / "g.safetensors"
    save_checkpoint(ckpt, {"G_ema": G}, config={"preset": "tiny"})
    result = CliRunner().invoke(app, ["--ckpt", str(ckpt), "--metrics", "consistency", "--n", "2",
                                      "--out", str(tmp_path / "eval"), "--no-cache"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["consistency"]["factors"]) == {"2", "4", "8"}
    assert "scale consistency" in (tmp_path / "eval" / "metrics.md").read_text()
    refused = CliRunner().invoke(app, ["--ckpt", str(ckpt), "--metrics", "fid", "--out", str(tmp_path / "e2")])
    assert refused.exit_code != 0 and "--shards" in refused.output


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def test_stage_two_logs_teacher_loss_and_d_accuracy_per_scale_bin_and_consistency_at_snapshots(shards, tmp_path):
    tr.train(small_cfg(shards, tmp_path / "s1", kimg=0.008))
    tr.train(small_cfg(shards, tmp_path / "s2", stage=2, teacher=str(tmp_path / "s1"), consistency_n=2))
    log = read_log(tmp_path / "s2")
    binned = [k for row in log for k in row if k.startswith("bin/")]
    assert any(k.endswith("/teacher_l1") for k in binned)
    assert any(k.endswith("/D_acc_real") for k in binned) and any(k.endswith("/D_acc_fake") for k in binned)
    for row in log:
        for k, v in row.items():
            if k.startswith("bin/") and "D_acc" in k:
                assert 0.0 <= v <= 1.0
    snapshots = [row for row in log if "consistency/psnr_k8" in row]
    assert [row["step"] for row in snapshots] == [2, 4]  # every 0.008 kimg at batch 4
    assert all(math.isfinite(row["consistency/psnr_k2"]) for row in snapshots)


def test_a_run_whose_losses_explode_stops_and_names_the_last_good_snapshot(shards, tmp_path, monkeypatch):
    real = tr.losses.nonsaturating_g_loss
    calls = {"n": 0}

    def exploding(logits):  # sane for the first 3 steps (two G terms per step), then huge
        calls["n"] += 1
        return real(logits) * (1e6 if calls["n"] > 6 else 1.0)

    monkeypatch.setattr(tr.losses, "nonsaturating_g_loss", exploding)
    out = tmp_path / "runaway"
    with pytest.raises(TrainingDiverged) as info:
        tr.train(small_cfg(shards, out, kimg=0.2, snapshot_kimg=0.008, diverge_limit=1000.0, diverge_steps=5))
    message = str(info.value)
    assert "G/adv" in message and "step 8" in message
    assert "network-000000k-008.safetensors" in message  # step 2's snapshot; step 4's came after the blow-up
    assert (out / "network-000000k-008.safetensors").exists()
    # a run within bounds is not stopped
    monkeypatch.setattr(tr.losses, "nonsaturating_g_loss", real)
    assert tr.train(small_cfg(shards, tmp_path / "calm", diverge_limit=1000.0, diverge_steps=1))["steps"] == 4
