"""GAN losses of the two stages (Eq. 6, 8, 9; R1)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from uh_train.losses import (
    consistency_loss,
    cutmix,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    pixel_loss,
    r1_penalty,
    random_box_mask,
    teacher_region,
)
from uh_train.spatial import patch_transform


def test_cutmix_takes_real_where_covered_and_fake_elsewhere():
    real, fake = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    mixed = cutmix(real, fake, mask)
    assert (mixed[..., :2] == 1).all() and (mixed[..., 2:] == -1).all()


def test_consistency_is_zero_for_a_per_pixel_linear_decoder_and_positive_otherwise():
    real, fake = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    mask = random_box_mask(2, 8, torch.Generator().manual_seed(0))
    linear = lambda x: 3 * x  # noqa: E731
    assert consistency_loss(linear(cutmix(real, fake, mask)), linear(real), linear(fake), mask) < 1e-10
    blur = lambda x: F.avg_pool2d(x, 3, 1, 1)  # noqa: E731 - mixes neighbouring pixels
    assert consistency_loss(blur(cutmix(real, fake, mask)), blur(real), blur(fake), mask) > 1e-3


def test_random_box_masks_cover_varied_areas():
    masks = random_box_mask(200, 32, torch.Generator().manual_seed(1))
    kept = masks.mean(dim=(1, 2, 3))
    assert kept.min() < 0.4 and kept.max() == 1.0 and set(masks.unique().tolist()) <= {0.0, 1.0}


def test_nonsaturating_losses_prefer_correct_logits():
    good = nonsaturating_d_loss(torch.full((4, 1), 5.0), torch.full((4, 1), -5.0))
    bad = nonsaturating_d_loss(torch.full((4, 1), -5.0), torch.full((4, 1), 5.0))
    assert good < 0.02 < 9 < bad
    assert nonsaturating_g_loss(torch.full((4, 1), 5.0)) < nonsaturating_g_loss(torch.full((4, 1), -5.0))


def test_masked_real_term_ignores_uncovered_pixels():
    logits = torch.full((1, 1, 4, 4), 10.0)
    logits[..., 2:] = -10.0  # wrong where uncovered
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2] = 1
    fake = torch.full((1, 1, 4, 4), -10.0)
    assert nonsaturating_d_loss(logits, fake, real_weight=weight) < 1e-3


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3)).unsqueeze(1)
    assert torch.allclose(r1_penalty(x, [logits]), w.square().sum(), rtol=1e-5)


def test_teacher_region_at_identity_is_the_image_and_at_half_scale_a_quarter():
    img = torch.rand(1, 3, 16, 16)
    crop, valid = teacher_region(img, torch.eye(3)[None], 16)
    assert torch.allclose(crop, img, atol=1e-5) and valid.min() == 1
    T = torch.tensor(patch_transform((0.25, 0.25), 2.0), dtype=torch.float32)[None]
    crop, _ = teacher_region(img, T, 8)
    assert torch.allclose(crop, img[..., :8, :8], atol=1e-5)


def test_pixel_loss_is_small_for_a_consistent_student_and_large_for_another_region():
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    teacher = torch.tensor(np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy]), dtype=torch.float32)[None]
    T = torch.tensor(patch_transform((0.4, 0.6), 2.0), dtype=torch.float32)[None]
    # a student that renders the same region at twice the teacher's density
    student, _ = teacher_region(F.interpolate(teacher, size=64, mode="bicubic", align_corners=False), T, 32)
    l1_good, _ = pixel_loss(student, teacher, T)
    other = torch.tensor(patch_transform((0.7, 0.3), 2.0), dtype=torch.float32)[None]
    wrong, _ = teacher_region(F.interpolate(teacher, size=64, mode="bicubic", align_corners=False), other, 32)
    l1_bad, _ = pixel_loss(wrong, teacher, T)
    assert l1_good < 0.02 and l1_bad > 10 * l1_good
