"""Watching a run: where each step's time goes (`StepClock`), when the losses have run away
(`DivergenceWatch`), per-scale statistics of stage 2, the scale consistency at snapshots, and the
step log (log.jsonl, TensorBoard, the console line)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


class StepClock:
    """Wall time of each part of the training steps, summed by name (`bench train` reads it). On
    CUDA each part synchronises the device, so only pass one when measuring."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.totals: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self._step: dict[str, float] = {}
        self._sync = device is not None and device.type == "cuda"

    @contextlib.contextmanager
    def part(self, name: str):
        if self._sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self._step[name] = self._step.get(name, 0.0) + dt
            self.totals[name] = self.totals.get(name, 0.0) + dt

    def step_done(self) -> None:
        self.steps.append(self._step)
        self._step = {}


class NoClock:
    """A `StepClock` that measures nothing (the default: no device synchronisation)."""

    def part(self, name: str):
        return contextlib.nullcontext()

    def step_done(self) -> None:
        pass


# Loss terms whose magnitude says whether training has run away (R1 and the teacher loss are not
# logits-driven and stay bounded when D does).
WATCHED_TERMS = ("D/global", "D/pixel", "D/cutmix", "D/consistency", "G/adv")


class TrainingDiverged(RuntimeError):
    pass


class DivergenceWatch:
    """Stops a run whose adversarial losses stay above `limit` for `steps` steps in a row, naming the
    last snapshot written while the losses were still in bounds (the one to go back to)."""

    def __init__(self, limit: float, steps: int, last_good: str | None = None) -> None:
        self.limit, self.steps = limit, steps
        self.streak = 0
        self.calm_since_snapshot = True
        self.last_good = last_good

    def step(self, terms: dict[str, float], step: int) -> None:
        if self.limit <= 0:
            return
        worst = max((abs(terms[k]) for k in WATCHED_TERMS if k in terms), default=0.0)
        over = not worst <= self.limit  # NaN counts as over
        self.streak = self.streak + 1 if over else 0
        self.calm_since_snapshot &= not over
        if self.streak >= self.steps:
            name = max((k for k in WATCHED_TERMS if k in terms), key=lambda k: abs(terms[k]))
            back = (f"the last snapshot before it is {self.last_good}" if self.last_good
                    else "no snapshot was written before it")
            raise TrainingDiverged(
                f"training diverged: {name} = {terms[name]:.3g} at step {step}, and the adversarial losses have "
                f"been above {self.limit:g} for {self.streak} steps in a row; {back}. Lower the learning rates "
                f"or λ_cr, or check the data (docs/training.md, \"Stage 2 diagnosis\").")

    def snapshot_written(self, network: str) -> None:
        if self.calm_since_snapshot and self.streak == 0:
            self.last_good = network
        self.calm_since_snapshot = self.streak == 0


def bad_step(step: int, in_a_row: int, limit: int, out: Path) -> int:
    """A step with a non-finite loss (its update skipped): says so, and stops the run after `limit`
    in a row. Returns the count in a row."""
    console.print(f"[yellow]step {step}: non-finite loss, update skipped ({in_a_row}/{limit} in a row)[/yellow]")
    if in_a_row >= limit:
        raise RuntimeError(f"{in_a_row} non-finite steps in a row; stopping. The last good state is in {out}; "
                           f"lower the learning rates or check the data.")
    return in_a_row


def add_term(terms: dict[str, float], name: str, value: torch.Tensor) -> None:
    """Sum a loss term over a step's accumulation rounds."""
    terms[name] = terms.get(name, 0.0) + float(value.detach())


# Scale bins of the per-bin training log (stage 2): name -> [low, high) of s.
SCALE_BINS = {"s1-2": (1.0, 2.0), "s2-4": (2.0, 4.0), "s4-8": (4.0, 8.0), "s8+": (8.0, math.inf)}


def scale_bin_stats(scales: torch.Tensor, values: dict[str, torch.Tensor], sums: dict[str, list[float]]) -> None:
    """Add per-sample `values` ([N] each) into sums["bin/BIN/NAME"] = [sum, count] by the scale bin
    of each sample."""
    for bin_name, (lo, hi) in SCALE_BINS.items():
        inside = (scales >= lo) & (scales < hi)
        count = int(inside.sum())
        if not count:
            continue
        for name, v in values.items():
            entry = sums.setdefault(f"bin/{bin_name}/{name}", [0.0, 0])
            entry[0] += float(v.detach().float()[inside].sum())
            entry[1] += count


@torch.no_grad()
def d_accuracy_by_scale(scales: torch.Tensor, real_pixel: torch.Tensor, fake_pixel: torch.Tensor,
                        mask: torch.Tensor, sums: dict[str, list[float]]) -> None:
    """Where D tells reals from fakes, per scale bin: the share of a real's covered pixels the pixel
    head calls real, and of a fake's pixels it calls fake."""
    covered = mask.float()
    acc_real = ((real_pixel.float() > 0) * covered).sum(dim=(1, 2, 3)) / covered.sum(dim=(1, 2, 3)).clamp_min(1)
    acc_fake = (fake_pixel.float() < 0).float().mean(dim=(1, 2, 3))
    scale_bin_stats(scales, {"D_acc_real": acc_real.cpu(), "D_acc_fake": acc_fake.cpu()}, sums)


def snapshot_consistency(G, n: int, device: torch.device, prefix: str = "consistency") -> dict[str, float]:
    """Scale consistency of a generator (G_ema, or the trained G) on n fixed latents (uh-eval's
    `consistency` metric, small): PSNR in dB of the render at k·r reduced to r against the render at r,
    for k = 2, 4, 8, logged as PREFIX/psnr_kK."""
    from uh_train.metrics.consistency import scale_consistency
    from uh_train.metrics.fakes import GeneratorSampler

    was_training = G.training
    trainable = [p for p in G.parameters() if p.requires_grad]
    result = scale_consistency(GeneratorSampler(G, 1.0, device), n=n, seed=0)
    G.train(was_training)
    for p in trainable:  # the sampler freezes what it renders; the trained G must keep learning
        p.requires_grad_(True)
    return {f"{prefix}/psnr_k{k}": v["psnr"] for k, v in result["factors"].items()}


class StepLog:
    """One line per step in OUT/log.jsonl, the same values in TensorBoard (when installed), and a
    console line every 10 steps. Only the main process writes (`main`)."""

    def __init__(self, out: Path, main: bool, kimg: float, start_nimg: int) -> None:
        self.file = open(out / "log.jsonl", "a") if main else None
        self.tb = _tensorboard(out) if main else None
        self.kimg, self.start_nimg, self.start = kimg, start_nimg, time.time()

    def write(self, step: int, nimg: int, values: dict[str, float]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, "kimg": nimg / 1000, **values}) + "\n")
        self.file.flush()
        total_nimg = int(self.kimg * 1000)
        rate = (nimg - self.start_nimg) / 1000 / max(time.time() - self.start, 1e-9)
        eta = (total_nimg - nimg) / 1000 / max(rate, 1e-9)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, nimg)
            self.tb.add_scalar("progress/kimg_per_s", rate, nimg)
        if step % 10 == 0 or nimg >= total_nimg or step == 1:
            console.print(f"step {step:6d}  kimg {nimg / 1000:8.3f}/{self.kimg:g}  {rate:6.3f} kimg/s  "
                          f"ETA {_fmt(eta)}  " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(values.items())
                                                           if not k.startswith("bin/")))  # per-bin: log only

    def image(self, name: str, image, nimg: int) -> None:
        if self.tb is not None:
            self.tb.add_image(name, image, nimg, dataformats="HWC")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def start_summary(*, device: torch.device, world: int, batch: int, batch_gpu: int, rounds: int, G, D,
                  shards: list[str], weights: dict[str, float], shard_counts: dict[str, int], stage: int,
                  preset: str, precision: str, teacher: str | None, start: str, pixel_loss: str, kimg: float,
                  resume_step: int) -> dict:
    """What a run trains, as its main process prints it at start-up (`start_summary_text`) and
    run.json records it (`start_summary`): where, how the batch is split, the networks' sizes, the
    sources and their shares of the batch, stage, teacher, preset and arithmetic."""
    total = sum(weights.values()) or 1.0
    name = str(device) if world == 1 else f"{device.type} (one device per process)"
    if device.type == "cuda" and torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name(device)}"
    return {
        "device": name, "processes": world, "batch": batch, "batch_per_process": batch_gpu,
        "accumulation_rounds": rounds,
        "parameters": {"G": parameter_count(G), "D": parameter_count(D)},
        "shards": list(shards),
        "sources": {s: {"weight": w, "share": w / total, "shards": shard_counts.get(s, 0)}
                    for s, w in sorted(weights.items())},
        "sources_not_read": sorted(set(shard_counts) - set(weights)),  # weight 0, or stage 1's partial sources
        "stage": stage, "preset": preset, "precision": precision, "teacher": teacher, "start": start,
        "pixel_loss": pixel_loss, "kimg": kimg, "resume_step": resume_step,
    }


def start_summary_text(s: dict) -> str:
    """The summary as lines for the console."""
    procs = f"{s['processes']} process{'es' if s['processes'] != 1 else ''}"
    rounds = s["accumulation_rounds"]
    sources = ", ".join(f"{name} {v['share']:.0%} (weight {v['weight']:g}, {v['shards']} shard"
                        f"{'s' if v['shards'] != 1 else ''})" for name, v in s["sources"].items())
    lines = [
        f"uh-train: stage {s['stage']}, preset {s['preset']}, {s['precision']}, "
        + (f"resuming at step {s['resume_step']}, " if s["resume_step"] else "")
        + f"{s['kimg']:g} kimg",
        f"  device    {s['device']} x {procs}",
        f"  batch     {s['batch']} per step = {s['batch_per_process']} per process x {procs}"
        f" x {rounds} accumulation round{'s' if rounds != 1 else ''}",
        f"  networks  G {s['parameters']['G']:,} parameters, D {s['parameters']['D']:,}",
        f"  shards    {', '.join(s['shards'])}",
        f"  sources   {sources}" + (f"; not read: {', '.join(s['sources_not_read'])}" if s["sources_not_read"]
                                      else ""),
        f"  teacher   {s['teacher'] or 'none'}; start: {s['start']}",
        f"  pixel     {s['pixel_loss']}",
    ]
    return "\n".join(lines)
