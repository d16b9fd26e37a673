"""Corpus build stages as plain functions over shards: synthesize, fit the codebook, label.

Every stage is retry-safe: outputs are written to a temp name and renamed, a done-marker with
their sha256 is written last, and a stage whose verified output exists is skipped. The driver's side
(checking inputs and planning, finalizing) lives in tasks/corpus_plan.py and tasks/corpus_finalize.py;
this module re-exports it, so `tasks.build_corpus` is the one name the flow needs.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_specs import corpus as corpus_spec
from data_specs.rejects import Reject
from echox.config import BuildCorpusConfig
from echox.errors import EchoxError, InputError, RecordRejected
from tasks.corpus_finalize import (  # noqa: F401 - re-exported for the flow
    check_codebook_frames,
    collect_rejects,
    finalize_build,
    reason_key,
    rebuilt_files,
    reject_fraction_problem,
    reject_summary,
)
from tasks.corpus_paths import (  # noqa: F401 - re-exported for the flow and tests
    FAULT_ENV,
    BuildPaths,
    config_hash,
    feature_spec,
    inject_fault,
    load_plan,
    remove_stale_temps,
    shard_count,
    shard_of,
    shard_sizes,
)
from tasks.corpus_plan import (  # noqa: F401 - re-exported for the flow, CLI and tests
    BuildInputs,
    inspect_build,
    normalise_records,
    plan_build,
)
from tasks.out_dir import acquire_lock, check_out_path  # noqa: F401 - re-exported for the flow
from tasks.shards import (
    atomic_write,
    file_sha256,
    file_verifies,
    read_arrow,
    write_arrow,
    write_json,
)

SAMPLE_RATE = corpus_spec.SAMPLE_RATE


# ---------------------------------------------------------------- per-worker models (loaded once)
@functools.cache
def _tts(name: str, threads: int | None) -> Any:
    from tasks.tts import make_tts

    return make_tts(name, threads=threads) if name == "piper" else make_tts(name)


@functools.cache
def _features(spec_json: str) -> Any:
    from tasks.features import make_features

    spec = json.loads(spec_json)
    return make_features(spec.pop("name"), **spec)


def _threads(cfg: BuildCorpusConfig) -> int:
    return cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.workers)


def worker_setup(cfg: BuildCorpusConfig) -> None:
    """Pin this worker's compute threads (torch; onnxruntime is pinned where the voice loads)."""
    import torch

    torch.set_num_threads(_threads(cfg))


# ---------------------------------------------------------------- stage 1: speech and features
def synthesize_record(rec: dict, cfg: BuildCorpusConfig, tts: Any, voices: list[str]) -> dict:
    """Speech for one record's question and answer; RecordRejected when it cannot be used."""
    from tasks.tts import choose_voice

    voice = rec["voice"] or choose_voice(rec["id"], voices, cfg.seed)
    q_audio = tts.synthesize(rec["question_text"], voice)
    if len(q_audio) > cfg.max_question_seconds * SAMPLE_RATE:
        raise RecordRejected(f"question speech lasts {len(q_audio) / SAMPLE_RATE:.1f} s, longer than "
                             f"the speech encoder's {cfg.max_question_seconds:.0f} s window")
    a_audio = tts.synthesize(rec["answer_text"], voice)
    if len(a_audio) > cfg.max_answer_seconds * SAMPLE_RATE:
        raise RecordRejected(f"answer speech lasts {len(a_audio) / SAMPLE_RATE:.1f} s, "
                             f"longer than {cfg.max_answer_seconds:.0f} s")
    for what, audio in (("question", q_audio), ("answer", a_audio)):
        if len(audio) < 0.2 * SAMPLE_RATE or not np.abs(audio).max(initial=0) > 0:
            raise RecordRejected(f"{what} speech is empty or silent")
    return {**rec, "voice": voice, "question_audio": q_audio, "answer_audio": a_audio}


def _stage1_table(rows: list[dict]) -> pa.Table:
    cols = ["id", "line", "question_text", "answer_text", "question_original", "answer_original", "voice"]
    data: dict[str, Any] = {c: [r[c] for r in rows] for c in cols}
    data["aliases"] = pa.array([r["aliases"] for r in rows], pa.list_(pa.string()))
    data["extra"] = [json.dumps(r["extra"], sort_keys=True, ensure_ascii=False) for r in rows]
    for c in ("question_audio", "answer_audio"):
        data[c] = pa.array([r[c] for r in rows], pa.list_(pa.int16()))
    return pa.table(data)


def _save_feats(path: Path, feats: list[np.ndarray]) -> None:
    lengths = np.array([len(f) for f in feats], dtype=np.int64)
    dim = feats[0].shape[1] if feats else 0
    stacked = np.concatenate(feats).astype(np.float16) if feats else np.zeros((0, dim), np.float16)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, frames=stacked, lengths=lengths)

    atomic_write(path, _write)


def load_feats(path: Path) -> list[np.ndarray]:
    """Per-utterance frame features saved by stage 1 (question, answer, question, answer, ...)."""
    with np.load(path) as z:
        frames, lengths = z["frames"], z["lengths"]
    return np.split(frames.astype(np.float32), np.cumsum(lengths)[:-1]) if len(lengths) else []


def _stage1_verifies(paths: BuildPaths, i: int) -> dict | None:
    done = paths.stage1_done(i)
    if not done.exists():
        return None
    marker = json.loads(done.read_text())
    ok = file_verifies(paths.audio(i), marker["audio_sha256"]) and file_verifies(
        paths.feats(i), marker["feats_sha256"])
    return marker if ok else None


def _damaged(paths: BuildPaths, recorded: dict[Path, str]) -> list[str]:
    """The files a done marker recorded (path → sha256) that are missing or corrupt now."""
    return [str(f.relative_to(paths.out)) for f, sha in recorded.items() if not file_verifies(f, sha)]


def _stage1_damaged(paths: BuildPaths, shard: int) -> list[str]:
    done = paths.stage1_done(shard)
    if not done.exists():
        return []
    marker = json.loads(done.read_text())
    return _damaged(paths, {paths.audio(shard): marker["audio_sha256"],
                            paths.feats(shard): marker["feats_sha256"]})


def synthesize_shard(cfg: BuildCorpusConfig, shard: int) -> dict:
    """Stage 1 of one shard: TTS for every record, frame features, rejects; skipped when done.

    A shard recorded done whose files fail their sha256 is rebuilt, and the result says so ("rebuilt").
    """
    paths = BuildPaths(Path(cfg.out))
    marker = _stage1_verifies(paths, shard)
    if marker is not None:
        return marker
    rebuilt = _stage1_damaged(paths, shard)
    inject_fault(paths, f"synthesize-shard-{shard}")
    worker_setup(cfg)
    tts = _tts(cfg.tts, _threads(cfg))
    feats_backend = _features(json.dumps(feature_spec(cfg), sort_keys=True))
    voices = list(cfg.voices or tts.voices())
    rows, feats, rejects = [], [], []
    for rec in load_plan(paths, shard):
        try:
            row = synthesize_record(rec, cfg, tts, voices)
        except RecordRejected as e:
            rejects.append(Reject(rec["line"], rec["id"], e.reason, stage="tts").to_dict())
            continue
        rows.append(row)
        feats += [feats_backend.extract(row["question_audio"]), feats_backend.extract(row["answer_audio"])]
    audio_entry = write_arrow(paths.audio(shard), _stage1_table(rows))
    _save_feats(paths.feats(shard), feats)
    seconds = sum(len(r["question_audio"]) + len(r["answer_audio"]) for r in rows) / SAMPLE_RATE
    marker = {"shard": shard, "rows": len(rows), "rejects": rejects, "audio_seconds": seconds,
              "frames": sum(len(f) for f in feats),
              "audio_sha256": audio_entry["sha256"], "feats_sha256": file_sha256(paths.feats(shard))}
    write_json(paths.stage1_done(shard), marker)
    return {**marker, "rebuilt": rebuilt} if rebuilt else marker


# ---------------------------------------------------------------- stage 2: the codebook
def sample_frames(paths: BuildPaths, num_shards: int, max_frames: int, seed: int) -> np.ndarray:
    """A seeded sample of frames spread evenly over the shards."""
    per_shard = max(1, max_frames // max(num_shards, 1))
    parts = []
    for i in range(num_shards):
        feats = load_feats(paths.feats(i))
        if not feats:
            continue
        frames = np.concatenate(feats)
        rng = np.random.default_rng([seed, i])
        take = rng.choice(len(frames), size=min(per_shard, len(frames)), replace=False)
        parts.append(frames[np.sort(take)])
    if not parts:
        raise InputError("no speech frames to fit the codebook on: every record was rejected")
    return np.concatenate(parts)


def fit_codebook(cfg: BuildCorpusConfig, num_shards: int) -> str:
    """Fit k-means on sampled frames (or adopt --codebook); return the codebook's sha256."""
    from tasks.units import Codebook, fit_kmeans

    paths = BuildPaths(Path(cfg.out))
    spec = _features(json.dumps(feature_spec(cfg), sort_keys=True)).config()
    if cfg.codebook:
        book = Codebook.load(Path(cfg.codebook))
        if book.feature_config != spec:
            raise InputError(f"codebook {cfg.codebook} was fitted on features {book.feature_config}, "
                             f"but this build extracts {spec}")
        return book.save(paths.codebook)
    marker = paths.work / "codebook.done.json"
    if marker.exists() and file_verifies(paths.codebook, json.loads(marker.read_text())["sha256"]):
        return json.loads(marker.read_text())["sha256"]
    worker_setup(cfg)
    frames = sample_frames(paths, num_shards, cfg.kmeans_max_frames, cfg.seed)
    centroids = fit_kmeans(frames, cfg.num_units, seed=cfg.seed, iters=cfg.kmeans_iters,
                           max_frames=cfg.kmeans_max_frames)
    sha = Codebook(centroids=centroids, feature_config=spec, seed=cfg.seed).save(paths.codebook)
    write_json(marker, {"sha256": sha, "frames": len(frames), "k": cfg.num_units})
    return sha


# ---------------------------------------------------------------- stage 3: units and corpus shards
@functools.cache
def _centroids(path: str, sha: str) -> np.ndarray:
    from tasks.units import Codebook

    return Codebook.load(Path(path)).centroids


def units_of(frames: np.ndarray, centroids: np.ndarray) -> tuple[list[int], list[int]]:
    """Deduplicated units and their durations for one utterance."""
    from tasks.units import dedup, label_frames

    units, durations = dedup(label_frames(frames, centroids))
    return units.tolist(), durations.tolist()


def corpus_table(audio: pa.Table, feats: list[np.ndarray], centroids: np.ndarray) -> pa.Table:
    """The final corpus table of one shard, in the schema of data_specs.corpus."""
    n = audio.num_rows
    q_units = [units_of(feats[2 * k], centroids) for k in range(n)]
    a_units = [units_of(feats[2 * k + 1], centroids) for k in range(n)]
    q_secs = [len(a) / SAMPLE_RATE for a in audio.column("question_audio").to_pylist()] if n else []
    a_secs = [len(a) / SAMPLE_RATE for a in audio.column("answer_audio").to_pylist()] if n else []
    cols = {
        **{c: audio.column(c) for c in ("id", "question_text", "answer_text", "question_original",
                                        "answer_original", "aliases", "voice")},
        "sample_rate": pa.array([SAMPLE_RATE] * n, pa.int32()),
        "question_audio": audio.column("question_audio"),
        "answer_audio": audio.column("answer_audio"),
        "question_seconds": pa.array(q_secs, pa.float32()),
        "answer_seconds": pa.array(a_secs, pa.float32()),
        "answer_units": pa.array([u for u, _ in a_units], pa.list_(pa.int32())),
        "answer_durations": pa.array([d for _, d in a_units], pa.list_(pa.int32())),
        "question_units": pa.array([u for u, _ in q_units], pa.list_(pa.int32())),
        "question_durations": pa.array([d for _, d in q_units], pa.list_(pa.int32())),
        "extra": audio.column("extra"),
    }
    return pa.table(cols, schema=corpus_spec.SCHEMA)


def label_shard(cfg: BuildCorpusConfig, shard: int, codebook_sha: str) -> dict:
    """Stage 3 of one shard: label frames with the codebook, dedup, write the corpus shard."""
    paths = BuildPaths(Path(cfg.out))
    done = paths.shard_done(shard)
    rebuilt = []
    if done.exists():
        entry = json.loads(done.read_text())
        if entry["codebook_sha256"] == codebook_sha:
            if file_verifies(paths.shard(shard), entry["sha256"]):
                return entry
            rebuilt = _damaged(paths, {paths.shard(shard): entry["sha256"]})
    inject_fault(paths, f"label-shard-{shard}")
    marker = _stage1_verifies(paths, shard)
    if marker is None:
        raise EchoxError(f"stage-1 output of shard {shard} is missing or corrupt; rerun the build")
    audio = read_arrow(paths.audio(shard))
    table = corpus_table(audio, load_feats(paths.feats(shard)), _centroids(str(paths.codebook), codebook_sha))
    corpus_spec.validate(table)
    entry = {**write_arrow(paths.shard(shard), table), "shard": shard, "codebook_sha256": codebook_sha,
             "audio_seconds": marker["audio_seconds"]}
    write_json(done, entry)
    return {**entry, "rebuilt": rebuilt} if rebuilt else entry
