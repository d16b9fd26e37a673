"""The training-memory bench: its saved-tensor count matches the vocabulary formula on a real tiny S2T step,
the per-worker arithmetic, and the table's rows."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from bench.memory import per_worker, render
from bench.memory_measure import saved_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_saved_bytes_counts_each_storage_once_and_no_parameters() -> None:
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with saved_bytes(lin, vocab=8, blocks={"llm": [lin]}) as ledger:
        y = lin(x)  # saves x (its input) and the weight (a parameter: not counted)
        (y * y).sum()  # saves y twice: one storage
    assert ledger.bytes == {"llm/vocab": 4 * 8 * 4, "other/vocab": 4 * 8 * 4}


def test_a_tiny_s2t_step_is_measured_and_the_vocabulary_formula_holds(tmp_path: Path) -> None:
    from bench.memory_measure import measure, speech_rows
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset

    texts = [t for r in speech_rows(8) for t in (r["question_text"], r["answer_text"])]
    base = prepare_base_llm(resolve_preset("tiny"), corpus_texts=texts, cache_dir=tmp_path)
    row = measure("tiny", {"lora_rank": 4, "train_encoder": False}, base, batch=2, seconds=1.0)
    p = row["params"]
    assert p["lora"] > 0 and p["trained"] > p["lora"] and p["frozen"] > 0
    assert row["grad_bytes"] == p["trained_bytes"] and row["optimizer_bytes"] >= 2 * p["trained_bytes"]
    vocab = [v for k, v in row["regions"].items() if k.endswith("/vocab")]
    assert sum(vocab) == row["vocab_formula_bytes"]  # the formula the 3B/8B rows use for these tensors
    assert 0 < row["activations_gc"] < row["activations"]  # checkpointing keeps less
    row.update(preset="tiny", overrides={}, config="tiny.yaml", workers=2, source="measured")
    row["per_worker"] = per_worker(row, 2, bf16=False)
    assert row["per_worker"]["fsdp_gc"] < row["per_worker"]["fsdp"]
    assert render([row])[2].startswith("| tiny (tiny.yaml) | measured | 2 × ")


def test_per_worker_arithmetic() -> None:
    row = {"params": {"frozen_bytes": 800, "trained_bytes": 400, "trained": 100, "root": 10, "block": 5,
                      "root_trained": 4},
           "grad_bytes": 400, "optimizer_bytes": 800, "activations": 1000, "activations_gc": 100}
    w = per_worker(row, 4, bf16=True)
    assert w["ddp"] == 800 + 400 + 400 + 800 + 400 + 2 * 100 + 1000  # + buckets + bf16 weight copies
    assert w["fsdp"] == 2400 / 4 + (10 + 2 * 5) * 2 + 4 * (2 + 4) + 1000
    assert w["ddp"] - w["ddp_gc"] == w["fsdp"] - w["fsdp_gc"] == 900
