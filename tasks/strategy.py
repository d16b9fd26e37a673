"""What `TrainConfig.strategy` changes in the training recipe (tasks/train_recipe.py): how the model is spread
over the ranks, how a checkpoint is written and read back, and how the final model is saved.

- ddp: a whole model per rank under DistributedDataParallel; rank 0 writes full checkpoints and the final
  model (tasks/checkpoint.py).
- fsdp: FSDP2 shards of the model per rank; every rank writes its shards of a checkpoint, and the final
  model is gathered onto rank 0 (tasks/fsdp.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError
from tasks.checkpoint import (
    CheckpointState,
    apply_checkpoint,
    check_layout,
    latest_loadable,
    read_checkpoint,
    save_checkpoint,
)
from tasks.distributed import Process, all_gather, broadcast
from tasks.fsdp import export_model, resume_sharded, save_sharded, shard_model
from tasks.train_config import TrainConfig
from tasks.train_utils import param_checksum, wrap_ddp


def wrap(model: nn.Module, cfg: TrainConfig, proc: Process) -> nn.Module:
    """The module the loop calls: DDP around the model, or the model sharded in place by FSDP."""
    return shard_model(model, cfg, proc) if cfg.strategy == "fsdp" else wrap_ddp(model, cfg, proc)


def load_latest(cfg: TrainConfig, proc: Process, ckpt_root: Path, model: nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any) -> CheckpointState | None:
    """The newest checkpoint that verifies and loads, applied to model, optimizer and scheduler (None when
    there is none); ConfigError when the folder holds another strategy's checkpoints."""
    error: ConfigError | None = None
    if proc.rank == 0:
        try:
            check_layout(ckpt_root, cfg.strategy)
        except ConfigError as e:
            error = e
    error = broadcast(error, proc)
    if error is not None:
        raise error
    if cfg.strategy == "fsdp":  # every rank reads its own shards
        return resume_sharded(ckpt_root, model, optimizer, scheduler, proc)
    # Rank 0 picks the newest checkpoint that verifies and loads safely (reading it once); the other ranks
    # read the one it picked, and every rank applies it after the broadcast, so all fail or none do.
    found = latest_loadable(ckpt_root) if proc.rank == 0 else None
    path = broadcast(found.path if found else None, proc)
    if path is None:
        return None
    return apply_checkpoint(found or read_checkpoint(path, verify=False), model, optimizer, scheduler)


def save_step(cfg: TrainConfig, proc: Process, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, rng_states: list, extra: dict) -> None:
    """Checkpoint `step` (ddp: from rank 0, the others wait; fsdp: every rank writes its shards)."""
    root = Path(cfg.out_dir) / "checkpoints"
    if cfg.strategy == "fsdp":
        save_sharded(root, step, model, optimizer, scheduler, rng_states, extra, proc,
                     keep=cfg.keep_checkpoints)
        return
    if proc.rank == 0:
        save_checkpoint(root, step, model, optimizer, scheduler, rng_states, extra, keep=cfg.keep_checkpoints)
    if proc.world_size > 1:
        dist.barrier()


def save_final(cfg: TrainConfig, proc: Process, model: nn.Module, build: Callable[[], nn.Module],
               save_fn: Callable[[nn.Module, Path], Any], out: Path) -> list[str]:
    """Save the final model into `out` with the stage's saver (rank 0); return the parameter checksums the
    summary records: every rank's (ddp: equal when the ranks stayed in sync), or the gathered model's
    (fsdp: each rank holds only shards)."""
    if cfg.strategy == "fsdp":
        return [export_model(model, build, save_fn, out, cfg, proc)]
    checksums = all_gather(param_checksum(model), proc)
    if proc.rank == 0:
        save_fn(model, out)
    return checksums
