"""The text set the speech encoder learns to hear from (encoder pretraining, before stage I).

Stage I trains on a few hundred QA pairs, too few words for an encoder learning from scratch to hear a
question about something it never heard spoken. The pretraining set adds general vocabulary: the QA
source's own questions and answers, plus sentences made of the base LLM tokenizer's most frequent
whole-word tokens (a byte-level BPE learns its merges roughly in frequency order, so the lowest ids are
the commonest words), each word spoken `repeats` times in seeded random order. Nothing comes from the eval
set; the words are the tokenizer's, so a CTC target over the LLM's tokens exists for every one of them.

The output is a QA-shaped JSONL (id, question, answer) that `build-corpus` speaks like any source: each
record's question and answer are two utterances for the encoder.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
"""Bump when the generated text changes for the same inputs (it enters the step's fingerprint)."""


@dataclass(frozen=True)
class TextOptions:
    """How much general text to add to the QA source's."""

    words: int = 3000
    """The tokenizer's most frequent whole-word tokens to speak."""
    repeats: int = 4
    """Times each of those words is spoken (in different sentences)."""
    min_words: int = 5
    """Shortest generated sentence (words)."""
    max_words: int = 9
    """Longest generated sentence (words)."""
    seed: int = 0
    """Seed of the word order and sentence lengths."""


def common_words(tokenizer: Any, count: int) -> list[str]:
    """The first `count` whole-word tokens of the tokenizer's vocabulary, in id order, as plain words."""
    from models.ctc_lexicon import whole_words

    return whole_words(tokenizer)[:count]


def word_sentences(words: list[str], options: TextOptions) -> list[str]:
    """Sentences of `min_words`..`max_words` words, every word used `repeats` times, in seeded order."""
    if not words:
        return []
    rng = random.Random(options.seed)
    bag = [w for w in words for _ in range(options.repeats)]
    rng.shuffle(bag)
    out: list[str] = []
    i = 0
    while i < len(bag):
        n = rng.randint(options.min_words, options.max_words)
        chunk = bag[i: i + n]
        i += n
        text = " ".join(chunk)
        out.append(text[:1].upper() + text[1:] + ".")
    return out


def pretraining_records(qa: Iterable[tuple[str, str, str]], words: list[str],
                        options: TextOptions) -> list[dict[str, str]]:
    """The JSONL records: each QA pair as it is (id `qa-<id>`), then the word sentences paired up
    (id `words-<n>`; an odd last sentence is spoken as its own question and answer)."""
    records = [{"id": f"qa-{rid}", "question": q, "answer": a} for rid, q, a in qa]
    sentences = word_sentences(words, options)
    for n in range(0, len(sentences), 2):
        question = sentences[n]
        answer = sentences[n + 1] if n + 1 < len(sentences) else question
        records.append({"id": f"words-{n // 2:05d}", "question": question, "answer": answer})
    return records


def qa_pairs(source: Path) -> list[tuple[str, str, str]]:
    """(id, question, answer) of every valid record of the QA source (rejects are the corpus's business)."""
    from tasks.source import read_source

    records, _ = read_source(source)
    return [(r.id, r.question, r.answer) for r in records]


def write_pretraining_text(source: Path, tokenizer: Any, out: Path, options: TextOptions) -> dict[str, int]:
    """Write the pretraining JSONL to `out` atomically; returns its counts."""
    from tasks.shards import write_jsonl

    qa = qa_pairs(source)
    words = common_words(tokenizer, options.words)
    records = pretraining_records(qa, words, options)
    write_jsonl(out, records)
    return {"qa_records": len(qa), "words": len(words), "records": len(records)}
