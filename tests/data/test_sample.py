"""The bundled sample QA set: shape, disjoint splits, answers that contain an alias, correct sums."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from num2words import num2words

from tasks.source import read_source

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
TRAIN, EVAL = SAMPLE / "qa_train.jsonl", SAMPLE / "qa_eval.jsonl"
FIELDS = {"id": str, "question": str, "answer": str, "aliases": list, "category": str}
PREFIX = {"general": "gk-", "arithmetic": "ar-", "definition": "df-"}

_BINARY = re.compile(r"([a-z-]+) (plus|minus|times|divided by) ([a-z-]+) is ([a-z-]+)\.")
_UNARY = re.compile(r"(half of|double) ([a-z-]+) is ([a-z-]+)\.")


def _load(path: Path) -> list[dict]:
    """Every non-blank line of a JSONL file, decoded."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    """Both committed files, decoded once."""
    return {"train": _load(TRAIN), "eval": _load(EVAL)}


def _all(splits: dict[str, list[dict]]) -> list[dict]:
    return splits["train"] + splits["eval"]


def _word_value(text: str) -> int:
    """Read a spelled number from 0 to 99 ("forty-two"), independently of the generator's speller."""
    values = {num2words(n): n for n in range(100)}
    return values[text.lower()]


def test_sizes(splits: dict[str, list[dict]]) -> None:
    assert len(splits["train"]) >= 300
    assert len(splits["eval"]) >= 40


def test_fields_and_types(splits: dict[str, list[dict]]) -> None:
    for rec in _all(splits):
        assert set(rec) == set(FIELDS), rec
        for name, kind in FIELDS.items():
            assert isinstance(rec[name], kind), (name, rec)
        assert rec["category"] in PREFIX, rec
        assert rec["id"].startswith(PREFIX[rec["category"]]), rec
        assert rec["question"].strip() and rec["answer"].strip(), rec


def test_ids_unique_across_files(splits: dict[str, list[dict]]) -> None:
    ids = Counter(rec["id"] for rec in _all(splits))
    assert [i for i, n in ids.items() if n > 1] == []


def test_no_question_shared(splits: dict[str, list[dict]]) -> None:
    def norm(q: str) -> str:
        return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()

    counts = Counter(norm(rec["question"]) for rec in _all(splits))
    assert [q for q, n in counts.items() if n > 1] == []
    train_q = {norm(rec["question"]) for rec in splits["train"]}
    assert not train_q & {norm(rec["question"]) for rec in splits["eval"]}


def test_aliases_are_nonempty_strings(splits: dict[str, list[dict]]) -> None:
    for rec in _all(splits):
        assert rec["aliases"], rec
        assert all(isinstance(a, str) and a.strip() for a in rec["aliases"]), rec


def test_lengths_and_ascii(splits: dict[str, list[dict]]) -> None:
    for rec in _all(splits):
        assert 3 <= len(rec["answer"].split()) <= 20, rec
        assert len(rec["question"].split()) <= 20, rec
        assert (rec["question"] + rec["answer"] + "".join(rec["aliases"])).isascii(), rec


def test_answer_contains_an_alias(splits: dict[str, list[dict]]) -> None:
    for rec in _all(splits):
        answer = rec["answer"].lower()
        assert any(a.lower() in answer for a in rec["aliases"]), rec


def test_category_mix(splits: dict[str, list[dict]]) -> None:
    for name, recs in splits.items():
        share = {c: n / len(recs) for c, n in Counter(r["category"] for r in recs).items()}
        assert 0.40 <= share["general"] <= 0.60, (name, share)
        assert 0.18 <= share["arithmetic"] <= 0.32, (name, share)
        assert 0.18 <= share["definition"] <= 0.32, (name, share)


def _expected_and_said(answer: str) -> tuple[float, int]:
    """From "Seven plus five is twelve." return (the true result, the number the answer says)."""
    text = answer.lower()
    if m := _BINARY.fullmatch(text):
        a, op, b, said = m.group(1), m.group(2), _word_value(m.group(3)), m.group(4)
        ops = {"plus": lambda x: x + b, "minus": lambda x: x - b, "times": lambda x: x * b}
        return (_word_value(a) / b if op == "divided by" else ops[op](_word_value(a))), _word_value(said)
    if m := _UNARY.fullmatch(text):
        a = _word_value(m.group(2))
        return (a / 2 if m.group(1) == "half of" else 2 * a), _word_value(m.group(3))
    raise ValueError(f"unexpected arithmetic answer shape: {answer!r}")


def test_arithmetic_answers_are_correct(splits: dict[str, list[dict]]) -> None:
    arithmetic = [r for r in _all(splits) if r["category"] == "arithmetic"]
    assert arithmetic
    for rec in arithmetic:
        expected, said = _expected_and_said(rec["answer"])
        assert expected == said, rec
        assert str(said) in rec["aliases"], rec


def test_project_reader_accepts_both_files() -> None:
    for path in (TRAIN, EVAL):
        records, rejects = read_source(path)
        assert rejects == []
        assert records and all(r.extra.get("category") in PREFIX for r in records)


def _make_sample() -> ModuleType:
    """Import data/sample/make_sample.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
    if spec is None or spec.loader is None:
        raise ImportError("cannot load make_sample.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being created.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    for path in (TRAIN, EVAL):
        shutil.copy(path, tmp_path / path.name)
    _make_sample().main(["--out-dir", str(tmp_path)])
    for path in (TRAIN, EVAL):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_number_words_edges() -> None:
    words = _make_sample().number_words
    assert [words(n) for n in (0, 13, 20, 42, 99)] == [
        "zero",
        "thirteen",
        "twenty",
        "forty-two",
        "ninety-nine",
    ]
    with pytest.raises(ValueError):
        words(100)
