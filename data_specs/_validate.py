"""Shared strict schema check used by every table module."""

from __future__ import annotations

import pyarrow as pa

from core.errors import IntegrityError


def check_schema(table: pa.Table, schema: pa.Schema, name: str) -> None:
    """Raise IntegrityError naming each missing/mistyped column or unexpected null."""
    problems: list[str] = []
    for field in schema:
        if field.name not in table.column_names:
            problems.append(f"missing column {field.name!r}")
            continue
        col = table.schema.field(field.name)
        if not col.type.equals(field.type):
            problems.append(f"column {field.name!r} has type {col.type}, expected {field.type}")
        if not field.nullable and table.column(field.name).null_count:
            problems.append(f"column {field.name!r} has nulls")
    if problems:
        raise IntegrityError(f"{name} table does not match its schema: " + "; ".join(problems))
