"""Source reading: every record is either valid or rejected with a reason; three input formats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import InputError
from tasks.source import read_source
from tests.conftest import qa, write_jsonl

BAD_LINES = [
    ('{"id": "x", "question": ', "malformed JSON"),
    ('["a", "b"]', "must be a JSON object"),
    ({"id": "x", "question": "Q?"}, "missing field 'answer'"),
    ({"question": "Q?", "answer": "A."}, "missing field 'id'"),
    ({"id": "x", "question": ["Q"], "answer": "A."}, "field 'question' must be a string"),
    ({"id": "x", "question": "Q?", "answer": True}, "field 'answer' must be a string"),
    ({"id": " ", "question": "Q?", "answer": "A."}, "field 'id' is empty"),
    ({"id": "x", "question": "Q?", "answer": "A.", "aliases": "A"}, "'aliases' must be a list"),
    ({"id": "x", "question": "Q?", "answer": "A.", "voice": 3}, "'voice' must be a string"),
    (b'{"id": "x", "question": "\xff\xfe", "answer": "A."}', "not valid UTF-8"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_record_becomes_a_reject_with_reason(tmp_path: Path, line: object, reason: str) -> None:
    src = write_jsonl(tmp_path / "s.jsonl", [qa(1), line, qa(2)])
    records, rejects = read_source(src)
    assert [r.id for r in records] == ["q1", "q2"]
    assert len(rejects) == 1 and rejects[0].line == 2
    assert reason in rejects[0].reason


def test_duplicate_ids_keep_the_first(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "s.jsonl", [qa(1), qa(2), qa(1, answer="other")])
    records, rejects = read_source(src)
    assert [r.line for r in records] == [1, 2]
    assert rejects[0].line == 3 and "first seen on line 1" in rejects[0].reason


def test_blank_lines_are_not_records_and_extra_columns_pass_through(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "s.jsonl", [qa(1, category="math"), "", "   ", qa(2)])
    records, rejects = read_source(src)
    assert not rejects and [r.line for r in records] == [1, 4]
    assert records[0].extra == {"category": "math"} and records[0].aliases == ("2",)


def test_parquet_and_datasets_sources(tmp_path: Path) -> None:
    import datasets

    rows = [qa(1), qa(2), {"id": "x", "question": None, "answer": "A.", "aliases": None}]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "s.parquet")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "ds"))
    for src in (tmp_path / "s.parquet", tmp_path / "ds"):
        records, rejects = read_source(src)
        assert [r.id for r in records] == ["q1", "q2"]
        assert rejects[0].line == 3 and "missing field 'question'" in rejects[0].reason


def test_unreadable_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_source(tmp_path / "nope.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_source(tmp_path / "bad.parquet")


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps(qa(1)).encode(), json.dumps(qa(2)).encode()]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    records, rejects = read_source(path)
    assert [r.id for r in records] == ["q1", "q2"] and rejects == []
