"""The networks a run trains and how they start: G and D from the preset, stage 2's start from the
stage-1 snapshot (its G_ema, frozen, is the teacher of Eq. 8), LPIPS for the pixel loss, the EMA of
G, and D's passes over a step's images."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from uh_train.training.config import TrainConfig
from uh_train.training.monitor import console


def build_networks(cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    from uh_train.networks import Discriminator, Generator, get_preset

    preset = get_preset(cfg.preset, **({"img_resolution": cfg.res} if cfg.res else {}))
    G = Generator(preset.generator)
    D = Discriminator(replace(preset.discriminator, img_resolution=G.img_resolution))
    return G, D


def start_networks(cfg: TrainConfig, device: torch.device, main: bool = True):
    """G, D and G_ema on `device`, and the teacher with a line saying where they start. Stage 2 starts
    from the stage-1 G, G_ema and D; the stage-1 G_ema is the frozen teacher (None: no pixel loss)."""
    start = find_stage_one(cfg.teacher) if cfg.stage == 2 and cfg.teacher else None
    if start is not None:  # before building anything: a refused start costs nothing
        for problem, allowed in start_problems(start):
            if cfg.preset == "paper" and not getattr(cfg, allowed):
                raise ValueError(f"{problem} (--{allowed.replace('_', '-')} to start anyway)")
            if main:
                console.print(f"[yellow]note:[/yellow] {problem}")
    G, D = build_networks(cfg)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    teacher, start_note = None, "new networks"
    if cfg.stage == 2:
        if start is not None:
            teacher, start_note = start_from_stage_one(start, G, G_ema, D, device)
        elif main:
            console.print("[yellow]note:[/yellow] stage 2 without --teacher: no teacher pixel loss (Eq. 8)")
    return G.to(device).train(), D.to(device).train(), G_ema.to(device), teacher, start_note


def optimisers(cfg: TrainConfig, G: torch.nn.Module, D: torch.nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D; D's is adjusted for lazy R1 (every r1_interval steps), as StyleGAN2."""
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas, eps=1e-8)
    mb_ratio = cfg.r1_interval / (cfg.r1_interval + 1)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d * mb_ratio,
                             betas=(cfg.betas[0] ** mb_ratio, cfg.betas[1] ** mb_ratio), eps=1e-8)
    return opt_G, opt_D


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
    from uh_train.checkpoint import read_latest

    p = Path(path)
    if p.is_dir():
        info = read_latest(p)
        if info is None:
            raise FileNotFoundError(f"{p} is not a finished stage-1 run (no latest.json)")
        return StageOneStart(p / info["network"], p / info["state"])
    if p.name.startswith("training-state-"):
        return StageOneStart(p.with_name(p.name.replace("training-state-", "network-")), p)
    if p.name == "network-latest.safetensors" and (info := read_latest(p.parent)) is not None:
        return StageOneStart(p, p.parent / info["state"])
    if p.name.startswith("network-"):
        state = p.with_name(p.name.replace("network-", "training-state-"))
        return StageOneStart(p, state if state.exists() else None)
    return StageOneStart(p, None)


def start_problems(start: StageOneStart) -> list[tuple[str, str]]:
    """What departs from the paper's start of stage 2 (the stage-1 G, G_ema and D; the stage-1 G_ema
    as the teacher): (reason, the TrainConfig switch that accepts it). The `paper` preset stops on
    each unless its switch is set; the CPU presets note them."""
    from uh_train.checkpoint import checkpoint_config

    out = []
    try:
        stage = checkpoint_config(start.network).get("stage")
    except (OSError, ValueError):
        stage = None  # a generator from elsewhere (official pickle): its stage is not recorded
    if stage == 2:
        out.append((f"the teacher {start.network.name} is a stage-2 network; stage 2 learns from stage 1's "
                    "generator", "teacher_any_stage"))
    if start.state is None or not start.state.exists():
        out.append((f"no stage-1 training state next to {start.network.name}: D would start new instead of "
                    "from stage 1's", "new_d"))
    return out


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


def pixel_loss_note(cfg: TrainConfig, teacher, lpips_fn) -> str:
    """What the teacher pixel loss is in this run (run.json and the generator files record it)."""
    if teacher is None or cfg.lambda_p == 0:
        return "no teacher pixel loss"
    if lpips_fn is not None:
        return "L1 + LPIPS (AlexNet)"
    if cfg.lpips == "auto":
        return "L1 only (LPIPS's AlexNet weights missing; --lpips auto fell back)"
    return "L1 only (LPIPS off)"


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, batch: int, nimg: int, ema_kimg: float,
               rampup: float | None) -> None:
    """G_ema <- G's moving average with a half-life of ema_kimg (at most rampup x the images seen)."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, (nimg + batch) * rampup)
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def forward_passes(G: torch.nn.Module, D: torch.nn.Module, compile: bool, device: torch.device):
    """The callables the loop runs G and D with: compiled (sharing the modules' parameters) when asked,
    and on a CPU, D in channels-last memory order, where its convolutions run faster (`just bench
    levers`); D's parameters stay the same objects and checkpoints are written contiguous."""
    G_run, D_run = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    if device.type == "cpu":
        D.to(memory_format=torch.channels_last)
        D_run = channels_last_inputs(D_run)
    return G_run, D_run


def channels_last_inputs(D_run):
    """D_run with its images passed in channels-last memory order (gradients flow through)."""
    def run(img: torch.Tensor, chunks: int = 1):
        return D_run(img.contiguous(memory_format=torch.channels_last), chunks=chunks)
    return run


def discriminate(D_run, real: torch.Tensor, fake: torch.Tensor, mixed: torch.Tensor, r1: bool):
    """D's (global, pixel) logits on reals, fakes and CutMix images: one pass over all three
    (minibatch statistics per chunk), or, on R1 steps, the reals alone in their own graph (R1
    differentiates it w.r.t. them). Returns (real_in, (r_g, r_p), (f_g, f_p), (m_g, m_p)); real_in is
    the reals' graph input on R1 steps, else None."""
    if r1:
        real_in = real.detach().requires_grad_(True)
        r_g, r_p = D_run(real_in)
        fm_g, fm_p = D_run(torch.cat([fake, mixed]), chunks=2)
        (f_g, m_g), (f_p, m_p) = fm_g.chunk(2), fm_p.chunk(2)
        return real_in, (r_g, r_p), (f_g, f_p), (m_g, m_p)
    rfm_g, rfm_p = D_run(torch.cat([real, fake, mixed]), chunks=3)
    (r_g, f_g, m_g), (r_p, f_p, m_p) = rfm_g.chunk(3), rfm_p.chunk(3)
    return None, (r_g, r_p), (f_g, f_p), (m_g, m_p)
