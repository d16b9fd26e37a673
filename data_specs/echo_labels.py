"""The echo pseudo-label table: what the stage-I model echoes for each answer, and T2C units per segment."""

from __future__ import annotations

from itertools import pairwise

import pyarrow as pa

from data_specs._validate import check_schema
from echox.errors import IntegrityError

SCHEMA_VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("answer_token_ids", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "gold answer tokens (teacher-forced targets)"}),
        pa.field("echo_token_ids", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "Y′: LM-head argmax of the state predicting each answer token"}),
        pa.field("echo_text", pa.string(), nullable=False),
        pa.field("token_accuracy", pa.float32(), nullable=False, metadata={"doc": "mean(Y′ == gold)"}),
        pa.field("segment_starts", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "first answer-token position of each segment"}),
        pa.field("segment_ends", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "one past the last answer-token position"}),
        pa.field("segment_texts", pa.list_(pa.string()), nullable=False),
        pa.field("segment_units", pa.list_(pa.list_(pa.int32())), nullable=False,
                 metadata={"doc": "T2C units generated from each segment's echo text"}),
    ],
    metadata={"schema": "echox.echo_labels", "version": str(SCHEMA_VERSION)},
)


def validate(table: pa.Table) -> None:
    """Raise IntegrityError when the table breaks the echo-label contract."""
    check_schema(table, SCHEMA, "echo_labels")
    for row in table.select(["id", "echo_token_ids", "answer_token_ids", "segment_starts",
                             "segment_ends", "segment_units"]).to_pylist():
        n = len(row["echo_token_ids"])
        if n != len(row["answer_token_ids"]):
            raise IntegrityError(f"echo row {row['id']}: echo and gold answer lengths differ")
        bounds = list(zip(row["segment_starts"], row["segment_ends"], strict=False))
        if len(bounds) != len(row["segment_units"]) or not bounds:
            raise IntegrityError(f"echo row {row['id']}: segments and units do not match")
        if bounds[0][0] != 0 or bounds[-1][1] != n or any(s >= e for s, e in bounds):
            raise IntegrityError(f"echo row {row['id']}: segments must tile the answer")
        if any(a[1] != b[0] for a, b in pairwise(bounds)):
            raise IntegrityError(f"echo row {row['id']}: segments must be contiguous")
