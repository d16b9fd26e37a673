"""Collators: chat-templated inputs, label masks, CTC targets, audio lengths, unit padding and cuts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from tasks.collate import example_length, make_collator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXTS = [
    "what is the capital of france",
    "the capital of france is paris.",
    "who wrote hamlet",
    "hamlet was written by william shakespeare.",
]
K = 30


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset

    return prepare_base_llm(
        resolve_preset("tiny"), corpus_texts=TEXTS * 2, cache_dir=tmp_path_factory.mktemp("c")
    )


def _rows(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(1)
    return [
        {
            "id": f"r{i}",
            "question_text": TEXTS[2 * (i % 2)],
            "answer_text": TEXTS[2 * (i % 2) + 1],
            "sample_rate": 16_000,
            "question_audio": (rng.standard_normal(8_000 * (i + 1)) * 1000).astype(np.int16),
            "answer_units": list(range(i, i + 5 + 2 * i)),
            "segment_start": 1,
            "segment_end": 3 + i,
            "segment_units": [1, 2, 3][: i + 1],
        }
        for i in range(n)
    ]


def test_s2t_batch(base: Path) -> None:
    from models.presets import resolve_preset
    from models.s2t import build_s2t

    model = build_s2t(resolve_preset("tiny"), base)
    rows = _rows()
    rows[2]["question_audio"] = rows[2]["question_audio"].tolist()  # lists work too
    b = make_collator("s2t", model)(rows)
    chat = model.chat
    P = len(chat.prompt_ids)
    assert b["input_features"].shape == (3, 80, 800)
    assert b["audio_lengths"].tolist() == [25, 50, 75]  # 0.5/1/1.5 s at 50 Hz
    for i, row in enumerate(rows):
        answer = chat.encode(row["answer_text"])
        n = int(b["attention_mask"][i].sum())
        assert b["input_ids"][i, :n].tolist() == [*chat.prompt_ids, *answer, *chat.suffix_ids]
        assert (b["input_ids"][i, n:] == chat.pad_id).all()
        assert (b["labels"][i, :P] == -100).all() and (b["labels"][i, n:] == -100).all()
        assert b["labels"][i, P:n].tolist() == [*answer, *chat.suffix_ids]
        assert b["answer_lengths"][i] == len(answer)
        assert b["input_ids"][i, b["audio_pos"][i]] == chat.audio_id
        q = chat.encode(row["question_text"])
        assert b["ctc_targets"][i, : len(q)].tolist() == q and b["ctc_lengths"][i] == len(q)
    with pytest.raises(InputError, match="question_text"):
        make_collator("s2t", model)([{k: v for k, v in rows[0].items() if k != "question_text"}])
    with pytest.raises(InputError, match="16 kHz"):
        make_collator("s2t", model)([{**rows[0], "sample_rate": 8000}])


def test_t2c_batch_and_cuts(base: Path) -> None:
    from models.presets import resolve_preset
    from models.t2c import build_t2c

    model = build_t2c(resolve_preset("tiny"), base, K)
    rows = _rows()
    b = make_collator("t2c", model)(rows)
    assert b["unit_lengths"].tolist() == [5, 7, 9] and b["unit_eos"].all()
    assert b["units"][0].tolist() == [0, 1, 2, 3, 4] + [K + 2] * 4  # PAD = K + 2
    assert b["text_ids"][1, : b["text_lengths"][1]].tolist() == model.encode(rows[1]["answer_text"])
    small = build_t2c(resolve_preset("tiny", t2c_max_positions=12), base, K)
    cut = make_collator("t2c", small)(rows)
    total = cut["text_lengths"] + 1 + cut["unit_lengths"] + cut["unit_eos"].long()
    assert (total <= 12).all() and not cut["unit_eos"].all()
    small(**cut)  # fits
    rows[0]["answer_units"] = [K]
    with pytest.raises(InputError, match="outside"):
        make_collator("t2c", model)(rows)


def test_echo_batch_and_validation(base: Path) -> None:
    from models.echo import build_echo
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from models.t2c import build_t2c

    preset = resolve_preset("tiny")
    model = build_echo(build_s2t(preset, base), build_t2c(preset, base, K))
    rows = _rows()
    b = make_collator("echo", model)(rows)
    assert b["segment_start"].tolist() == [1, 1, 1] and b["segment_end"].tolist() == [3, 4, 5]
    assert b["segment_unit_lengths"].tolist() == [1, 2, 3] and "input_features" in b
    assert b["segment_units"][0].tolist() == [1, K + 2, K + 2]
    rows[0]["segment_end"] = 99
    with pytest.raises(InputError, match="segment"):
        make_collator("echo", model)(rows)


def test_unit_language_targets(base: Path, tmp_path: Path) -> None:
    from models.echo import build_echo
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from models.t2c import build_t2c
    from tasks.units import UnitLanguage, train_unit_bpe

    word = [4, 11, 25, 7]  # a recurring unit n-gram: BPE merges it into one unit-word
    train_unit_bpe([word * 3, [1, *word, 2], [*word, 9]], 40, tmp_path / "u.json", num_units=K)
    text = (tmp_path / "u.json").read_text()
    lang = UnitLanguage.from_str(text)
    preset = resolve_preset("tiny")
    model = build_t2c(preset, base, K, unit_language=text)
    n = lang.vocab_size
    rows = _rows()
    raw = [word * 2, [1, *word], [3, 3]]  # the last one has no merge: its targets are its units
    for r, u in zip(rows, raw, strict=True):
        r["answer_units"] = r["segment_units"] = u
    b = make_collator("t2c", model)(rows)
    expected = [lang.encode(u) for u in raw]
    assert b["unit_lengths"].tolist() == [len(e) for e in expected]
    assert len(expected[0]) < 8 and len(expected[1]) < 5 and expected[2] == [lang.encode([3])[0]] * 2
    for i, e in enumerate(expected):
        assert b["units"][i, : len(e)].tolist() == e and lang.decode(e) == raw[i]
    valid = torch.arange(b["units"].shape[1])[None, :] < b["unit_lengths"][:, None]  # (B, U)
    assert (b["units"][valid] < n).all() and (b["units"][~valid] == n + 2).all()  # PAD = N + 2
    assert b["units"][0, 0] >= K  # a unit-word id past the K single units
    model(**b)  # the decoder accepts them
    echo = build_echo(build_s2t(preset, base), model)
    e = make_collator("echo", echo)(rows)
    assert e["segment_units"].tolist() == b["units"].tolist()  # same mapping; PAD = N + 2 in both
    rows[0]["answer_units"] = [K]  # raw ids are still checked against K
    with pytest.raises(InputError, match=rf"outside \[0, {K}\)"):
        make_collator("t2c", model)(rows)


def test_errors_and_lengths() -> None:
    with pytest.raises(InputError, match="stage"):
        make_collator("nope", torch.nn.Linear(1, 1))  # type: ignore[arg-type]
    short, long = _rows(2)[0], {**_rows(2)[0], "answer_text": "x" * 400}
    for stage in ("s2t", "t2c", "echo"):
        assert 0 < example_length(short, stage) < example_length(long, stage)
    assert example_length(short, "echo") > example_length(short, "s2t")
