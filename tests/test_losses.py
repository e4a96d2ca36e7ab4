"""GAN losses of the two stages (Eq. 6, 8, 9; R1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import pink_noise

from uh_train import resample
from uh_train.format.geometry import patch_transform
from uh_train.losses import (
    consistency_loss,
    cutmix,
    cutmix_mask,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    pixel_loss,
    pixel_loss_per_patch,
    r1_penalty,
    random_box_mask,
    teacher_footprint,
    teacher_grid,
)


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


def _region_box(T: torch.Tensor, size: int) -> torch.Tensor:
    """The region T(v, s) of a size x size full-body image, as (x0, y0, x1, y1) in its pixels."""
    T = T.double()
    x0 = (T[:, 0, 2] - T[:, 0, 0] / 2 + 0.5) * size
    y0 = (T[:, 1, 2] - T[:, 1, 1] / 2 + 0.5) * size
    return torch.stack([x0, y0, x0 + T[:, 0, 0] * size, y0 + T[:, 1, 1] * size], dim=1)


def _region_of(image: torch.Tensor, T: torch.Tensor, res: int) -> torch.Tensor:
    """The region T(v, s) of a full-body image read at res x res (the project's resampler)."""
    return resample.read_boxes(image.expand(T.shape[0], -1, -1, -1), _region_box(T, image.shape[-1]), res)[0]


def test_teacher_grid_at_identity_reads_every_pixel_and_at_half_scale_a_quarter():
    T = torch.eye(3)[None]
    iy, ix, wy, wx, valid = teacher_grid(T, 16, 16, 16)
    assert iy[0].tolist() == list(range(16)) and ix[0].tolist() == list(range(16)) and valid.min() == 1
    assert np.allclose(wx[0], np.eye(16), atol=1e-9)  # s = 1: pixels as they are
    T = torch.tensor(patch_transform((0.25, 0.25), 2.0), dtype=torch.float32)[None]
    iy, ix, _, wx, valid = teacher_grid(T, 16, 16, 9)
    assert ix[0, :8].tolist() == list(range(8)) and bool(valid[0, 0, :8, :8].all())
    assert not bool(valid[0, 0, 8].any())  # the ninth pixel lies outside the region
    # each teacher pixel is read from the two student pixels that cover it (footprint 2)
    assert wx[0, 0, :2].sum() > 0.9


def test_pixel_loss_is_small_for_a_consistent_student_and_large_for_another_region():
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    teacher = torch.tensor(np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy]), dtype=torch.float32)[None]
    T = torch.tensor(patch_transform((0.4, 0.6), 2.0), dtype=torch.float32)[None]
    # a student that renders the same region at twice the teacher's density
    dense = F.interpolate(teacher, size=64, mode="bicubic", align_corners=False)
    student = _region_of(dense, T, 32)
    l1_good, _ = pixel_loss(student, teacher, T)
    other = torch.tensor(patch_transform((0.7, 0.3), 2.0), dtype=torch.float32)[None]
    l1_bad, _ = pixel_loss(_region_of(dense, other, 32), teacher, T)
    assert l1_good < 0.02 and l1_bad > 10 * l1_good


def _pink_noise(n: int, seed: int = 0) -> torch.Tensor:
    """A 1/f noise image [1, 3, n, n] with standard deviation 0.5 (natural images' spectrum)."""
    return torch.tensor(0.5 * pink_noise(n, seed).transpose(2, 0, 1), dtype=torch.float32)[None]


def test_a_generator_consistent_at_every_density_has_no_pixel_loss_at_any_scale_or_offset():
    """Eq. 8's target is the consistency metric's: when the teacher is the dense picture reduced to r
    and the student renders the dense picture's region, the loss vanishes at every s and sub-pixel
    offset (a bilinear crop of the teacher and a triangle-filtered student left about 0.03 here). A
    student that renders the region a quarter teacher pixel off is penalised."""
    r = 64
    dense = _pink_noise(8 * r)
    teacher = resample.reduce(dense, r)
    rng = np.random.default_rng(1)
    for s in (1.5, 2.0, 3.3, 4.0, 8.0):
        vs = 0.5 + (rng.random((6, 2)) - 0.5) * (1 - 1 / s)
        Ts = torch.tensor(np.stack([patch_transform(v, s) for v in vs]), dtype=torch.float32)
        good, _ = pixel_loss_per_patch(_region_of(dense, Ts, r), teacher.expand(6, -1, -1, -1), Ts)
        shifted = Ts.clone()
        shifted[:, 0, 2] += 0.25 / r
        off, _ = pixel_loss_per_patch(_region_of(dense, shifted, r), teacher.expand(6, -1, -1, -1), Ts)
        assert float(good.max()) < 0.015, (s, good)
        assert float(off.min()) > 2 * float(good.max()), (s, off, good)


def _smooth_teacher(res: int = 64) -> torch.Tensor:
    yy, xx = np.mgrid[0:res, 0:res] / float(res)
    img = np.stack([np.sin(9 * xx + 3 * yy), np.cos(7 * yy - 2 * xx), np.sin(5 * xx * yy * 6)])
    return torch.tensor(img, dtype=torch.float32)[None]


def _student_of(teacher: torch.Tensor, T: torch.Tensor, res: int) -> torch.Tensor:
    """What a perfect student renders at T: the teacher's region at r x r (denser than the teacher)."""
    dense = F.interpolate(teacher, size=teacher.shape[-1] * 8, mode="bicubic", align_corners=False)
    return _region_of(dense, T, res)


def _per_patch_lpips_stand_in(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A deterministic per-sample perceptual distance (LPIPS's shape: [N, 1, 1, 1])."""
    feats = [F.avg_pool2d(x, 4) for x in (a, b)]
    return (feats[0] - feats[1]).square().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)


def test_pixel_loss_of_a_patch_does_not_depend_on_its_batch_mates():
    teacher = _smooth_teacher()
    Ts = torch.tensor(np.stack([patch_transform((0.5, 0.15), 8.0), patch_transform((0.5, 0.5), 1.0),
                                patch_transform((0.3, 0.7), 2.5), patch_transform((0.6, 0.4), 5.0)]),
                      dtype=torch.float32)
    noise = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    student = _student_of(teacher, Ts, 64) + 0.05 * noise
    teachers = teacher.expand(4, -1, -1, -1)
    l1_all, lp_all = pixel_loss_per_patch(student, teachers, Ts, _per_patch_lpips_stand_in)
    for i in range(4):
        l1_one, lp_one = pixel_loss_per_patch(student[i:i + 1], teachers[i:i + 1], Ts[i:i + 1],
                                              _per_patch_lpips_stand_in)
        assert torch.allclose(l1_all[i], l1_one[0], atol=1e-6) and torch.allclose(lp_all[i], lp_one[0], atol=1e-7)
    # and the batch value is the mean of the patches' values
    l1, lp = pixel_loss(student, teachers, Ts, _per_patch_lpips_stand_in)
    assert torch.allclose(l1, l1_all.mean()) and torch.allclose(lp, lp_all.mean())


def test_an_s8_patch_is_compared_at_r_over_8_teacher_pixels(monkeypatch):
    import uh_train.losses as losses_mod

    seen = []
    real_grid = losses_mod.teacher_grid

    def spy(transform, res, teacher_res, m):
        out = real_grid(transform, res, teacher_res, m)
        for t, v in zip(transform, out[-1][:, 0], strict=True):  # (s, teacher pixels across the region)
            seen.append((round(float(1 / t[0, 0])), int(v.sum(dim=-1).max())))
        return out

    monkeypatch.setattr(losses_mod, "teacher_grid", spy)
    teacher = _smooth_teacher(64)
    Ts = torch.tensor(np.stack([patch_transform((0.5, 0.15), 8.0), patch_transform((0.5, 0.5), 1.0)]),
                      dtype=torch.float32)
    pixel_loss(_student_of(teacher, Ts, 64), teacher.expand(2, -1, -1, -1), Ts)
    assert sorted(seen) == [(1, 64), (8, 8)]
    assert teacher_footprint(Ts, 256).tolist() == [32, 256]


def test_detail_finer_than_the_teachers_pixels_is_not_penalised_in_a_mixed_batch():
    """An s = 8 patch may hold detail the 64 px teacher cannot: comparing at r/8 px ignores it,
    whatever scales the batch-mates have (a comparison at the batch's mean scale would not)."""
    teacher = _smooth_teacher(64)
    Ts = torch.tensor(np.stack([patch_transform((0.45, 0.2), 8.0), patch_transform((0.5, 0.5), 1.0),
                                patch_transform((0.5, 0.5), 1.0)]), dtype=torch.float32)
    student = _student_of(teacher, Ts, 64)
    wave = torch.sin(2 * np.pi * 8 * (torch.arange(64) + 0.5) / 64)  # half a teacher pixel per period at s = 8
    detail = student.clone()
    detail[0] += 0.4 * wave[None, :] * wave[:, None]
    base, _ = pixel_loss_per_patch(student, teacher.expand(3, -1, -1, -1), Ts)
    with_detail, _ = pixel_loss_per_patch(detail, teacher.expand(3, -1, -1, -1), Ts)
    assert abs(float(with_detail[0] - base[0])) < 1e-3  # at the batch's mean scale: +0.05
    assert float(base.max()) < 0.03


def test_cutmix_target_never_calls_missing_pixels_real():
    """A whole aligned image whose side quarters are padding (coverage 0 there) is box-mixed, but
    its padding stays a fake target; a partial patch is mixed along its coverage."""
    coverage = torch.zeros(2, 1, 8, 8)
    coverage[:, :, :, 2:6] = 1  # the central strip
    box = torch.ones(2, 1, 8, 8)
    box[:, :, :4, :4] = 0
    m = cutmix_mask(coverage, torch.tensor([True, False]), box)
    assert m[0, :, :, :2].max() == 0 and m[0, :, :, 6:].max() == 0  # padding: never real
    assert torch.equal(m[0], box[0] * coverage[0]) and torch.equal(m[1], coverage[1])


def test_consistency_trains_both_sides_of_eq_9_unless_the_target_is_held_fixed():
    torch.manual_seed(0)
    mix, real, fake = (torch.randn(2, 1, 8, 8, requires_grad=True) for _ in range(3))
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    consistency_loss(mix, real, fake, mask).backward()
    assert real.grad.abs().sum() > 0 and fake.grad.abs().sum() > 0
    # the gradient on the parts is minus that on the mix, split by M: the loss pulls them together
    assert torch.allclose(real.grad, -mix.grad * mask) and torch.allclose(fake.grad, -mix.grad * (1 - mask))
    for t in (mix, real, fake):
        t.grad = None
    consistency_loss(mix, real, fake, mask, target="detached").backward()
    assert real.grad is None and fake.grad is None and mix.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="consistency target"):
        consistency_loss(mix, real, fake, mask, target="half")


def test_cutmix_share_counts_partial_patches_always_and_whole_views_by_their_ramped_probability():
    from uh_train.losses import cutmix_probability, cutmix_weights

    assert cutmix_probability(0, 0.5, 10.0) == 0.0 and cutmix_probability(5000, 0.5, 10.0) == 0.25
    assert cutmix_probability(20000, 0.5, 10.0) == 0.5 and cutmix_probability(0, 0.5, 0.0) == 0.5
    whole = torch.tensor([1.0] * 400 + [0.0] * 100)
    w = cutmix_weights(whole, 0.3, torch.Generator().manual_seed(0))
    assert w[400:].min() == 1  # partial patches reach D only through their mix: always counted
    assert abs(float(w[:400].mean()) - 0.3) < 0.06
    assert cutmix_weights(whole, 1.0, torch.Generator()).min() == 1


def test_a_cutmix_image_left_out_does_not_move_the_cutmix_terms_and_the_global_option_adds_it_as_fake():
    from uh_train.losses import d_loss

    torch.manual_seed(0)
    real = (torch.randn(2, 1), torch.randn(2, 1, 8, 8))
    fake = (torch.randn(2, 1), torch.randn(2, 1, 8, 8))
    mixed_pixel = torch.randn(2, 1, 8, 8)
    mask, mix_mask, whole = torch.ones(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float(), torch.ones(2)
    only_first = torch.tensor([1.0, 0.0])
    _, terms = d_loss(real, fake, mixed_pixel, mask, mix_mask, whole, 1.0, mixed=only_first)
    other = mixed_pixel.clone()
    other[1] += 5.0  # the left-out image's outputs change: its terms must not
    _, terms2 = d_loss(real, fake, other, mask, mix_mask, whole, 1.0, mixed=only_first)
    assert torch.allclose(terms["cutmix"], terms2["cutmix"]) and torch.allclose(terms["consistency"],
                                                                                terms2["consistency"])
    _, all_terms = d_loss(real, fake, mixed_pixel, mask, mix_mask, whole, 1.0)
    _, same = d_loss(real, fake, mixed_pixel, mask, mix_mask, whole, 1.0, mixed=torch.ones(2))
    assert torch.allclose(all_terms["cutmix"], same["cutmix"])  # weights of 1 = the plain mean
    mixed_global = torch.tensor([[3.0], [-3.0]])
    _, with_global = d_loss(real, fake, mixed_pixel, mask, mix_mask, whole, 1.0, mixed=only_first,
                            mixed_global=mixed_global)
    assert torch.allclose(with_global["global"] - terms["global"], F.softplus(torch.tensor(3.0)))
