"""The encoder-pretraining text set (tasks/pretrain_text.py): the tokenizer's commonest whole words, each
spoken `repeats` times, plus the QA source's own text."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tasks.pretrain_text import (
    TextOptions,
    common_words,
    pretraining_records,
    word_sentences,
    write_pretraining_text,
)
from tests.conftest import qa, write_jsonl


class Vocab:
    """A tokenizer's vocabulary and nothing else (what common_words reads)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


VOCAB = Vocab(["<s>", "Ġthe", "th", "Ġre", "Ġof", "Ġ123", "Ġcat", "▁Paris", "Ġdon't", "Ġa", "Ġdog", "Ġmoon"])


def test_common_words_are_whole_word_tokens_in_id_order() -> None:
    # pieces without a word mark, two-letter fragments ("re"), digits and punctuation are left out
    assert common_words(VOCAB, 10) == ["the", "of", "cat", "Paris", "a", "dog", "moon"]
    assert common_words(VOCAB, 3) == ["the", "of", "cat"]


def test_every_word_is_spoken_repeats_times_in_bounded_sentences() -> None:
    words = [f"w{i}" for i in range(50)]
    options = TextOptions(repeats=3, min_words=4, max_words=6, seed=1)
    sentences = word_sentences(words, options)
    spoken = Counter(w.strip(".").lower() for s in sentences for w in s.split())
    assert spoken == dict.fromkeys(words, 3)
    assert all(4 <= len(s.split()) <= 6 for s in sentences[:-1]) and 1 <= len(sentences[-1].split()) <= 6
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    assert word_sentences(words, options) == sentences  # seeded
    assert word_sentences(words, TextOptions(repeats=3, min_words=4, max_words=6, seed=2)) != sentences


def test_records_keep_the_qa_pairs_and_pair_the_sentences(tmp_path: Path) -> None:
    records = pretraining_records([("1", "Q?", "A.")], ["one", "two", "three"],
                                  TextOptions(repeats=1, min_words=1, max_words=1))
    assert records[0] == {"id": "qa-1", "question": "Q?", "answer": "A."}
    assert [r["id"] for r in records[1:]] == ["words-00000", "words-00001"]
    assert records[-1]["question"] == records[-1]["answer"]  # an odd last sentence is both sides

    source = write_jsonl(tmp_path / "qa.jsonl", [qa(i) for i in range(3)] + ["not json"])
    out = tmp_path / "text.jsonl"
    counts = write_pretraining_text(source, VOCAB, out, TextOptions(repeats=2, min_words=2, max_words=3))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert counts == {"qa_records": 3, "words": 7, "records": len(lines)}
    assert [r["question"] for r in lines[:3]] == [qa(i)["question"] for i in range(3)]
    assert len({r["id"] for r in lines}) == len(lines)
