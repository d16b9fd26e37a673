"""Corpus build stages as plain functions over shards: plan, synthesize, fit codebook, label, finalize.

Every stage is retry-safe: outputs are written to a temp name and renamed, a done-marker with
their sha256 is written last, and a stage whose verified output exists is skipped.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from data_specs import corpus as corpus_spec
from data_specs.rejects import Reject
from echox.config import BuildCorpusConfig
from echox.errors import EchoxError, InputError, RecordRejected
from tasks.shards import (
    atomic_write,
    file_sha256,
    file_verifies,
    json_sha256,
    read_arrow,
    write_arrow,
    write_datasets_layout,
    write_json,
    write_jsonl,
)
from tasks.source import SourceRecord, read_source

SAMPLE_RATE = corpus_spec.SAMPLE_RATE
FAULT_ENV = "ECHOX_FAULT_INJECT"


@dataclass(frozen=True)
class BuildPaths:
    """Where each stage of one build writes; names derive from the output directory and shard index."""

    out: Path

    @property
    def work(self) -> Path:
        """Intermediate outputs and markers (hidden from datasets)."""
        return self.out / ".echox"

    @property
    def plan(self) -> Path:
        """Valid records with their spoken forms and shard index."""
        return self.work / "records.jsonl"

    @property
    def build_json(self) -> Path:
        """Identity of the build: config hash, source hash, shard count."""
        return self.work / "build.json"

    @property
    def codebook(self) -> Path:
        """The fitted (or reused) k-means codebook."""
        return self.out / "codebook.npz"

    def audio(self, i: int) -> Path:
        """Stage-1 output of shard i: speech and texts."""
        return self.work / "audio" / f"shard-{i:05d}.arrow"

    def feats(self, i: int) -> Path:
        """Stage-1 output of shard i: frame features of every utterance."""
        return self.work / "feats" / f"shard-{i:05d}.npz"

    def stage1_done(self, i: int) -> Path:
        """Marker of a finished stage-1 shard (hashes and its rejects)."""
        return self.work / "audio" / f"shard-{i:05d}.done.json"

    def shard(self, i: int) -> Path:
        """Final corpus shard i."""
        return self.out / f"shard-{i:05d}.arrow"

    def shard_done(self, i: int) -> Path:
        """Marker of a finished corpus shard (its manifest entry and codebook hash)."""
        return self.work / "final" / f"shard-{i:05d}.json"


# ---------------------------------------------------------------- output directory and lock
def config_hash(cfg: BuildCorpusConfig, source_sha: str) -> str:
    """Hash of everything that decides the build's content."""
    return json_sha256({"config": cfg.content_hash_fields(), "source": source_sha,
                        "schema": corpus_spec.SCHEMA_VERSION})


def prepare_out_dir(paths: BuildPaths, build_hash: str, overwrite: bool) -> None:
    """Refuse an output directory that holds something else, unless overwrite; clear it then."""
    out = paths.out
    existing = json.loads(paths.build_json.read_text()).get("hash") if paths.build_json.exists() else None
    others = [p for p in out.iterdir() if p.name != ".echox"] if out.exists() else []
    if existing == build_hash or (existing is None and not others):
        return  # the same build (resume) or a fresh directory
    if not overwrite:
        what = "a different build (other config or source)" if existing else "files of something else"
        raise InputError(f"{out} holds {what}; choose another --out or pass --overwrite to replace it")
    for child in out.iterdir():
        if child.name == ".echox":
            for sub in child.iterdir():
                if sub.name != "lock":
                    shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
        else:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def acquire_lock(out: Path) -> IO[str]:
    """Hold an exclusive lock on the output directory for this process's lifetime (released on exit/kill)."""
    lock_path = out / ".echox" / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open on purpose until the build ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(
            f"{out} is locked by a running build ({holder}); wait for it or use another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


# ---------------------------------------------------------------- plan
def _spoken_record(rec: SourceRecord, cfg: BuildCorpusConfig) -> dict:
    from tasks.text_norm import spoken_form

    return {"line": rec.line, "id": rec.id, "question_original": rec.question,
            "answer_original": rec.answer, "aliases": list(rec.aliases), "voice": rec.voice,
            "extra": rec.extra,
            "question_text": spoken_form(rec.question, max_chars=cfg.max_chars, lang=cfg.lang),
            "answer_text": spoken_form(rec.answer, max_chars=cfg.max_chars, lang=cfg.lang)}


def normalise_records(records: list[SourceRecord], cfg: BuildCorpusConfig) -> tuple[list[dict], list[Reject]]:
    """Spoken forms of every record; records whose text cannot be spoken become rejects."""
    kept, rejects = [], []
    for rec in records:
        try:
            kept.append(_spoken_record(rec, cfg))
        except RecordRejected as e:
            rejects.append(Reject(rec.line, rec.id, e.reason, stage="text"))
    return kept, rejects


def plan_build(cfg: BuildCorpusConfig) -> dict:
    """Read, validate and normalise the source; write the shard plan; return the build identity."""
    paths = BuildPaths(Path(cfg.out))
    source = Path(cfg.source)
    if not source.exists():
        raise InputError(f"source not found: {source}")
    source_sha = file_sha256(source) if source.is_file() else json_sha256(
        sorted((p.name, file_sha256(p)) for p in source.iterdir() if p.is_file()))
    build_hash = config_hash(cfg, source_sha)
    records, rejects = read_source(source)
    from tasks.corpus_preflight import preflight

    preflight(cfg)  # before prepare_out_dir, so --overwrite never wipes a build for a doomed one
    prepare_out_dir(paths, build_hash, cfg.overwrite)
    remove_stale_temps(paths)
    kept, text_rejects = normalise_records(records, cfg)
    num_shards = shard_count(len(kept), cfg.shard_size)
    for n, rec in enumerate(kept):
        rec["shard"] = shard_of(n, len(kept), num_shards)
    write_jsonl(paths.plan, kept)
    write_jsonl(paths.work / "source_rejects.jsonl", [r.to_dict() for r in rejects + text_rejects])
    identity = {"hash": build_hash, "source_sha256": source_sha, "num_shards": num_shards,
                "num_source_records": len(records) + len(rejects), "config": cfg.content_hash_fields()}
    write_json(paths.build_json, identity)
    return identity


def shard_count(records: int, shard_size: int) -> int:
    """Shards of a build: enough that none holds more than `shard_size` records."""
    return -(-records // shard_size)


def shard_of(index: int, records: int, num_shards: int) -> int:
    """The shard of the index-th of `records` records: contiguous runs whose sizes differ by at most one.

    Even shards keep the workers busy to the end (300 records at size 32 are 10 × 30, not 9 × 32 + 12).
    """
    return index * num_shards // records


def shard_sizes(records: int, shard_size: int) -> list[int]:
    """Sizes of the shards a build plans for `records` records (see shard_of)."""
    num_shards = shard_count(records, shard_size)
    return list(Counter(shard_of(n, records, num_shards) for n in range(records)).values())


def load_plan(paths: BuildPaths, shard: int) -> list[dict]:
    """The planned records of one shard."""
    with open(paths.plan, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["shard"] == shard]


# ---------------------------------------------------------------- preflight (in the driver)
def remove_stale_temps(paths: BuildPaths) -> None:
    """Delete temp files a killed run left behind (safe: the caller holds the directory's lock)."""
    for folder in (paths.out, paths.work, paths.work / "audio", paths.work / "feats", paths.work / "final"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)


def inject_fault(paths: BuildPaths, point: str) -> None:
    """Test hook: fail once at `point` (e.g. "synthesize-shard-1") when ECHOX_FAULT_INJECT names it.

    ECHOX_FAULT_INJECT holds comma-separated "<point>:<action>" entries; "raise" raises a transient
    RuntimeError (Prefect retries it), "kill" SIGKILLs this worker process (Ray retries it). Each
    entry fires once per output directory (a file under .echox/faults remembers it).
    """
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_ENV, "").split(","))):
        where, _, action = entry.partition(":")
        if where != point:
            continue
        if action not in ("raise", "kill"):
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} in {entry!r} (raise or kill)")
        flag = paths.work / "faults" / entry.replace(":", "-")
        flag.parent.mkdir(parents=True, exist_ok=True)
        try:
            flag.touch(exist_ok=False)
        except FileExistsError:
            continue  # fired before: this is the retry
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected transient fault at {point} ({FAULT_ENV})")


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


def feature_spec(cfg: BuildCorpusConfig) -> dict:
    """Arguments of the feature backend."""
    if cfg.units == "mfcc":
        return {"name": "mfcc"}
    return {"name": "wav2vec2", "checkpoint": cfg.feature_checkpoint, "layer": cfg.feature_layer,
            "arch": cfg.feature_arch}


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


def synthesize_shard(cfg: BuildCorpusConfig, shard: int) -> dict:
    """Stage 1 of one shard: TTS for every record, frame features, rejects; skipped when done."""
    paths = BuildPaths(Path(cfg.out))
    marker = _stage1_verifies(paths, shard)
    if marker is not None:
        return marker
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
    return marker


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
    if done.exists():
        entry = json.loads(done.read_text())
        if entry["codebook_sha256"] == codebook_sha and file_verifies(paths.shard(shard), entry["sha256"]):
            return entry
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
    return entry


# ---------------------------------------------------------------- finalize
def reason_key(reason: str) -> str:
    """A reason with its quoted values and numbers elided, to count rejects by kind."""
    import re

    return re.sub(r"'[^']*'|(?<![A-Za-z]-)\b\d+(\.\d+)?\b", "…", reason)


def collect_rejects(paths: BuildPaths, stage1: list[dict]) -> list[dict]:
    """Every reject of the build, in source order."""
    with open(paths.work / "source_rejects.jsonl", encoding="utf-8") as f:
        rejects = [json.loads(line) for line in f]
    rejects += [r for m in stage1 for r in m["rejects"]]
    return sorted(rejects, key=lambda r: r["line"])


def finalize_build(cfg: BuildCorpusConfig, identity: dict, stage1: list[dict], entries: list[dict],
                   codebook_sha: str) -> dict:
    """Write rejects, the datasets layout and, last, the manifest; check every record is accounted for."""
    paths = BuildPaths(Path(cfg.out))
    rejects = collect_rejects(paths, stage1)
    write_jsonl(paths.out / "rejects.jsonl", rejects)
    shards = [{k: e[k] for k in ("path", "num_rows", "sha256")} for e in entries if e["num_rows"]]
    rows = sum(s["num_rows"] for s in shards)
    if rows + len(rejects) != identity["num_source_records"]:
        raise EchoxError(f"accounting failed: {rows} rows + {len(rejects)} rejects != "
                         f"{identity['num_source_records']} source records")
    write_datasets_layout(paths.out, [s["path"] for s in shards], corpus_spec.SCHEMA, identity["hash"])
    hours = sum(e["audio_seconds"] for e in entries) / 3600
    manifest = {
        "kind": "echox.corpus", "schema_version": corpus_spec.SCHEMA_VERSION,
        "config": identity["config"], "config_hash": identity["hash"],
        "source": str(cfg.source), "source_sha256": identity["source_sha256"],
        "codebook": {"path": paths.codebook.name, "sha256": codebook_sha, "num_units": cfg.num_units,
                     "features": feature_spec(cfg)},
        "shards": shards,
        "totals": {"source_records": identity["num_source_records"], "rows": rows,
                   "rejected": len(rejects), "audio_hours": round(hours, 6)},
        "rejects_by_reason": dict(Counter(reason_key(r["reason"]) for r in rejects).most_common()),
    }
    write_json(paths.out / "manifest.json", manifest)
    return manifest


def reject_summary(by_reason: dict[str, int], top: int = 5) -> str:
    """The most frequent reject reasons as "3× reason; 1× other"."""
    return "; ".join(f"{n}× {r}" for r, n in list(by_reason.items())[:top])


def check_codebook_frames(cfg: BuildCorpusConfig, stage1: list[dict]) -> None:
    """Before the k-means fit (in the driver): some speech survived, and the frame sample holds K frames."""
    if cfg.codebook or any("frames" not in m for m in stage1):
        return  # a reused codebook, or markers of an older build (fit_codebook checks again)
    paths = BuildPaths(Path(cfg.out))
    per_shard = max(1, cfg.kmeans_max_frames // max(len(stage1), 1))  # as sample_frames takes them
    sample = sum(min(per_shard, m["frames"]) for m in stage1)
    if sample == 0:
        rejects = collect_rejects(paths, stage1)
        write_jsonl(paths.out / "rejects.jsonl", rejects)
        by_reason = dict(Counter(reason_key(r["reason"]) for r in rejects).most_common())
        raise InputError(f"every record was rejected ({len(rejects)} rejects): {reject_summary(by_reason)}. "
                         f"See {paths.out / 'rejects.jsonl'}")
    if sample < cfg.num_units:
        raise InputError(f"k-means needs at least K={cfg.num_units} frames but the speech of "
                         f"{sum(m['rows'] for m in stage1)} records gives only {sample}; "
                         f"lower --num-units or add data")


def check_reject_fraction(manifest: dict, max_fraction: float) -> None:
    """Fail loudly, with a summary, when too many records were rejected."""
    totals = manifest["totals"]
    fraction = totals["rejected"] / max(totals["source_records"], 1)
    if fraction > max_fraction:
        top = reject_summary(manifest["rejects_by_reason"])
        raise EchoxError(f"{totals['rejected']} of {totals['source_records']} records rejected "
                         f"({fraction:.0%} > the allowed {max_fraction:.0%}): {top}. "
                         f"See rejects.jsonl; raise --max-reject-fraction to accept this.")
