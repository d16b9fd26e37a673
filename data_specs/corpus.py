"""The speech corpus table: one row per QA pair with speech, spoken text and answer units."""

from __future__ import annotations

from itertools import pairwise

import pyarrow as pa

from core.errors import IntegrityError
from data_specs._validate import check_schema

SCHEMA_VERSION = 1
SAMPLE_RATE = 16_000

PCM = {"format": "pcm_s16le mono", "unit": "samples at 16 kHz"}

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question_text", pa.string(), nullable=False, metadata={"doc": "spoken form"}),
        pa.field("answer_text", pa.string(), nullable=False, metadata={"doc": "spoken form"}),
        pa.field("question_original", pa.string(), nullable=False),
        pa.field("answer_original", pa.string(), nullable=False),
        pa.field("aliases", pa.list_(pa.string()), nullable=False),
        pa.field("voice", pa.string(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False, metadata={"unit": "Hz"}),
        pa.field("question_audio", pa.list_(pa.int16()), nullable=False, metadata=PCM),
        pa.field("answer_audio", pa.list_(pa.int16()), nullable=False, metadata=PCM),
        pa.field("question_seconds", pa.float32(), nullable=False, metadata={"unit": "s"}),
        pa.field("answer_seconds", pa.float32(), nullable=False, metadata={"unit": "s"}),
        pa.field("answer_units", pa.list_(pa.int32()), nullable=False, metadata={"doc": "deduplicated"}),
        pa.field("answer_durations", pa.list_(pa.int32()), nullable=False, metadata={"unit": "frames"}),
        pa.field("question_units", pa.list_(pa.int32()), nullable=False, metadata={"doc": "deduplicated"}),
        pa.field("question_durations", pa.list_(pa.int32()), nullable=False, metadata={"unit": "frames"}),
        pa.field("extra", pa.string(), nullable=False, metadata={"doc": "JSON extra columns"}),
    ],
    metadata={"schema": "echox.corpus", "version": str(SCHEMA_VERSION)},
)

# Optional columns of a build with --asr-check: what the recogniser heard, and its word error rate
# against the spoken-form text. A build without the gate has none of them (and SCHEMA exactly).
ASR_FIELDS = [
    pa.field("question_asr_text", pa.string(), nullable=False, metadata={"doc": "recognised question"}),
    pa.field("answer_asr_text", pa.string(), nullable=False, metadata={"doc": "recognised answer"}),
    pa.field("question_asr_wer", pa.float32(), nullable=False,
             metadata={"unit": "word error rate vs question_text"}),
    pa.field("answer_asr_wer", pa.float32(), nullable=False,
             metadata={"unit": "word error rate vs answer_text"}),
]
SCHEMA_WITH_ASR = pa.schema([*SCHEMA, *ASR_FIELDS], metadata=SCHEMA.metadata)


def schema(asr: bool) -> pa.Schema:
    """The corpus schema of a build with (asr=True) or without the ASR columns."""
    return SCHEMA_WITH_ASR if asr else SCHEMA


def validate(table: pa.Table) -> None:
    """Raise IntegrityError when the table breaks the corpus contract."""
    has_asr = any(f.name in table.column_names for f in ASR_FIELDS)
    check_schema(table, schema(has_asr), "corpus")  # the ASR columns come all four or none
    if table.num_rows and set(table.column("sample_rate").to_pylist()) != {SAMPLE_RATE}:
        raise IntegrityError(f"corpus sample_rate must be {SAMPLE_RATE}")
    units = table.column("answer_units").to_pylist()
    durs = table.column("answer_durations").to_pylist()
    for rid, u, d in zip(table.column("id").to_pylist(), units, durs, strict=True):
        if not u or len(u) != len(d) or min(d) < 1:
            raise IntegrityError(f"corpus row {rid}: units/durations mismatch")
        if any(a == b for a, b in pairwise(u)):
            raise IntegrityError(f"corpus row {rid}: units not deduplicated")
