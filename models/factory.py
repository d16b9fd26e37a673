"""Build any stage's trainable model from JSON-able arguments (what Ray workers and torchrun receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from core.errors import ConfigError
from models.presets import preset_from_dict
from models.stages import StageInputs, get_stage


def build_for_stage(
    stage: str,
    preset: dict[str, Any],
    llm_dir: str,
    *,
    num_units: int | None = None,
    s2t_checkpoint: str | None = None,
    t2c_checkpoint: str | None = None,
    init_checkpoint: str | None = None,
    unit_language: str | None = None,
    codebook: dict[str, Any] | None = None,
    encoder_init: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> nn.Module:
    """Fresh model of `stage` (models/stages.py), from the checkpoints it needs (echo: stage I and II).
    `unit_language` (a unit-BPE tokenizer JSON) makes a fresh T2C predict unit-words; `codebook` is the corpus
    codebook's identity (what the vocoder records); `encoder_init` an encoder-pretraining checkpoint (s2t);
    `dtype` what the base LLM's weights are loaded in."""
    from models.io import load_model

    spec = get_stage(stage)
    if init_checkpoint:
        return load_model(Path(init_checkpoint), expect_stage=stage)
    if "num_units" in spec.needs and not num_units:
        raise ConfigError(f"stage {stage} needs num_units (from the corpus manifest)")
    paths = {"s2t": s2t_checkpoint, "t2c": t2c_checkpoint}
    wanted = [name for name in paths if name in spec.needs]
    if not all(paths[name] for name in wanted):
        raise ConfigError(f"stage {stage} needs {' and '.join('--' + n for n in wanted)} checkpoints")
    loaded = {name: load_model(Path(str(paths[name])), expect_stage=name) for name in wanted}
    pretrained = load_model(Path(encoder_init), expect_stage="encoder") if encoder_init else None
    inputs = StageInputs(num_units=num_units, unit_language=unit_language, seed=seed, codebook=codebook,
                         encoder_init=pretrained, dtype=dtype, **loaded)
    return spec.build(preset_from_dict(preset), Path(llm_dir), inputs)
