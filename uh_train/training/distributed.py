"""Distributed training as `torchrun` sets it up: every process trains on its share of the batch and
gradients are averaged with one all-reduce per network (NCCL on GPU, gloo on CPU). A single process
without `torchrun` is a world of one. A stop signal (`StopSignals`) ends every process at the same
step."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from uh_train.format import cli_args
from uh_train.training.monitor import console


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


def start_process(device_name: str, seed: int) -> tuple[torch.device, Dist]:
    """This process's device and place in the group (`auto`: CUDA when there is one); seeds torch,
    numpy and random with seed + rank."""
    device = torch.device(cli_args.resolve_device(device_name, torch))
    d = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(seed + d.rank)
    np.random.seed(seed + d.rank)
    random.seed(seed + d.rank)
    return device, d


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


def finish(G: torch.nn.Module, d: Dist) -> None:
    """End of training: check the processes agree, then leave the group."""
    if d.world == 1:
        return
    import torch.distributed as dist

    check_in_sync(G, d)
    dist.barrier()
    dist.destroy_process_group()


# Signals that ask a run to stop after its current step with a checkpoint: SIGTERM (a scheduler's or
# torchrun's stop, SLURM's at the time limit), SIGUSR1 (SLURM's warning, `sbatch --signal=USR1@120`)
# and SIGINT (Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """Records the first stop signal instead of dying of it; the loop asks `agreed` at each step.
    Later stop signals are ignored (SLURM and torchrun may both deliver one); SIGKILL still stops at
    once. Installed only in the main thread (elsewhere Python cannot install handlers)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame) -> None:  # no printing here: the handler may interrupt a print
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, d: Dist, device: torch.device) -> signal.Signals | None:
        """The stop signal any process has received (the same answer on every process: they stop at
        the same step), or None."""
        if d.world == 1:
            return self.received
        import torch.distributed as dist

        flag = torch.tensor([int(self.received or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return signal.Signals(int(flag.item())) if int(flag.item()) else None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Stop signals recorded while the block runs; the previous handlers afterwards."""
    stop = StopSignals()
    stop.install()
    try:
        yield stop
    finally:
        stop.uninstall()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers (`worker_init_fn`): a stop signal sent to every process of a job (SLURM
    signals all of a step's processes) must not kill the data readers of a run that is finishing its
    step; they end with the run."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
