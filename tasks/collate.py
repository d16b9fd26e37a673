"""Collators by stage name, for the trainer and echo labelling: the registry (models/stages.py) says which.

The collate functions themselves live in models/collate.py (beside the models whose `forward` they
feed); they are re-exported here so `from tasks.collate import collate_s2t` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError, InputError
from models.collate import Batch, collate_echo, collate_s2t, collate_t2c  # noqa: F401 - re-exported
from models.stages import StageSpec, get_stage


def _spec(stage: str) -> StageSpec:
    """The registered stage; an unknown name is an InputError here (as the collators always raised)."""
    try:
        return get_stage(stage)
    except ConfigError as e:
        raise InputError(str(e)) from e


@dataclass(frozen=True)
class BoundCollator:
    """A stage's collate function with its model bound: rows → batch."""

    collate: Callable[[list[dict[str, Any]], Any], Batch]
    model: Any

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        """The batch of `rows` for the bound model."""
        return self.collate(rows, self.model)


def make_collator(stage: str, model: Any) -> Callable[[list[dict[str, Any]]], Batch]:
    """Collate function for `stage` bound to `model` (DDP wrappers are unwrapped)."""
    return BoundCollator(_spec(stage).collate, getattr(model, "module", model))


def example_length(row: dict[str, Any], stage: str) -> int:
    """Approximate tokens of a row, for length bucketing (the stage's `example_length`)."""
    return _spec(stage).example_length(row)
