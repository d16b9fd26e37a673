"""Read a QA source (JSONL, Parquet, or a `datasets` directory) into valid records and rejects."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.errors import InputError, RecordRejected
from data_specs.rejects import Reject
from data_specs.source import OPTIONAL_FIELDS, REQUIRED_FIELDS


class _HasId(Protocol):
    id: str


R = TypeVar("R", bound=_HasId)


@dataclass(frozen=True)
class SourceRecord:
    """One valid QA record, before text normalisation."""

    line: int
    id: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    voice: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_str(rec: dict, name: str) -> str:
    value = rec[name]
    allowed = str | int if name == "id" else str  # integer ids are common; integer text is a mistake
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise RecordRejected(f"field {name!r} must be a string, got {type(value).__name__}")
    return str(value)


def _check_aliases(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise RecordRejected("field 'aliases' must be a list of strings")
    return tuple(value)


def parse_record(rec: Any, line: int) -> SourceRecord:
    """Validate one decoded record; raise RecordRejected with the reason."""
    if not isinstance(rec, dict):
        raise RecordRejected(f"record must be a JSON object, got {type(rec).__name__}")
    missing = [f for f in REQUIRED_FIELDS if rec.get(f) is None]
    if missing:
        raise RecordRejected("missing field " + ", ".join(repr(m) for m in missing))
    rid, question, answer = (_check_str(rec, f) for f in REQUIRED_FIELDS)
    if not rid.strip():
        raise RecordRejected("field 'id' is empty")
    voice = rec.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise RecordRejected(f"field 'voice' must be a string, got {type(voice).__name__}")
    extra = {k: v for k, v in rec.items() if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    return SourceRecord(line, rid, question, answer, _check_aliases(rec.get("aliases")), voice, extra)


class _NotUtf8(RecordRejected):
    """A line that cannot be decoded; carries the id when one could still be read."""

    def __init__(self, reason: str, rid: str | None) -> None:
        super().__init__(reason)
        self.id = rid


def _best_effort_id(raw: bytes) -> str | None:
    """The id of an undecodable line, read with replacement characters, for the reject record."""
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return str(obj["id"]) if isinstance(obj, dict) and obj.get("id") is not None else None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, decoded object or RecordRejected) for every non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:  # a UTF-8 byte-order mark (Windows editors write one) is not part of the JSON
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, _NotUtf8(f"line is not valid UTF-8 ({e.reason} at byte {e.start})",
                                  _best_effort_id(raw))
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, RecordRejected(f"malformed JSON: {e.msg} (column {e.colno})")


def _table_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (row number, dict) from a Parquet file or a datasets directory."""
    if path.is_dir():
        import datasets

        try:
            table = datasets.load_from_disk(str(path))
        except Exception as e:  # any load failure is a user-facing input problem
            raise InputError(f"{path} is not a readable datasets directory: {e}") from e
        if isinstance(table, datasets.DatasetDict):
            raise InputError(f"{path} holds several splits ({list(table)}); point at one split")
        rows: Iterator[dict] = iter(table)
    else:
        import pyarrow.parquet as pq

        try:
            rows = iter(pq.read_table(path).to_pylist())
        except Exception as e:
            raise InputError(f"{path} is not a readable Parquet file: {e}") from e
    yield from enumerate(rows, start=1)


def iter_source(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line/row number, object or RecordRejected) from any supported source."""
    if not path.exists():
        raise InputError(f"source not found: {path}")
    if path.is_dir() or path.suffix in (".parquet", ".pq"):
        return _table_rows(path)
    return _jsonl_rows(path)


def read_records(
    path: Path, parse: Callable[[Any, int], R], stage: str = "source"
) -> tuple[list[R], list[Reject]]:
    """Parse each record with `parse(obj, line)`; bad records and repeated ids become rejects."""
    records: list[R] = []
    rejects: list[Reject] = []
    first_seen: dict[str, int] = {}
    for line, obj in iter_source(path):
        rid = obj.get("id") if isinstance(obj, dict) else getattr(obj, "id", None)
        rid = None if rid is None else str(rid)
        try:
            if isinstance(obj, RecordRejected):
                raise obj
            rec = parse(obj, line)
            if rec.id in first_seen:
                raise RecordRejected(f"duplicate id {rec.id!r} (first seen on line {first_seen[rec.id]})")
        except RecordRejected as e:
            rejects.append(Reject(line=line, id=rid, reason=e.reason, stage=stage))
            continue
        first_seen[rec.id] = line
        records.append(rec)
    return records, rejects


def read_source(path: Path) -> tuple[list[SourceRecord], list[Reject]]:
    """Read and validate every QA record; duplicates of an earlier id are rejected."""
    return read_records(path, parse_record)
