"""Self-distillation targets: the base LLM's own answers to the training questions.

EchoX trains stage I on a QA corpus's reference answers. At laptop scale (a few hundred questions) the
stage-I LoRA then learns those answers' facts and style instead of keeping the LLM's (RESULTS.md: "What is
the capital of Peru?" answered with "The capital of France is Paris."). With the `llm-answers` step the base
instruct LLM answers each written training question (greedy, the chat prompt of the knowledge table's text
row) and its answer replaces the reference: stage I then learns to answer a spoken question as the LLM
answers the written one, and the corpus speaks, and stages II and III learn, those answers.

The output is a QA source (source.jsonl) that the corpus step reads in place of the pipeline's source:
each valid record with `answer` replaced and the reference kept as `reference_answer` (and its line in the
original source as `source_line`); rejects.jsonl holds the source's invalid records and the questions the
LLM left unanswered, so every source record is in one or the other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from data_specs.rejects import Reject
from tasks.shards import file_sha256, write_json, write_jsonl
from tasks.source import SourceRecord, read_source

FORMAT_VERSION = 1
"""The layout of source.jsonl / rejects.jsonl / summary.json."""

SOURCE_FILE = "source.jsonl"
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "summary.json"
REJECT_STAGE = "llm-answers"


@dataclass(frozen=True)
class AnswerOptions:
    """How the LLM is asked (the text row's prompt, so the targets are what that row measures)."""

    system_prompt: str | None
    max_new_tokens: int
    batch_size: int
    first_sentence: bool = True
    """Keep each answer's first sentence (what the one-short-sentence prompt asks for; SmolLM2-135M often
    goes on for 60 tokens, three times a reference answer's length in speech and sequence)."""


_BOUNDARY = re.compile(r"[.!?][\"')\]]*(?=\s|$)|\n")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "mt", "vs", "etc", "e.g", "i.e", "approx"})


def first_sentence(text: str) -> str:
    """The text up to its first sentence end: . ! ? before whitespace (not after an initial such as "D."
    or an abbreviation) or a line break; the whole text when it has none."""
    text = text.strip()
    for m in _BOUNDARY.finditer(text):
        head = text[:m.end()].strip()
        bare = head.rstrip(".!?\"')]")
        word = bare.rsplit(None, 1)[-1] if bare else ""
        initials = re.fullmatch(r"(?:[A-Z]\.)*[A-Z]", word) is not None  # "D." or "J.K."
        if m.group() == "." and (initials or word.lower() in _ABBREVIATIONS):
            continue
        if head:
            return head
    return text


def answered_record(rec: SourceRecord, answer: str) -> dict[str, Any]:
    """The source record with the LLM's answer; the reference answer and source line kept beside it."""
    row: dict[str, Any] = {**rec.extra, "id": rec.id, "question": rec.question, "answer": answer,
                           "reference_answer": rec.answer, "source_line": rec.line}
    if rec.aliases:
        row["aliases"] = list(rec.aliases)
    if rec.voice is not None:
        row["voice"] = rec.voice
    return row


def _agrees(answer: str, rec: SourceRecord) -> bool | None:
    """Whether the answer holds one of the record's aliases (None without aliases)."""
    from tasks.text_norm import match_answer

    return match_answer(answer, list(rec.aliases)) is not None if rec.aliases else None


def answer_records(records: list[SourceRecord], answer: Callable[[list[str]], list[str]], batch_size: int,
                   progress: Callable[[int, int], None] | None = None, *, first: bool = False,
                   ) -> tuple[list[dict[str, Any]], list[Reject], int]:
    """(answered rows, rejects for empty answers, answers that hold an alias) in source order."""
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    agree = 0
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        for rec, text in zip(batch, answer([r.question for r in batch]), strict=True):
            text = first_sentence(text) if first else text
            if not text.strip():
                reason = "the base LLM's answer is empty (it ended its turn at once): no target to learn"
                rejects.append(Reject(rec.line, rec.id, reason, stage=REJECT_STAGE))
                continue
            rows.append(answered_record(rec, text.strip()))
            agree += bool(_agrees(text, rec))
        if progress is not None:
            progress(min(start + batch_size, len(records)), len(records))
    return rows, rejects, agree


def write_llm_answers(source: Path, llm_dir: Path, out: Path, options: AnswerOptions, *, device: str = "cpu",
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Answer every valid question of `source` with the LLM in `llm_dir`; write source.jsonl, rejects.jsonl
    and, last (it marks the step done), summary.json. Returns the summary."""
    from tasks.eval_text import TextAnswerer

    records, source_rejects = read_source(source)
    if not records:
        raise InputError(f"{source}: no valid QA record to answer ({len(source_rejects)} rejected)")
    answerer = TextAnswerer(llm_dir, system_prompt=options.system_prompt,
                            max_new_tokens=options.max_new_tokens, device=device)
    started = time.perf_counter()
    rows, empty, agree = answer_records(records, answerer.answer_batch, options.batch_size, progress,
                                        first=options.first_sentence)
    wall = time.perf_counter() - started
    if not rows:
        raise InputError(f"{source}: the base LLM answered none of its {len(records)} questions")
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # stale until this run has written the rest
    write_jsonl(out / SOURCE_FILE, rows)
    rejects = sorted([*source_rejects, *empty], key=lambda r: r.line)
    write_jsonl(out / REJECTS_FILE, [r.to_dict() for r in rejects])
    with_aliases = sum(1 for r in rows if r.get("aliases"))  # agree's denominator: answered rows
    summary = {"format": FORMAT_VERSION, "source": str(source), "llm": str(llm_dir),
               "system_prompt": options.system_prompt, "max_new_tokens": options.max_new_tokens,
               "first_sentence": options.first_sentence,
               "source_records": len(records) + len(source_rejects), "answered": len(rows),
               "rejected": len(rejects), "with_aliases": with_aliases, "agree_with_reference": agree,
               "answer_wall_s": round(wall, 2), "source_sha256": file_sha256(out / SOURCE_FILE)}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def llm_answers_done(out: Path) -> bool:
    """summary.json exists and source.jsonl is the file it was written with."""
    import json

    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
        return summary.get("source_sha256") == file_sha256(out / SOURCE_FILE)
    except (OSError, ValueError):
        return False
