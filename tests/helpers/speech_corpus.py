"""A small spoken-QA corpus (seeded noise audio + QA text) for training real stage-I models in tests, and a
stage collator that crashes on a given batch (named by an environment variable, so torchrun ranks get it).
Everything is importable by name, for torchrun's JSON loop configs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch import nn

from tests.helpers.dummy_model import SimulatedCrash, write_corpus

CRASH_AT = "ECHOX_TEST_CRASH_AT"
"""Environment variable: the 1-based collate call that raises SimulatedCrash (unset: never)."""
TEXTS = [
    ("what is the capital of france", "the capital of france is paris."),
    ("how many legs does a dog have", "a dog has four legs."),
    ("who wrote hamlet", "hamlet was written by shakespeare."),
    ("what colour is the sky", "the sky is blue."),
]


def speech_table(n: int, seed: int = 0) -> pa.Table:
    """`n` rows: 0.5-1 s of seeded int16 noise as the question audio, and a question/answer text pair."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(8_000, 16_000, size=n)
    audio = [(rng.standard_normal(int(size)) * 3000).astype(np.int16) for size in sizes]
    return pa.table({
        "id": [f"s{i:04d}" for i in range(n)],
        "question_audio": pa.array(audio, pa.list_(pa.int16())),
        "sample_rate": pa.array([16_000] * n, pa.int32()),
        "question_text": [TEXTS[i % len(TEXTS)][0] for i in range(n)],
        "answer_text": [TEXTS[i % len(TEXTS)][1] for i in range(n)],
    })


def write_speech_corpus(out_dir: Path, n: int = 16, seed: int = 0) -> Path:
    """The corpus directory (Arrow shards, manifest) of speech_table(n, seed)."""
    return write_corpus(Path(out_dir), speech_table(n, seed))


def texts() -> list[str]:
    """Every text of the corpus (what the tiny preset's tokenizer is trained on)."""
    return [t for pair in TEXTS for t in pair]


class CrashingCollate:
    """The stage's collator, raising SimulatedCrash on call `crash_at` (1-based), like a killed job."""

    def __init__(self, inner: Any, crash_at: int) -> None:
        self.inner, self.crash_at, self.calls = inner, crash_at, 0

    def __call__(self, rows: list[dict]) -> dict:
        self.calls += 1
        if self.calls == self.crash_at:
            raise SimulatedCrash(f"simulated crash at batch {self.calls}")
        return self.inner(rows)


def crashing_collator(stage: str, model: nn.Module) -> Any:
    """The stage's own collator, crashing on the batch that $ECHOX_TEST_CRASH_AT names (if set)."""
    from tasks.collate import make_collator

    return CrashingCollate(make_collator(stage, model), int(os.environ.get(CRASH_AT, "0")))
