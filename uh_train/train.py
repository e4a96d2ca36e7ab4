"""`uh-train`: two-stage multi-source training streamed from shards (paper §3.2, App. B).

One loop, readable top to bottom (`train`). Stage 1 learns whole full-body images at r (T = identity);
stage 2 starts from the stage-1 generator, which stays frozen as the teacher, and learns patches of
every source at sampled (v, s) with CutMix, consistency and the teacher pixel loss.

Distributed: launched by `torchrun`, every process trains on its share of the batch; gradients are
averaged with one all-reduce per network (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console

from uh_train import losses
from uh_train.data import PatchBatches, PatchConfig, StreamState, ViewSettings, parse_view
from uh_train.format import cli_args
from uh_train.format.atomic import atomic_path, atomic_write_text
from uh_train.format.geometry import SCALE_MAX
from uh_train.train_state import load_state, save_state

console = Console(stderr=True, soft_wrap=True)


@dataclass
class TrainConfig:
    shards: list[str]
    out: str
    stage: int = 1
    teacher: str | None = None
    preset: str = "tiny"
    res: int | None = None  # patch resolution r; None: the preset's
    kimg: float = 1.0
    batch: int = 32  # global batch
    batch_gpu: int | None = None  # per-process batch (gradient accumulation when smaller)
    lr_g: float = 0.0025
    lr_d: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 2.0
    r1_interval: int = 16
    ema_kimg: float | None = None  # None: batch * 10 / 32, as StyleGAN3
    ema_rampup: float | None = 0.05  # early on, the EMA half-life is at most this fraction of the images seen
    lambda_cr: float = 1.0  # consistency, Eq. 9
    # Eq. 9: "joint" trains both of its sides (U-Net GAN); "detached" holds the mix of D's outputs fixed
    # (ran away in stage 2: docs/training.md, "Stage 2 diagnosis")
    consistency_target: str = "joint"
    lambda_p: float = 5.0  # teacher pixel loss, Eq. 8
    lpips: str = "auto"  # auto | on | off; auto falls back to L1 only for the CPU presets
    scale_max: float = SCALE_MAX
    keypoint_prob: float = 0.5
    whole_prob: float = 0.5  # stage 2: a full-body sample seen whole at T = identity (AnyRes GAN: half the batches)
    mix: dict[str, float] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)  # per-source patch sampling, "SOURCE:key=value,..."
    mirror: bool | None = None  # x-flip augmentation, as StyleGAN3's --mirror; None: the preset's default
    snapshot_kimg: float = 1.0
    seed: int = 0
    workers: int = 0
    amp: bool = True  # bfloat16 autocast on GPU
    max_bad_steps: int = 20
    diverge_limit: float = 1000.0  # stop when a loss term's magnitude stays above this (0: never)
    diverge_steps: int = 10  # ... for this many steps in a row
    consistency_n: int = 4  # latents of the scale-consistency check at each stage-2 snapshot (0: none)
    device: str = "auto"
    allow_config_change: bool = False  # resume even if the settings differ from the checkpoint's (recorded)
    compile: bool = False  # torch.compile the G and D forward passes (pays on GPUs; minutes to compile on CPU)
    share_fakes: bool = True  # the D step reuses the G step's fakes (one render per step); False: fresh z, as StyleGAN3


# Settings a resumed run may change freely: where and how long it runs, not what it learns.
RESUME_FREE = ("out", "kimg", "snapshot_kimg", "workers", "device", "max_bad_steps", "allow_config_change",
               "compile", "diverge_limit", "diverge_steps", "consistency_n")


def config_changes(saved: dict[str, Any], current: TrainConfig) -> dict[str, list[Any]]:
    """Settings that differ between a checkpoint's config and this run's: name -> [saved, now]."""
    now = json.loads(json.dumps(asdict(current)))  # tuples as lists, as stored
    # A setting newer than the checkpoint counts as unchanged when it has its default value.
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    return {k: [saved.get(k), now.get(k)] for k in sorted(set(saved) | set(now))
            if k not in RESUME_FREE and saved.get(k) != now.get(k)}


# ---------------------------------------------------------------------------------------------
# Networks


def build_networks(cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    from dataclasses import replace

    from uh_train.networks import Discriminator, Generator, get_preset

    preset = get_preset(cfg.preset, **({"img_resolution": cfg.res} if cfg.res else {}))
    G = Generator(preset.generator)
    D = Discriminator(replace(preset.discriminator, img_resolution=G.img_resolution))
    return G, D


def load_teacher(path: str, device: torch.device) -> torch.nn.Module:
    from uh_train.checkpoint import load_generator

    teacher = load_generator(path, device=device)
    teacher.eval().requires_grad_(False)
    return teacher


@dataclass
class StageOneStart:
    """Where stage 2 starts: the stage-1 generator file (the teacher) and, when it can be found, the
    stage-1 training state holding G, G_ema and D."""

    network: Path
    state: Path | None


def find_stage_one(path: str | os.PathLike) -> StageOneStart:
    """Resolve --teacher: a stage-1 run folder, one of its training-state-*/network-* files, or a
    generator file from elsewhere (then only the generator is known)."""
    p = Path(path)
    if p.is_dir():
        latest = p / "latest.json"
        if not latest.exists():
            raise FileNotFoundError(f"{p} is not a finished stage-1 run (no latest.json)")
        info = json.loads(latest.read_text())
        return StageOneStart(p / info["network"], p / info["state"])
    if p.name.startswith("training-state-"):
        return StageOneStart(p.with_name(p.name.replace("training-state-", "network-")), p)
    if p.name == "network-latest.safetensors" and (p.parent / "latest.json").exists():
        info = json.loads((p.parent / "latest.json").read_text())
        return StageOneStart(p, p.parent / info["state"])
    if p.name.startswith("network-"):
        state = p.with_name(p.name.replace("network-", "training-state-"))
        return StageOneStart(p, state if state.exists() else None)
    return StageOneStart(p, None)


def start_from_stage_one(start: StageOneStart, G, G_ema, D, device: torch.device) -> tuple[torch.nn.Module, str]:
    """Load G, G_ema and D from the stage-1 state (as AnyRes GAN resumes its stage-1 snapshot);
    the teacher is the stage-1 G_ema, frozen. Without a state, G and G_ema start from the generator
    file and D is new. Returns (teacher, a line saying what was loaded)."""
    from uh_train.train_state import load_state

    if start.state is not None and start.state.exists():
        state = load_state(start.state)
        try:
            G.load_state_dict(state["G"])
            G_ema.load_state_dict(state["G_ema"])
            D.load_state_dict(state["D"])
        except RuntimeError as e:
            raise ValueError(f"the stage-1 state {start.state} does not fit this run's networks; use the stage-1 "
                             f"run's --preset and --res ({str(e).splitlines()[0]})") from None
        teacher = copy.deepcopy(G_ema).to(device).eval().requires_grad_(False)
        return teacher, f"G, G_ema and D from {start.state.name}; teacher = its G_ema"
    teacher = load_teacher(str(start.network), device)
    if teacher.img_resolution != D.cfg.img_resolution:
        raise ValueError(f"the teacher renders {teacher.img_resolution} px but --preset/--res give "
                         f"{D.cfg.img_resolution} px; use the teacher's preset and resolution")
    try:
        G.load_state_dict(teacher.state_dict())
        G_ema.load_state_dict(teacher.state_dict())
    except RuntimeError as e:
        raise ValueError(f"the teacher {start.network} does not fit this run's generator; use its preset "
                         f"({str(e).splitlines()[0]})") from None
    return teacher, f"G and G_ema from {start.network.name}; D new (no stage-1 training state next to it)"


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_FALLBACK_PRESETS = ("tiny", "small")  # CPU presets: L1 alone is acceptable there


def make_lpips(mode: str, device: torch.device, preset: str = "tiny"):
    """LPIPS (AlexNet) for the pixel loss. Its linear heads ship with the `lpips` package; the AlexNet
    backbone comes from torchvision's cache, which is never downloaded here. `auto` falls back to
    L1 alone when the backbone is missing, for the CPU presets only; `on`, and `auto` for any other
    preset, fail at start-up saying which file to put where."""
    if mode == "off":
        return None
    weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    problem = None
    if not weights.exists():
        problem = "missing"
    else:
        try:
            import lpips

            return lpips.LPIPS(net="alex", verbose=False).to(device).eval().requires_grad_(False)
        except Exception as e:  # a damaged file or an incompatible lpips release
            problem = f"unreadable ({type(e).__name__}: {e})"
    msg = (f"LPIPS needs torchvision's AlexNet weights {weights} ({problem}). Copy {ALEXNET_FILE} there "
           f"(from a machine with internet: torchvision.models.alexnet(weights='DEFAULT')), or pass --lpips off.")
    if mode == "on" or preset not in LPIPS_FALLBACK_PRESETS:
        raise RuntimeError(msg if mode == "on" else f"the {preset} preset trains with LPIPS (Eq. 8); {msg}")
    console.print(f"[yellow]note:[/yellow] {msg} Continuing with the L1 part of the pixel loss only.")
    return None


def resolve_mirror(cfg: TrainConfig) -> bool:
    """--mirror as given, else the preset's default (on for `paper`, as the paper's StyleGAN3 runs)."""
    return PRESET_DEFAULTS[cfg.preset][3] if cfg.mirror is None else cfg.mirror


def parse_views(items: list[str], keypoint_prob: float) -> dict[str, ViewSettings]:
    base = ViewSettings(keypoint_prob=keypoint_prob)
    return dict(parse_view(item, base) for item in items)


# ---------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_gradients(module: torch.nn.Module, d: Dist) -> None:
    """All-reduce every parameter's gradient as one flat tensor (missing gradients count as zero)."""
    if d.world == 1:
        return
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset: offset + n].view_as(p))
        offset += n


def check_in_sync(module: torch.nn.Module, d: Dist) -> None:
    """Every process must end with identical weights (same start, same averaged gradients)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten().float() for p in module.parameters()])
    sums = [torch.zeros(2, device=flat.device) for _ in range(d.world)]
    dist.all_gather(sums, torch.stack([flat.sum(), flat.abs().sum()]))
    if any(not torch.allclose(sums[0], s, rtol=1e-6) for s in sums):
        raise RuntimeError(f"generator weights differ across processes: {[s.tolist() for s in sums]}")
    if d.main:
        console.print(f"generator weights in sync across {d.world} processes")


def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    if d.world == 1:
        return
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class Progress:
    step: int = 0
    nimg: int = 0
    bad_steps: int = 0
    data: StreamState = field(default_factory=StreamState)


# Loss terms whose magnitude says whether training has run away (R1 and the teacher loss are not
# logits-driven and stay bounded when D does).
WATCHED_TERMS = ("D/global", "D/pixel", "D/cutmix", "D/consistency", "G/adv")


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


class TrainingDiverged(RuntimeError):
    pass


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


def checkpoint_path(out: Path, nimg: int) -> Path:
    return out / f"training-state-{nimg // 1000:06d}k-{nimg % 1000:03d}.safetensors"


KEEP_STATES = 3


def save_training_checkpoint(out: Path, cfg: TrainConfig, G, G_ema, D, opt_G, opt_D, gen: torch.Generator,
                             prog: Progress, notes: dict[str, Any] | None = None) -> Path:
    from uh_train.checkpoint import save_checkpoint

    path = checkpoint_path(out, prog.nimg)
    save_state(path, {
        "config": json.dumps(asdict(cfg)),
        "G": G.state_dict(), "G_ema": G_ema.state_dict(), "D": D.state_dict(),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
        # The loop draws only from these two; the data stream derives its own randomness from the seed.
        "rng": {"torch": gen.get_state(), "cpu": torch.get_rng_state()},
        "progress": {"step": prog.step, "nimg": prog.nimg, "bad_steps": prog.bad_steps,
                     "data": {"consumed": prog.data.consumed, "batches": prog.data.batches}},
    })
    # The generator alone, in the format uh-generate and uh-eval read.
    info = {"stage": cfg.stage, "preset": cfg.preset, "kimg": prog.nimg / 1000, "step": prog.step,
            **(notes or {})}
    network = out / path.name.replace("training-state-", "network-")
    save_checkpoint(network, {"G_ema": G_ema}, config=info)
    save_checkpoint(out / "network-latest.safetensors", {"G_ema": G_ema}, config=info)
    latest = out / "latest.json"
    atomic_write_text(latest, json.dumps({"state": path.name, "network": network.name, "nimg": prog.nimg,
                                          "step": prog.step}))
    for old in sorted(out.glob("training-state-*.safetensors"))[:-KEEP_STATES]:
        old.unlink()  # training states are large; the per-snapshot networks are kept
    return path


def find_resume(out: Path) -> Path | None:
    latest = out / "latest.json"
    if not latest.exists():
        return None
    return out / json.loads(latest.read_text())["state"]


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


class _NoClock:
    def part(self, name: str):
        return contextlib.nullcontext()

    def step_done(self) -> None:
        pass


def train(cfg: TrainConfig, clock: StepClock | None = None) -> dict[str, Any]:
    """Run training; returns a summary (steps, kimg, final losses, bad steps). `clock` records where
    each step's time goes (nested parts are also counted in their enclosing part)."""
    clock = clock or _NoClock()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    d = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    random.seed(cfg.seed + d.rank)

    # A resumed run must train what its checkpoint trained: refuse other settings before any work.
    resume = find_resume(out)
    changes: dict[str, list[Any]] = {}
    state: dict[str, Any] = {}
    if resume is not None:
        state = load_state(resume)
        try:
            saved = json.loads(state["config"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{resume} has no readable run configuration; use another --out") from None
        changes = config_changes(saved, cfg)
        if changes and not cfg.allow_config_change:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise ValueError(f"{out} holds a run with other settings ({listed}); resume it with its own settings, "
                             f"choose another --out, or pass --allow-config-change to continue with the new ones "
                             f"(recorded in run.json)")

    # Networks. Stage 2 starts from the stage-1 G, G_ema and D; the stage-1 G_ema is the frozen teacher.
    G, D = build_networks(cfg)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    teacher, start_note = None, "new networks"
    if cfg.stage == 2:
        if cfg.teacher:
            teacher, start_note = start_from_stage_one(find_stage_one(cfg.teacher), G, G_ema, D, device)
        elif d.main:
            console.print("[yellow]note:[/yellow] stage 2 without --teacher: no teacher pixel loss (Eq. 8)")
    G, D, G_ema = G.to(device).train(), D.to(device).train(), G_ema.to(device)
    # A run that starts from trained weights keeps its EMA as it is (no ramp-up), as AnyRes GAN does.
    ema_rampup = None if teacher is not None else cfg.ema_rampup
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas, eps=1e-8)
    mb_ratio = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy regularisation, as StyleGAN2
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d * mb_ratio,
                             betas=(cfg.betas[0] ** mb_ratio, cfg.betas[1] ** mb_ratio), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + d.rank)
    prog = Progress()

    if resume is not None:
        G.load_state_dict(state["G"])
        G_ema.load_state_dict(state["G_ema"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        gen.set_state(state["rng"]["torch"])
        torch.set_rng_state(state["rng"]["cpu"])
        p = state["progress"]
        prog = Progress(p["step"], p["nimg"], p["bad_steps"],
                        StreamState(consumed=dict(p["data"]["consumed"]), batches=dict(p["data"]["batches"])))
        if d.main:
            console.print(f"resuming from {resume.name} (step {prog.step}, {prog.nimg / 1000:.3f} kimg)")
            if changes:
                console.print("[yellow]note:[/yellow] settings changed on resume: " +
                              ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
            _truncate_log(out / "log.jsonl", prog.step)
    else:
        if d.main:
            _truncate_log(out / "log.jsonl", 0)  # steps logged by a run killed before its first checkpoint
        broadcast_module(G, d)
        broadcast_module(D, d)
        if teacher is None:
            G_ema.load_state_dict(G.state_dict())
        else:
            broadcast_module(G_ema, d)

    lpips_fn = make_lpips(cfg.lpips, device, cfg.preset) if (teacher is not None and cfg.lambda_p > 0) else None
    mirror = resolve_mirror(cfg)
    if teacher is None or cfg.lambda_p == 0:
        pixel_note = "no teacher pixel loss"
    else:
        pixel_note = "L1 + LPIPS (AlexNet)" if lpips_fn is not None else "L1 only (LPIPS off)"
        if lpips_fn is None and cfg.lpips == "auto":
            pixel_note = "L1 only (LPIPS's AlexNet weights missing; --lpips auto fell back)"
    run_info = {"config": asdict(cfg), "start": start_note, "pixel_loss": pixel_note,
                "ema_rampup": ema_rampup, "mirror": mirror,
                "config_changes": _previous_changes(out / "run.json") if resume is not None else []}
    if changes:
        run_info["config_changes"].append({"step": prog.step, "changes": changes})
    if d.main:
        atomic_write_text(out / "run.json", json.dumps(run_info, indent=2) + "\n")
        console.print(f"stage {cfg.stage}: {start_note}; pixel loss: {pixel_note}")
    res = G.img_resolution
    batch_gpu = cfg.batch_gpu or cfg.batch // d.world
    rounds = max(1, cfg.batch // (batch_gpu * d.world))
    patch_cfg = PatchConfig(res=res, stage=cfg.stage, scale_max=cfg.scale_max, keypoint_prob=cfg.keypoint_prob,
                            whole_prob=cfg.whole_prob,
                            mirror=mirror, views=parse_views(cfg.views, cfg.keypoint_prob))
    dataset = PatchBatches(cfg.shards, batch=batch_gpu, cfg=patch_cfg, seed=cfg.seed, weights=cfg.mix or None,
                           state=prog.data)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.workers,
                                         persistent_workers=cfg.workers > 0)
    data_iter = iter(loader)
    ema_kimg = cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32
    amp = cfg.amp and device.type == "cuda"
    total_nimg = int(cfg.kimg * 1000)
    snapshot_nimg = max(1, int(cfg.snapshot_kimg * 1000))
    next_snapshot = (prog.nimg // snapshot_nimg + 1) * snapshot_nimg
    log_file = open(out / "log.jsonl", "a") if d.main else None
    tb = _tensorboard(out) if d.main else None
    fixed_z = torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(123)).to(device)
    start, start_nimg = time.time(), prog.nimg
    last: dict[str, float] = {}
    skipped = 0
    watch = DivergenceWatch(cfg.diverge_limit, cfg.diverge_steps,
                            last_good=json.loads((out / "latest.json").read_text())["network"] if resume else None)

    # Compiled forward passes share the modules' parameters; checkpoints keep using G and D.
    G_run, D_run = (torch.compile(G), torch.compile(D)) if cfg.compile else (G, D)
    if device.type == "cpu":
        # On a CPU, D's convolutions run faster in channels-last memory order (`just bench levers`).
        # The parameters stay the same objects (the optimiser's references hold) and checkpoints
        # are written contiguous; only the order of the numbers in memory changes.
        D.to(memory_format=torch.channels_last)
        D_run = channels_last_inputs(D_run)
    while prog.nimg < total_nimg:
        terms: dict[str, float] = {}
        bins: dict[str, list[float]] = {}  # stage 2: per scale bin, "bin/BIN/NAME" -> [sum, count]
        do_r1 = cfg.r1_gamma > 0 and prog.step % cfg.r1_interval == 0
        with clock.part("data"):
            batches = [next(data_iter) for _ in range(rounds)]
        step_skipped = 0
        for b in batches:
            prog.data.update(b["state"])
            step_skipped += b["skipped"]
        skipped += step_skipped
        # The step's random draws, in one fixed order: z of every round, then per round the D step's z
        # (only when it renders its own fakes) and the CutMix box.
        z_g = [torch.randn(b["transform"].shape[0], G.z_dim, generator=gen) for b in batches]
        z_d, boxes = [], []
        for b in batches:
            n = b["transform"].shape[0]
            z_d.append(None if cfg.share_fakes else torch.randn(n, G.z_dim, generator=gen))
            boxes.append(losses.random_box_mask(n, res, generator=gen))

        opt_G.zero_grad(set_to_none=True)
        opt_D.zero_grad(set_to_none=True)
        finite = True
        for b, zg, zd, box in zip(batches, z_g, z_d, boxes, strict=True):
            real = b["image"].to(device)
            mask = b["mask"].to(device)
            T = b["transform"].to(device)
            whole = b["whole"].to(device).float()
            n = real.shape[0]
            G.requires_grad_(True)
            with clock.part("G forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                # One render serves both steps when shared (its EMA update is the D step's, as StyleGAN's);
                # otherwise the D step renders its own fakes from fresh z, as StyleGAN3's loop does.
                fake_g = G_run(zg.to(device), T, update_emas=cfg.share_fakes)
            if cfg.share_fakes:
                fake_d = fake_g.detach()
            else:
                with clock.part("G forward (D step)"), torch.no_grad(), \
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    fake_d = G_run(zd.to(device), T, update_emas=True)

            # --- D step, L_D of Eq. 10 (stage 1: Eq. 7): both heads, CutMix of real partial patches with
            # fakes (Eq. 6), consistency (Eq. 9, weighted λ_cr), R1
            D.requires_grad_(True)
            mix_mask = losses.cutmix_mask(mask, whole, box.to(device))
            with clock.part("D forward/backward: reals, fakes, CutMix"), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                mixed = losses.cutmix(real, fake_d, mix_mask)
                if do_r1:  # the reals need their own graph for R1's gradient
                    real_in = real.detach().requires_grad_(True)
                    r_g, r_p = D_run(real_in)
                    fm_g, fm_p = D_run(torch.cat([fake_d, mixed]), chunks=2)
                    (f_g, _), (f_p, m_p) = fm_g.chunk(2), fm_p.chunk(2)
                else:  # one pass over all three, minibatch statistics per chunk
                    rfm_g, rfm_p = D_run(torch.cat([real, fake_d, mixed]), chunks=3)
                    (r_g, f_g, _), (r_p, f_p, m_p) = rfm_g.chunk(3), rfm_p.chunk(3)
                # Global head: only whole views are real images (a patch its source covers, or a view
                # of the full-body set inside the square); a partial patch completed by CutMix is
                # partly fake and reaches D through the per-pixel head (Eq. 6).
                loss_global = (torch.nn.functional.softplus(-r_g).squeeze(1) * whole).sum() / whole.sum().clamp_min(1) \
                    + torch.nn.functional.softplus(f_g).mean()
                loss_pixel = losses.nonsaturating_d_loss(r_p, f_p, real_weight=mask.expand_as(r_p))
                loss_mix = losses.per_pixel_target_loss(m_p, mix_mask)
                with clock.part("consistency (Eq. 9)"):
                    loss_cr = losses.consistency_loss(m_p, r_p, f_p, mix_mask, target=cfg.consistency_target)
                loss = loss_global + loss_pixel + loss_mix + cfg.lambda_cr * loss_cr
                _add(terms, "D/global", loss_global)
                _add(terms, "D/pixel", loss_pixel)
                _add(terms, "D/cutmix", loss_mix)
                _add(terms, "D/consistency", loss_cr)
                finite &= bool(torch.isfinite(loss))
                (loss / rounds).backward(retain_graph=do_r1)  # R1 below differentiates the reals' pass again
            scales = 1.0 / T[:, 0, 0].detach().float().cpu()
            if cfg.stage == 2:  # where D tells reals from fakes, per scale bin (pixel head, covered pixels)
                with torch.no_grad():
                    covered = mask.float()
                    acc_real = (((r_p.float() > 0) * covered).sum(dim=(1, 2, 3))
                                / covered.sum(dim=(1, 2, 3)).clamp_min(1))
                    acc_fake = (f_p.float() < 0).float().mean(dim=(1, 2, 3))
                scale_bin_stats(scales, {"D_acc_real": acc_real.cpu(), "D_acc_fake": acc_fake.cpu()}, bins)
            if do_r1:
                with clock.part("R1"):
                    # The pixel head enters as its per-image mean over covered pixels: summing r*r logits
                    # would make the penalty scale with the patch area and swamp the global head's.
                    pixel_mean = (r_p.float() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)
                    r1 = losses.r1_penalty(real_in, [r_g.float(), pixel_mean])
                    r1_loss = (cfg.r1_gamma / 2) * r1 * cfg.r1_interval  # lazy: every r1_interval steps, scaled
                    _add(terms, "D/r1", r1)
                    finite &= bool(torch.isfinite(r1_loss))
                    (r1_loss / rounds).backward()

            # --- G step, L_G of Eq. 10: fool both heads (stage 1: that alone, Eq. 7); match the teacher on
            # the same region (Eq. 8, weighted λ_p). The gradient reaches the image first, then G.
            D.requires_grad_(False)
            fake_in = fake_g.detach().requires_grad_(True)
            with clock.part("D forward/backward: fakes for G"), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                g_logit, p_logit = D_run(fake_in)
                loss = losses.nonsaturating_g_loss(g_logit) + losses.nonsaturating_g_loss(p_logit)
                _add(terms, "G/adv", loss)
                (loss / rounds).backward()
            if teacher is not None and cfg.lambda_p > 0:
                with clock.part("teacher forward"), torch.no_grad(), \
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    teacher_img = teacher(zg.to(device), None)
                with clock.part("pixel loss: L1 + LPIPS (Eq. 8)"), \
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    l1_each, lp_each = losses.pixel_loss_per_patch(fake_in.float(), teacher_img.float(), T, lpips_fn)
                    l1, lp = l1_each.mean(), lp_each.mean()
                    scale_bin_stats(scales, {"teacher_l1": l1_each.cpu()}, bins)
                    pixel = cfg.lambda_p * (l1 + lp)
                    (pixel / rounds).backward()
                    loss = loss + pixel
                    _add(terms, "G/pixel_l1", l1)
                    _add(terms, "G/pixel_lpips", lp)
            finite &= bool(torch.isfinite(loss))
            with clock.part("G backward"):
                fake_g.backward(fake_in.grad)
        with clock.part("optimiser"):
            D.requires_grad_(True)  # frozen for the G step; its gradients are those of the D step
            average_gradients(G, d)
            average_gradients(D, d)

            # --- NaN/Inf guard: skip the update entirely, count, stop after too many in a row
            if finite:
                opt_G.step()
                opt_D.step()
                prog.bad_steps = 0
            else:
                prog.bad_steps += 1
                console.print(f"[yellow]step {prog.step}: non-finite loss, update skipped "
                              f"({prog.bad_steps}/{cfg.max_bad_steps} in a row)[/yellow]")
                if prog.bad_steps >= cfg.max_bad_steps:
                    raise RuntimeError(f"{prog.bad_steps} non-finite steps in a row; stopping. The last good "
                                       f"state is in {out}; lower the learning rates or check the data.")
        with clock.part("EMA"):
            ema_nimg = ema_kimg * 1000
            if ema_rampup is not None:
                ema_nimg = min(ema_nimg, (prog.nimg + cfg.batch) * ema_rampup)
            ema_beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
            with torch.no_grad():  # EMA of G
                for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - ema_beta)
                for b_ema, b_ in zip(G_ema.buffers(), G.buffers(), strict=True):
                    b_ema.copy_(b_)
        clock.step_done()

        prog.step += 1
        prog.nimg += cfg.batch
        last = {k: v / rounds for k, v in terms.items()}
        last.update({k: total / max(count, 1) for k, (total, count) in bins.items()})
        watch.step(last, prog.step)
        snapshot_due = prog.nimg >= next_snapshot or prog.nimg >= total_nimg
        if snapshot_due and d.main and cfg.stage == 2 and cfg.consistency_n > 0:
            last.update(snapshot_consistency(G_ema, cfg.consistency_n, device))
        if d.main:
            extra = {"data/skipped": step_skipped} if step_skipped else {}
            log_file.write(json.dumps({"step": prog.step, "kimg": prog.nimg / 1000, **last, **extra}) + "\n")
            log_file.flush()
            elapsed = time.time() - start
            rate = (prog.nimg - start_nimg) / 1000 / max(elapsed, 1e-9)
            eta = (total_nimg - prog.nimg) / 1000 / max(rate, 1e-9)
            if tb is not None:
                for k, v in last.items():
                    tb.add_scalar(k, v, prog.nimg)
                tb.add_scalar("progress/kimg_per_s", rate, prog.nimg)
            if prog.step % 10 == 0 or prog.nimg >= total_nimg or prog.step == 1:
                console.print(f"step {prog.step:6d}  kimg {prog.nimg / 1000:8.3f}/{cfg.kimg:g}  "
                              f"{rate:6.3f} kimg/s  ETA {_fmt(eta)}  " +
                              "  ".join(f"{k} {v:.3f}" for k, v in sorted(last.items())))
        if snapshot_due:
            next_snapshot += snapshot_nimg
            if d.main:
                path = save_training_checkpoint(out, cfg, G, G_ema, D, opt_G, opt_D, gen, prog,
                                                {"pixel_loss": pixel_note, "start": start_note})
                watch.snapshot_written(path.name.replace("training-state-", "network-"))
                grid = sample_grid(G_ema, fixed_z, out / f"samples-{prog.nimg // 1000:06d}k-{prog.nimg % 1000:03d}.png")
                if tb is not None:
                    tb.add_image("samples", grid, prog.nimg, dataformats="HWC")
                console.print(f"saved {path.name}")
    if log_file is not None:
        log_file.close()
    if tb is not None:
        tb.close()
    if skipped and d.main:
        console.print(f"[yellow]note:[/yellow] {skipped} unusable sample(s) skipped on this process "
                      f"(see the warnings; `mst validate` lists them)")
    if d.world > 1:
        check_in_sync(G, d)
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return {"steps": prog.step, "kimg": prog.nimg / 1000, "losses": last, "out": str(out), "skipped": skipped}


def snapshot_consistency(G_ema, n: int, device: torch.device) -> dict[str, float]:
    """Scale consistency of G_ema on n fixed latents (uh-eval's `consistency` metric, small): PSNR in dB
    of the render at k·r reduced to r against the render at r, for k = 2, 4, 8."""
    from uh_train.metrics.consistency import scale_consistency
    from uh_train.metrics.fakes import GeneratorSampler

    was_training = G_ema.training
    result = scale_consistency(GeneratorSampler(G_ema, 1.0, device), n=n, seed=0)
    G_ema.train(was_training)
    return {f"consistency/psnr_k{k}": v["psnr"] for k, v in result["factors"].items()}


def channels_last_inputs(D_run):
    """D_run with its images passed in channels-last memory order (gradients flow through)."""
    def run(img: torch.Tensor, chunks: int = 1):
        return D_run(img.contiguous(memory_format=torch.channels_last), chunks=chunks)
    return run


SAMPLE_VIEWS = ((0.5, 0.5, 1.0), (0.5, 0.12, 4.0), (0.35, 0.5, 4.0), (0.5, 0.8, 2.0))


@torch.no_grad()
def sample_grid(G, z: torch.Tensor, path: Path) -> np.ndarray:
    """Fixed z (rows) at several (v, s) (columns): the whole image, the face, a hand, the legs."""
    from PIL import Image

    from uh_train.format.geometry import patch_transform

    cols = []
    for vx, vy, s in SAMPLE_VIEWS:
        T = torch.tensor(patch_transform((vx, vy), s), dtype=torch.float32).expand(z.shape[0], 3, 3).to(z.device)
        img = G(z, T).float().clamp(-1, 1)
        cols.append(((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return grid


def _add(terms: dict[str, float], name: str, value: torch.Tensor) -> None:
    terms[name] = terms.get(name, 0.0) + float(value.detach())


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps 1..`step` (those the resumed checkpoint has seen), in order, once
    each: drop steps a killed run logged after its checkpoint and a torn last line."""
    if not path.exists():
        return
    kept, last = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            s = json.loads(line)["step"]
        except (ValueError, TypeError, KeyError):
            continue  # torn by a kill mid-write
        if isinstance(s, int) and last < s <= step:
            kept.append(line)
            last = s
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _previous_changes(path: Path) -> list[Any]:
    try:
        changes = json.loads(path.read_text()).get("config_changes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return changes if isinstance(changes, list) else []


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


# ---------------------------------------------------------------------------------------------
# CLI

PRESET_DEFAULTS = {  # preset -> (batch, kimg, snapshot_kimg, mirror)
    "paper": (32, 25000.0, 200.0, True),
    "small": (16, 100.0, 10.0, False),
    "tiny": (8, 0.4, 0.2, False),
}

app = typer.Typer(add_completion=False, rich_markup_mode="rich", no_args_is_help=True,
                  help="Train the continuous-resolution UnitedHuman generator from shards.")


def _parse_mix(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, w = item.partition("=")
        try:
            out[name] = float(w)
        except ValueError:
            raise typer.BadParameter(f"--mix expects SOURCE=WEIGHT, got {item!r}") from None
        if not name or not math.isfinite(out[name]) or out[name] < 0:
            raise typer.BadParameter(f"--mix expects SOURCE=WEIGHT with a finite weight >= 0, got {item!r}")
    return out


@app.command("run")
def run_cmd(
    shards: list[Path] = typer.Option(..., "--shards", help="Shard folder(s); repeat for several sources."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, samples, log, TensorBoard).",
                             callback=cli_args.folder_to_write),
    stage: int = typer.Option(1, "--stage", min=1, max=2, help="1: full-body images; 2: multi-source patches."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Stage-1 generator (stage 2's teacher and start)."),
    preset: str = typer.Option("tiny", "--preset", help="paper | small | tiny (network size and defaults)."),
    res: int | None = typer.Option(None, "--res", help="Patch resolution r (default: the preset's).",
                                   callback=cli_args.power_of_two),
    kimg: float | None = typer.Option(None, "--kimg", help="Training length in thousands of real images.",
                                      callback=cli_args.positive),
    batch: int | None = typer.Option(None, "--batch", help="Global batch size.", callback=cli_args.at_least_one),
    batch_gpu: int | None = typer.Option(None, "--batch-gpu", help="Per-process batch (accumulates gradients).",
                                         callback=cli_args.at_least_one),
    snapshot_kimg: float | None = typer.Option(None, "--snapshot-kimg", help="Checkpoint interval in kimg.",
                                               callback=cli_args.positive),
    lpips: str = typer.Option("auto", "--lpips", help="auto | on | off: LPIPS in the teacher pixel loss."),
    mix: list[str] = typer.Option([], "--mix", help="Per-source mixing weight SOURCE=W (repeatable)."),
    view: list[str] = typer.Option([], "--view", help="Per-source patch sampling (stage 2), repeatable: "
                                   "SOURCE:scale=log-uniform|uniform-size,s_min=1,s_max=8,keypoints=0.5,jitter=0.25 "
                                   "(any subset; see docs/training.md)."),
    whole_prob: float = typer.Option(0.5, "--whole-prob", min=0.0, max=1.0,
                                     help="Stage 2: probability that a full-body sample is seen whole at T = identity "
                                          "(the rest are patches at sampled (v, s))."),
    diverge_limit: float = typer.Option(1000.0, "--diverge-limit", callback=cli_args.non_negative,
                                        help="Stop when an adversarial loss term stays above this for --diverge-steps "
                                             "steps in a row, naming the last snapshot in bounds (0: never)."),
    diverge_steps: int = typer.Option(10, "--diverge-steps", callback=cli_args.at_least_one,
                                      help="Steps in a row above --diverge-limit that stop the run."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror",
                                       help="x-flip half of the samples (default: on for paper, off otherwise)."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", help="Data loader worker processes.", callback=cli_args.non_negative),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda", callback=cli_args.torch_device_or_auto),
    gamma: float = typer.Option(2.0, "--gamma", help="R1 weight.", callback=cli_args.non_negative),
    share_fakes: bool = typer.Option(True, "--share-fakes/--no-share-fakes",
                                     help="D trains on the G step's fakes (one render per step), or renders its "
                                          "own from fresh z as StyleGAN3 does (slower)."),
    compile_networks: bool = typer.Option(False, "--compile", help="torch.compile G and D (pays on a GPU; "
                                          "compiling takes minutes on a CPU)."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="Resume even if settings differ from the checkpoint's "
                                                  "(the changes are recorded in run.json)."),
) -> None:
    """Train (resumes automatically when OUT holds a checkpoint)."""
    if preset not in PRESET_DEFAULTS:
        raise typer.BadParameter(f"unknown preset {preset!r} (paper, small, tiny)", param_hint="--preset")
    if lpips not in ("auto", "on", "off"):
        raise typer.BadParameter("--lpips must be auto, on or off")
    for folder in shards:
        if not folder.is_dir():
            console.print(f"[red]error:[/red] shard folder {folder} does not exist")
            raise typer.Exit(2)
    if teacher is not None and not teacher.exists():
        console.print(f"[red]error:[/red] teacher checkpoint {teacher} does not exist")
        raise typer.Exit(2)
    b, k, snap, _ = PRESET_DEFAULTS[preset]
    try:
        parse_views(view, 0.5)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--view") from None
    cfg = TrainConfig(
        shards=[str(s) for s in shards], out=str(out), stage=stage, teacher=str(teacher) if teacher else None,
        preset=preset, res=res, kimg=kimg if kimg is not None else k, batch=batch or b, batch_gpu=batch_gpu,
        snapshot_kimg=snapshot_kimg or snap, lpips=lpips, mix=_parse_mix(mix), seed=seed, workers=workers,
        device=device, r1_gamma=gamma, views=list(view), mirror=mirror, whole_prob=whole_prob,
        diverge_limit=diverge_limit, diverge_steps=diverge_steps,
        allow_config_change=allow_config_change, share_fakes=share_fakes, compile=compile_networks,
    )
    try:
        summary = train(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"done: {summary['steps']} steps, {summary['kimg']:.3f} kimg -> {out}")


@app.command("import-snapshot")
def import_snapshot_cmd(
    pkl: Path = typer.Argument(..., help="StyleGAN3 / AnyRes / UnitedHuman network-snapshot .pkl"),
    out: Path = typer.Argument(..., help="Output .safetensors generator checkpoint"),
) -> None:
    """Convert a snapshot pickle into our checkpoint format without executing its embedded code."""
    from uh_train.checkpoint import import_snapshot

    try:
        import_snapshot(pkl, out)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"wrote {out}")


def main() -> None:
    import sys

    # `uh-train --shards ...` is the training command; other first words name subcommands.
    if len(sys.argv) > 1 and sys.argv[1] not in ("run", "import-snapshot", "--help", "-h"):
        sys.argv.insert(1, "run")
    app()


if __name__ == "__main__":
    main()
