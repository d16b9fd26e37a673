"""The per-rank training recipe of every stage: setup, loop, checkpoint, teardown, read top to bottom.

`train_loop(loop)` is what every launcher (tasks/launch.py: local, torchrun, Ray Train) runs on each rank.
`loop` is the loop config that `tasks.launch.loop_config` writes: the TrainConfig, the model factory
(`build`: a picklable callable, or in torchrun's JSON a "package.module:name" reference) and optional
overrides. What the loop does per stage (collate, example length, save) comes from the stage registry
(models/stages.py) by `TrainConfig.stage`; a loop config may override it with callables (tests do).

Each rank reads its own disjoint, length-bucketed batches from a memory-mapped corpus; DDP averages
gradients (strategy fsdp: FSDP2 shards the model across the ranks, tasks/fsdp.py). Rank 0 writes
`out_dir/metrics.jsonl` (and its TensorBoard events in `out_dir/tb/`), `out_dir/checkpoints/step-*` (fsdp:
every rank writes its shards), `out_dir/model/` and `out_dir/summary.json`; under Ray Train every rank also
reports metrics lines to `ray.train.report` (tasks/train_metrics.py). Resume continues the same data order
(derived from the step) and every rank's RNG state, so the resumed loss curve equals the uninterrupted one.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError, EchoxError
from models.stages import StageSpec, get_stage
from tasks.checkpoint import (
    capture_rng_state,
    checkpoint_dir,
    list_checkpoints,
    restore_rng_state,
)
from tasks.collate import BoundCollator
from tasks.corpus_paths import inject_fault
from tasks.data import echo_examples, load_corpus, verify_corpus, without_ids
from tasks.distributed import Process, all_gather, broadcast, init_distributed, local_world_size
from tasks.fsdp import is_sharded
from tasks.shards import write_json
from tasks.strategy import load_latest, save_final, save_step, wrap
from tasks.train_config import TrainConfig
from tasks.train_metrics import MetricsLog, ray_report
from tasks.train_utils import (
    EpochBatches,
    as_float,
    cast_for_training,
    enable_gradient_checkpointing,
    is_boundary,
    lr_factor,
    make_optimizer,
    scalars,
    seed_rank,
    trim_metrics,
)

log = logging.getLogger(__name__)

HOOK_NAMES = ("save_fn", "make_collator", "example_length")
"""Loop-config entries that override the stage's own (callables, or "package.module:name" in JSON)."""


@dataclass(frozen=True)
class Hooks:
    """The model-specific pieces the loop calls."""

    build: Callable[[], nn.Module]
    save_fn: Callable[[nn.Module, Path], Any]
    make_collator: Callable[[str, nn.Module], Callable[[list[dict]], dict[str, Any]]]
    example_length: Callable[[dict, str], int]
    holdout: Callable[[Iterable[str]], frozenset[str]] | None = None  # the stage's held-out ids, if any


@dataclass
class Progress:
    """Counters carried across steps and through checkpoints."""

    step: int = 0
    elapsed_s: float = 0.0  # time spent in training steps, summed over resumes
    tokens: int = 0  # target tokens seen, all ranks
    resumed_from: str | None = None
    last_metrics: dict = field(default_factory=dict)


# ---- what the loop calls: the stage's registry entry, or the loop config's overrides ----------------------

def resolve(spec: Callable | str) -> Callable:
    """A callable, or the object named by "package.module:name" (torchrun's JSON needs names)."""
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ConfigError(f"expected 'package.module:name', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {spec!r}: {e}") from e


def resolve_hooks(loop: dict, stage: str) -> Hooks:
    """The model factory, and `stage`'s collate, example length and save unless the loop overrides them."""
    build = resolve(loop["build"])
    if loop.get("build_kwargs"):
        build = functools.partial(build, **loop["build_kwargs"])
    spec: StageSpec = loop.get("stage_spec") or get_stage(stage)
    defaults = {"save_fn": spec.save or _save_model,
                "make_collator": functools.partial(_stage_collator, spec),
                "example_length": functools.partial(_stage_length, spec)}
    picked = {name: resolve(loop[name]) if loop.get(name) else default for name, default in defaults.items()}
    return Hooks(build=build, holdout=spec.holdout, **picked)


def _stage_collator(spec: StageSpec, stage: str, model: nn.Module) -> BoundCollator:
    """The stage's collate function bound to the (unwrapped) model."""
    return BoundCollator(spec.collate, getattr(model, "module", model))


def _stage_length(spec: StageSpec, row: dict, stage: str) -> int:
    """The stage's example length of a row."""
    return spec.example_length(row)


def _save_model(model: nn.Module, out_dir: Path) -> Path:
    """models.io.save_model: what load_model reads back."""
    from models.io import save_model

    return save_model(model, out_dir)


# ---- the recipe -----------------------------------------------------------------------------------------

def train_loop(loop: dict) -> None:
    """Train on this rank: the entry point of every launcher (Ray Train calls it with its config dict)."""
    missing = {"train", "build"} - set(loop)
    if missing:
        raise ConfigError(f"training loop config lacks {sorted(missing)}")
    cfg = loop["train"] if isinstance(loop["train"], TrainConfig) else TrainConfig.from_dict(loop["train"])
    hooks = resolve_hooks(loop, cfg.stage)
    raise_recorded_mistake(cfg)
    launcher = loop.get("launcher", "local")
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world_size()))
    proc = init_distributed(cfg, launcher)
    run: Run | None = None
    try:
        run, progress = setup(cfg, hooks, proc, launcher)
        while progress.step < cfg.max_steps:
            run.step(progress)
            if is_boundary(progress.step, cfg.ckpt_every, cfg):
                save(run, progress)
                inject_fault(Path(cfg.out_dir) / ".echox", f"train-rank{proc.rank}-step-{progress.step}")
        finish(run, progress, hooks)
    except EchoxError as e:
        record_mistake(cfg, e)
        raise
    finally:  # teardown
        if run is not None:
            run.metrics.close()
        if proc.owns_group:
            dist.destroy_process_group()


# ---- setup ----------------------------------------------------------------------------------------------

def setup(cfg: TrainConfig, hooks: Hooks, proc: Process, launcher: str = "local") -> tuple[Run, Progress]:
    """Build the model, data order, DDP wrapper (or FSDP sharding), optimizer and schedule; resume if asked;
    open the metrics log (Ray Train's ranks also report to Ray)."""
    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
    model = cast_for_training(hooks.build(), cfg.frozen_dtype)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.strategy == "ddp":
        model = model.to(proc.device)  # fsdp moves each rank's shards there itself
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"stage {cfg.stage}: the model has no trainable parameters")
    collate = hooks.make_collator(cfg.stage, model)
    examples, heldout = load_examples(cfg, proc, hooks.holdout)
    lengths = [hooks.example_length(examples.lazy_row(i), cfg.stage) for i in range(len(examples))]
    batches = EpochBatches(lengths, cfg, proc)
    ddp = wrap(model, cfg, proc)
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: FSDP's sharded ones
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, warmup=cfg.warmup_steps, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio))
    progress = start_or_resume(cfg, proc, model, optimizer, scheduler, batches.per_epoch)
    metrics = MetricsLog(Path(cfg.out_dir), rank=proc.rank, start_step=progress.step,
                         report=ray_report() if launcher == "ray" else None)
    run = Run(cfg, proc, model, ddp, params, optimizer, scheduler, collate, examples, batches, metrics,
              heldout)
    return run, progress


def load_examples(cfg: TrainConfig, proc: Process,
                  holdout: Callable[[Iterable[str]], frozenset[str]] | None = None) -> tuple[Any, int]:
    """The training examples and how many corpus rows the stage holds out (`holdout`: ids → held-out ids;
    corpus-only stages); rank 0 checks shard sha256s once and every rank hears the verdict."""
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
        return echo_examples(cfg.corpus_dir, cfg.labels_dir, verify=False), 0
    rows = load_corpus(cfg.corpus_dir, verify=False)
    if holdout is None:
        return rows, 0
    ids = holdout(rows.table.column("id").to_pylist())
    return without_ids(rows, ids), len(ids)

def start_or_resume(cfg: TrainConfig, proc: Process, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, per_epoch: int) -> Progress:
    """Load the newest verified checkpoint when resuming (else start clean) and set this rank's RNG."""
    ckpt_root = Path(cfg.out_dir) / "checkpoints"
    # A restarted attempt of this launch (Ray Train after a lost worker) resumes the checkpoints it wrote.
    attempt = broadcast(own_attempt(cfg) if proc.rank == 0 else None, proc)
    state = load_latest(cfg, proc, ckpt_root, model, optimizer, scheduler) if cfg.resume or attempt else None
    if proc.rank == 0:
        if state is not None and not cfg.resume:
            log.warning("restarted after a worker failure: resuming this launch's %s", state.path)
        record_launch(cfg)
    if state is None:
        if list_checkpoints(ckpt_root) and not cfg.resume:
            raise ConfigError(f"{cfg.out_dir} already holds checkpoints; resume, or use a new out_dir")
        seed_rank(cfg.seed, proc.rank, 0)
        progress = Progress()
    else:
        restore_or_reseed(state.rng_state, cfg, proc, state.step)
        extra = state.extra
        if extra.get("world_size") != proc.world_size or extra.get("batches_per_epoch") != per_epoch:
            log.warning("resuming with a different world size or batching: data order will differ")
        progress = Progress(state.step, extra.get("elapsed_s", 0.0), extra.get("tokens", 0), str(state.path))
        log.info("resumed from %s at step %d", state.path, state.step)
    if proc.rank == 0:
        progress.last_metrics = trim_metrics(Path(cfg.out_dir) / "metrics.jsonl", progress.step)
    return progress

# A launch (run_ray) that Ray Train restarts after a worker failure runs train_loop again with the same
# config: launch.json in out_dir tells the new attempt that the checkpoints there are its own.
LAUNCH_FILE = "launch.json"


def _launch_record(cfg: TrainConfig) -> dict:
    path = Path(cfg.out_dir) / LAUNCH_FILE
    try:
        record = json.loads(path.read_text()) if cfg.launch_id else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("launch_id") == cfg.launch_id else {}


def own_attempt(cfg: TrainConfig) -> bool:
    """Whether an earlier attempt of this same launch started in out_dir (its checkpoints may be resumed)."""
    return bool(_launch_record(cfg))


def record_launch(cfg: TrainConfig) -> None:
    """Mark out_dir as this launch's (rank 0, once the start or resume is decided)."""
    if cfg.launch_id and not own_attempt(cfg):
        write_json(Path(cfg.out_dir) / LAUNCH_FILE, {"launch_id": cfg.launch_id})


def record_mistake(cfg: TrainConfig, error: EchoxError) -> None:
    """Remember a user mistake of this launch, so a restarted attempt fails at once instead of retrying it."""
    if cfg.launch_id:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.out_dir) / LAUNCH_FILE, {"launch_id": cfg.launch_id, "error": str(error),
                                                     "kind": type(error).__name__})


def raise_recorded_mistake(cfg: TrainConfig) -> None:
    """Fail a restarted attempt with the user mistake an earlier attempt of this launch hit."""
    from core import errors

    record = _launch_record(cfg)
    if record.get("error"):
        kind = getattr(errors, str(record.get("kind")), None)
        known = isinstance(kind, type) and issubclass(kind, EchoxError)
        raise (kind if known else EchoxError)(record["error"])


def restore_or_reseed(rng_states: Any, cfg: TrainConfig, proc: Process, step: int) -> None:
    """Put back this rank's saved RNG state; with a different world size, reseed from (seed, rank, step)."""
    if isinstance(rng_states, list) and len(rng_states) == proc.world_size:
        restore_rng_state(rng_states[proc.rank])
    else:
        log.warning("checkpoint has no RNG state for %d ranks; reseeding", proc.world_size)
        seed_rank(cfg.seed, proc.rank, step)


# ---- loop -----------------------------------------------------------------------------------------------

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
    metrics: MetricsLog
    heldout: int = 0  # corpus rows the stage kept out of training
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
            self.log(progress, sums, lr, as_float(grad_norm))

    def forward_backward(self, indices: list[int], *, last: bool) -> dict:
        """Forward and backward one micro-batch; gradients are all-reduced only on the last micro-step."""
        batch = {k: v.to(self.proc.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in self.collate([self.examples[i] for i in indices]).items()}
        sync = last or not isinstance(self.ddp, nn.parallel.DistributedDataParallel)
        if is_sharded(self.ddp):  # FSDP keeps unsharded gradients until the last micro-step reduces them
            self.ddp.set_requires_gradient_sync(last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (
            self.cfg.bf16 and self.proc.device.type == "cuda") else nullcontext()
        with nullcontext() if sync else self.ddp.no_sync():
            with autocast:
                out = self.ddp(**batch)
            (out["loss"] / self.cfg.grad_accum).backward()
        return out

    def log(self, progress: Progress, sums: dict[str, float], lr: float, grad_norm: float) -> None:
        """Average loss parts over ranks, sum tokens, and write the metrics line (metrics.jsonl and
        TensorBoard on rank 0; to Ray Train from every rank when rank 0 says a report is due)."""
        names = sorted(sums)
        due = self.proc.rank == 0 and self.metrics.report_due(last=progress.step == self.cfg.max_steps)
        values = torch.tensor([sums[n] for n in names] + [self.window_tokens, float(due)],
                              dtype=torch.float64, device=self.proc.device)
        if self.proc.world_size > 1:
            dist.all_reduce(values)  # also hands rank 0's report decision to every rank
        tokens, report = int(values[-2].item()), bool(values[-1].item())
        means = {n: float(v) / self.proc.world_size for n, v in zip(names, values[:-2].tolist(), strict=True)}
        if not math.isfinite(means["loss"]):
            raise FloatingPointError(f"loss is {means['loss']} at step {progress.step}")
        now = time.perf_counter()
        progress.tokens += tokens
        row = {"step": progress.step, **means, "lr": lr, "grad_norm": grad_norm, "tokens": progress.tokens,
               "tokens_per_s": tokens / max(now - self.window_start, 1e-9), "elapsed_s": progress.elapsed_s,
               "epoch": progress.step * self.cfg.grad_accum / self.batches.per_epoch}
        self.window_start, self.window_tokens = now, 0
        progress.last_metrics = row
        self.metrics.write(row, report=report)
        if self.proc.rank == 0:
            log.info("step %d loss %.4f lr %.2e %.0f tok/s", progress.step, means["loss"], lr,
                     row["tokens_per_s"])


# ---- checkpoint -----------------------------------------------------------------------------------------

def save(run: Run, progress: Progress) -> None:
    """Checkpoint from rank 0 with every rank's RNG state; the other ranks wait for it (fsdp: every rank
    writes its shards)."""
    rng = all_gather(capture_rng_state(), run.proc)
    extra = {"elapsed_s": progress.elapsed_s, "tokens": progress.tokens,
             "world_size": run.proc.world_size, "batches_per_epoch": run.batches.per_epoch,
             "config": asdict(run.cfg)}
    save_step(run.cfg, run.proc, progress.step, run.model, run.optimizer, run.scheduler, rng, extra)


# ---- teardown -------------------------------------------------------------------------------------------

def finish(run: Run, progress: Progress, hooks: Hooks) -> None:
    """Rank 0 saves the final model and summary.json (with every rank's parameter checksum; fsdp: the
    checksum of the model gathered from the shards, which is what it saves)."""
    out = Path(run.cfg.out_dir)
    checksums = save_final(run.cfg, run.proc, run.model, hooks.build, hooks.save_fn, out / "model")
    if run.proc.rank == 0:
        last = progress.last_metrics
        write_json(out / "summary.json", {
            "stage": run.cfg.stage, "steps": progress.step, "world_size": run.proc.world_size,
            "strategy": run.cfg.strategy,
            "final_loss": last.get("loss"), "final_metrics": last, "tokens": progress.tokens,
            "elapsed_s": progress.elapsed_s, "model_dir": str(out / "model"),
            "checkpoint": str(checkpoint_dir(out / "checkpoints", progress.step)),
            "resumed_from": progress.resumed_from,
            "param_checksums": checksums, "examples": len(run.examples),
            "heldout_rows": run.heldout})
    if run.proc.world_size > 1:
        dist.barrier()
