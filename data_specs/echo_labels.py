"""The echo pseudo-label table: what the stage-I model echoes for each answer, and T2C units per segment.

One row per corpus row (joined on `id`). The `segment_*` columns are lists with one entry per segment;
`tasks.data.echo_examples` explodes them into one training example per segment, whose scalar
`segment_start` / `segment_end` / `segment_units` are what the echo collator reads. Segment bounds are
answer-token positions (end exclusive) into `echo_token_ids` (= positions of the gold answer tokens).
"""

from __future__ import annotations

from itertools import pairwise

import pyarrow as pa

from core.errors import IntegrityError
from data_specs._validate import check_schema

SCHEMA_VERSION = 2  # 2: segment columns renamed to the singular names the echo collator reads

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("answer_token_ids", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "gold answer tokens (teacher-forced targets)"}),
        pa.field("echo_token_ids", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "Y′: LM-head argmax of the state predicting each answer token"}),
        pa.field("echo_text", pa.string(), nullable=False),
        pa.field("token_accuracy", pa.float32(), nullable=False, metadata={"doc": "mean(Y′ == gold)"}),
        pa.field("segment_start", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "first answer-token position of each segment"}),
        pa.field("segment_end", pa.list_(pa.int32()), nullable=False,
                 metadata={"doc": "one past the last answer-token position of each segment"}),
        pa.field("segment_text", pa.list_(pa.string()), nullable=False,
                 metadata={"doc": "decoded Y′ of each segment"}),
        pa.field("segment_units", pa.list_(pa.list_(pa.int32())), nullable=False,
                 metadata={"doc": "units the frozen T2C generated from each segment's Y′ tokens"}),
    ],
    metadata={"schema": "echox.echo_labels", "version": str(SCHEMA_VERSION)},
)


def validate(table: pa.Table) -> None:
    """Raise IntegrityError when the table breaks the echo-label contract."""
    check_schema(table, SCHEMA, "echo_labels")
    cols = ["id", "echo_token_ids", "answer_token_ids", "segment_start", "segment_end", "segment_text",
            "segment_units"]
    for row in table.select(cols).to_pylist():
        _check_row(row)


def _check_row(row: dict) -> None:
    """One row's lengths and segment tiling."""
    n = len(row["echo_token_ids"])
    if n == 0 or n != len(row["answer_token_ids"]):
        raise IntegrityError(f"echo row {row['id']}: echo and gold answer lengths differ or are empty")
    bounds = list(zip(row["segment_start"], row["segment_end"], strict=False))
    counts = {len(row[c]) for c in ("segment_start", "segment_end", "segment_text", "segment_units")}
    if len(counts) != 1 or not bounds:
        raise IntegrityError(f"echo row {row['id']}: segment columns must have one entry per segment")
    if bounds[0][0] != 0 or bounds[-1][1] != n or any(s >= e for s, e in bounds):
        raise IntegrityError(f"echo row {row['id']}: segments must tile the answer")
    if any(a[1] != b[0] for a, b in pairwise(bounds)):
        raise IntegrityError(f"echo row {row['id']}: segments must be contiguous")
