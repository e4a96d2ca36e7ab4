"""A run's folder: training states and generator snapshots, `latest.json` (what a resume and stage 2
start from), `run.json` (the settings and what was changed on resume), `log.jsonl` and sample grids.
A resumed run must train what its checkpoint trained: its settings are checked before any work."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uh_train.data import StreamState
from uh_train.format.atomic import atomic_path, atomic_write_text
from uh_train.format.locks import run_lock
from uh_train.train_state import load_state, save_state
from uh_train.training.config import TrainConfig, config_changes
from uh_train.training.monitor import console


@dataclass
class Progress:
    step: int = 0
    nimg: int = 0
    bad_steps: int = 0
    data: StreamState = field(default_factory=StreamState)
    aug_p: float = 0.0  # ADA's probability (--aug ada)


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
        "progress": {"step": prog.step, "nimg": prog.nimg, "bad_steps": prog.bad_steps, "aug_p": prog.aug_p,
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
    """The training state latest.json names, or None without one; ValueError (one line) when it is
    not the object the trainer writes."""
    from uh_train.checkpoint import read_latest

    info = read_latest(out)
    return None if info is None else out / info["state"]


@contextlib.contextmanager
def held(out: str | os.PathLike) -> Iterator[None]:
    """One run per --out: OUT/.lock is held while the block runs, and a second run stops at once
    (`uh_train.format.locks.Busy`, naming the first). The holder first removes the `.*.tmp` files a
    run killed mid-write left (atomic writes: never read, never finished). Under torchrun the
    process of rank 0 holds it for all."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with run_lock(out, "uh-train"):
        for stale in Path(out).glob(".*.tmp"):
            stale.unlink()
        yield


@dataclass
class Resume:
    """The checkpoint a run resumes from (`path` None: a new run) and its settings' changes."""

    path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, list[Any]] = field(default_factory=dict)


def check_resume(out: Path, cfg: TrainConfig) -> Resume:
    """The run's checkpoint, if OUT holds one; refuses other settings unless --allow-config-change."""
    path = find_resume(out)
    if path is None:
        return Resume()
    state = load_state(path)
    try:
        saved = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} has no readable run configuration; use another --out") from None
    changes = config_changes(saved, cfg)
    if changes and not cfg.allow_config_change:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ValueError(f"{out} holds a run with other settings ({listed}); resume it with its own settings, "
                         f"choose another --out, or pass --allow-config-change to continue with the new ones "
                         f"(recorded in run.json)")
    return Resume(path, state, changes)


def restore(resume: Resume, G, G_ema, D, opt_G, opt_D, gen: torch.Generator, main: bool = True) -> Progress:
    """Networks, optimisers, random state and progress as the checkpoint saved them."""
    state = resume.state
    G.load_state_dict(state["G"])
    G_ema.load_state_dict(state["G_ema"])
    D.load_state_dict(state["D"])
    opt_G.load_state_dict(state["opt_G"])
    opt_D.load_state_dict(state["opt_D"])
    gen.set_state(state["rng"]["torch"])
    torch.set_rng_state(state["rng"]["cpu"])
    p = state["progress"]
    prog = Progress(p["step"], p["nimg"], p["bad_steps"],
                    StreamState(consumed=dict(p["data"]["consumed"]), batches=dict(p["data"]["batches"])),
                    float(p.get("aug_p", 0.0)))
    if main:
        console.print(f"resuming from {resume.path.name} (step {prog.step}, {prog.nimg / 1000:.3f} kimg)")
        if resume.changes:
            console.print("[yellow]note:[/yellow] settings changed on resume: " +
                          ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in resume.changes.items()))
    return prog


def last_good_network(out: Path) -> str:
    """The generator snapshot a resumed run last wrote (the divergence watch's way back)."""
    from uh_train.checkpoint import read_latest

    return read_latest(out)["network"]


def truncate_log(path: Path, step: int) -> None:
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


def previous_changes(path: Path) -> list[Any]:
    try:
        changes = json.loads(path.read_text()).get("config_changes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return changes if isinstance(changes, list) else []


def check_shards(folders) -> None:
    """Every --shards folder holds shards (*.tar); else one line naming the `mst` command that makes them."""
    for folder in folders:
        if not any(Path(folder).glob("*.tar")):
            raise FileNotFoundError(f"{folder} holds no shards (no *.tar); make them first, e.g. "
                                    f"`mst align IMAGES/ --out {folder}` or `mst synthetic --out {folder}`")


def write_run_info(out: Path, cfg: TrainConfig, resume: Resume, step: int, **notes: Any) -> None:
    """OUT/run.json: the settings, how the run started, and every change of settings on resume."""
    info = {"config": asdict(cfg), **notes,
            "config_changes": previous_changes(out / "run.json") if resume.path is not None else []}
    if resume.changes:
        info["config_changes"].append({"step": step, "changes": resume.changes})
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


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


def sample_grid_path(out: Path, nimg: int) -> Path:
    return out / f"samples-{nimg // 1000:06d}k-{nimg % 1000:03d}.png"
