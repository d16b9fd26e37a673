"""Strategy fsdp of the training recipe: FSDP2 (`torch.distributed.fsdp.fully_shard`) over the ranks, sharded
checkpoints through torch.distributed.checkpoint (DCP), and the gathered final model.

Sharding: one FSDP group per transformer block (every submodule whose class a transformers model inside
names in `_no_split_modules`: LlamaDecoderLayer, WhisperEncoderLayer; LoRA layers sit inside them), then
the root group for the rest (embeddings, heads, the speech adapter). FSDP2 shards each parameter on dim 0,
so frozen base weights and trained LoRA/adapter weights share a group; only the trained ones must share a
dtype (float32, tasks/train_utils.py: cast_for_training). On CUDA with bf16 the groups compute in bf16 and
reduce gradients in float32.

A sharded checkpoint is a `step-N/` folder under the same rules as a DDP one (tasks/checkpoint.py): made
under a temp name, `checkpoint.json` (layout "sharded", every file's sha256) written last by rank 0, renamed
into place, the newest that verifies resumed. DCP files under `sharded/` hold the trained weights and the
optimizer state (each rank writes its own shards; frozen weights are rebuilt by the factory, as for DDP);
`scheduler.pt` and `rng.pt` (every rank's RNG state) sit beside them. Every rank writes into out_dir, so on
a cluster out_dir must be a filesystem every node shares. Hashing and verifying the files is split across
the ranks.

The final model is gathered to rank 0 (on CPU, one parameter at a time), loaded into a plain model that
the stage's factory builds, and saved by the stage's saver: the same `model/` a DDP run writes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import CheckpointError, ConfigError
from tasks.checkpoint import (
    SHARDED_DIR,
    CheckpointState,
    checkpoint_dir,
    checkpoint_meta,
    fsync_file,
    list_checkpoints,
    load_safely,
    publish_checkpoint,
    verify_files,
)
from tasks.distributed import Process, all_gather, broadcast
from tasks.shards import file_sha256
from tasks.train_config import TrainConfig
from tasks.train_utils import cast_for_training, param_checksum

log = logging.getLogger(__name__)


# ---- sharding -------------------------------------------------------------------------------------------

def is_sharded(module: nn.Module) -> bool:
    """True for a module that fully_shard has wrapped."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def block_types(model: nn.Module) -> set[str]:
    """Class names of the blocks that the transformers models inside `model` never split."""
    from transformers import PreTrainedModel

    names: set[str] = set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            names |= set(m._no_split_modules or ())
    return names


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `model`, inner ones first (fully_shard goes bottom-up)."""
    names = block_types(model)
    return [m for m in reversed(list(model.modules())) if type(m).__name__ in names]


def shard_model(model: nn.Module, cfg: TrainConfig, proc: Process) -> nn.Module:
    """FSDP2 over every rank, in place: one group per transformer block, then the root; moves the shards to
    this rank's device (the model may still be on CPU)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if proc.world_size < 2:
        raise ConfigError("strategy fsdp shards across ranks: run it with 2 or more workers (ddp for one)")
    mesh = init_device_mesh(proc.device.type, (proc.world_size,))
    bf16 = cfg.bf16 and proc.device.type == "cuda"
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    blocks = shard_units(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    if proc.rank == 0:
        log.info("fsdp: %d transformer blocks + the root sharded over %d ranks", len(blocks), proc.world_size)
    return model


# ---- sharded checkpoints --------------------------------------------------------------------------------

def _trained_only(*, strict: bool = True) -> Any:
    """DCP state-dict options: trained parameters only (frozen ones come from the factory on resume)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def save_sharded(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 rng_states: list, extra: dict, proc: Process, *, keep: int | None = None) -> Path:
    """Checkpoint `step` from every rank: DCP shards of the trained weights and optimizer state into a temp
    folder rank 0 made, scheduler.pt and rng.pt from rank 0, sha256s hashed a share per rank; rank 0 then
    publishes it (checkpoint.json last, rename, prune)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(root)
    made = None
    if proc.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        made = tempfile.mkdtemp(prefix=f".tmp-{checkpoint_dir(root, step).name}-", dir=root)
    tmp = Path(broadcast(made, proc))
    try:
        model_state, optim_state = get_state_dict(model, optimizer, options=_trained_only())
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / SHARDED_DIR)
        if proc.rank == 0:
            for name, obj in (("scheduler.pt", scheduler.state_dict()), ("rng.pt", rng_states)):
                torch.save(obj, tmp / name)
                fsync_file(tmp / name)
        dist.barrier()
        files = hash_files(tmp, proc)
    except BaseException:
        if proc.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = checkpoint_dir(root, step)
    if proc.rank == 0:
        publish_checkpoint(tmp, root, step, files, extra, layout="sharded", keep=keep)
    dist.barrier()
    return final


def hash_files(folder: Path, proc: Process) -> dict[str, str]:
    """sha256 of every file under `folder` (relative name → hex), each rank hashing a share of them."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    mine = {name: file_sha256(folder / name) for name in names[proc.rank::proc.world_size]}
    return {k: v for part in all_gather(mine, proc) for k, v in part.items()}


def resume_sharded(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   proc: Process) -> CheckpointState | None:
    """Load the newest sharded checkpoint under `root` that verifies into the sharded model, optimizer and
    scheduler (the others are skipped with a one-line warning); None when none does. Its RNG state (every
    rank's) comes back in the CheckpointState, as load_checkpoint returns it."""
    found = [str(p) for p in reversed(list_checkpoints(root))] if proc.rank == 0 else None
    for path in map(Path, broadcast(found, proc)):
        verified = _verified(path, proc)
        if verified is not None:
            meta, scheduler_state, rng_states = verified
            _load_shards(path, model, optimizer)
            try:
                scheduler.load_state_dict(scheduler_state)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: scheduler.pt does not fit this run: {e}") from e
            return CheckpointState(path=path, step=meta["step"], rng_state=rng_states,
                                   extra=meta.get("extra", {}))
    return None


def _verified(path: Path, proc: Process) -> tuple[dict, Any, Any] | None:
    """(checkpoint.json, scheduler state, RNG states) when every rank's share of the files verifies and
    rank 0 loads the small files safely; else None (rank 0 logs why)."""
    small, error = None, None
    try:
        meta = checkpoint_meta(path)
        names = sorted(meta["files"])[proc.rank::proc.world_size]
        verify_files(path, {name: meta["files"][name] for name in names})
        if proc.rank == 0:
            small = (load_safely(path / "scheduler.pt"), load_safely(path / "rng.pt"))
    except CheckpointError as e:
        error = str(e)
    errors = [e for e in all_gather(error, proc) if e]
    if errors:
        if proc.rank == 0:
            log.warning("skipping checkpoint: %s", errors[0])
        return None
    small = broadcast(small, proc)
    return meta, small[0], small[1]


def _load_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the DCP shards into the sharded model and optimizer; CheckpointError (on every rank) if they
    do not fit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_trained_only())
    state = {"model": model_state, "optim": optim_state}
    try:
        dcp.load(state, checkpoint_id=path / SHARDED_DIR)  # every key of `state` must be in the checkpoint
        # Not strict: the frozen weights are the factory's, as a DDP resume keeps them.
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=_trained_only(strict=False))
    except Exception as e:  # DCP gathers every rank's failure into one CheckpointException on all ranks
        raise CheckpointError(f"{path} does not fit this model/optimizer: {str(e).splitlines()[0]}") from e


# ---- the final model ------------------------------------------------------------------------------------

def export_model(model: nn.Module, build: Callable[[], nn.Module], save_fn: Callable[[nn.Module, Path], Any],
                 out: Path, cfg: TrainConfig, proc: Process) -> str:
    """Gather the full state onto rank 0 (CPU), load it into a plain model from the factory, save that with
    the stage's saver into `out` (what a DDP run writes); every rank gets the saved model's checksum."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    checksum = None
    if proc.rank == 0:
        with torch.random.fork_rng(devices=[]):
            plain = cast_for_training(build(), cfg.frozen_dtype)  # the dtypes the trained model had
        plain.load_state_dict(full)  # strict: the gathered state covers every key
        del full
        save_fn(plain, out)
        checksum = param_checksum(plain)
    return str(broadcast(checksum, proc))
