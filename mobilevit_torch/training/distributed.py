"""Process-group setup for ``torchrun`` (DDP) and the few collective helpers the loop needs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


def all_reduce_sum(tensor: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_same_weights(parameters: Iterable[Tensor], info: DistInfo) -> None:
    """Raise when the processes' parameters differ. DDP keeps them bitwise equal (one start, broadcast; the same
    averaged gradients; the same optimizer), so a difference means a rank trained on its own gradients, and rank
    0's checkpoint would not be the run's model. Compares two float64 sums per tensor, plain and weighted by
    position (so a change that moves no total still shows): two small all-reduces."""
    if not info.enabled:
        return
    sums = torch.stack([_checksum(p.detach()) for p in parameters])  # [tensors, 2]
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = int((low != high).any(1).sum())
    if differ:
        raise RuntimeError(
            f"the {info.world_size} training processes hold different weights ({differ} of {len(sums)} tensors): "
            "their gradients were not averaged"
        )


def _checksum(tensor: Tensor) -> Tensor:
    values = tensor.double().flatten()  # [n]
    position = torch.arange(1, values.numel() + 1, device=values.device, dtype=torch.float64)
    return torch.stack([values.sum(), (values * position).sum()])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. a stop signal that reached one process)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
