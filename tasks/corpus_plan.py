"""The driver's side of a corpus build: read and check the inputs, then write the shard plan.

`inspect_build` writes nothing, so the CLI runs it before Prefect and Ray start and a user mistake
fails in about a second; `plan_build` repeats it under the output folder's lock and writes the plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, RecordRejected
from data_specs.rejects import Reject
from tasks.configs import BuildCorpusConfig
from tasks.corpus_finalize import reason_key, reject_summary
from tasks.corpus_paths import BuildPaths, config_hash, remove_stale_temps, shard_count, shard_of
from tasks.out_dir import OutDirPlan, apply_out_dir, check_out_path, plan_out_dir
from tasks.shards import file_sha256, json_sha256, write_json, write_jsonl
from tasks.source import SourceRecord, read_source


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


@dataclass(frozen=True)
class BuildInputs:
    """What a build will do, found without writing anything: the source read and checked, the plan."""

    identity: dict
    kept: list[dict]
    rejects: list[Reject]
    out_plan: OutDirPlan


def source_digest(source: Path) -> str:
    """sha256 of a source file, or of a source directory's files."""
    if source.is_file():
        return file_sha256(source)
    return json_sha256(sorted((p.name, file_sha256(p)) for p in source.iterdir() if p.is_file()))


def inspect_build(cfg: BuildCorpusConfig) -> BuildInputs:
    """Read, validate and normalise the source and check the output folder, writing nothing.

    Every user mistake the input alone shows fails here, in the driver, before Prefect or Ray start.
    """
    source, out = Path(cfg.source), Path(cfg.out)
    if not source.exists():
        raise InputError(f"source not found: {source}")
    check_out_path(out, source)
    source_sha = source_digest(source)
    build_hash = config_hash(cfg, source_sha)
    records, rejects = read_source(source)
    kept, text_rejects = normalise_records(records, cfg)
    rejects = rejects + text_rejects
    if not kept:
        raise InputError(no_records_message(source, rejects))
    from tasks.corpus_preflight import preflight

    preflight(cfg)
    out_plan = plan_out_dir(out, build_hash, cfg.overwrite)
    num_shards = shard_count(len(kept), cfg.shard_size)
    identity = {"hash": build_hash, "source_sha256": source_sha, "num_shards": num_shards,
                "num_source_records": len(kept) + len(rejects), "config": cfg.content_hash_fields()}
    return BuildInputs(identity, kept, rejects, out_plan)


def no_records_message(source: Path, rejects: list[Reject]) -> str:
    """Why a source gives nothing to build from."""
    if not rejects:
        return f"the source {source} holds no records"
    by_reason = dict(Counter(reason_key(r.reason) for r in rejects).most_common())
    return (f"none of the {len(rejects)} records of {source} can be used: {reject_summary(by_reason)} "
            f"(first at line {rejects[0].line})")


def write_shard_plans(paths: BuildPaths, kept: list[dict], num_shards: int) -> None:
    """One plan file per shard (its records, in source order), so a shard task reads only its own.

    Rewritten on every run (atomically, and identical for the same build), so a resumed build and
    its finished shards' markers always agree.
    """
    by_shard: list[list[dict]] = [[] for _ in range(num_shards)]
    for n, rec in enumerate(kept):
        by_shard[shard_of(n, len(kept), num_shards)].append(rec)
    for i, records in enumerate(by_shard):
        write_jsonl(paths.plan(i), records)


def plan_build(cfg: BuildCorpusConfig) -> dict:
    """Check the inputs (inspect_build), prepare the output folder, write the shard plan; the identity.

    The caller holds the output folder's lock.
    """
    inputs = inspect_build(cfg)
    paths = BuildPaths(Path(cfg.out))
    apply_out_dir(paths.out, inputs.out_plan)
    remove_stale_temps(paths)
    write_shard_plans(paths, inputs.kept, inputs.identity["num_shards"])
    write_jsonl(paths.work / "source_rejects.jsonl", [r.to_dict() for r in inputs.rejects])
    write_json(paths.build_json, inputs.identity)
    return inputs.identity
