"""The optimisers that minimise Eq. 1 for a batch of images (`mst_pipeline.fitting.smplify`):
batched Adam, torch's L-BFGS, and L-BFGS with one curvature history and step size per image (the
default). Each takes `energy(x, rows) -> (E [b], terms, residuals)`, the parameters x [B, P], a
mask of the free parameters, and records per image its iterations and whether it converged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from mst_pipeline.fitting.smplify import SmplifyConfig


def run_adam(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
              converged: np.ndarray) -> Tensor:
    """Batched Adam; an image whose loss stalls is frozen (its parameters restored after each step)."""
    x = x.detach().clone().requires_grad_(True)
    x.register_hook(lambda g: g * free)
    rows = torch.arange(x.shape[0], device=x.device)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    # Adam's steps do not shrink with the gradient: decay the rate so the fit settles.
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay ** (1.0 / max(1, n_iter)))
    prev = None
    still = np.zeros(len(iterations), dtype=np.int64)
    for _ in range(n_iter):
        opt.zero_grad(set_to_none=True)
        per_image = energy(x, rows)[0]
        per_image.sum().backward()
        frozen = torch.as_tensor(converged, device=x.device)
        saved = x.detach().clone()
        opt.step()
        decay.step()
        with torch.no_grad():
            x[frozen] = saved[frozen]
        loss = per_image.detach().cpu().numpy()
        iterations[~converged] += 1
        if prev is not None:
            rel = np.abs(prev - loss) / np.maximum(np.abs(prev), 1e-12)
            still = np.where(rel < cfg.tolerance, still + 1, 0)
            converged |= still >= cfg.patience
        prev = loss
        if converged.all():
            break
    return x.detach()


def run_lbfgs(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
               converged: np.ndarray) -> Tensor:
    """torch's L-BFGS (strong Wolfe) on the summed energy, as smplify-x runs it on one image. Over a
    batch, the images share one line search; stops when the total stalls."""
    x = x.detach().clone().requires_grad_(True)
    x.register_hook(lambda g: g * free)
    rows = torch.arange(x.shape[0], device=x.device)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_change=1e-12, tolerance_grad=1e-10)

    def closure():
        opt.zero_grad(set_to_none=True)
        total = energy(x, rows)[0].sum()
        total.backward()
        return total

    prev = None
    start = 0
    for _ in range(max(1, math.ceil(n_iter / 20))):
        loss = float(opt.step(closure).detach())
        done = int(opt.state[x].get("n_iter", 0))
        iterations += done - start
        start = done
        if not math.isfinite(loss):
            break
        if prev is not None and abs(prev - loss) <= cfg.tolerance * max(abs(prev), 1e-12):
            converged[:] = True
            break
        prev = loss
    return x.detach()


_MAX_STEP = 0.2  # batched-lbfgs: largest change of any parameter in one iteration (radians, log s, ...)


def run_batched_lbfgs(energy, x: Tensor, free: Tensor, n_iter: int, cfg: SmplifyConfig, iterations: np.ndarray,
                       converged: np.ndarray) -> Tensor:
    """L-BFGS with one history and one backtracking (Armijo) line search per image, all images in
    one batched evaluation; an image leaves the batch when it has converged, so later iterations
    cost only what is still moving. An image converges when its energy falls by less than
    `tolerance` (relative) in `patience` iterations in a row, or when no step lowers it."""
    B, P = x.shape
    dev = x.device
    m = cfg.history
    x = x.detach().clone()

    def value_grad(xs: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        xs = xs.detach().requires_grad_(True)
        f = energy(xs, rows)[0]
        (g,) = torch.autograd.grad(f.sum(), xs)
        return f.detach(), g * free

    f, g = value_grad(x, torch.arange(B, device=dev))
    S = torch.zeros(m, B, P, device=dev)
    Y = torch.zeros(m, B, P, device=dev)
    rho = torch.zeros(m, B, device=dev)  # 0 marks an empty or skipped pair: it leaves the two loops unchanged
    gamma = torch.ones(B, device=dev)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # no curvature pair yet: a cautious first step
    next_t = torch.full((B,), math.nan, device=dev)  # each image's first trial step; NaN: a cautious one
    still = torch.zeros(B, dtype=torch.long, device=dev)
    done = torch.as_tensor(converged, device=dev).clone()
    head = 0
    for it in range(n_iter):
        act = torch.nonzero(~done).flatten()
        if len(act) == 0:
            break
        ga = g[act]
        # Two-loop recursion over the stored pairs, newest first, every image at once.
        q = -ga
        alphas = []
        for j in range(min(it, m)):
            i = (head - 1 - j) % m
            a = rho[i, act] * (S[i, act] * q).sum(1)
            q = q - a[:, None] * Y[i, act]
            alphas.append((i, a))
        d = q * gamma[act, None]
        for i, a in reversed(alphas):
            bta = rho[i, act] * (Y[i, act] * d).sum(1)
            d = d + S[i, act] * (a - bta)[:, None]
        slope = (ga * d).sum(1)
        uphill = ~(slope < 0)  # a lost descent direction: fall back to the gradient
        d = torch.where(uphill[:, None], -ga, d)
        slope = torch.where(uphill, -(ga * ga).sum(1), slope)
        # First trial: twice the step the image's last line search accepted (at most the unit step),
        # or where the last trial failed the step it backtracked to; 1/|g|₁ without curvature.
        cautious = (1.0 / ga.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        t = torch.where(uphill | torch.isnan(next_t[act]), cautious, next_t[act])
        # No parameter moves more than _MAX_STEP per iteration: a poor curvature estimate early on
        # (or across a Geman-McClure knee) must not throw the pose far off in one step.
        t = torch.minimum(t, _MAX_STEP / d.abs().amax(1).clamp_min(1e-12))
        x_new, f_new, g_new = x[act].clone(), f[act].clone(), ga.clone()
        accepted = torch.zeros(len(act), dtype=torch.bool, device=dev)
        for _ in range(cfg.line_search_steps):
            try_ = torch.nonzero(~accepted).flatten()
            if len(try_) == 0:
                break
            xt = x[act[try_]] + t[try_, None] * d[try_]
            ft, gt = value_grad(xt, act[try_])
            f0, sl, tt = f[act[try_]], slope[try_], t[try_]
            ok = torch.isfinite(ft) & (ft <= f0 + 1e-4 * tt * sl)
            good = try_[ok]
            x_new[good], f_new[good], g_new[good] = xt[ok], ft[ok], gt[ok]
            accepted[good] = True
            # Backtrack to the minimum of the quadratic through f(0), f'(0) and f(t), within [t/10, t/2].
            quad = -sl * tt ** 2 / (2 * (ft - f0 - sl * tt)).clamp_min(1e-30)
            t[try_] = torch.where(ok, tt, torch.where(torch.isfinite(quad), quad.clamp(0.1 * tt, 0.5 * tt), 0.1 * tt))
        next_t[act] = torch.where(accepted, (2.0 * t).clamp(max=1.0), t)
        iterations[act.cpu().numpy()] += 1
        # Curvature pair s, y of the accepted step (kept only when sᵀy > 0, so H stays positive).
        s_k, y_k = x_new - x[act], g_new - ga
        sy = (s_k * y_k).sum(1)
        keep = accepted & (sy > 1e-10)
        S[head, act], Y[head, act] = s_k, y_k
        rho[head] = 0.0
        rho[head, act] = torch.where(keep, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma[act] = torch.where(keep, sy / (y_k * y_k).sum(1).clamp_min(1e-20), gamma[act])
        head = (head + 1) % m
        # An image whose trials keep failing resumes the search at the next iteration from the
        # shorter step; once no step of any useful length lowers the energy, it restarts from the
        # gradient, and from there it has converged.
        failed = ~accepted & (t * d.abs().amax(1) < 1e-9)
        stuck = failed & fresh[act]
        rho[:, act[failed & ~stuck]] = 0.0
        next_t[act[failed]] = math.nan
        fresh[act] = torch.where(failed, torch.ones_like(failed), fresh[act] & ~keep)
        rel = (f[act] - f_new) / f[act].abs().clamp_min(1e-12)
        still[act] = torch.where(accepted & (rel < cfg.tolerance), still[act] + 1, torch.zeros_like(still[act]))
        done[act] = stuck | (still[act] >= cfg.patience)
        x[act], f[act], g[act] = x_new, f_new, g_new
    converged[:] = done.cpu().numpy()
    return x
