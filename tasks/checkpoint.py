"""Training checkpoints: atomic directories with a sha256 of every file, verified before use.

Layout of `root/step-000123/`: `model.safetensors` (the model state without frozen parameters: a resumed
run rebuilds those with the same factory, and a LoRA run's checkpoint stays small), `optimizer.pt`,
`scheduler.pt`, `rng.pt` (whatever RNG state the trainer passes; the trainer passes every rank's), and
`checkpoint.json` ({format, step, files: {name: sha256}, extra}), written last. The directory is built
under a temp name and renamed into place, so a crash leaves either a complete checkpoint or a `.tmp-*`
folder that the next save removes.

A sharded checkpoint (strategy fsdp, tasks/fsdp.py) follows the same rules with `sharded/` (DCP files that
every rank writes) in place of `model.safetensors` and `optimizer.pt`, and `"layout": "sharded"` in its
checkpoint.json; each strategy resumes only its own layout (`check_layout`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import CheckpointError, ConfigError
from tasks.shards import file_sha256, write_json

log = logging.getLogger(__name__)

FORMAT = 1
META = "checkpoint.json"
MODEL_FILE = "model.safetensors"
SHARDED_DIR = "sharded"
SHARDED_META = f"{SHARDED_DIR}/.metadata"
STEP_DIR = re.compile(r"^step-(\d+)$")
LAYOUT_OF = {"ddp": "full", "fsdp": "sharded"}
"""What each training strategy writes: "full" (model.safetensors, optimizer.pt: rank 0 holds it all) or
"sharded" (DCP files under sharded/, written by every rank: tasks/fsdp.py). checkpoint.json names it."""


@dataclass(frozen=True)
class CheckpointState:
    """What a loaded checkpoint hands back beside the weights and optimizer state it restored."""

    path: Path
    """The checkpoint directory."""
    step: int
    """Optimizer steps completed when it was saved."""
    rng_state: Any
    """The RNG state passed to save_checkpoint (the trainer's: one dict per rank)."""
    extra: dict
    """Trainer bookkeeping saved beside it (elapsed time, token count, world size, config)."""


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under `root`."""
    return Path(root) / f"step-{step:06d}"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or similar `.module`) wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, rng_state: Any, extra: dict, *, keep: int | None = None) -> Path:
    """Write checkpoint `step` atomically under `root`, keep the newest `keep` ones; return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_file(trained_state(unwrap(model)), str(tmp / MODEL_FILE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state, tmp / "rng.pt")
        for path in tmp.iterdir():
            fsync_file(path)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_checkpoint(tmp, root, step, files, extra, keep=keep)


def publish_checkpoint(tmp: Path, root: Path, step: int, files: dict[str, str], extra: dict, *,
                       layout: str = "full", keep: int | None = None) -> Path:
    """Write checkpoint.json (the files' sha256s; written last) into the filled temp folder `tmp`, rename
    it to step `step` under `root`, keep the newest `keep`; return its path (`tmp` is removed on failure)."""
    final = checkpoint_dir(root, step)
    meta = {"format": FORMAT, "step": step, "files": files, "extra": extra}
    if layout != "full":  # a full checkpoint's record stays what it always was
        meta["layout"] = layout
    try:
        write_json(tmp / META, meta)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(root, keep)
    return final


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict names of parameters that do not train (under every name they are shared by)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without frozen parameters, as CPU copies (safetensors refuses shared storage)."""
    frozen = frozen_keys(model)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if k not in frozen}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a trained_state dict; RuntimeError unless it covers every key that is not frozen."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - frozen_keys(model))
    if missing or unexpected:
        raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {sorted(unexpected)[:5]}")


def fsync_file(path: Path) -> None:
    """Flush a file to disk so the rename that publishes it cannot overtake its content."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` (a stale save of the same step) is moved aside first."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{dst.name}-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under `root` (verified or not), oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temp folders left by interrupted saves."""
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1, got {keep}")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in Path(root).glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> dict:
    """The checkpoint's metadata after checking every listed file's sha256; CheckpointError if off."""
    meta = checkpoint_meta(path)
    verify_files(Path(path), meta["files"])
    return meta


def checkpoint_meta(path: str | Path) -> dict:
    """checkpoint.json, checked to name a step and the files of a full or sharded model (their sha256s
    are not checked: verify_files does that); CheckpointError if not."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no {META} (incomplete or not a checkpoint)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from e
    files = meta.get("files") if isinstance(meta, dict) else None
    model = SHARDED_META if isinstance(meta, dict) and meta.get("layout") == "sharded" else MODEL_FILE
    if not isinstance(files, dict) or model not in files or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{meta_path} lacks step or the files list")
    return meta


def verify_files(path: Path, files: dict[str, str]) -> None:
    """CheckpointError naming the first of `files` (name → sha256, relative to `path`) that is missing or
    does not match."""
    for name, sha in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file_sha256(file) != sha:
            raise CheckpointError(f"{path}: {name} does not match its recorded sha256 (corrupt)")


def checkpoint_layout(path: str | Path) -> str | None:
    """"full" or "sharded" as checkpoint.json says (None when it cannot be read)."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return str(meta.get("layout", "full")) if isinstance(meta, dict) else None


def check_layout(root: str | Path, strategy: str) -> None:
    """ConfigError when `root` holds checkpoints another strategy wrote (DDP cannot resume a sharded
    checkpoint, nor FSDP a full one): one line naming the strategy to resume with."""
    wanted = LAYOUT_OF[strategy]
    for path in list_checkpoints(root):
        layout = checkpoint_layout(path)
        if layout is not None and layout != wanted:
            other = next(s for s, v in LAYOUT_OF.items() if v == layout)
            raise ConfigError(f"{path} is a {layout} checkpoint of strategy {other}: resume it with strategy "
                              f"{other}, or train strategy {strategy} into a new out_dir")


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under `root` that verifies; corrupt or partial ones are skipped (logged)."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        return path
    return None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's metadata and file contents, read (safely) but not yet applied to a model."""

    path: Path
    meta: dict
    weights: dict[str, torch.Tensor]
    optimizer: Any
    scheduler: Any
    rng_state: Any


def read_checkpoint(path: str | Path, *, verify: bool = True) -> LoadedCheckpoint:
    """Every file of a checkpoint, loaded without running code; CheckpointError naming a file that fails."""
    path = Path(path)
    meta = verify_checkpoint(path) if verify else _read_meta(path)
    if meta.get("layout", "full") != "full":
        raise CheckpointError(f"{path} is a sharded checkpoint (strategy fsdp): tasks/fsdp.py resumes it")
    optional = {name: load_safely(path / name) if (path / name).exists() else None
                for name in ("optimizer.pt", "scheduler.pt", "rng.pt")}
    return LoadedCheckpoint(path, meta, load_safely(path / MODEL_FILE), optional["optimizer.pt"],
                            optional["scheduler.pt"], optional["rng.pt"])


def latest_loadable(root: str | Path) -> LoadedCheckpoint | None:
    """The newest checkpoint under `root` that verifies and loads safely, read; the others are skipped
    with a one-line warning (a sha256 mismatch, a file torch refuses, a truncated file): None if none."""
    for path in reversed(list_checkpoints(root)):
        try:
            return read_checkpoint(path)
        except CheckpointError as e:  # its message names the checkpoint and the file
            log.warning("skipping checkpoint: %s", e)
    return None


def apply_checkpoint(ckpt: LoadedCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                     scheduler: Any | None = None) -> CheckpointState:
    """Put a read checkpoint into model (and optimizer/scheduler if given); CheckpointError if a misfit."""
    try:
        load_trained_state(unwrap(model), ckpt.weights)
        for target, state, name in ((optimizer, ckpt.optimizer, "optimizer.pt"),
                                    (scheduler, ckpt.scheduler, "scheduler.pt")):
            if target is not None:
                if state is None:
                    raise CheckpointError(f"{ckpt.path}: {name} is missing")
                target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path} does not fit this model/optimizer: {e}") from e
    return CheckpointState(path=ckpt.path, step=ckpt.meta["step"], rng_state=ckpt.rng_state,
                           extra=ckpt.meta.get("extra", {}))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, *, verify: bool = True) -> CheckpointState:
    """Restore model (and optimizer/scheduler if given); CheckpointError if the checkpoint is corrupt."""
    return apply_checkpoint(read_checkpoint(path, verify=verify), model, optimizer, scheduler)


def _read_meta(path: Path) -> dict:
    """checkpoint.json without checking the files' sha256 (the caller verified them)."""
    try:
        return json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / META} cannot be read: {e}") from e


def load_safely(path: Path) -> Any:
    """A checkpoint file's tensors and plain containers (never arbitrary pickles); CheckpointError naming
    the file when torch refuses it (weights_only) or it is corrupt, so resuming can skip to an older one."""
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, a truncated zip, a bad header...: whatever it is, unusable
        reason = _first_reason(e)
        raise CheckpointError(f"{path.parent}: {path.name} cannot be loaded safely ({reason})") from e


def _first_reason(error: BaseException) -> str:
    """A one-line reason from a load error (torch's weights_only refusal spans a dozen lines)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # The first line is torch's advice; the line that names the refused global comes after it.
        detail = next((ln for ln in lines[1:] if "GLOBAL" in ln or "global" in ln), lines[-1])
        detail = detail.removeprefix("WeightsUnpickler error:").split(" Please use")[0].strip()
        return f"{type(error).__name__}: refused by torch.load(weights_only=True): {detail}"[:400]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def capture_rng_state() -> dict:
    """This process's Python, numpy, torch (and CUDA) RNG states, in a weights_only-loadable form."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back RNG states captured by capture_rng_state."""
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
