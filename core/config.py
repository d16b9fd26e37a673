"""The configs' common ground: a strict frozen base model, YAML reading, and errors that name the field.

The step configs built on it live with the layer whose registries they validate against
(tasks/configs.py; the pipeline's in flows/pipeline_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import ConfigError


class Frozen(BaseModel):
    """Base for every config: immutable and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path_fields: ClassVar[tuple[str, ...]] = ()
    """The fields that name local files or folders (made absolute by `absolute`)."""

    def absolute(self) -> Self:
        """This config with its path fields absolute, resolved against this process's directory: what a
        driver hands its workers, which (on a cluster, other machines) do not share its directory."""
        paths = {name: str(Path(value).resolve()) for name in self.path_fields
                 if isinstance(value := getattr(self, name), str) and value}
        return self.model_copy(update=paths)


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem, naming the field."""
    lines = [f"{where}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping, with clear errors for a missing or malformed file."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of fields, got {type(data).__name__}")
    return data


def build(model: type[Frozen], data: dict, where: str) -> Frozen:
    """Validate `data` into `model`, turning pydantic errors into a ConfigError naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from e
