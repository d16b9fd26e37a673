"""A registry of named backends (TTS engines, feature extractors, later recognisers and vocoders).

A backend is a small declaration: its name, an options model, `check` (driver preflight, cheap),
`create` (the working object, built once per worker) and `identity` (what manifests and cache keys
record). Registries hold declarations only, so filling them imports no torch, onnx or fairseq2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import ConfigError


class BackendOptions(BaseModel):
    """Base of every backend's options: frozen, strict, and hashable even with list or dict fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __hash__(self) -> int:
        # pydantic hashes field values, which fails on a list or dict; the JSON form never does.
        return hash((type(self).__qualname__, self.model_dump_json()))


O = TypeVar("O", bound=BackendOptions)
W = TypeVar("W", covariant=True)


class Backend(Protocol[O, W]):
    """What every backend declares; `W` is the working object `create` builds (an engine, an extractor)."""

    name: str
    options: type[O]
    # Backend option ← flat config field (e.g. "layer" ← "feature_layer"); the config stays flat for the CLI.
    flat_fields: ClassVar[Mapping[str, str]]

    def check(self, options: O) -> None:
        """Driver-side preflight: raise ConfigError/CheckpointError for what would fail in the workers."""
        ...

    def create(self, options: O, threads: int | None) -> W:
        """Build the working object (loads models); `threads` caps its compute threads."""
        ...

    def identity(self, options: O) -> Any:
        """JSON-able record of what decides the output (manifests, cache keys); stable across versions."""
        ...


@dataclass(frozen=True)
class Choice(Generic[O]):
    """A selected backend: registry name and options. Hashable, so it keys per-worker caches."""

    name: str
    options: O

    def as_dict(self) -> dict[str, Any]:
        """The tagged form {"name": ..., **options}."""
        return {"name": self.name, **self.options.model_dump()}


B = TypeVar("B", bound=Backend)


class Registry(Generic[B]):
    """Backends of one kind by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._backends: dict[str, B] = {}

    def register(self, backend: B) -> B:
        """Add a backend; a second one under the same name is a mistake, not an override."""
        if backend.name in self._backends:
            raise ValueError(f"a {self.kind} named {backend.name!r} is already registered")
        self._backends[backend.name] = backend
        return backend

    def unregister(self, name: str) -> None:
        """Remove a backend (tests register throw-away ones)."""
        self._backends.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._backends)

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def __iter__(self) -> Iterator[B]:
        return iter(self._backends.values())

    def unknown(self, name: object) -> str:
        """The message for a name nobody registered, naming the known ones."""
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._backends))}"

    def get(self, name: str) -> B:
        """The backend called `name`, or a ConfigError naming the known ones."""
        if name not in self._backends:
            raise ConfigError(self.unknown(name))
        return self._backends[name]

    def options(self, name: str, **values: Any) -> Any:
        """The options model of backend `name` from keyword values (ConfigError on a bad one)."""
        backend = self.get(name)
        try:
            return backend.options(**values)
        except ValidationError as e:
            raise ConfigError(f"bad options for the {name} {self.kind}: {e}") from e

    def choose(self, name: str, flat: object) -> Choice:
        """The Choice of backend `name`, its options read from `flat`'s fields (a flat config)."""
        backend = self.get(name)
        values = {opt: getattr(flat, field) for opt, field in backend.flat_fields.items()}
        return Choice(name, self.options(name, **values))

    def create(self, choice: Choice, threads: int | None = None) -> Any:
        """The working object of a Choice."""
        return self.get(choice.name).create(choice.options, threads)

    def identity(self, choice: Choice) -> Any:
        """The recorded identity of a Choice."""
        return self.get(choice.name).identity(choice.options)
