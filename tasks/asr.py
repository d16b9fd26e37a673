"""Speech recognition: what a recogniser is, word error rate, alias scoring, and the corpus ASR gate.

The recognisers live one per file in tasks/backends/ (asr_pocketsphinx.py) and are found through the
RECOGNISERS registry; like a TTS engine, one is built once per worker and then called per utterance.

WER = word-level Levenshtein distance (substitutions, deletions, insertions) / reference words, on
text normalised by `normalize_words` (numbers as words, no case, accents or punctuation), so "4" and
"four" are the same word. An empty reference scores 0.0 against an empty hypothesis and 1.0 against
anything else (everything heard is wrong).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from tasks.eval_stats import levenshtein
from tasks.text_norm import match_answer, normalize_words

ASR_COLUMNS = ("question_asr_text", "answer_asr_text", "question_asr_wer", "answer_asr_wer")


class Recogniser(Protocol):
    """A speech recogniser: 16 kHz mono audio (int16, or float32 in [-1, 1]) in, words out."""

    name: str

    def transcribe(self, audio: np.ndarray) -> str:
        """The words heard in one utterance; "" when none."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able record of what decides the transcripts (backend, version, model)."""
        ...


def make_asr(name: str = "pocketsphinx", *, threads: int | None = None, **options: Any) -> Recogniser:
    """Build a registered recogniser by name; `options` are its options model's fields."""
    from tasks.backends import RECOGNISERS

    return RECOGNISERS.get(name).create(RECOGNISERS.options(name, **options), threads)


# ----------------------------------------------------------------------------- scoring
def word_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (each insertion, deletion, substitution costs 1)."""
    return levenshtein(list(reference), list(hypothesis))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference`, both normalised (see the module docstring); may exceed 1."""
    ref, hyp = normalize_words(reference).split(), normalize_words(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_edits(ref, hyp) / len(ref)


def recognised_answer_match(recognised: str, aliases: Iterable[str]) -> str | None:
    """The alias found in recognised speech, by the evaluation's own match (whole normalised words).

    For an ASR ceiling: the share of reference answers whose speech, recognised, still matches an alias
    bounds any accuracy scored by recognising a model's spoken answers.
    """
    return match_answer(recognised, list(aliases))


# ----------------------------------------------------------------------------- the corpus gate
def asr_columns(asr: Recogniser, row: dict) -> dict[str, Any]:
    """What `asr` hears in a row's question and answer audio, and its WER against their spoken texts."""
    cols: dict[str, Any] = {}
    for part in ("question", "answer"):
        heard = asr.transcribe(row[f"{part}_audio"])
        cols[f"{part}_asr_text"] = heard
        cols[f"{part}_asr_wer"] = word_error_rate(row[f"{part}_text"], heard)
    return cols


def gate_reason(cols: dict[str, Any], max_wer: float | None) -> str | None:
    """Why a row fails the gate (the worse of its two WERs is above `max_wer`), or None when it passes."""
    worst = max(cols["question_asr_wer"], cols["answer_asr_wer"])
    if max_wer is None or worst <= max_wer:
        return None

    def heard(part: str) -> str:  # single-quoted (rejects are grouped by reason with quotes elided)
        return "'" + cols[f"{part}_asr_text"].replace("'", "’") + "'"

    return (f"ASR word error rate {worst:.2f} is above --max-asr-wer {max_wer:g}: the question was heard "
            f"as {heard('question')} (WER {cols['question_asr_wer']:.2f}), the answer as "
            f"{heard('answer')} (WER {cols['answer_asr_wer']:.2f})")


def check_row(asr: Recogniser, row: dict, max_wer: float | None) -> tuple[dict[str, Any], str | None]:
    """(the row's ASR columns, the reason it is rejected or None): the gate of one corpus row."""
    cols = asr_columns(asr, row)
    return cols, gate_reason(cols, max_wer)


# ----------------------------------------------------------------------------- per-voice figures
def tally(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Per voice: rows and the sums of their question and answer WERs (summed over shards, then averaged)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        t = out.setdefault(r["voice"], {"rows": 0, "question_wer_sum": 0.0, "answer_wer_sum": 0.0})
        t["rows"] += 1
        t["question_wer_sum"] += float(r["question_asr_wer"])
        t["answer_wer_sum"] += float(r["answer_asr_wer"])
    return out


def wer_by_voice(tallies: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean question and answer WER per voice over the shards' tallies (sorted by voice)."""
    total: dict[str, dict[str, float]] = {}
    for part in tallies:
        for voice, t in part.items():
            acc = total.setdefault(voice, {"rows": 0, "question_wer_sum": 0.0, "answer_wer_sum": 0.0})
            for k in acc:
                acc[k] += t[k]
    return {v: {"rows": int(t["rows"]), "question_wer": round(t["question_wer_sum"] / t["rows"], 4),
                "answer_wer": round(t["answer_wer_sum"] / t["rows"], 4)} for v, t in sorted(total.items())}
