"""Save and load every stage's model through one code path.

A checkpoint directory holds:
- `config.json`: format tag, stage, preset fields, the base LLM directory it was built from, stage extras
  (T2C/Echo: num_units, and the unit language's tokenizer JSON when it has one), and the list of
  *referenced* state-dict keys;
- `model.safetensors`: every weight except the referenced ones. Referenced weights are frozen weights
  that come unchanged from the base LLM directory or the preset's `encoder_path` (LoRA presets: the base
  LLM; T2C/Echo: the frozen text-embedding copy). Presets with `self_contained_checkpoints` (tiny)
  reference nothing, so their checkpoints load without the base directory;
- `llm/`: the LLM config and tokenizer (no weights), the skeleton that self-contained checkpoints load into.

Loading rebuilds the model with the same builder the trainer used (random skeleton when self-contained,
else from the base directory) and loads the saved weights, checking that together they cover every key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import CheckpointError
from models.build_info import BuildInfo
from models.presets import ModelPreset, preset_from_dict, preset_to_dict
from models.stages import get_stage, stage_names

FORMAT = "echox-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LLM_SUBDIR = "llm"


def _info(model: nn.Module) -> BuildInfo:
    """The model's BuildInfo (unwrapping DDP/FSDP-style `.module`)."""
    info = getattr(model, "build_info", None)
    if not isinstance(info, BuildInfo):
        raise CheckpointError(f"{type(model).__name__} was not made by an echox builder; cannot save it")
    return info


def save_model(model: nn.Module, out_dir: Path) -> Path:
    """Write `model` (of any registered stage) to `out_dir` atomically; returns out_dir."""
    from safetensors.torch import save_file

    model = getattr(model, "module", model)
    info = _info(model)
    # Clones: safetensors refuses tensors sharing storage (tied embeddings).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
             if k not in info.external}
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if info.llm_dir:  # stages without an LLM (the vocoder) have none to copy
            _save_llm_skeleton(Path(info.llm_dir), tmp / LLM_SUBDIR)
        config = {
            "format": FORMAT, "version": FORMAT_VERSION, "stage": info.stage,
            "preset": preset_to_dict(info.preset),
            "base_llm_dir": str(Path(info.llm_dir).resolve()) if info.llm_dir else "",
            "extra": info.extra, "external": sorted(info.external),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_llm_skeleton(llm_dir: Path, dest: Path) -> None:
    """Copy the LLM's config and tokenizer files (not its weights)."""
    dest.mkdir()
    for f in llm_dir.iterdir():
        weights = f.name.endswith((".safetensors", ".bin", ".pt", ".gguf"))
        if f.is_file() and not weights and f.name != "echox_base.json":
            shutil.copy2(f, dest / f.name)


def read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be an echox model of a known stage."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is not an echox model checkpoint (no {CONFIG_NAME} or {WEIGHTS_NAME})")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    if config.get("format") != FORMAT or config.get("stage") not in stage_names():
        raise CheckpointError(f"{path} is not an echox model checkpoint (format {config.get('format')!r})")
    if config.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {config.get('version')} is not supported")
    return config


def _build(
    stage: str, preset: ModelPreset, llm_dir: Path, extra: dict[str, Any], load_weights: bool
) -> nn.Module:
    """The stage's model built as training builds it (the stage registry knows how)."""
    return get_stage(stage).rebuild(preset, llm_dir, extra, load_weights)


def load_model(
    path: Path,
    *,
    base_llm_dir: Path | None = None,
    encoder_path: str | None = None,
    expect_stage: str | None = None,
) -> nn.Module:
    """Model saved by save_model; `base_llm_dir`/`encoder_path` relocate referenced weights."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config(path)
    stage = config["stage"]
    if expect_stage is not None and stage != expect_stage:
        raise CheckpointError(f"{path} holds a {stage} model, expected {expect_stage}")
    preset = preset_from_dict(config["preset"])
    if encoder_path is not None:
        preset = dataclasses.replace(preset, encoder_path=encoder_path)
    external = set(config.get("external", []))
    if external:
        llm_dir = Path(base_llm_dir or config["base_llm_dir"])
        if not (llm_dir / "config.json").is_file():
            raise CheckpointError(
                f"{path} references base LLM weights in {llm_dir}, which is missing; pass base_llm_dir="
            )
    else:
        llm_dir = path / LLM_SUBDIR
    model = _build(stage, preset, llm_dir, config.get("extra", {}), load_weights=bool(external))
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path / WEIGHTS_NAME} cannot be read: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - external)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model
