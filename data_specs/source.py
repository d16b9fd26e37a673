"""The QA source table: what a user brings (JSONL, Parquet or a `datasets` directory)."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("id", "question", "answer")
OPTIONAL_FIELDS = ("aliases", "voice")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("aliases", pa.list_(pa.string()), nullable=True),
        pa.field("voice", pa.string(), nullable=True),
    ],
    metadata={"schema": "echox.qa_source", "version": str(SCHEMA_VERSION)},
)
