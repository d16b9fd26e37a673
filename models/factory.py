"""Build any stage's trainable model from JSON-able arguments (what Ray workers and torchrun receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from echox.errors import ConfigError
from models.presets import preset_from_dict


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
    seed: int = 0,
) -> nn.Module:
    """Fresh model of `stage`; echo starts from the stage-I and stage-II checkpoints. `unit_language`
    (a unit-BPE tokenizer JSON) makes a fresh T2C predict unit-words."""
    from models.io import load_model

    if init_checkpoint:
        return load_model(Path(init_checkpoint), expect_stage=stage)
    spec = preset_from_dict(preset)
    if stage == "s2t":
        from models.s2t import build_s2t

        return build_s2t(spec, Path(llm_dir), seed=seed)
    if stage == "t2c":
        from models.t2c import build_t2c

        if not num_units:
            raise ConfigError("stage t2c needs num_units (from the corpus manifest)")
        return build_t2c(spec, Path(llm_dir), num_units, unit_language=unit_language, seed=seed)
    if stage == "echo":
        from models.echo import build_echo

        if not (s2t_checkpoint and t2c_checkpoint):
            raise ConfigError("stage echo needs --s2t and --t2c checkpoints")
        s2t = load_model(Path(s2t_checkpoint), expect_stage="s2t")
        t2c = load_model(Path(t2c_checkpoint), expect_stage="t2c")
        return build_echo(s2t, t2c, seed=seed)
    raise ConfigError(f"unknown stage {stage!r}; expected s2t, t2c or echo")
