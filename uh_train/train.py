"""`uh-train`'s loop: two-stage multi-source training streamed from shards (paper §3.2, App. B).

Stage 1 learns whole full-body images at r (T = identity); stage 2 starts from the stage-1
generator, which stays frozen as the teacher, and learns patches of every source at sampled (v, s)
with CutMix, consistency and the teacher pixel loss. Read `train` top to bottom; what it needs around
it is in `uh_train/training/` (config, run folder, models, distributed, monitor, CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from uh_train import augment, losses
from uh_train.data import PatchBatches, PatchConfig
from uh_train.training import distributed, models, monitor
from uh_train.training import run_folder as rf
from uh_train.training.config import TrainConfig, parse_views, resolve_precision
from uh_train.training.models import make_lpips
from uh_train.training.monitor import StepClock, console


def train(cfg: TrainConfig, clock: StepClock | None = None) -> dict[str, Any]:
    """Run training; returns a summary (steps, kimg, final losses, bad steps; `stopped`: the signal
    that ended it early, None when it ran to --kimg). `clock` records where each step's time goes
    (nested parts are also counted in their enclosing part). One run per --out (`run_folder.held`).
    SIGTERM, SIGUSR1 or SIGINT stop it after the current step with a checkpoint, from which the same
    command resumes (`distributed.StopSignals`)."""
    with rf.held(cfg.out), distributed.stop_signals() as stop:
        return _train(cfg, clock, stop)


def _train(cfg: TrainConfig, clock: StepClock | None, stop: distributed.StopSignals) -> dict[str, Any]:
    clock = clock or monitor.NoClock()
    device, d = distributed.start_process(cfg.device, cfg.seed)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    resume = rf.check_resume(out, cfg)  # refuses other settings than the checkpoint's, before any work

    # Networks. Stage 2 starts from the stage-1 G, G_ema and D; the stage-1 G_ema is the frozen teacher.
    G, D, G_ema, teacher, start_note = models.start_networks(cfg, device, d.main)
    rf.check_shards(cfg.shards)  # before run.json: a folder without shards says how to make them
    # A run that starts from trained weights keeps its EMA as it is (no ramp-up), as AnyRes GAN does.
    ema_rampup = None if teacher is not None else cfg.ema_rampup
    opt_G, opt_D = models.optimisers(cfg, G, D)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + d.rank)
    prog = rf.Progress()
    if resume.path is not None:
        prog = rf.restore(resume, G, G_ema, D, opt_G, opt_D, gen, d.main)
    else:
        for module in (G, D) if teacher is None else (G, D, G_ema):
            distributed.broadcast_module(module, d)
        if teacher is None:
            G_ema.load_state_dict(G.state_dict())
    if d.main:  # drop steps logged after the checkpoint (or before the first one) by a killed run
        rf.truncate_log(out / "log.jsonl", prog.step)

    use_pixel = teacher is not None and cfg.lambda_p > 0
    lpips_fn = make_lpips(cfg.lpips, device, cfg.preset) if use_pixel else None
    pixel_note = models.pixel_loss_note(cfg, teacher, lpips_fn)
    precision = resolve_precision(cfg.precision, device.type)

    # Data: this process's share of the batch, in `rounds` accumulation rounds.
    res = G.img_resolution
    batch_gpu = cfg.batch_gpu or cfg.batch // d.world
    rounds = max(1, cfg.batch // (batch_gpu * d.world))
    patch_cfg = PatchConfig(res=res, stage=cfg.stage, scale_max=cfg.scale_max, keypoint_prob=cfg.keypoint_prob,
                            whole_prob=cfg.whole_prob, mirror=cfg.mirror,
                            views=parse_views(cfg.views, cfg.keypoint_prob))
    dataset = PatchBatches(cfg.shards, batch=batch_gpu, cfg=patch_cfg, seed=cfg.seed, weights=cfg.mix or None,
                           state=prog.data)
    data_iter = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.workers,
                                                 persistent_workers=cfg.workers > 0,
                                                 worker_init_fn=distributed.ignore_stop_signals))
    if d.main:  # what this run trains, where and how (one process says it)
        summary = monitor.start_summary(
            device=device, world=d.world, batch=cfg.batch, batch_gpu=batch_gpu, rounds=rounds, G=G, D=D,
            shards=cfg.shards, weights=dataset.weights, shard_counts={s: len(v) for s, v in dataset.sources.items()},
            stage=cfg.stage, preset=cfg.preset, precision=precision, teacher=cfg.teacher, start=start_note,
            pixel_loss=pixel_note, kimg=cfg.kimg, resume_step=prog.step)
        rf.write_run_info(out, cfg, resume, prog.step, start=start_note, pixel_loss=pixel_note,
                          ema_rampup=ema_rampup, mirror=cfg.mirror, precision=precision, start_summary=summary)
        console.print(monitor.start_summary_text(summary))
    ema_kimg = cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    total_nimg = int(cfg.kimg * 1000)
    snapshot_nimg = max(1, int(cfg.snapshot_kimg * 1000))
    next_snapshot = (prog.nimg // snapshot_nimg + 1) * snapshot_nimg
    log = monitor.StepLog(out, d.main, cfg.kimg, prog.nimg)
    fixed_z = torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(123)).to(device)
    last: dict[str, float] = {}
    skipped = 0
    watch = monitor.DivergenceWatch(cfg.diverge_limit, cfg.diverge_steps,
                                    last_good=rf.last_good_network(out) if resume.path else None)

    ada = augment.AdaptiveP(prog.aug_p, cfg.ada_target, cfg.ada_kimg) if cfg.aug == "ada" else None
    G_run, D_run = models.forward_passes(G, D, cfg.compile, device)  # checkpoints keep using G and D
    saved_step = prog.step  # the step of the newest checkpoint in OUT (a resumed run starts from it)
    stopped = None
    while prog.nimg < total_nimg:
        if (stopped := stop.agreed(d, device)) is not None:  # every process stops before the same step
            break
        terms: dict[str, float] = {}
        bins: dict[str, list[float]] = {}  # stage 2: per scale bin, "bin/BIN/NAME" -> [sum, count]
        do_r1 = cfg.r1_gamma > 0 and prog.step % cfg.r1_interval == 0
        with clock.part("data"):
            batches = [next(data_iter) for _ in range(rounds)]
        step_skipped = sum(b["skipped"] for b in batches)
        for b in batches:
            prog.data.update(b["state"])
        skipped += step_skipped
        # The step's random draws, in one fixed order: z of every round, then per round the D step's z
        # (only when it renders its own fakes) and the CutMix box.
        z_g = [torch.randn(b["transform"].shape[0], G.z_dim, generator=gen) for b in batches]
        z_d, boxes = [], []
        for b in batches:
            n = b["transform"].shape[0]
            z_d.append(None if cfg.share_fakes else torch.randn(n, G.z_dim, generator=gen))
            boxes.append(losses.random_box_mask(n, res, generator=gen))

        cutmix_share = losses.cutmix_probability(prog.nimg, cfg.cutmix_prob, cfg.cutmix_ramp_kimg)
        opt_G.zero_grad(set_to_none=True)
        opt_D.zero_grad(set_to_none=True)
        finite = True
        for b, zg, zd, box in zip(batches, z_g, z_d, boxes, strict=True):
            real, mask, T = b["image"].to(device), b["mask"].to(device), b["transform"].to(device)
            n_g = real.shape[0]
            whole = b["whole"].to(device).float()
            scales = 1.0 / T[:, 0, 0].detach().float().cpu()
            G.requires_grad_(True)
            with clock.part("G forward"), torch.autocast(**amp):
                # One render serves both steps when shared (its EMA update is the D step's, as StyleGAN's);
                # otherwise the D step renders its own fakes from fresh z, as StyleGAN3's loop does.
                fake_g = G_run(zg.to(device), T, update_emas=cfg.share_fakes)
            if cfg.share_fakes:
                fake_d = fake_g.detach()
            else:
                with clock.part("G forward (D step)"), torch.no_grad(), torch.autocast(**amp):
                    fake_d = G_run(zd.to(device), T, update_emas=True)

            # --- D step: L_D of Eq. 10 (stage 1: Eq. 7) on reals, fakes and CutMix images (Eq. 6), then lazy R1
            D.requires_grad_(True)
            mix_mask = losses.cutmix_mask(mask, whole, box.to(device))
            mix_counts = losses.cutmix_weights(whole, cutmix_share, gen)
            if ada is not None:  # what D sees: a real, its fake and their mix under one draw per index
                seen = augment.draw(real.shape[0], ada.p, res, gen)
                real, fake_d = augment.images(real, seen), augment.images(fake_d, seen)
                mask, mix_mask = augment.permute(mask, seen), augment.permute(mix_mask, seen)
            with clock.part("D forward/backward: reals, fakes, CutMix"), torch.autocast(**amp):
                mixed = losses.cutmix(real, fake_d, mix_mask)
                real_in, real_logits, fake_logits, (mixed_global, mixed_pixel) = models.discriminate(
                    D_run, real, fake_d, mixed, do_r1)
                loss, d_terms = losses.d_loss(real_logits, fake_logits, mixed_pixel, mask, mix_mask, whole,
                                              cfg.lambda_cr, cfg.consistency_target, mix_counts,
                                              mixed_global if cfg.cutmix_global else None)
                for k, v in d_terms.items():
                    monitor.add_term(terms, f"D/{k}", v)
                finite &= bool(torch.isfinite(loss))
                (loss / rounds).backward(retain_graph=do_r1)  # R1 below differentiates the reals' pass again
            if ada is not None:
                ada.observe(real_logits[0])
            if cfg.stage == 2:
                monitor.d_accuracy_by_scale(scales, real_logits[1], fake_logits[1], mask, bins)
            if do_r1:
                with clock.part("R1"):
                    r1 = losses.d_r1(real_in, real_logits, mask)
                    r1_loss = (cfg.r1_gamma / 2) * r1 * cfg.r1_interval  # lazy: every r1_interval steps, scaled
                    monitor.add_term(terms, "D/r1", r1)
                    finite &= bool(torch.isfinite(r1_loss))
                    (r1_loss / rounds).backward()

            # --- G step: L_G of Eq. 10 (stage 1: Eq. 7), fool both heads and match the teacher on the same
            # region (Eq. 8). The gradient reaches the image first, then G.
            D.requires_grad_(False)
            fake_in = fake_g.detach().requires_grad_(True)
            with clock.part("D forward: fakes for G"), torch.autocast(**amp):
                shown = fake_in if ada is None else augment.images(fake_in, augment.draw(n_g, ada.p, res, gen))
                fake_logits = D_run(shown)
            l1 = lp = None
            if use_pixel:
                with clock.part("teacher forward"), torch.no_grad(), torch.autocast(**amp):
                    teacher_img = teacher(zg.to(device), None)
                with clock.part("pixel loss: L1 + LPIPS (Eq. 8)"), torch.autocast(**amp):
                    l1_each, lp_each = losses.pixel_loss_per_patch(fake_in.float(), teacher_img.float(), T, lpips_fn)
                    l1, lp = l1_each.mean(), lp_each.mean()
                monitor.scale_bin_stats(scales, {"teacher_l1": l1_each.cpu()}, bins)
            with clock.part("backward to the image: D, pixel loss"), torch.autocast(**amp):
                loss, g_terms = losses.g_loss(fake_logits, l1, lp, cfg.lambda_p)
                for k, v in g_terms.items():
                    monitor.add_term(terms, f"G/{k}", v)
                finite &= bool(torch.isfinite(loss))
                (loss / rounds).backward()
            with clock.part("G backward"):
                fake_g.backward(fake_in.grad)

        # --- update: average gradients across processes; skip a non-finite step, stop after too many
        with clock.part("optimiser"):
            D.requires_grad_(True)  # frozen for the G step; its gradients are those of the D step
            distributed.average_gradients(G, d)
            distributed.average_gradients(D, d)
            if finite:
                opt_G.step()
                opt_D.step()
            prog.bad_steps = 0 if finite else monitor.bad_step(prog.step, prog.bad_steps + 1, cfg.max_bad_steps, out)
        with clock.part("EMA"):
            models.update_ema(G_ema, G, cfg.batch, prog.nimg, ema_kimg, ema_rampup)
        if ada is not None:
            ada.step(cfg.batch)
            prog.aug_p = ada.p
        clock.step_done()
        prog.step += 1
        prog.nimg += cfg.batch

        # --- log, watch, snapshot
        last = {k: v / rounds for k, v in terms.items()}
        if ada is not None:
            last["aug/p"] = ada.p
        last.update({k: total / max(count, 1) for k, (total, count) in bins.items()})
        watch.step(last, prog.step)
        snapshot_due = prog.nimg >= next_snapshot or prog.nimg >= total_nimg
        if snapshot_due and d.main and cfg.stage == 2 and cfg.consistency_n > 0:
            last.update(monitor.snapshot_consistency(G_ema, cfg.consistency_n, device))
            last.update(monitor.snapshot_consistency(G, cfg.consistency_n, device, prefix="consistency_G"))
        log.write(prog.step, prog.nimg, {**last, **({"data/skipped": step_skipped} if step_skipped else {})})
        if snapshot_due:
            next_snapshot += snapshot_nimg
            if d.main:
                path = rf.save_training_checkpoint(out, cfg, G, G_ema, D, opt_G, opt_D, gen, prog,
                                                   {"pixel_loss": pixel_note, "start": start_note})
                watch.snapshot_written(path.name.replace("training-state-", "network-"))
                log.image("samples", rf.sample_grid(G_ema, fixed_z, rf.sample_grid_path(out, prog.nimg)), prog.nimg)
                console.print(f"saved {path.name}")
            saved_step = prog.step
    if stopped is not None and d.main:  # a checkpoint at the step the run stopped, unless it has one
        if prog.step > saved_step:
            path = rf.save_training_checkpoint(out, cfg, G, G_ema, D, opt_G, opt_D, gen, prog,
                                               {"pixel_loss": pixel_note, "start": start_note})
            saved = f"saved {path.name}"
        else:
            saved = "its checkpoint was already written" if prog.step else "nothing trained yet"
        console.print(f"[yellow]stopped by {stopped.name}[/yellow] after step {prog.step} "
                      f"({prog.nimg / 1000:.3f} of {cfg.kimg:g} kimg); {saved}; run the same command to resume")
    log.close()
    if skipped and d.main:
        console.print(f"[yellow]note:[/yellow] {skipped} unusable sample(s) skipped on this process "
                      f"(see the warnings; `mst validate` lists them)")
    distributed.finish(G, d)
    return {"steps": prog.step, "kimg": prog.nimg / 1000, "losses": last, "out": str(out), "skipped": skipped,
            "stopped": stopped.name if stopped is not None else None}


if __name__ == "__main__":  # torchrun -m uh_train.train ...
    from uh_train.training.cli import main

    main()
