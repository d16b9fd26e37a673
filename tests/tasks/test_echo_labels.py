"""Echo pseudo-labels: segmenting, Y′ = LM-head argmax, units from the T2C, rejects, retry-safe shards.

The helpers at the top (tiny corpus, tiny S2T + briefly trained T2C checkpoints) are shared with
tests/flows/test_echo_labels.py and tests/tasks/test_speak.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from core.errors import InputError, IntegrityError
from tasks.echo_labels import (
    EchoLabeler,
    checkpoint_hash,
    label_local,
    label_rows,
    labels_table,
    sentence_segments,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TEXTS = [
    "what is the capital of france", "the capital of france is paris.",
    "how many legs does a dog have", "a dog has four legs. it runs fast!",
    "who wrote hamlet", "hamlet was written by william shakespeare.",
]
K = 12
CORPUS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("question_text", pa.string(), nullable=False),
    pa.field("answer_text", pa.string(), nullable=False),
    pa.field("sample_rate", pa.int32(), nullable=False),
    pa.field("question_audio", pa.list_(pa.int16()), nullable=False),
    pa.field("answer_units", pa.list_(pa.int32()), nullable=False),
])


# ----------------------------------------------------------------------------- shared helpers


def tiny_rows(n: int = 6, seed: int = 0) -> list[dict]:
    """Seeded corpus rows: noise question audio (0.5–1 s), QA text, 3–8 answer units."""
    rng = np.random.default_rng(seed)
    return [{"id": f"r{i}", "question_text": TEXTS[2 * (i % 3)], "answer_text": TEXTS[2 * (i % 3) + 1],
             "sample_rate": 16_000,
             "question_audio": (rng.standard_normal(8_000 + 1_500 * i) * 3000).astype(np.int16),
             "answer_units": rng.integers(0, K, 3 + i % 6).astype(np.int32)} for i in range(n)]


def write_tiny_corpus(out: Path, rows: list[dict], shards: int = 2) -> Path:
    """A corpus directory (shards, datasets layout, manifest with the codebook size) of `rows`."""
    from tasks.shards import write_json
    from tests.helpers.dummy_model import write_corpus

    table = pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA)
    write_corpus(out, table, shards=shards)
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(out / "manifest.json", {**manifest, "codebook": {"num_units": K}})
    return out


def tiny_checkpoints(root: Path, rows: list[dict]) -> tuple[Path, Path]:
    """A random-init tiny S2T and a T2C trained 30 steps on `rows` (so it emits EOS), saved under root."""
    from models.io import save_model
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from models.t2c import build_t2c
    from tasks.collate import collate_t2c

    preset = resolve_preset("tiny")
    base = prepare_base_llm(preset, corpus_texts=TEXTS * 3, cache_dir=root / "llm-cache", seed=0)
    torch.manual_seed(0)
    t2c = build_t2c(preset, base, K, seed=0)
    batch = collate_t2c(rows, t2c)
    opt = torch.optim.AdamW([p for p in t2c.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        loss = t2c(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(t2c, root / "t2c")
    save_model(build_s2t(preset, base, seed=0), root / "s2t")
    return root / "s2t", root / "t2c"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny corpus (6 rows, 2 shards) and checkpoints, and a labeler loaded from them."""
    root = tmp_path_factory.mktemp("echo-labels")
    rows = tiny_rows()
    corpus = write_tiny_corpus(root / "corpus", rows)
    s2t, t2c = tiny_checkpoints(root, rows)
    labeler = EchoLabeler(str(s2t), str(t2c), "cpu", 1, batch_size=4, max_units=40)
    return {"root": root, "rows": rows, "corpus": corpus, "s2t": s2t, "t2c": t2c, "labeler": labeler}


# ----------------------------------------------------------------------------- segmenting


def test_sentence_segments_on_constructed_tokens() -> None:
    tokens = ["The", " cat", " sat", ".", " It", " ran", "!", " Why", "?\n", " ok"]
    assert sentence_segments(tokens) == [(0, 4), (4, 7), (7, 9), (9, 10)]
    assert sentence_segments(["a", ".", "b", "."]) == [(0, 2), (2, 4)]  # no empty tail
    assert sentence_segments(["no", " end"]) == [(0, 2)]
    assert sentence_segments([".", ".", "x"]) == [(0, 1), (1, 2), (2, 3)]
    assert sentence_segments(["3", ".", "5"]) == [(0, 2), (2, 3)]  # documented: no number rule
    assert sentence_segments([]) == []


# ----------------------------------------------------------------------------- Y′ and units


def _independent_echo(s2t, row: dict) -> list[int]:
    """Y′ without the collator or the models' own gather: the LM over [prompt + speech, gold answer]."""
    gold = s2t.chat.encode(row["answer_text"])
    with torch.no_grad():
        prompt = s2t.prompt_embeddings(row["question_audio"])  # (1, P, H)
        answer = s2t.llm.get_input_embeddings()(torch.tensor([gold]))  # (1, A, H)
        logits = s2t.llm(inputs_embeds=torch.cat([prompt, answer], 1)).logits  # (1, P + A, V)
    p = prompt.shape[1]
    return logits[0, p - 1: p - 1 + len(gold)].argmax(-1).tolist()  # position p-1+t predicts token t


def test_echo_is_the_lm_head_argmax_and_units_come_from_the_t2c(env: dict) -> None:
    lab, rows = env["labeler"], env["rows"]
    result = lab.label(rows)
    assert len(result.records) + len(result.rejects) == len(rows) and result.records
    labels_table(result.records)  # validates against the schema
    for rec in result.records:
        row = next(r for r in rows if r["id"] == rec["id"])
        assert rec["echo_token_ids"] == _independent_echo(lab.s2t, row)
        gold = lab.s2t.chat.encode(row["answer_text"])
        assert rec["answer_token_ids"] == gold
        hits = np.mean(np.array(rec["echo_token_ids"]) == np.array(gold))
        assert rec["token_accuracy"] == pytest.approx(hits)
        pieces = [lab.s2t.chat.decode([t]) for t in rec["echo_token_ids"]]
        spans = sentence_segments(pieces)
        assert list(zip(rec["segment_start"], rec["segment_end"], strict=True)) == spans
        for (a, b), units in zip(spans, rec["segment_units"], strict=True):
            alone = lab.t2c.generate_units([rec["echo_token_ids"][a:b]], max_units=40)[0]
            assert units == alone.units and not alone.truncated


def test_constructed_echo_is_cut_and_every_segment_gets_t2c_units(env: dict, monkeypatch) -> None:
    lab, rows = env["labeler"], env["rows"][:3]
    chat = lab.s2t.chat
    period, bang = chat.encode(".")[0], chat.encode("!")[0]
    w = chat.encode("the capital of france")
    n = [len(chat.encode(r["answer_text"])) for r in rows]
    echo = [[w[0], w[1], period] + [w[2]] * (n[0] - 3),  # two segments: [0, 3), [3, n)
            [w[0]] * (n[1] - 1) + [bang],  # one segment, closed by "!"
            [period] + [w[1]] * (n[2] - 2) + [period]]  # [0, 1), [1, n)
    monkeypatch.setattr("tasks.echo_labelling.echo_token_ids", lambda s2t, rs: echo[: len(rs)])
    result = label_rows(lab.s2t, lab.t2c, rows, max_units=40)
    assert not result.rejects, result.rejects
    got = {r["id"]: r for r in result.records}
    spans = {rid: list(zip(got[rid]["segment_start"], got[rid]["segment_end"], strict=True)) for rid in got}
    assert spans == {"r0": [(0, 3), (3, n[0])], "r1": [(0, n[1])], "r2": [(0, 1), (1, n[2])]}
    pieces = [e[a:b] for e, rid in zip(echo, ("r0", "r1", "r2"), strict=True) for a, b in spans[rid]]
    expected = [g.units for g in lab.t2c.generate_units(pieces, max_units=40)]
    assert [u for rid in ("r0", "r1", "r2") for u in got[rid]["segment_units"]] == expected
    assert got["r0"]["segment_text"] == [chat.decode(echo[0][:3]), chat.decode(echo[0][3:])]
    assert got["r1"]["token_accuracy"] == pytest.approx(
        np.mean(np.array(echo[1]) == np.array(chat.encode(rows[1]["answer_text"]))))


def test_length_guard_and_bad_rows_become_rejects(env: dict) -> None:
    lab = env["labeler"]
    free = {r["id"]: max(map(len, r["segment_units"])) for r in lab.label(env["rows"]).records}
    guard = min(free.values())  # rows needing more units than the shortest row's longest segment hit it
    over = {rid for rid, n in free.items() if n > guard}
    assert over and len(over) < len(free), free  # a mix of kept and rejected rows
    rows = [*env["rows"], {**env["rows"][0], "id": "silent", "question_audio": np.zeros(0, np.int16)}]
    tight = copy.copy(lab)  # the same loaded models, a tighter guard
    tight.max_units = guard
    result = tight.label(rows)
    rejected = {rows[i]["id"]: reason for i, reason in result.rejects}
    assert len(result.records) + len(rejected) == len(rows) and result.stats.rejected == len(rejected)
    assert "question_audio" in rejected.pop("silent")  # the collator's reason, row found one by one
    assert set(rejected) == over
    pattern = rf"T2C hit the length guard of {guard} units on segment \d+"
    assert all(re.fullmatch(pattern, r) for r in rejected.values()), rejected
    for rec in result.records:  # what was kept fits the guard and equals the unguarded labels
        assert max(map(len, rec["segment_units"])) == free[rec["id"]] <= guard
    alone = copy.copy(tight)
    alone.batch_size = 1  # a bad row in a batch of its own is a reject too, not a failed shard
    assert [reason for _, reason in alone.label(rows[-2:]).rejects][-1] == result.rejects[-1][1]


# ----------------------------------------------------------------------------- shards


def test_label_shard_is_verified_atomic_and_skipped_when_done(env: dict, tmp_path: Path) -> None:
    from tasks.data import shard_entries
    from tasks.shards import file_sha256, read_arrow

    lab, corpus = env["labeler"], env["corpus"]
    shard = shard_entries(corpus)[1]
    out = tmp_path / "echo-00001.arrow"
    args = (str(corpus / shard["path"]), str(out))
    entry = lab.label_shard(*args, sha256=shard["sha256"], first_row=3, run_hash="h")
    assert not entry["skipped"] and entry["sha256"] == file_sha256(out)
    assert entry["num_rows"] + len(entry["rejects"]) == shard["num_rows"] == entry["input_rows"]
    assert all(r["stage"] == "echo" and r["line"] >= 3 for r in entry["rejects"])
    rejected = {r["id"] for r in entry["rejects"]}
    kept = [f"r{i}" for i in range(3, 6) if f"r{i}" not in rejected]
    assert read_arrow(out).column("id").to_pylist() == kept
    assert lab.label_shard(*args, sha256=shard["sha256"], first_row=3, run_hash="h")["skipped"]
    assert not lab.label_shard(*args, sha256=shard["sha256"], first_row=3, run_hash="other")["skipped"]
    out.write_bytes(out.read_bytes()[:-8])  # a torn output is redone, not trusted
    assert not lab.label_shard(*args, sha256=shard["sha256"], first_row=3, run_hash="other")["skipped"]
    with pytest.raises(IntegrityError):
        lab.label_shard(*args, sha256="0" * 64, run_hash="third")


def test_label_local_output_opens_with_datasets_and_refuses_another_run(env: dict, tmp_path: Path) -> None:
    import datasets

    from tasks.data import echo_examples

    out = tmp_path / "labels"
    manifest = label_local(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(out),
                           batch_size=4, max_units=40)
    ds = datasets.load_from_disk(str(out))
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert len(ds) == manifest["totals"]["rows"] and len(ds) + len(rejects) == 6
    assert manifest["checkpoints"]["s2t"]["sha256"] == checkpoint_hash(env["s2t"], "s2t")["sha256"]
    assert manifest["totals"]["segments"] == sum(len(s) for s in ds["segment_start"])
    examples = echo_examples(env["corpus"], out)
    assert len(examples) == manifest["totals"]["segments"]
    assert {"segment_start", "segment_end", "segment_units", "question_audio"} <= set(examples[0])
    with pytest.raises(InputError, match="overwrite"):
        label_local(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(out), max_units=7)
    # the same run again is recognised as done
    assert label_local(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(out),
                       batch_size=4, max_units=40) == manifest


def test_a_corrupt_corpus_shard_is_refused_before_labelling(env: dict, tmp_path: Path) -> None:
    import shutil

    corpus = shutil.copytree(env["corpus"], tmp_path / "corpus")
    shard = sorted(corpus.glob("*.arrow"))[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(IntegrityError, match="corrupt"):
        label_local(str(corpus), str(env["s2t"]), str(env["t2c"]), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_checkpoint_hash_names_the_wrong_stage(env: dict) -> None:
    from core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="t2c model"):
        checkpoint_hash(env["t2c"], "s2t")
