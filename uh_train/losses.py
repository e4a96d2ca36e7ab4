"""Loss terms of the two training stages (paper §3.2, Eq. 6-10; docs/training.md, "Losses"). Pure functions.

The U-Net discriminator returns (global logits [N, 1], pixel logits [N, 1, r, r]); both heads get
the non-saturating loss. Real partial patches are completed by CutMix with the fake patch of the
same T(v, s) through their coverage mask M (Eq. 6), and the decoder's per-pixel output on the mix
must equal the mix of its outputs (consistency, Eq. 9). The totals of Eq. 10 (stage 1: Eq. 7) are
`d_loss` and `g_loss`; the training loop (`uh_train.train.train`) calls them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from uh_train import resample


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                         real_weight: torch.Tensor | None = None) -> torch.Tensor:
    """softplus(-D(real)) + softplus(D(fake)), averaged; `real_weight` masks per-pixel real terms."""
    real_term = F.softplus(-real_logits)
    if real_weight is not None:
        real_term = (real_term * real_weight).sum() / real_weight.sum().clamp_min(1.0)
    else:
        real_term = real_term.mean()
    return real_term + F.softplus(fake_logits).mean()


def per_sample_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of [N, ...] values; with weight [N], the weighted mean of the per-sample means (0 when
    no sample has weight)."""
    if weight is None:
        return values.mean()
    each = values.flatten(1).mean(dim=1)
    return (each * weight).sum() / weight.sum().clamp_min(1.0)


def per_pixel_target_loss(pixel_logits: torch.Tensor, target: torch.Tensor,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder loss on a CutMix image: pixels from the real patch (target 1) should score real,
    pixels from the fake (target 0) fake. `weight` [N] selects the images that were mixed."""
    return per_sample_mean(target * F.softplus(-pixel_logits) + (1 - target) * F.softplus(pixel_logits), weight)


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def cutmix(real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 6: M * real + (1 - M) * fake."""
    return mask * real + (1 - mask) * fake


def cutmix_mask(coverage: torch.Tensor, whole: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """M of Eq. 6 per real patch [N, 1, r, r]: a partial patch is mixed along its coverage (the rest
    is generated); a whole one along a random box (U-Net GAN), and never where it has no pixels
    (an aligned image's padding), so no pixel a sample does not have is ever a real target."""
    return torch.where(whole.view(-1, 1, 1, 1) > 0, box * coverage, coverage)


def cutmix_weights(whole: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Which CutMix images count [N] (1 or 0): every partial patch (its mix along its coverage is how
    it reaches D), and each whole view with `probability` (U-Net GAN mixes a share of its batches
    and ramps that share up)."""
    if probability >= 1:  # no draw: the default run's random stream is the same as without the option
        return torch.ones(whole.shape[0], device=whole.device)
    drawn = (torch.rand(whole.shape[0], generator=generator) < probability).to(whole.device, torch.float32)
    return torch.where(whole.float() > 0, drawn, torch.ones_like(drawn))


def cutmix_probability(nimg: int, probability: float, ramp_kimg: float) -> float:
    """The share of whole views mixed after nimg images: `probability`, reached linearly over
    `ramp_kimg` (0: from the start)."""
    if ramp_kimg <= 0:
        return probability
    return probability * min(1.0, nimg / (ramp_kimg * 1000))


def random_box_mask(n: int, res: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """U-Net GAN style CutMix boxes for fully covered reals: area ratio ~ U(0,1), [n, 1, r, r]."""
    lam = torch.rand(n, generator=generator)
    side = (1 - lam).sqrt()
    w = (side * res).round().long()
    cx = torch.randint(0, res, (n,), generator=generator)
    cy = torch.randint(0, res, (n,), generator=generator)
    mask = torch.ones(n, 1, res, res)
    for i in range(n):
        x0, x1 = max(int(cx[i] - w[i] // 2), 0), min(int(cx[i] + w[i] // 2), res)
        y0, y1 = max(int(cy[i] - w[i] // 2), 0), min(int(cy[i] + w[i] // 2), res)
        mask[i, :, y0:y1, x0:x1] = 0
    return mask.to(device)


CONSISTENCY_TARGETS = ("joint", "detached")


def consistency_loss(pixel_mix: torch.Tensor, pixel_real: torch.Tensor, pixel_fake: torch.Tensor,
                     mask: torch.Tensor, target: str = "joint", weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9: || D_dec(mix(x, G(z), M)) - mix(D_dec(x), D_dec(G(z)), M) ||^2.

    `joint` differentiates both sides, as U-Net GAN does: the loss asks D's outputs on the mix and on
    its parts to agree, and is smallest when they do. `detached` holds the mix of D's outputs fixed and
    moves only D's output on the mix towards it: a target that follows the weights it trains, which
    runs away when the two differ persistently (a partial patch's real is seen with padding around
    its coverage, its mix with generated content there; docs/training.md, "Stage 2 diagnosis")."""
    if target not in CONSISTENCY_TARGETS:
        raise ValueError(f"consistency target must be one of {CONSISTENCY_TARGETS}, got {target!r}")
    mixed_outputs = cutmix(pixel_real, pixel_fake, mask)
    if target == "detached":
        mixed_outputs = mixed_outputs.detach()
    return per_sample_mean((pixel_mix - mixed_outputs).square(), weight)


def r1_penalty(real_images: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
    """R1: squared gradient norm of the summed logits w.r.t. the real images, per sample, averaged."""
    total = sum(lg.sum() for lg in logits)
    (grad,) = torch.autograd.grad(total, real_images, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


LPIPS_MIN_SIZE = 64  # AlexNet's smallest useful input
# A teacher pixel counts in Eq. 8 when this much of its reading kernel falls on the student patch.
COVERAGE_MIN = 0.9


def teacher_footprint(transform: torch.Tensor, res: int, minimum: int = 4) -> torch.Tensor:
    """Side, in teacher pixels, of each patch's region T(v, s): r / s_i, rounded (at least `minimum`).

    transform: [N, 3, 3]; res: the teacher's resolution r (it renders the whole square at r).
    Returns an int64 tensor [N]."""
    s = 1.0 / transform[:, 0, 0].double()
    return (res / s).round().clamp_min(minimum).long()


def teacher_grid(transform: torch.Tensor, res: int, teacher_res: int, m: int,
                 min_coverage: float = COVERAGE_MIN) -> tuple[torch.Tensor, ...]:
    """Where each patch's region T(v, s) meets the teacher's pixel grid (teacher rendered whole at
    `teacher_res`): the first m teacher pixels from the region's start along each axis.

    Returns (iy [N, m], ix [N, m] teacher pixel indices; wy [N, m, res], wx [N, m, res] the Lanczos
    weights that read the student's res x res patch at those pixels' centres; valid [N, 1, m, m]: the
    pixel's centre lies in the region and in full-body space, and at least `min_coverage` of its
    kernel falls on the patch)."""
    t = transform.detach().to("cpu", torch.float64).numpy()
    axes = []
    for row in (1, 0):  # y, then x
        side = t[:, row, row] * teacher_res  # region side in teacher pixels (r / s)
        start = (t[:, row, 2] - t[:, row, row] / 2 + 0.5) * teacher_res
        first = np.ceil(start - 0.5 - 1e-6)
        last = np.floor(start + side - 0.5 + 1e-6)
        index = first[:, None] + np.arange(m, dtype=np.float64)[None, :]
        centres = (index + 0.5 - start[:, None]) * (res / side)[:, None]  # in student pixels
        weights, coverage = resample.axis_weights(res, centres, res / side)
        ok = (index <= last[:, None]) & (index >= 0) & (index < teacher_res) & (coverage >= min_coverage)
        axes.append((torch.from_numpy(np.clip(index, 0, teacher_res - 1).astype(np.int64)).to(transform.device),
                     weights, ok))
    (iy, wy, oky), (ix, wx, okx) = axes
    valid = torch.from_numpy(oky[:, :, None] & okx[:, None, :])[:, None].to(transform.device)
    return iy, ix, wy, wx, valid


def pixel_loss_per_patch(student_patch: torch.Tensor, teacher_image: torch.Tensor, transform: torch.Tensor,
                         lpips_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8 per patch: L1 (+ LPIPS) between each student patch and the teacher at its own footprint.

    Patch i (scale s_i) spans about r / s_i pixels of the teacher's full image. The teacher's pixels
    in that region are taken as they are (no interpolation), and the student's r x r patch is read at
    their centres with the project's one resampler (`uh_train.resample`: Lanczos stretched by the
    footprint, so it antialiases) — the same reduction the scale-consistency metric applies to a
    dense render, so a generator that renders the same picture at every density scores zero. Both
    are masked to the teacher pixels inside the region and full-body space. Patches never share a
    comparison, so a patch's loss does not depend on its batch-mates. Returns (l1 [N], lpips [N]);
    lpips is zeros when `lpips_fn` is None.
    """
    n = student_patch.shape[0]
    res, teacher_res = student_patch.shape[-1], teacher_image.shape[-1]
    sizes = teacher_footprint(transform, teacher_res)
    l1 = student_patch.new_zeros(n)
    lp = student_patch.new_zeros(n)
    for size in sizes.unique().tolist():  # one batched comparison per distinct footprint
        idx = (sizes == size).nonzero().flatten()
        iy, ix, wy, wx, valid = teacher_grid(transform[idx], res, teacher_res, int(size) + 1)
        small = resample.apply(student_patch[idx], wy, wx)
        crop = teacher_image[idx][torch.arange(len(idx), device=idx.device)[:, None, None], :, iy[:, :, None],
                                  ix[:, None, :]].permute(0, 3, 1, 2)
        valid = valid.to(small.dtype)
        diff = ((small - crop).abs() * valid).sum(dim=(1, 2, 3))
        l1[idx] = (diff / (valid.sum(dim=(1, 2, 3)) * small.shape[1]).clamp_min(1.0)).to(l1.dtype)
        if lpips_fn is not None:
            # AlexNet needs a minimum input size: small footprints are enlarged, both sides alike.
            up = max(small.shape[-1], LPIPS_MIN_SIZE)
            a = F.interpolate(small * valid, size=(up, up), mode="bilinear", align_corners=False)
            b = F.interpolate(crop * valid, size=(up, up), mode="bilinear", align_corners=False)
            lp[idx] = lpips_fn(a, b).reshape(-1).to(lp.dtype)  # bf16 under autocast
    return l1, lp


def pixel_loss(student_patch: torch.Tensor, teacher_image: torch.Tensor, transform: torch.Tensor,
               lpips_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8 over a batch: the mean of `pixel_loss_per_patch` (l1, lpips) as scalars."""
    l1, lp = pixel_loss_per_patch(student_patch, teacher_image, transform, lpips_fn)
    return l1.mean(), lp.mean()


Logits = tuple[torch.Tensor, torch.Tensor]  # the discriminator's (global [N, 1], pixel [N, 1, r, r])


def d_loss(real: Logits, fake: Logits, mixed_pixel: torch.Tensor, mask: torch.Tensor, mix_mask: torch.Tensor,
           whole: torch.Tensor, lambda_cr: float, consistency_target: str = "joint",
           mixed: torch.Tensor | None = None, mixed_global: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D of Eq. 10 (stage 1, all reals whole: Eq. 7's D side): both heads' non-saturating loss, the
    pixel head on CutMix images (Eq. 6) and λ_cr · consistency (Eq. 9). R1 is added apart (lazily).

    mask: the reals' coverage [N, 1, r, r]; mix_mask: M of Eq. 6; whole [N]: 1 for whole real views;
    mixed [N]: 1 for the CutMix images that count (None: all; `cutmix_weights`); mixed_global: the
    global logits of the CutMix images, which then count as fakes to the global head (U-Net GAN's
    encoder; None: not used). Returns (total, {"global", "pixel", "cutmix", "consistency"})."""
    (r_g, r_p), (f_g, f_p) = real, fake
    global_term = nonsaturating_d_loss(r_g, f_g, real_weight=whole.view(-1, 1))
    if mixed_global is not None:
        global_term = global_term + per_sample_mean(F.softplus(mixed_global), mixed)
    terms = {
        # Only whole views are real images to the global head; a partial patch completed by CutMix
        # is partly fake and reaches D through the pixel head.
        "global": global_term,
        "pixel": nonsaturating_d_loss(r_p, f_p, real_weight=mask.expand_as(r_p)),
        "cutmix": per_pixel_target_loss(mixed_pixel, mix_mask, mixed),
        "consistency": consistency_loss(mixed_pixel, r_p, f_p, mix_mask, target=consistency_target, weight=mixed),
    }
    total = terms["global"] + terms["pixel"] + terms["cutmix"] + lambda_cr * terms["consistency"]
    return total, terms


def d_r1(real_in: torch.Tensor, real: Logits, mask: torch.Tensor) -> torch.Tensor:
    """R1 of both heads w.r.t. the reals. The pixel head enters as its per-image mean over covered
    pixels: summing r*r logits would make the penalty scale with the patch area and swamp the global
    head's."""
    r_g, r_p = real
    pixel_mean = (r_p.float() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)
    return r1_penalty(real_in, [r_g.float(), pixel_mean])


def g_loss(fake: Logits, pixel_l1: torch.Tensor | None = None, pixel_lpips: torch.Tensor | None = None,
           lambda_p: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_G of Eq. 10: fool both heads, plus λ_p · the teacher pixel loss (Eq. 8: L1 + LPIPS) when a
    teacher is given (stage 1, Eq. 7: the adversarial part alone). Returns (total, {"adv"[,
    "pixel_l1", "pixel_lpips"]})."""
    adv = nonsaturating_g_loss(fake[0]) + nonsaturating_g_loss(fake[1])
    if pixel_l1 is None:
        return adv, {"adv": adv}
    return adv + lambda_p * (pixel_l1 + pixel_lpips), {"adv": adv, "pixel_l1": pixel_l1, "pixel_lpips": pixel_lpips}
