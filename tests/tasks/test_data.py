"""Training rows from corpus directories: integrity, int16 audio, echo-label joins, per-rank batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError, IntegrityError
from tasks.data import echo_examples, load_corpus, rank_batches
from tests.helpers.dummy_model import corpus_table, write_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, pa.Table]:
    """A 10-row corpus in 2 shards, with its source table."""
    table = corpus_table(10, seed=3)
    return write_corpus(tmp_path / "corpus", table, shards=2), table


def test_rows_roundtrip_keeps_int16_audio_and_order(corpus: tuple[Path, pa.Table]) -> None:
    path, table = corpus
    rows = load_corpus(path)
    assert len(rows) == 10
    for i, row in enumerate(rows):
        audio = row["question_audio"]
        assert audio.dtype == np.int16 and row["answer_units"].dtype == np.int32
        np.testing.assert_array_equal(audio, np.asarray(table.column("question_audio")[i].as_py(), np.int16))
        assert row["id"] == f"r{i:04d}"
    assert rows[-1]["id"] == "r0009"
    with pytest.raises(IndexError):
        rows[10]


def test_datasets_opens_the_same_directory(corpus: tuple[Path, pa.Table]) -> None:
    import datasets

    path, _ = corpus
    ds = datasets.load_from_disk(str(path))
    assert ds["id"] == [r["id"] for r in load_corpus(path)]


def test_lazy_row_converts_only_what_is_read(corpus: tuple[Path, pa.Table]) -> None:
    path, _ = corpus
    row = load_corpus(path).lazy_row(2)
    assert len(row["answer_units"]) == len(load_corpus(path)[2]["answer_units"])
    assert set(row) == {"id", "question_audio", "answer_units"}
    assert list(row._cache) == ["answer_units"]  # the audio column was never converted


def test_corrupt_shard_is_named(corpus: tuple[Path, pa.Table]) -> None:
    path, _ = corpus
    shard = path / "data-00001-of-00002.arrow"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"data-00001-of-00002\.arrow"):
        load_corpus(path)
    assert len(load_corpus(path, verify=False)) == 10  # unverified reads still see the bytes


def test_missing_manifest_and_row_count_mismatch(corpus: tuple[Path, pa.Table], tmp_path: Path) -> None:
    path, _ = corpus
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][0]["num_rows"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="rows"):
        load_corpus(path)
    (path / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest"):
        load_corpus(path)
    with pytest.raises(InputError, match="not found"):
        load_corpus(tmp_path / "nowhere")


def _labels(ids: list[str], segments: list[int], **extra: list) -> pa.Table:
    """Echo labels with list-valued segment columns: segment k of a row spans [k, k+1) and has units [k]*k."""
    return pa.table({
        "id": ids,
        "echo_text": [f"echo {i}" for i in ids],
        "segment_start": pa.array([list(range(n)) for n in segments], pa.list_(pa.int32())),
        "segment_end": pa.array([[k + 1 for k in range(n)] for n in segments], pa.list_(pa.int32())),
        "segment_units": pa.array([[[k] * (k + 1) for k in range(n)] for n in segments],
                                  pa.list_(pa.list_(pa.int32()))),
        **extra,
    })


def test_echo_examples_one_per_segment(corpus: tuple[Path, pa.Table], tmp_path: Path) -> None:
    path, table = corpus
    labels = write_corpus(tmp_path / "labels", _labels(["r0003", "r0000", "r0007"], [2, 1, 3]), shards=2)
    examples = echo_examples(path, labels)
    assert len(examples) == 6
    got = [(e["id"], e["segment_index"], e["segment_start"], e["segment_end"]) for e in examples]
    assert got == [("r0003", 0, 0, 1), ("r0003", 1, 1, 2), ("r0000", 0, 0, 1),
                   ("r0007", 0, 0, 1), ("r0007", 1, 1, 2), ("r0007", 2, 2, 3)]
    last = examples[5]
    np.testing.assert_array_equal(last["segment_units"], [2, 2, 2])
    assert last["echo_text"] == "echo r0007"
    np.testing.assert_array_equal(last["answer_units"], table.column("answer_units")[7].as_py())
    assert last["question_audio"].dtype == np.int16


def test_echo_examples_reject_bad_labels(corpus: tuple[Path, pa.Table], tmp_path: Path) -> None:
    path, _ = corpus
    unknown = write_corpus(tmp_path / "unknown", _labels(["r0001", "zzz"], [1, 1]), shards=1)
    with pytest.raises(IntegrityError, match="zzz"):
        echo_examples(path, unknown)
    uneven = _labels(["r0001"], [2]).set_column(2, "segment_start", pa.array([[0]], pa.list_(pa.int32())))
    with pytest.raises(IntegrityError, match="r0001"):
        echo_examples(path, write_corpus(tmp_path / "uneven", uneven, shards=1))
    clash = _labels(["r0001"], [1], answer_units=pa.array([[1]], pa.list_(pa.int32())))
    with pytest.raises(IntegrityError, match="answer_units"):
        echo_examples(path, write_corpus(tmp_path / "clash", clash, shards=1))


def test_echo_examples_one_row_per_segment_layout(corpus: tuple[Path, pa.Table], tmp_path: Path) -> None:
    path, _ = corpus
    flat = pa.table({"id": ["r0002", "r0002", "r0005"], "segment_start": [0, 4, 0],
                     "segment_units": pa.array([[1, 2], [3], [4]], pa.list_(pa.int32()))})
    examples = echo_examples(path, write_corpus(tmp_path / "flat", flat, shards=1))
    assert [(e["id"], e["segment_start"]) for e in examples] == [("r0002", 0), ("r0002", 4), ("r0005", 0)]
    np.testing.assert_array_equal(examples[0]["segment_units"], [1, 2])


def _all_ranks(lengths: list[int], world: int, **kw: int) -> list[list[list[int]]]:
    """rank_batches for every rank."""
    return [rank_batches(lengths, rank=r, world_size=world, **kw) for r in range(world)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), world=st.integers(1, 4), batch=st.integers(1, 9), bucket=st.integers(1, 64),
       seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_rank_batches_disjoint_cover_equal(n: int, world: int, batch: int, bucket: int, seed: int,
                                           epoch: int) -> None:
    if n < world:
        return
    lengths = [(i * 7919) % 50 for i in range(n)]
    kw = {"batch_size": batch, "seed": seed, "epoch": epoch, "bucket_size": bucket}
    ranks = _all_ranks(lengths, world, **kw)
    flat = [[i for b in batches for i in b] for batches in ranks]
    seen = [i for f in flat for i in f]
    assert len(seen) == len(set(seen)), "ranks overlap"
    assert len(seen) == n - n % world, "drop policy: only n mod world examples are left out"
    assert len({len(b) for b in ranks}) == 1, "every rank has the same number of batches"
    for step in range(len(ranks[0])):
        sizes = {len(batches[step]) for batches in ranks}
        assert len(sizes) == 1 and 1 <= sizes.pop() <= batch
    assert ranks == _all_ranks(lengths, world, **kw)  # deterministic


def test_rank_batches_shuffle_per_epoch_and_seed() -> None:
    lengths = list(range(200))
    kw = {"batch_size": 4, "rank": 0, "world_size": 2, "bucket_size": 40}
    base = rank_batches(lengths, seed=1, epoch=0, **kw)
    assert rank_batches(lengths, seed=1, epoch=1, **kw) != base
    assert rank_batches(lengths, seed=2, epoch=0, **kw) != base


def test_rank_batches_bucket_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=512).tolist()
    ranks = _all_ranks(lengths, 2, batch_size=8, seed=0, epoch=0, bucket_size=128)
    spread = [np.ptp([lengths[i] for i in b]) for b in ranks[0]]
    random_batches = rng.permutation(512)[:256].reshape(-1, 8)
    random_spread = [np.ptp([lengths[i] for i in b]) for b in random_batches]
    assert np.mean(spread) < 0.25 * np.mean(random_spread)
    # The same step on both ranks draws from one global batch: lengths match closely across ranks.
    for a, b in zip(ranks[0], ranks[1], strict=True):
        assert abs(np.mean([lengths[i] for i in a]) - np.mean([lengths[i] for i in b])) < 0.25 * np.mean(
            random_spread)


def test_rank_batches_bad_arguments() -> None:
    with pytest.raises(InputError):
        rank_batches([1], batch_size=1, rank=0, world_size=2, seed=0, epoch=0, bucket_size=1)
    with pytest.raises(InputError):
        rank_batches([1, 2], batch_size=1, rank=2, world_size=2, seed=0, epoch=0, bucket_size=1)
    with pytest.raises(InputError):
        rank_batches([1, 2], batch_size=0, rank=0, world_size=1, seed=0, epoch=0, bucket_size=1)
