"""Distributed training as `torchrun` sets it up: every process trains on its share of the batch and
gradients are averaged with one all-reduce per network (NCCL on GPU, gloo on CPU). A single process
without `torchrun` is a world of one."""

from __future__ import annotations

import os
import random
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
