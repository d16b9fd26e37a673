"""Corpus build stages as plain functions over shards: synthesize, fit the codebook, label.

Every stage is retry-safe: outputs are written to a temp name and renamed, a done-marker with
their sha256 is written last, and a stage whose verified output exists is skipped. A shard task gets
its shard's paths (ShardPaths: its own plan file in, its files out) and small option objects built
once by the driver from the config (SynthesisOptions, CodebookOptions), never the config. The driver's side
(checking inputs and planning, finalizing) lives in tasks/corpus_plan.py and tasks/corpus_finalize.py;
this module re-exports it, so `tasks.build_corpus` is the one name the flow needs.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import EchoxError, InputError, RecordRejected
from data_specs import corpus as corpus_spec
from data_specs.rejects import Reject
from tasks.asr import ASR_COLUMNS, check_row, tally
from tasks.backends import FEATURE_EXTRACTORS, RECOGNISERS, TTS_ENGINES, Choice
from tasks.configs import BuildCorpusConfig
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
    ShardPaths,
    config_hash,
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


# ---------------------------------------------------------------- what the shard tasks are given
@dataclass(frozen=True)
class Compute:
    """How many compute threads a task runs on its node."""

    workers: int
    threads_per_worker: int | None = None

    def threads(self) -> int:
        """threads_per_worker, else this node's cores shared among the workers."""
        return self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)


def fit_threads(workers: int, threads: int, node_cpus: int) -> int:
    """Threads (and reserved CPUs) of the codebook fit: every CPU the build's workers use, within one node."""
    return max(1, min(node_cpus, workers * threads))


@dataclass(frozen=True)
class SynthesisOptions:
    """What stage 1 of every shard needs: the backends, voice choice, length limits and the ASR gate."""

    tts: Choice
    features: Choice
    voices: tuple[str, ...] | None
    seed: int
    max_question_seconds: float
    max_answer_seconds: float
    compute: Compute
    asr: Choice | None = None  # the recogniser of --asr-check; None: no ASR columns, no gate
    max_asr_wer: float | None = None

    @classmethod
    def of(cls, cfg: BuildCorpusConfig) -> SynthesisOptions:
        """The stage-1 options of a build."""
        return cls(cfg.tts_choice(), cfg.feature_choice(), tuple(cfg.voices) if cfg.voices else None,
                   cfg.seed, cfg.max_question_seconds, cfg.max_answer_seconds,
                   Compute(cfg.workers, cfg.threads_per_worker), cfg.asr_choice(), cfg.max_asr_wer)


@dataclass(frozen=True)
class CodebookOptions:
    """What stage 2 needs: the features (to record them), a codebook to reuse, or how to fit one."""

    features: Choice
    reuse: Path | None
    num_units: int
    max_frames: int
    iters: int
    seed: int
    compute: Compute

    @classmethod
    def of(cls, cfg: BuildCorpusConfig) -> CodebookOptions:
        """The stage-2 options of a build."""
        return cls(cfg.feature_choice(), Path(cfg.codebook) if cfg.codebook else None, cfg.num_units,
                   cfg.kmeans_max_frames, cfg.kmeans_iters, cfg.seed,
                   Compute(cfg.workers, cfg.threads_per_worker))


# ---------------------------------------------------------------- per-worker models (loaded once)
@functools.cache
def _tts(choice: Choice, threads: int) -> Any:
    return TTS_ENGINES.create(choice, threads)


@functools.cache
def _features(choice: Choice) -> Any:
    return FEATURE_EXTRACTORS.create(choice)


@functools.cache
def _asr(choice: Choice) -> Any:
    return RECOGNISERS.create(choice)


def worker_setup(compute: Compute) -> None:
    """Pin this worker's compute threads (torch; onnxruntime is pinned where the voice loads)."""
    import torch

    torch.set_num_threads(compute.threads())


# ---------------------------------------------------------------- stage 1: speech and features
def synthesize_record(rec: dict, opts: SynthesisOptions, tts: Any, voices: list[str]) -> dict:
    """Speech for one record's question and answer; RecordRejected when it cannot be used."""
    from tasks.tts import choose_voice

    voice = rec["voice"] or choose_voice(rec["id"], voices, opts.seed)
    q_audio = tts.synthesize(rec["question_text"], voice)
    if len(q_audio) > opts.max_question_seconds * SAMPLE_RATE:
        raise RecordRejected(f"question speech lasts {len(q_audio) / SAMPLE_RATE:.1f} s, longer than "
                             f"the speech encoder's {opts.max_question_seconds:.0f} s window")
    a_audio = tts.synthesize(rec["answer_text"], voice)
    if len(a_audio) > opts.max_answer_seconds * SAMPLE_RATE:
        raise RecordRejected(f"answer speech lasts {len(a_audio) / SAMPLE_RATE:.1f} s, "
                             f"longer than {opts.max_answer_seconds:.0f} s")
    for what, audio in (("question", q_audio), ("answer", a_audio)):
        if len(audio) < 0.2 * SAMPLE_RATE or not np.abs(audio).max(initial=0) > 0:
            raise RecordRejected(f"{what} speech is empty or silent")
    return {**rec, "voice": voice, "question_audio": q_audio, "answer_audio": a_audio}


def _stage1_table(rows: list[dict], asr: bool) -> pa.Table:
    cols = ["id", "line", "question_text", "answer_text", "question_original", "answer_original", "voice"]
    cols += ["question_asr_text", "answer_asr_text"] if asr else []
    data: dict[str, Any] = {c: [r[c] for r in rows] for c in cols}
    data["aliases"] = pa.array([r["aliases"] for r in rows], pa.list_(pa.string()))
    data["extra"] = [json.dumps(r["extra"], sort_keys=True, ensure_ascii=False) for r in rows]
    for c in ("question_audio", "answer_audio"):
        data[c] = pa.array([r[c] for r in rows], pa.list_(pa.int16()))
    for c in ("question_asr_wer", "answer_asr_wer") if asr else ():
        data[c] = pa.array([r[c] for r in rows], pa.float32())
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


def _stage1_verifies(shard: ShardPaths) -> dict | None:
    if not shard.stage1_done.exists():
        return None
    marker = json.loads(shard.stage1_done.read_text())
    ok = file_verifies(shard.audio, marker["audio_sha256"]) and file_verifies(
        shard.feats, marker["feats_sha256"])
    return marker if ok else None


def _damaged(out: Path, recorded: dict[Path, str]) -> list[str]:
    """The files a done marker recorded (path → sha256) that are missing or corrupt now."""
    return [str(f.relative_to(out)) for f, sha in recorded.items() if not file_verifies(f, sha)]


def _stage1_damaged(shard: ShardPaths) -> list[str]:
    if not shard.stage1_done.exists():
        return []
    marker = json.loads(shard.stage1_done.read_text())
    return _damaged(shard.out, {shard.audio: marker["audio_sha256"], shard.feats: marker["feats_sha256"]})


def synthesize_shard(shard: ShardPaths, opts: SynthesisOptions) -> dict:
    """Stage 1 of one shard: TTS for every record of its plan, frame features, rejects; skipped when done.

    A shard recorded done whose files fail their sha256 is rebuilt, and the result says so ("rebuilt").
    """
    marker = _stage1_verifies(shard)
    if marker is not None:
        return marker
    rebuilt = _stage1_damaged(shard)
    inject_fault(shard, f"synthesize-shard-{shard.index}")
    worker_setup(opts.compute)
    tts = _tts(opts.tts, opts.compute.threads())
    feats_backend = _features(opts.features)
    asr = _asr(opts.asr) if opts.asr else None
    voices = list(opts.voices or tts.voices())
    rows, feats, rejects, heard = [], [], [], []
    for rec in load_plan(shard.plan):
        try:
            row = synthesize_record(rec, opts, tts, voices)
        except RecordRejected as e:
            rejects.append(Reject(rec["line"], rec["id"], e.reason, stage="tts").to_dict())
            continue
        if asr is not None:
            cols, reason = check_row(asr, row, opts.max_asr_wer)
            row = {**row, **cols}
            heard.append(row)
            if reason:
                rejects.append(Reject(rec["line"], rec["id"], reason, stage="asr").to_dict())
                continue
        rows.append(row)
        feats += [feats_backend.extract(row["question_audio"]), feats_backend.extract(row["answer_audio"])]
    audio_entry = write_arrow(shard.audio, _stage1_table(rows, asr is not None))
    _save_feats(shard.feats, feats)
    seconds = sum(len(r["question_audio"]) + len(r["answer_audio"]) for r in rows) / SAMPLE_RATE
    marker = {"shard": shard.index, "rows": len(rows), "rejects": rejects, "audio_seconds": seconds,
              "frames": sum(len(f) for f in feats),
              "audio_sha256": audio_entry["sha256"], "feats_sha256": file_sha256(shard.feats)}
    if asr is not None:  # the gate's figures: every record heard, kept or rejected
        marker["asr"] = {"by_voice": tally(heard), "rejected": sum(r["stage"] == "asr" for r in rejects)}
    write_json(shard.stage1_done, marker)
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


def fit_codebook(paths: BuildPaths, num_shards: int, opts: CodebookOptions) -> str:
    """Fit k-means on sampled frames (or adopt a codebook to reuse); return the codebook's sha256."""
    from tasks.units import Codebook, fit_kmeans

    spec = _features(opts.features).config()
    if opts.reuse:
        book = Codebook.load(opts.reuse)
        if book.feature_config != spec:
            raise InputError(f"codebook {opts.reuse} was fitted on features {book.feature_config}, "
                             f"but this build extracts {spec}")
        return book.save(paths.codebook)
    marker = paths.work / "codebook.done.json"
    if marker.exists() and file_verifies(paths.codebook, json.loads(marker.read_text())["sha256"]):
        return json.loads(marker.read_text())["sha256"]
    worker_setup(opts.compute)
    frames = sample_frames(paths, num_shards, opts.max_frames, opts.seed)
    centroids = fit_kmeans(frames, opts.num_units, seed=opts.seed, iters=opts.iters,
                           max_frames=opts.max_frames)
    sha = Codebook(centroids=centroids, feature_config=spec, seed=opts.seed).save(paths.codebook)
    write_json(marker, {"sha256": sha, "frames": len(frames), "k": opts.num_units})
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
    asr = "question_asr_text" in audio.column_names  # a build with --asr-check
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
        **{c: audio.column(c) for c in (ASR_COLUMNS if asr else ())},
    }
    return pa.table(cols, schema=corpus_spec.schema(asr))


def label_shard(shard: ShardPaths, codebook: Path, codebook_sha: str) -> dict:
    """Stage 3 of one shard: label frames with the codebook, dedup, write the corpus shard."""
    rebuilt = []
    if shard.shard_done.exists():
        entry = json.loads(shard.shard_done.read_text())
        if entry["codebook_sha256"] == codebook_sha:
            if file_verifies(shard.shard, entry["sha256"]):
                return entry
            rebuilt = _damaged(shard.out, {shard.shard: entry["sha256"]})
    inject_fault(shard, f"label-shard-{shard.index}")
    marker = _stage1_verifies(shard)
    if marker is None:
        raise EchoxError(f"stage-1 output of shard {shard.index} is missing or corrupt; rerun the build")
    audio = read_arrow(shard.audio)
    table = corpus_table(audio, load_feats(shard.feats), _centroids(str(codebook), codebook_sha))
    corpus_spec.validate(table)
    entry = {**write_arrow(shard.shard, table), "shard": shard.index, "codebook_sha256": codebook_sha,
             "audio_seconds": marker["audio_seconds"]}
    write_json(shard.shard_done, entry)
    return {**entry, "rebuilt": rebuilt} if rebuilt else entry


def build_in_process(cfg: BuildCorpusConfig) -> dict:
    """The whole build in this process, stage after stage (benchmarks, tests); returns the manifest.

    The same steps as flows/build_corpus.py without Prefect, Ray or the output folder's lock.
    """
    identity = plan_build(cfg)
    paths = BuildPaths(Path(cfg.out))
    shards = [paths.of_shard(i) for i in range(identity["num_shards"])]
    synthesis = SynthesisOptions.of(cfg)
    stage1 = [synthesize_shard(shard, synthesis) for shard in shards]
    check_codebook_frames(cfg, stage1)
    sha = fit_codebook(paths, len(shards), CodebookOptions.of(cfg))
    entries = [label_shard(shard, paths.codebook, sha) for shard in shards]
    return finalize_build(cfg, identity, stage1, entries, sha)
