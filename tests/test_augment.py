"""Adaptive augmentation of what D sees (`--aug ada`): exact targets under augmentation, the adaptive
probability, and a run that trains with it, adapts p and resumes it."""

from __future__ import annotations

import torch

import uh_train.train as tr
from uh_train import augment
from uh_train.losses import cutmix
from uh_train.train_state import load_state

from train_helpers import read_log, small_cfg, write_train_shards


def test_p_zero_changes_nothing_and_p_one_changes_every_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(augment.images(x, augment.draw(6, 0.0, 16, g)), x)
    y = augment.images(x, augment.draw(6, 1.0, 16, g))
    assert all(not torch.allclose(y[i], x[i]) for i in range(6))


def test_masks_move_with_their_pixels_and_colour_leaves_them_alone():
    """A mask travels with the image under the permutation, so the per-pixel head's targets stay
    exact; the CutMix image of augmented parts is the augmented CutMix image."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16)
    mask = (torch.rand(8, 1, 16, 16) > 0.5).float()
    d = augment.draw(8, 1.0, 16, g)
    tagged = torch.cat([real, mask], dim=1)  # the mask as a fourth channel of the image
    moved = augment.permute(tagged, d)
    assert torch.equal(moved[:, 3:], augment.permute(mask, d))
    assert torch.equal(augment.permute(cutmix(real, fake, mask), d),
                       cutmix(augment.permute(real, d), augment.permute(fake, d), augment.permute(mask, d)))
    assert torch.equal(augment.permute(mask, d).sum(dim=(1, 2, 3)), mask.sum(dim=(1, 2, 3)))  # a permutation


def test_gradients_reach_the_generator_through_the_augmentation():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    augment.images(x, augment.draw(4, 1.0, 16, torch.Generator().manual_seed(2))).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_adaptive_p_rises_when_d_is_sure_of_the_reals_and_falls_otherwise():
    ada = augment.AdaptiveP(p=0.5, target=0.6, speed_kimg=1.0, interval=4)
    for _ in range(3):
        ada.observe(torch.ones(8, 1))
        ada.step(batch=10)
    assert ada.p == 0.5  # adjusted every 4 steps only
    ada.observe(torch.ones(8, 1))
    ada.step(batch=10)
    assert abs(ada.p - 0.54) < 1e-9  # r_t = 1 > 0.6: up by 10 * 4 / 1000
    for _ in range(80):  # 20 adjustments of 0.04 down
        ada.observe(-torch.ones(8, 1))
        ada.step(batch=10)
    assert ada.p == 0.0  # down, and never below 0


def test_aug_ada_trains_adapts_p_and_resumes_it(tmp_path):
    shards = write_train_shards(tmp_path / "shards")
    # target -1: D always looks too sure, so p must rise by 4 * 4 / 100 every 4 steps
    cfg = small_cfg(shards, tmp_path / "run", kimg=0.032, snapshot_kimg=0.016, aug="ada", ada_target=-1.0,
                    ada_kimg=0.1)
    tr.train(cfg)
    ps = [row["aug/p"] for row in read_log(tmp_path / "run")]
    assert ps[0] == 0.0 and abs(ps[3] - 0.16) < 1e-6 and abs(ps[-1] - 0.32) < 1e-6
    state = load_state(tmp_path / "run" / "training-state-000000k-032.safetensors")
    assert abs(state["progress"]["aug_p"] - 0.32) < 1e-6
    tr.train(small_cfg(shards, tmp_path / "run", kimg=0.048, snapshot_kimg=0.016, aug="ada", ada_target=-1.0,
                       ada_kimg=0.1))
    ps = [row["aug/p"] for row in read_log(tmp_path / "run")]
    assert abs(ps[-1] - 0.48) < 1e-6  # resumed from 0.32, not from 0
    assert all(torch.isfinite(torch.tensor(v)) for row in read_log(tmp_path / "run") for v in row.values()
               if isinstance(v, float))
