"""What a checkpoint records to rebuild a model: every stage's builder stamps one on its model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.presets import ModelPreset


@dataclass(frozen=True)
class BuildInfo:
    """How a model was built: what a checkpoint must record to rebuild it."""

    stage: str
    preset: ModelPreset
    llm_dir: str
    external: frozenset[str] = frozenset()
    """State-dict keys loaded unchanged (and frozen) from llm_dir / encoder_path: not saved."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Stage-specific constructor arguments (T2C/Echo: num_units, optional unit_language JSON)."""
