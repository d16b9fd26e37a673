"""The spoken-QA evaluation report: one row per answered question, plus the JSON report around it.

The report (`echox evaluate --out REPORT.json`) is a JSON object: run parameters, `summary`
(overall accuracy, mean latencies, unit metrics), `by_category`, `items` (rows of ITEM_SCHEMA) and
`rejects` (data_specs.rejects.Reject dicts). `validate_report` checks the whole object and returns
the items as an Arrow table.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from core.errors import IntegrityError
from data_specs._validate import check_schema

SCHEMA_VERSION = 3  # 2: text mode (voice, question_seconds nullable), mode, Wilson intervals, s2s; 3: heard
REPORT_TAG = "echox.eval_report"
SECONDS = {"unit": "s"}

ITEM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("line", pa.int32(), nullable=False, metadata={"doc": "1-based line/row in the eval set"}),
        pa.field("question", pa.string(), nullable=False, metadata={"doc": "as written in the eval set"}),
        pa.field("spoken_question", pa.string(), nullable=False, metadata={"doc": "spoken form sent to TTS"}),
        pa.field("category", pa.string(), nullable=True),
        pa.field("gold", pa.list_(pa.string()), nullable=False,
                 metadata={"doc": "accepted answers: `answers`, else `aliases`, else `answer`"}),
        pa.field("reference", pa.string(), nullable=False,
                 metadata={"doc": "reference answer text (T2C input for the unit metrics)"}),
        pa.field("voice", pa.string(), nullable=True, metadata={"doc": "None in text mode"}),
        pa.field("question_seconds", pa.float32(), nullable=True,
                 metadata={"doc": "None in text mode", **SECONDS}),
        pa.field("heard", pa.string(), nullable=True,
                 metadata={"doc": "greedy CTC transcript of the spoken question (None in text mode)"}),
        pa.field("heard_wer", pa.float32(), nullable=True,
                 metadata={"doc": "word error rate of `heard` against spoken_question"}),
        pa.field("response", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False,
                 metadata={"doc": "a normalised gold answer is whole words of the normalised response"}),
        pa.field("matched", pa.string(), nullable=True, metadata={"doc": "the gold answer that matched"}),
        pa.field("num_tokens", pa.int32(), nullable=False, metadata={"doc": "generated text tokens"}),
        pa.field("latency_s", pa.float32(), nullable=False,
                 metadata={"doc": "audio in → last output", **SECONDS}),
        pa.field("first_token_s", pa.float32(), nullable=True,
                 metadata={"doc": "audio in → first text token (S2T checkpoints)", **SECONDS}),
        pa.field("first_units_s", pa.float32(), nullable=True,
                 metadata={"doc": "audio in → first streamed units (echo checkpoints)", **SECONDS}),
        pa.field("num_units", pa.int32(), nullable=True, metadata={"doc": "streamed units (echo)"}),
        pa.field("num_segments", pa.int32(), nullable=True, metadata={"doc": "streamed segments (echo)"}),
        pa.field("unit_accuracy", pa.float32(), nullable=True,
                 metadata={"doc": "teacher-forced Echo-decoder accuracy on T2C(reference) units + EOS"}),
        pa.field("unit_edit_distance", pa.float32(), nullable=True,
                 metadata={"doc": "Levenshtein(greedy Echo units, T2C units) / max length"}),
        pa.field("reference_units", pa.int32(), nullable=True, metadata={"doc": "len(T2C(reference))"}),
        pa.field("s2s_response", pa.string(), nullable=True,
                 metadata={"doc": "what the ASR heard in the vocoded spoken answer (--vocoder)"}),
        pa.field("s2s_correct", pa.bool_(), nullable=True,
                 metadata={"doc": "a gold answer is whole words of the normalised s2s_response"}),
        pa.field("s2s_seconds", pa.float32(), nullable=True, metadata={"doc": "vocoded answer", **SECONDS}),
        pa.field("ceiling_response", pa.string(), nullable=True,
                 metadata={"doc": "what the ASR heard in the reference answer's TTS speech"}),
        pa.field("ceiling_correct", pa.bool_(), nullable=True,
                 metadata={"doc": "the ASR ceiling: a gold answer is whole words of ceiling_response"}),
    ],
    metadata={"schema": "echox.eval_items", "version": str(SCHEMA_VERSION)},
)

REPORT_KEYS = ("schema", "version", "model", "stage", "eval_set", "summary", "by_category", "items",
               "rejects")


def items_table(items: list[dict[str, Any]]) -> pa.Table:
    """The per-item rows as an Arrow table of ITEM_SCHEMA (IntegrityError on a missing or mistyped field)."""
    missing = [f.name for f in ITEM_SCHEMA if items and f.name not in items[0]]
    if missing:
        raise IntegrityError(f"eval items lack fields {missing}")
    try:
        return pa.Table.from_pylist(items, schema=ITEM_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise IntegrityError(f"eval items do not match their schema: {e}") from e


def validate(table: pa.Table) -> None:
    """Raise IntegrityError when the per-item table breaks its contract."""
    check_schema(table, ITEM_SCHEMA, "eval_items")
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise IntegrityError("eval_items: ids are not unique")
    for row in table.select(["id", "gold", "latency_s", "unit_accuracy", "unit_edit_distance"]).to_pylist():
        if not row["gold"]:
            raise IntegrityError(f"eval item {row['id']}: no gold answers")
        if not row["latency_s"] >= 0:
            raise IntegrityError(f"eval item {row['id']}: latency_s must be ≥ 0")
        for key in ("unit_accuracy", "unit_edit_distance"):
            if row[key] is not None and not 0.0 <= row[key] <= 1.0:
                raise IntegrityError(f"eval item {row['id']}: {key} {row[key]} is outside [0, 1]")


def _check_accuracy(name: str, stats: dict[str, Any], correct: list[bool]) -> None:
    """stats holds items/correct/accuracy that agree with the given per-item outcomes."""
    n, k = len(correct), sum(correct)
    if stats.get("items") != n or stats.get("correct") != k:
        raise IntegrityError(f"eval report {name}: counts {stats.get('items')}/{stats.get('correct')} "
                             f"do not match the items ({n}/{k})")
    expected = k / n if n else None
    got = stats.get("accuracy")
    if (got is None) != (expected is None) or (got is not None and not math.isclose(got, expected)):
        raise IntegrityError(f"eval report {name}: accuracy {got} is not {expected}")


def validate_report(report: dict[str, Any]) -> pa.Table:
    """Check a JSON report (tag, version, items, summary and per-category counts); return its items table."""
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise IntegrityError(f"eval report lacks keys {missing}")
    if report["schema"] != REPORT_TAG or report["version"] != SCHEMA_VERSION:
        raise IntegrityError(f"not an eval report of version {SCHEMA_VERSION}: "
                             f"{report['schema']!r} v{report['version']}")
    table = items_table(report["items"])
    validate(table)
    correct = table.column("correct").to_pylist()
    _check_accuracy("summary", report["summary"], correct)
    categories = table.column("category").to_pylist()
    if set(report["by_category"]) != {c for c in categories if c is not None}:
        raise IntegrityError("eval report by_category does not list the items' categories")
    for cat, stats in report["by_category"].items():
        _check_accuracy(f"category {cat!r}", stats, [ok for ok, c in zip(correct, categories, strict=True)
                                                      if c == cat])
    return table
