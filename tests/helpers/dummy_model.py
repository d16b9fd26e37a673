"""A tiny picklable LM, its collator and saver, and a corpus writer: what the trainer tests train.

The task: rows of `answer_units` count up by one modulo the vocabulary, so the next unit is
predictable from the current one and the loss can fall close to zero within a few dozen steps.
Everything here is importable by name, so Ray workers and torchrun processes can load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from tasks.shards import write_arrow, write_datasets_layout, write_json

VOCAB = 16
IGNORE = -100


class TinyLM(nn.Module):
    """Embedding → tanh MLP with dropout → vocabulary head; one frozen parameter to prove it is skipped."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.frozen_scale = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(torch.tanh(self.proj(self.embed(input_ids) * self.frozen_scale)))  # (B, T, D)
        logits = self.head(h)  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        reg = 1e-4 * self.proj.weight.pow(2).sum()
        return {"loss": ce + reg, "ce": ce, "reg": reg, "num_tokens": (labels != IGNORE).sum()}


def build(vocab: int = VOCAB, dim: int = 32, dropout: float = 0.1) -> TinyLM:
    """The model factory handed to the trainer."""
    return TinyLM(vocab, dim, dropout)


class Collator:
    """Pad `answer_units` rows into next-token (input_ids, labels) batches."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["answer_units"]) for r in rows) - 1
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            units = torch.from_numpy(np.asarray(r["answer_units"], dtype=np.int64))
            ids[i, : len(units) - 1] = units[:-1]
            labels[i, : len(units) - 1] = units[1:]
        return {"input_ids": ids, "labels": labels}


def make_collator(stage: str, model: nn.Module) -> Collator:
    """The collator factory (stage and model unused by this dummy)."""
    return Collator()


class SimulatedCrash(RuntimeError):
    """Raised by CrashingCollator to stand in for a killed job."""


class CrashingCollator(Collator):
    """A Collator that raises on its `crash_at`-th call (1-based), like a job killed mid-run."""

    def __init__(self, crash_at: int) -> None:
        self.crash_at, self.calls = crash_at, 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.crash_at:
            raise SimulatedCrash(f"simulated crash at batch {self.calls}")
        return super().__call__(rows)


def make_crashing_collator(stage: str, model: nn.Module, *, crash_at: int) -> CrashingCollator:
    """Collator factory whose collator crashes on batch `crash_at` (bind crash_at with functools.partial)."""
    return CrashingCollator(crash_at)


def example_length(row: dict, stage: str) -> int:
    """Length used for bucketing: the number of units."""
    return len(row["answer_units"])


def save_model(model: nn.Module, out_dir: Path) -> None:
    """Save weights (safetensors) and a small config, the way models.io does for real models."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_model(getattr(model, "module", model), str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({"kind": "tiny-lm"}))


CORPUS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("question_audio", pa.list_(pa.int16()), nullable=False),
    pa.field("answer_units", pa.list_(pa.int32()), nullable=False),
])


def corpus_table(n: int, seed: int = 0) -> pa.Table:
    """`n` rows: counting unit sequences of 4–12 units and a little int16 'audio' each."""
    rng = np.random.default_rng(seed)
    units, audio = [], []
    for _ in range(n):
        length, start = int(rng.integers(4, 13)), int(rng.integers(0, VOCAB))
        units.append(((start + np.arange(length)) % VOCAB).astype(np.int32))
        audio.append(rng.integers(-32768, 32768, size=int(rng.integers(5, 40))).astype(np.int16))
    return pa.table({"id": [f"r{i:04d}" for i in range(n)], "question_audio": audio, "answer_units": units},
                    schema=CORPUS_SCHEMA)


def write_corpus(out_dir: Path, table: pa.Table, shards: int = 2) -> Path:
    """Write `table` as a corpus directory (Arrow shards, datasets layout, manifest last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // shards)
    entries = [write_arrow(out_dir / f"data-{i:05d}-of-{shards:05d}.arrow", table.slice(i * size, size))
               for i in range(shards)]
    write_datasets_layout(out_dir, [e["path"] for e in entries], table.schema, "0" * 16)
    write_json(out_dir / "manifest.json", {"kind": "test", "shards": entries})
    return out_dir
