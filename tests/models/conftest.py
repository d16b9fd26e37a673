"""Fixtures for model tests: the tiny preset, its corpus-trained base LLM, seeded QA rows with audio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TEXTS = [
    "what is the capital of france",
    "the capital of france is paris.",
    "how many legs does a dog have",
    "a dog has four legs. it runs fast.",
    "who wrote hamlet",
    "hamlet was written by william shakespeare.",
]
NUM_UNITS = 40


def make_rows(n: int = 4, seed: int = 0) -> list[dict]:
    """Seeded corpus-like rows: noise audio (1-2 s), QA text, answer units, an echo segment."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        q, a = TEXTS[2 * (i % 3)], TEXTS[2 * (i % 3) + 1]
        audio = (rng.standard_normal(16_000 + 4_000 * i) * 3000).astype(np.int16)
        rows.append(
            {
                "id": f"r{i}",
                "question_text": q,
                "answer_text": a,
                "sample_rate": 16_000,
                "question_audio": audio,
                "answer_units": rng.integers(0, NUM_UNITS, 12 + 3 * i).astype(np.int32),
                "segment_start": 0,
                "segment_end": 3,
                "segment_units": rng.integers(0, NUM_UNITS, 6 + i).tolist(),
            }
        )
    return rows


SYLLABLES = [[5, 17, 2], [9, 39], [33, 4, 21, 8], [12, 7], [0, 38, 3]]


def syllable_units(n: int, seed: int = 0) -> list[list[int]]:
    """`n` deduplicated unit sequences (< NUM_UNITS) made of a few recurring 'syllables', so BPE merges."""
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(SYLLABLES), size=6 + i % 4) for i in range(n)]
    return [[u for s in p for u in SYLLABLES[s]] for p in picks]


def syllable_rows(n: int = 4) -> list[dict]:
    """make_rows with syllable answer and segment units (what a unit language compresses)."""
    units = syllable_units(2 * n, seed=1)
    rows = make_rows(n)
    return [{**r, "answer_units": units[i], "segment_units": units[n + i][:8]} for i, r in enumerate(rows)]


@pytest.fixture(scope="session")
def unit_language(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tokenizer JSON of a unit language over the NUM_UNITS units, trained on syllable sequences."""
    from tasks.units import train_unit_bpe

    path = tmp_path_factory.mktemp("unit-lang") / "unit_language.json"
    train_unit_bpe(syllable_units(60), 60, path, num_units=NUM_UNITS)
    return path.read_text()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's base LLM directory (tokenizer trained on TEXTS, seed 0)."""
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset

    cache = tmp_path_factory.mktemp("llm-cache")
    return prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=cache, seed=0)


@pytest.fixture
def rows() -> list[dict]:
    """Four seeded rows."""
    return make_rows(4)

