"""Echo labels fail fast on an under-trained T2C: its end-of-sequence rate on sampled answers is checked
before any labelling, through the same loading path as a user's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.errors import InputError
from tests.tasks.test_echo_labels import TEXTS, K, tiny_rows, write_tiny_corpus


def briefly_trained_t2c(root: Path, rows: list[dict], steps: int) -> Path:
    """A tiny T2C trained `steps` steps on `rows`, saved with save_model under root/t2c."""
    from models.io import save_model
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from models.t2c import build_t2c
    from tasks.collate import collate_t2c

    preset = resolve_preset("tiny")
    base = prepare_base_llm(preset, corpus_texts=TEXTS * 3, cache_dir=root / "llm-cache", seed=0)
    torch.manual_seed(0)
    t2c = build_t2c(preset, base, K, seed=0)
    batch = collate_t2c(rows, t2c)
    opt = torch.optim.AdamW([p for p in t2c.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = t2c(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(t2c, root / "t2c")
    return root / "t2c"


def test_an_under_trained_t2c_fails_fast_in_one_line(tmp_path: Path) -> None:
    from tasks.echo_labels import check_t2c_ends, sample_answers

    rows = tiny_rows()
    corpus = write_tiny_corpus(tmp_path / "corpus", rows)
    assert sample_answers(corpus, 16) == [TEXTS[1], TEXTS[3], TEXTS[5]]
    t2c = briefly_trained_t2c(tmp_path, rows, steps=0)  # random: it never picks the end token
    with pytest.raises(InputError) as err:
        check_t2c_ends(str(corpus), str(t2c), max_units=12, min_rate=0.5)
    message = str(err.value)
    assert message.startswith("the T2C ends only ") and "within 12 units" in message
    assert message.endswith("train it longer") and "\n" not in message
    assert check_t2c_ends(str(corpus), str(t2c), max_units=12, min_rate=0.0) == 1.0  # off


def test_a_trained_t2c_passes(tmp_path: Path) -> None:
    from tasks.echo_labels import check_t2c_ends

    rows = tiny_rows()
    corpus = write_tiny_corpus(tmp_path / "corpus", rows)
    t2c = briefly_trained_t2c(tmp_path, rows, steps=30)
    assert check_t2c_ends(str(corpus), str(t2c), max_units=64, min_rate=0.5) >= 0.5
