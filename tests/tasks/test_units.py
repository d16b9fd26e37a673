"""Units: k-means on synthetic blobs, codebook artifact, dedup/expand round trip, unit BPE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CheckpointError, InputError
from tasks.shards import file_sha256
from tasks.units import (
    Codebook,
    UnitLanguage,
    dedup,
    expand,
    fit_kmeans,
    label_frames,
    train_unit_bpe,
)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def _blobs(k: int = 5, per: int = 200, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs (centres 20 apart, std 0.5) and their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 20
    labels = np.repeat(np.arange(k), per)
    frames = centres[labels] + 0.5 * rng.standard_normal((k * per, dim))
    order = rng.permutation(labels.size)
    return frames[order].astype(np.float32), labels[order]


def _purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of points whose cluster's majority true label is their own."""
    hits = sum(np.bincount(truth[pred == c]).max() for c in np.unique(pred))
    return hits / truth.size


# --- k-means ----------------------------------------------------------------------------------------


def test_kmeans_recovers_blobs() -> None:
    frames, truth = _blobs()
    centroids = fit_kmeans(frames, 5, seed=0)
    assert centroids.shape == (5, 8) and centroids.dtype == np.float32
    pred = label_frames(frames, centroids)
    assert pred.dtype == np.int32
    assert _purity(pred, truth) == 1.0
    assert len(np.unique(pred)) == 5  # one cluster per blob, none merged


def test_kmeans_is_deterministic_and_seed_dependent() -> None:
    frames, _ = _blobs(k=8, per=50, seed=3)
    a = fit_kmeans(frames, 12, seed=7, iters=5)
    np.testing.assert_array_equal(a, fit_kmeans(frames, 12, seed=7, iters=5))
    assert not np.array_equal(a, fit_kmeans(frames, 12, seed=8, iters=5))


def test_kmeans_subsamples_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.units as units

    monkeypatch.setattr(units, "_CHUNK_ELEMS", 64)  # force many small distance chunks
    frames, truth = _blobs(k=4, per=100)
    centroids = fit_kmeans(frames, 4, max_frames=120)
    assert _purity(label_frames(frames, centroids), truth) == 1.0


def test_kmeans_empty_clusters_are_reseeded() -> None:
    # 3 distinct points repeated: k=3 on heavy duplicates must still give 3 distinct centroids.
    frames = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32), 30, axis=0)
    centroids = fit_kmeans(frames, 3, seed=1)
    assert sorted(map(tuple, centroids.round(4))) == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]


def test_kmeans_reseeds_a_cluster_that_lost_all_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.units as units

    frames, truth = _blobs(k=4, per=50, dim=2, seed=2)
    frames += 200  # keep the blobs far from the origin, where an empty cluster's zero mean would sit
    means = np.stack([frames[truth == c].mean(0) for c in range(3)] + [np.full(2, 5e3)]).astype(np.float32)
    # A bad seeding: blob 3 has no centroid and centroid 3 attracts nothing, so its cluster empties.
    monkeypatch.setattr(units, "_kmeans_pp", lambda x, k, gen: torch.from_numpy(means))
    centroids = fit_kmeans(frames, 4, iters=10)
    assert _purity(label_frames(frames, centroids), truth) == 1.0


def test_kmeans_too_few_frames() -> None:
    frames = np.zeros((7, 4), np.float32)
    with pytest.raises(InputError, match="at least K=10 frames but the sample has only 7"):
        fit_kmeans(frames, 10)
    with pytest.raises(InputError, match="only 5"):
        fit_kmeans(np.random.default_rng(0).random((50, 4)), 10, max_frames=5)


def test_label_dimension_mismatch() -> None:
    with pytest.raises(InputError, match="codebook has dimension 3 but the features have 4"):
        label_frames(np.zeros((5, 4), np.float32), np.zeros((2, 3), np.float32))
    assert label_frames(np.zeros((0, 3), np.float32), np.zeros((2, 3), np.float32)).shape == (0,)


# --- codebook artifact --------------------------------------------------------------------------------


def test_codebook_round_trip_and_stable_sha(tmp_path: Path) -> None:
    frames, _ = _blobs()
    cb = Codebook(fit_kmeans(frames, 5), {"name": "mfcc", "n_mfcc": 13, "deltas": True}, seed=0)
    sha = cb.save(tmp_path / "codebook.npz")
    assert sha == file_sha256(tmp_path / "codebook.npz") == cb.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["codebook.npz"]  # no temp file left behind
    back = Codebook.load(tmp_path / "codebook.npz")
    np.testing.assert_array_equal(back.centroids, cb.centroids)
    assert back.feature_config == cb.feature_config and back.seed == 0
    assert back.num_units == 5 and back.dim == 8
    assert back.save(tmp_path / "again.npz") == sha  # same content, same bytes
    np.testing.assert_array_equal(back.label(frames), label_frames(frames, cb.centroids))
    other = Codebook(cb.centroids, {**cb.feature_config, "cmvn": True}, seed=0)
    assert other.sha256 != sha


def test_codebook_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="codebook not found"):
        Codebook.load(tmp_path / "nope.npz")
    good = tmp_path / "good.npz"
    Codebook(np.eye(3, dtype=np.float32), {"name": "mfcc"}, seed=0).save(good)
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[:-40])
    (tmp_path / "junk.npz").write_bytes(b"garbage" * 10)
    np.savez(tmp_path / "foreign.npz", centroids=np.eye(3))
    for name in ("truncated.npz", "junk.npz", "foreign.npz"):
        with pytest.raises(CheckpointError, match="codebook is corrupt"):
            Codebook.load(tmp_path / name)


# --- dedup / expand ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60))
def test_dedup_expand_round_trip(units: list[int]) -> None:
    u, d = dedup(units)
    assert u.dtype == np.int32 and d.dtype == np.int32
    assert (d >= 1).all() and int(d.sum()) == len(units)
    assert not (u[1:] == u[:-1]).any()
    np.testing.assert_array_equal(expand(u, d), np.asarray(units, dtype=np.int32))


def test_dedup_example_and_errors() -> None:
    u, d = dedup(np.array([3, 3, 3, 1, 1, 3, 7]))
    assert u.tolist() == [3, 1, 3, 7] and d.tolist() == [3, 2, 1, 1]
    with pytest.raises(InputError, match=">= 1"):
        expand([1, 2], [1, 0])
    with pytest.raises(InputError, match="equal length"):
        expand([1, 2], [1])


# --- unit language ----------------------------------------------------------------------------------


def _unit_corpus(n: int = 60, seed: int = 0) -> list[list[int]]:
    """Deduplicated unit sequences built from a few recurring 'syllables', as speech units behave."""
    rng = np.random.default_rng(seed)
    syllables = [[5, 17, 2], [9, 40], [33, 4, 21, 8], [12, 7], [0, 49, 3]]
    seqs = []
    for _ in range(n):
        seq: list[int] = []
        for s in rng.integers(0, len(syllables), size=12):
            seq.extend(syllables[s])
        seqs.append(dedup(seq)[0].tolist())
    return seqs


def test_unit_bpe_round_trip_and_compression(tmp_path: Path) -> None:
    corpus = _unit_corpus()
    path = tmp_path / "unit_lang.json"
    train_unit_bpe(corpus, vocab_size=80, out_path=path, num_units=50)
    lang = UnitLanguage.load(path)
    assert 50 < lang.vocab_size <= 80
    for seq in [*corpus, *_unit_corpus(10, seed=1), [49], []]:
        words = lang.encode(seq)
        assert lang.decode(words) == list(seq)
    assert lang.compression_ratio(corpus) > 1.5
    # Every unit of the alphabet is encodable, even ones the corpus never used.
    assert lang.decode(lang.encode([1, 48, 1])) == [1, 48, 1]
    with pytest.raises(InputError, match="outside this unit language"):
        lang.encode([50])


def test_unit_bpe_errors(tmp_path: Path) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="vocab_size"):
        train_unit_bpe(_unit_corpus(), vocab_size=20, out_path=tmp_path / "u.json")
    with pytest.raises(InputError, match="no unit sequences"):
        train_unit_bpe([], vocab_size=20, out_path=tmp_path / "u.json")
    with pytest.raises(CheckpointError, match="not found"):
        UnitLanguage.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        UnitLanguage.load(tmp_path / "bad.json")
