"""The corpus build flow: QA text → speech → units → Arrow shards, coarse tasks on Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from echox.config import BuildCorpusConfig
from echox.errors import EchoxError, InputError
from echox.runtime import ray_init_kwargs
from tasks import build_corpus as stages


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unexpected failures only: a user mistake (EchoxError) would fail the same way again."""
    return not isinstance(getattr(state, "data", None), EchoxError)


# Two retry layers, both safe because every stage skips work whose verified output exists:
# Prefect retries a task that raised (with backoff); Ray reruns a task whose worker process died
# (SIGKILL, OOM), under the same Prefect task run id — Prefect 3.9 then simply runs it again.
RETRY = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": transient}
RAY_OPTIONS = {"max_retries": 3, "retry_exceptions": False}


@task(name="synthesize-shard", task_run_name="synthesize-shard-{shard}", tags=["corpus", "tts"], **RETRY)
def synthesize_shard_task(config: BuildCorpusConfig, shard: int) -> dict:
    """TTS + frame features of one shard."""
    return stages.synthesize_shard(config, shard)


@task(name="fit-codebook", tags=["corpus", "units"], **RETRY)
def fit_codebook_task(config: BuildCorpusConfig, num_shards: int) -> str:
    """K-means codebook over sampled frames; returns its sha256."""
    return stages.fit_codebook(config, num_shards)


@task(name="label-shard", task_run_name="label-shard-{shard}", tags=["corpus", "units"], **RETRY)
def label_shard_task(config: BuildCorpusConfig, shard: int, codebook_sha: str) -> dict:
    """Units for one shard, written as its final corpus shard."""
    return stages.label_shard(config, shard, codebook_sha)


def _report(config: BuildCorpusConfig, msg: str) -> None:
    """Progress to the run's log (terminal and UI) unless quiet."""
    if config.progress:
        get_run_logger().info(msg)


def _gather(futures: list, config: BuildCorpusConfig, what: str, artifact_id: object) -> list:
    """Wait for shard futures in completion order, reporting progress; results in shard order."""
    results: dict[int, dict] = {}
    for done, fut in enumerate(as_completed(futures), start=1):
        res = fut.result()
        results[res["shard"]] = res
        update_progress_artifact(artifact_id, progress=100.0 * done / len(futures))
        _report(config, f"  {what}: {done}/{len(futures)} shards")
    return [results[k] for k in sorted(results)]


@flow(name="corpus-shards", flow_run_name="corpus-shards")
def corpus_shards_flow(config: BuildCorpusConfig, num_shards: int) -> dict:
    """The Ray-parallel part: synthesize every shard, fit the codebook, label every shard."""
    progress = create_progress_artifact(progress=0.0, key="corpus-synthesis",
                                        description="Shards synthesized (TTS + features)")
    with remote_options(**RAY_OPTIONS):
        stage1 = _gather([synthesize_shard_task.submit(config, i) for i in range(num_shards)],
                         config, "speech+features", progress)
        stages.check_codebook_frames(config, stage1)
        codebook_sha = fit_codebook_task.submit(config, num_shards).result()
        _report(config, f"  codebook: {codebook_sha[:12]}")
        labelled = create_progress_artifact(progress=0.0, key="corpus-labelling",
                                            description="Shards labelled and written")
        entries = _gather([label_shard_task.submit(config, i, codebook_sha) for i in range(num_shards)],
                          config, "units+shards", labelled)
    return {"stage1": stage1, "entries": entries, "codebook_sha": codebook_sha}


def ray_runner(config: BuildCorpusConfig) -> RayTaskRunner:
    """Local Ray with `workers` CPUs, or the cluster at `ray_address`."""
    if config.ray_address:
        return RayTaskRunner(address=config.ray_address, init_kwargs={"configure_logging": False})
    return RayTaskRunner(init_kwargs=ray_init_kwargs(config.workers))


def _counts_table(manifest: dict) -> list[dict]:
    t = manifest["totals"]
    rows = [{"what": "source records", "count": t["source_records"]},
            {"what": "rows", "count": t["rows"]},
            {"what": "rejected", "count": t["rejected"]},
            {"what": "shards", "count": len(manifest["shards"])},
            {"what": "audio hours", "count": t["audio_hours"]}]
    return rows + [{"what": f"rejected: {r}", "count": n} for r, n in manifest["rejects_by_reason"].items()]


@flow(name="build-corpus", flow_run_name="build-corpus")
def build_corpus(config: BuildCorpusConfig) -> str:
    """Build a speech corpus from a QA source; returns the corpus directory."""
    out = Path(config.out)
    if not Path(config.source).exists():  # before the lock creates the output directory
        raise InputError(f"source not found: {config.source}")
    lock = stages.acquire_lock(out)
    try:
        identity = stages.plan_build(config)
        _report(config, f"build-corpus: {identity['num_source_records']} records → "
                        f"{identity['num_shards']} shards in {out}")
        parts = corpus_shards_flow.with_options(task_runner=ray_runner(config))(
            config=config, num_shards=identity["num_shards"])
        manifest = stages.finalize_build(config, identity, parts["stage1"], parts["entries"],
                                         parts["codebook_sha"])
    finally:
        lock.close()
    create_table_artifact(key="corpus-counts", table=_counts_table(manifest),
                          description=f"Corpus build counts for {out}")
    _report(config, "build-corpus: " + json.dumps(manifest["totals"]))
    stages.check_reject_fraction(manifest, config.max_reject_fraction)
    return str(out)
