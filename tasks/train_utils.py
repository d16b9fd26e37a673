"""The training recipe's parts: data order, optimizer and schedule, seeding, metrics, parameter checksums."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from tasks.data import rank_batches
from tasks.distributed import Process
from tasks.shards import write_jsonl
from tasks.train_config import TrainConfig


def is_boundary(step: int, every: int, cfg: TrainConfig) -> bool:
    """True every `every` steps and at the last step."""
    return step % every == 0 or step == cfg.max_steps

class EpochBatches:
    """This rank's batch for a global micro-batch number: epoch and position are derived from it."""

    def __init__(self, lengths: Sequence[int], cfg: TrainConfig, proc: Process) -> None:
        self.kwargs = {"batch_size": cfg.batch_size, "rank": proc.rank, "world_size": proc.world_size,
                       "seed": cfg.seed, "bucket_size": cfg.bucket_size}
        self.lengths = lengths
        self.cached: tuple[int, list[list[int]]] = (0, rank_batches(lengths, epoch=0, **self.kwargs))
        self.per_epoch = len(self.cached[1])

    def __call__(self, index: int) -> list[int]:
        epoch, i = divmod(index, self.per_epoch)
        if self.cached[0] != epoch:
            self.cached = (epoch, rank_batches(self.lengths, epoch=epoch, **self.kwargs))
        return self.cached[1][i]

def wrap_ddp(model: nn.Module, cfg: TrainConfig, proc: Process) -> nn.Module:
    """DDP around the model when there is more than one rank."""
    if proc.world_size == 1:
        return model
    ids = [proc.device.index] if proc.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=cfg.find_unused_parameters)

def cast_for_training(model: nn.Module, frozen_dtype: str) -> nn.Module:
    """Frozen floating-point weights in `frozen_dtype`, trained ones in float32 (AdamW's master weights): a
    builder may load everything in bf16, and LoRA, the adapter or a fully trained LLM must not train so."""
    frozen = getattr(torch, frozen_dtype)
    for p in model.parameters():
        if p.is_floating_point():
            wanted = torch.float32 if p.requires_grad else frozen
            if p.dtype != wanted:
                p.data = p.data.to(wanted)
    return model

def enable_gradient_checkpointing(model: nn.Module) -> int:
    """HF gradient checkpointing (non-reentrant) on every transformers model inside `model` (the LLM, a
    Whisper encoder, the T2C decoder); returns how many; ConfigError when the model has none."""
    from transformers import PreTrainedModel

    found = [m for m in model.modules()
             if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
    if not found:
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} holds no transformers model that "
                          "supports it")
    for m in found:
        if not m.is_gradient_checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return len(found)

def as_float(value: torch.Tensor | float) -> float:
    """A scalar as a float; an FSDP grad norm is a DTensor, whose full value every rank computes."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)

def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases, norms and other 1-d parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.adam_betas)

def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

def seed_rank(seed: int, rank: int, step: int) -> None:
    """Seed Python, numpy and torch for this rank (distinct per rank, so dropout masks differ)."""
    value = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)

def trim_metrics(path: Path, step: int) -> dict:
    """Drop metrics lines past `step` (logged after the checkpoint we resume from); return the last kept."""
    kept: list[dict] = []
    if step and path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash we are resuming from
            if row.get("step", math.inf) <= step:
                kept.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, kept)
    return kept[-1] if kept else {}

def scalars(out: dict) -> dict[str, float]:
    """The loss and its scalar components from a model's output dict (num_tokens excluded)."""
    if "loss" not in out or "num_tokens" not in out:
        raise ConfigError(f"model forward must return 'loss' and 'num_tokens', got {sorted(out)}")
    found = {}
    for name, value in out.items():
        if name == "num_tokens":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[name] = float(value.detach())
        elif isinstance(value, int | float):
            found[name] = float(value)
    return found

def param_checksum(model: nn.Module) -> str:
    """sha256 of the trainable parameters' bytes: equal on every rank when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
