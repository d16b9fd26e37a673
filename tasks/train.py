"""Distributed training loop for every stage, and its launchers (single process, torchrun, Ray Train).

`train_loop(loop_config)` is the per-rank loop; every launcher runs it unchanged:
- `run_local(config, build)`: one process, for debugging and tests.
- torchrun: write the loop config with `write_loop_json(path, config, build="pkg.mod:factory")` and run
  `torchrun --standalone --nproc_per_node 2 -m tasks.train --config path.json`
  (or `python -m tasks.train --config path.json` for one process).
- `run_ray(config, build)`: `ray.train.torch.TorchTrainer` with `config.workers` workers. Ray Train sets
  up the process group; run it from a driver (or a Ray task with num_cpus=0) so the workers get the CPUs.

Each rank reads its own disjoint, length-bucketed batches (tasks.data.rank_batches) from a memory-mapped
corpus; DDP averages gradients. Rank 0 writes `out_dir/metrics.jsonl`, `out_dir/checkpoints/step-*`,
`out_dir/model/` (through `save_fn`) and `out_dir/summary.json`. Resume continues the same data order
(derived from the step) and every rank's RNG state, so the resumed loss curve equals the uninterrupted one.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from echox.errors import ConfigError, EchoxError
from tasks.checkpoint import (
    apply_checkpoint,
    capture_rng_state,
    checkpoint_dir,
    latest_loadable,
    list_checkpoints,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tasks.data import echo_examples, load_corpus, rank_batches, verify_corpus
from tasks.shards import write_json, write_jsonl

log = logging.getLogger(__name__)

# Hooks are callables or "package.module:name" strings (torchrun configs are JSON); defaults resolve lazily.
DEFAULT_HOOKS = {"save_fn": "models.io:save_model", "make_collator": "tasks.collate:make_collator",
                 "example_length": "tasks.collate:example_length"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the model factory; picklable and JSON-able."""

    stage: str
    """Training stage, handed to the collator and example_length (e.g. "s2t", "t2c", "echo")."""
    corpus_dir: str
    """Corpus directory: Arrow shards, state.json and manifest.json."""
    out_dir: str
    """Run directory: metrics.jsonl, checkpoints/, model/, summary.json."""
    labels_dir: str | None = None
    """Echo-labels directory joined to the corpus by id (one example per segment); None: corpus rows."""
    max_steps: int = 100
    """Optimizer steps to train for (the cosine schedule spans them)."""
    batch_size: int = 8
    """Examples per rank per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (gradients sync across ranks only on the last)."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 10
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (biases, norms and 1-d parameters get none)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    clip_norm: float = 1.0
    """Gradient norm clip; 0 disables clipping (the norm is still logged)."""
    log_every: int = 10
    """Write a metrics line every this many steps (and at every checkpoint and the last step)."""
    ckpt_every: int = 100
    """Save a checkpoint every this many steps (and at the last step)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (newest first)."""
    seed: int = 0
    """Seed of model init, data order and every rank's RNG."""
    bucket_size: int = 256
    """Examples per length bucket of the sampler (rounded up to whole global batches)."""
    workers: int = 1
    """DDP processes that run_ray starts (torchrun's count comes from its own flags)."""
    use_gpu: bool = False
    """Train on CUDA (NCCL between ranks) instead of CPU (gloo)."""
    bf16: bool = True
    """bf16 autocast of the forward pass; applies on CUDA only."""
    resume: bool = False
    """Continue from the newest verified checkpoint in out_dir/checkpoints (if there is one)."""
    num_threads: int = 0
    """torch threads per process; 0: CPU cores divided by the processes on this machine."""
    find_unused_parameters: bool = False
    """Tell DDP that some trainable parameters get no gradient in a step (slower; only if needed)."""

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints",
                    "bucket_size", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.clip_norm < 0 or self.num_threads < 0:
            raise ConfigError("train config: lr must be > 0; warmup_steps, clip_norm, num_threads >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train config: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a plain dict (JSON), naming unknown fields."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"train config: unknown fields {sorted(unknown)}")
        if "adam_betas" in data:
            data = {**data, "adam_betas": tuple(data["adam_betas"])}
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"train config: {e}") from e


@dataclass(frozen=True)
class Hooks:
    """The model-specific pieces the loop calls."""

    build: Callable[[], nn.Module]
    save_fn: Callable[[nn.Module, Path], Any]
    make_collator: Callable[[str, nn.Module], Callable[[list[dict]], dict[str, Any]]]
    example_length: Callable[[dict, str], int]


@dataclass(frozen=True)
class Process:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # True when this loop made the process group (torchrun) and must destroy it


@dataclass
class Progress:
    """Counters carried across steps and through checkpoints."""

    step: int = 0
    elapsed_s: float = 0.0  # time spent in training steps, summed over resumes
    tokens: int = 0  # target tokens seen, all ranks
    resumed_from: str | None = None
    last_metrics: dict = field(default_factory=dict)


# ---- loop config (what every launcher hands to train_loop) -------------------------------------------

def loop_config(config: TrainConfig, build: Callable[[], nn.Module] | str, *, launcher: str = "local",
                build_kwargs: dict | None = None, **hooks: Callable | str | None) -> dict:
    """The dict train_loop takes: the config, the model factory, and optional hooks (save_fn, ...)."""
    unknown = set(hooks) - set(DEFAULT_HOOKS)
    if unknown:
        raise ConfigError(f"unknown training hooks {sorted(unknown)}; known: {sorted(DEFAULT_HOOKS)}")
    loop = {"train": asdict(config), "build": build, "build_kwargs": build_kwargs or {}, "launcher": launcher}
    loop.update({name: value for name, value in hooks.items() if value is not None})
    return loop


def write_loop_json(path: str | Path, config: TrainConfig, build: str, **kwargs: Any) -> Path:
    """Write a torchrun config: like loop_config, with hooks as "package.module:name" strings."""
    loop = loop_config(config, build, launcher="torchrun", **kwargs)
    bad = [k for k, v in loop.items() if callable(v)]
    if bad:
        raise ConfigError(f"torchrun configs are JSON: give {bad} as 'package.module:name' strings")
    write_json(Path(path), loop)
    return Path(path)


def resolve(spec: Callable | str) -> Callable:
    """A callable, or the object named by "package.module:name"."""
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ConfigError(f"expected 'package.module:name', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {spec!r}: {e}") from e


def resolve_hooks(loop: dict) -> Hooks:
    """Turn the loop config's hook entries into callables (defaults for the missing ones)."""
    build = resolve(loop["build"])
    if loop.get("build_kwargs"):
        build = functools.partial(build, **loop["build_kwargs"])
    picked = {name: resolve(loop.get(name) or default) for name, default in DEFAULT_HOOKS.items()}
    return Hooks(build=build, **picked)


# ---- the per-rank loop --------------------------------------------------------------------------------

def train_loop(loop: dict) -> None:
    """Train on this rank: the entry point of every launcher (Ray Train calls it with its config dict)."""
    missing = {"train", "build"} - set(loop)
    if missing:
        raise ConfigError(f"training loop config lacks {sorted(missing)}")
    cfg = loop["train"] if isinstance(loop["train"], TrainConfig) else TrainConfig.from_dict(loop["train"])
    hooks = resolve_hooks(loop)
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // _local_world_size()))
    proc = init_distributed(cfg, loop.get("launcher", "local"))
    try:
        _train(cfg, hooks, proc)
    finally:
        if proc.owns_group:
            dist.destroy_process_group()


def _local_world_size() -> int:
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


def _train(cfg: TrainConfig, hooks: Hooks, proc: Process) -> None:
    """Build everything, resume if asked, run the steps, save the model and summary."""
    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
    model = hooks.build().to(proc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"stage {cfg.stage}: the model has no trainable parameters")
    collate = hooks.make_collator(cfg.stage, model)
    examples = load_examples(cfg, proc)
    lengths = [hooks.example_length(examples.lazy_row(i), cfg.stage) for i in range(len(examples))]
    batches = EpochBatches(lengths, cfg, proc)
    ddp = wrap_ddp(model, cfg, proc)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, warmup=cfg.warmup_steps, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio))
    progress = start_or_resume(cfg, proc, model, optimizer, scheduler, batches.per_epoch)
    run = Run(cfg, proc, model, ddp, params, optimizer, scheduler, collate, examples, batches)
    while progress.step < cfg.max_steps:
        run.step(progress)
        if is_boundary(progress.step, cfg.ckpt_every, cfg):
            save(run, progress)
    finish(run, progress, hooks.save_fn)


def is_boundary(step: int, every: int, cfg: TrainConfig) -> bool:
    """True every `every` steps and at the last step."""
    return step % every == 0 or step == cfg.max_steps


def load_examples(cfg: TrainConfig, proc: Process) -> Any:
    """The training examples; rank 0 checks shard sha256s once and every rank hears the verdict."""
    dirs = [cfg.corpus_dir] + ([cfg.labels_dir] if cfg.labels_dir else [])
    error: EchoxError | None = None
    if proc.rank == 0:
        try:
            for d in dirs:
                verify_corpus(d)
        except EchoxError as e:
            error = e
    error = broadcast(error, proc)
    if error is not None:
        raise error
    if cfg.labels_dir:
        return echo_examples(cfg.corpus_dir, cfg.labels_dir, verify=False)
    return load_corpus(cfg.corpus_dir, verify=False)


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


def start_or_resume(cfg: TrainConfig, proc: Process, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, per_epoch: int) -> Progress:
    """Load the newest verified checkpoint when resuming (else start clean) and set this rank's RNG."""
    ckpt_root = Path(cfg.out_dir) / "checkpoints"
    # Rank 0 picks the newest checkpoint that verifies and loads safely (reading it once); the other ranks
    # read the one it picked, and every rank applies it after the broadcast, so all fail or none do.
    found = latest_loadable(ckpt_root) if cfg.resume and proc.rank == 0 else None
    path = broadcast(found.path if found else None, proc)
    if path is None:
        if list_checkpoints(ckpt_root) and not cfg.resume:
            raise ConfigError(f"{cfg.out_dir} already holds checkpoints; resume, or use a new out_dir")
        seed_rank(cfg.seed, proc.rank, 0)
        progress = Progress()
    else:
        state = apply_checkpoint(found or read_checkpoint(path, verify=False), model, optimizer, scheduler)
        restore_or_reseed(state.rng_state, cfg, proc, state.step)
        extra = state.extra
        if extra.get("world_size") != proc.world_size or extra.get("batches_per_epoch") != per_epoch:
            log.warning("resuming with a different world size or batching: data order will differ")
        progress = Progress(state.step, extra.get("elapsed_s", 0.0), extra.get("tokens", 0), str(path))
        log.info("resumed from %s at step %d", path, state.step)
    if proc.rank == 0:
        progress.last_metrics = trim_metrics(Path(cfg.out_dir) / "metrics.jsonl", progress.step)
    return progress


def restore_or_reseed(rng_states: Any, cfg: TrainConfig, proc: Process, step: int) -> None:
    """Put back this rank's saved RNG state; with a different world size, reseed from (seed, rank, step)."""
    if isinstance(rng_states, list) and len(rng_states) == proc.world_size:
        restore_rng_state(rng_states[proc.rank])
    else:
        log.warning("checkpoint has no RNG state for %d ranks; reseeding", proc.world_size)
        seed_rank(cfg.seed, proc.rank, step)


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


@dataclass
class Run:
    """The live objects of one rank's training run."""

    cfg: TrainConfig
    proc: Process
    model: nn.Module
    ddp: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    collate: Callable[[list[dict]], dict[str, Any]]
    examples: Any
    batches: EpochBatches
    window_start: float = field(default_factory=time.perf_counter)
    window_tokens: int = 0

    def step(self, progress: Progress) -> None:
        """One optimizer step over grad_accum micro-batches; logs on log steps."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            index = progress.step * cfg.grad_accum + micro
            out = self.forward_backward(self.batches(index), last=micro == cfg.grad_accum - 1)
            for name, value in scalars(out).items():
                sums[name] = sums.get(name, 0.0) + value / cfg.grad_accum
            self.window_tokens += int(out["num_tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_norm or math.inf)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        progress.step += 1
        progress.elapsed_s += time.perf_counter() - t0
        if is_boundary(progress.step, cfg.log_every, cfg) or is_boundary(progress.step, cfg.ckpt_every, cfg):
            # Also log at checkpoints, so the token count a checkpoint saves includes every step before it.
            self.log(progress, sums, lr, float(grad_norm))

    def forward_backward(self, indices: list[int], *, last: bool) -> dict:
        """Forward and backward one micro-batch; gradients are all-reduced only on the last micro-step."""
        batch = {k: v.to(self.proc.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in self.collate([self.examples[i] for i in indices]).items()}
        sync = last or not isinstance(self.ddp, nn.parallel.DistributedDataParallel)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (
            self.cfg.bf16 and self.proc.device.type == "cuda") else nullcontext()
        with nullcontext() if sync else self.ddp.no_sync():
            with autocast:
                out = self.ddp(**batch)
            (out["loss"] / self.cfg.grad_accum).backward()
        return out

    def log(self, progress: Progress, sums: dict[str, float], lr: float, grad_norm: float) -> None:
        """Average loss parts over ranks, sum tokens, and (rank 0) append a metrics line."""
        names = sorted(sums)
        values = torch.tensor([sums[n] for n in names] + [self.window_tokens], dtype=torch.float64,
                              device=self.proc.device)
        if self.proc.world_size > 1:
            dist.all_reduce(values)
        tokens = int(values[-1].item())
        means = {n: float(v) / self.proc.world_size for n, v in zip(names, values[:-1].tolist(), strict=True)}
        if not math.isfinite(means["loss"]):
            raise FloatingPointError(f"loss is {means['loss']} at step {progress.step}")
        now = time.perf_counter()
        progress.tokens += tokens
        row = {"step": progress.step, **means, "lr": lr, "grad_norm": grad_norm, "tokens": progress.tokens,
               "tokens_per_s": tokens / max(now - self.window_start, 1e-9), "elapsed_s": progress.elapsed_s,
               "epoch": progress.step * self.cfg.grad_accum / self.batches.per_epoch}
        self.window_start, self.window_tokens = now, 0
        progress.last_metrics = row
        if self.proc.rank == 0:
            with open(Path(self.cfg.out_dir) / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            log.info("step %d loss %.4f lr %.2e %.0f tok/s", progress.step, means["loss"], lr,
                     row["tokens_per_s"])


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


def save(run: Run, progress: Progress) -> None:
    """Checkpoint from rank 0 with every rank's RNG state; the other ranks wait for it."""
    rng = all_gather(capture_rng_state(), run.proc)
    if run.proc.rank == 0:
        extra = {"elapsed_s": progress.elapsed_s, "tokens": progress.tokens,
                 "world_size": run.proc.world_size, "batches_per_epoch": run.batches.per_epoch,
                 "config": asdict(run.cfg)}
        root = Path(run.cfg.out_dir) / "checkpoints"
        save_checkpoint(root, progress.step, run.model, run.optimizer, run.scheduler, rng, extra,
                        keep=run.cfg.keep_checkpoints)
    if run.proc.world_size > 1:
        dist.barrier()


def param_checksum(model: nn.Module) -> str:
    """sha256 of the trainable parameters' bytes: equal on every rank when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def finish(run: Run, progress: Progress, save_fn: Callable[[nn.Module, Path], Any]) -> None:
    """Rank 0 saves the final model and summary.json (with every rank's parameter checksum)."""
    checksums = all_gather(param_checksum(run.model), run.proc)
    if run.proc.rank == 0:
        out = Path(run.cfg.out_dir)
        save_fn(run.model, out / "model")
        last = progress.last_metrics
        write_json(out / "summary.json", {
            "stage": run.cfg.stage, "steps": progress.step, "world_size": run.proc.world_size,
            "final_loss": last.get("loss"), "final_metrics": last, "tokens": progress.tokens,
            "elapsed_s": progress.elapsed_s, "model_dir": str(out / "model"),
            "checkpoint": str(checkpoint_dir(out / "checkpoints", progress.step)),
            "resumed_from": progress.resumed_from,
            "param_checksums": checksums, "examples": len(run.examples)})
    if run.proc.world_size > 1:
        dist.barrier()


# ---- launchers ----------------------------------------------------------------------------------------

def absolute(config: TrainConfig) -> TrainConfig:
    """The config with absolute paths (Ray Train changes the workers' working directory)."""
    def fix(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return replace(config, corpus_dir=fix(config.corpus_dir), out_dir=fix(config.out_dir),
                   labels_dir=fix(config.labels_dir))


def read_summary(out_dir: str | Path) -> dict:
    """The summary.json a finished run wrote."""
    return json.loads((Path(out_dir) / "summary.json").read_text())


def run_local(config: TrainConfig, build: Callable[[], nn.Module] | str, **hooks: Any) -> dict:
    """Train in this process (one rank); return the summary."""
    config = absolute(config)
    train_loop(loop_config(config, build, launcher="local", **hooks))
    return read_summary(config.out_dir)


def _repo_pythonpath() -> str:
    """PYTHONPATH for Ray workers: this checkout's root first, so `tasks`, `models` (and tests) import."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def run_ray(config: TrainConfig, build: Callable[[], nn.Module] | str, *, ray_address: str | None = None,
            object_store_mb: int = 256, name: str = "train", **hooks: Any) -> dict:
    """Train with `config.workers` DDP workers under Ray Train's TorchTrainer; return the summary.

    Starts a local Ray (or joins `ray_address`) unless one is already running in this process.
    A failure on any worker is raised here: EchoxErrors as themselves, others as RuntimeError.
    """
    from echox import runtime

    runtime.configure()  # RAY_AUTH_MODE=disabled, no usage stats: must precede ray.init
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = absolute(config)
    started = not ray.is_initialized()
    if started:
        env = {"env_vars": {"PYTHONPATH": _repo_pythonpath()}}
        ray.init(address=ray_address, runtime_env=env, **_ray_init_kwargs(ray_address, object_store_mb))
    try:
        trainer = TorchTrainer(
            train_loop, train_loop_config=loop_config(config, build, launcher="ray", **hooks),
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu),
            run_config=RunConfig(storage_path=str(Path(config.out_dir) / "ray"), name=name,
                                 worker_runtime_env={"env_vars": {"PYTHONPATH": _repo_pythonpath()}}))
        _fit(trainer)
    finally:
        if started:
            ray.shutdown()
    return read_summary(config.out_dir)


def _ray_init_kwargs(address: str | None, object_store_mb: int) -> dict:
    """ray.init arguments: a bounded local Ray, or nothing extra when joining a cluster."""
    from echox import runtime

    return {} if address else runtime.ray_init_kwargs(None, object_store_mb=object_store_mb)


def _fit(trainer: Any) -> None:
    """trainer.fit(), turning a worker failure into the worker's own error (or a RuntimeError naming it)."""
    from ray.train import TrainingFailedError

    try:
        trainer.fit()
    except TrainingFailedError as e:
        failures = getattr(e, "worker_failures", None) or {}
        if not failures:
            raise RuntimeError(f"Ray training failed: {e}") from e
        rank = min(failures)
        cause = failures[rank]
        if isinstance(cause, EchoxError):
            raise cause from e
        raise RuntimeError(f"training failed on rank {rank}: {type(cause).__name__}: {cause}") from e


def run_torchrun_main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.train --config loop.json` (under torchrun: one process per rank)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON written by write_loop_json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank" + os.environ.get("RANK", "0")
                        + " %(levelname)s %(message)s")
    try:
        loop = json.loads(args.config.read_text())
        if not isinstance(loop, dict):
            raise ConfigError(f"{args.config} must hold a JSON object (see write_loop_json)")
        train_loop({**loop, "launcher": "torchrun"})
    except (EchoxError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_torchrun_main()
