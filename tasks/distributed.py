"""This process's place in a DDP job (rank, world size, device) and the collectives the trainer uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from core.errors import ConfigError
from tasks.train_config import TrainConfig


@dataclass(frozen=True)
class Process:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # True when this loop made the process group (torchrun) and must destroy it

def local_world_size() -> int:
    """Processes of this job on this machine (torchrun and Ray Train both set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

def init_distributed(cfg: TrainConfig, launcher: str) -> Process:
    """Join the process group (Ray Train has already made it; under torchrun make it from env://)."""
    device = pick_device(cfg.use_gpu, int(os.environ.get("LOCAL_RANK", "0")), launcher)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return Process(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return Process(0, 1, 0, device)

def pick_device(use_gpu: bool, local_rank: int, launcher: str) -> torch.device:
    """CPU, or this rank's GPU (Ray Train knows which one it assigned)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("use_gpu is set but CUDA is not available here")
    if launcher == "ray":
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device

def broadcast(obj: Any, proc: Process) -> Any:
    """Rank 0's `obj` on every rank."""
    if proc.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

def all_gather(obj: Any, proc: Process) -> list:
    """Every rank's `obj`, in rank order."""
    if proc.world_size == 1:
        return [obj]
    out: list = [None] * proc.world_size
    dist.all_gather_object(out, obj)
    return out
