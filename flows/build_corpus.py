"""The corpus build flow: QA text → speech → units → Arrow shards, coarse tasks on Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from core import progress
from core.errors import EchoxError
from core.runs import record_process
from core.runtime import cluster_cpus, ray_session, task_threads
from flows.policy import RAY_OPTIONS, RETRY
from flows.run_names import corpus_run_name
from tasks import build_corpus as stages
from tasks.configs import BuildCorpusConfig

# Per-shard tasks carry no tags: Prefect 3.9 acquires a tag concurrency slot for every tagged task
# run, which cost ~2 s per task on a local server (measured; 10 shards on one worker lost ~18 s).
# The flow runs are named for filtering instead; Ray bounds the parallelism.


@task(name="synthesize-shard", task_run_name="synthesize-shard-{shard.index}", **RETRY)
def synthesize_shard_task(shard: stages.ShardPaths, options: stages.SynthesisOptions) -> dict:
    """TTS + frame features of one shard, from its own plan file."""
    return stages.synthesize_shard(shard, options)


@task(name="fit-codebook", **RETRY)
def fit_codebook_task(paths: stages.BuildPaths, num_shards: int, options: stages.CodebookOptions) -> str:
    """K-means codebook over sampled frames; returns its sha256."""
    return stages.fit_codebook(paths, num_shards, options)


@task(name="label-shard", task_run_name="label-shard-{shard.index}", **RETRY)
def label_shard_task(shard: stages.ShardPaths, codebook: Path, codebook_sha: str) -> dict:
    """Units for one shard, written as its final corpus shard."""
    return stages.label_shard(shard, codebook, codebook_sha)


def _report(config: BuildCorpusConfig, msg: str, *, note: bool = False) -> None:
    """Progress to the run's log (UI; the terminal with --verbose) unless quiet; a `note` to the terminal's
    progress too."""
    if config.progress:
        get_run_logger().info(msg)
        if note:
            progress.note(msg)


def _gather(futures: list, config: BuildCorpusConfig, what: str, artifact_id: object) -> list:
    """Wait for shard futures in completion order, reporting progress; results in shard order."""
    results: dict[int, dict] = {}
    with progress.row(what, len(futures), "shards", show=config.progress) as row:
        for done, fut in enumerate(as_completed(futures), start=1):
            res = fut.result()
            results[res["shard"]] = res
            update_progress_artifact(artifact_id, progress=100.0 * done / len(futures))
            row.update(done)
            _report(config, f"  {what}: {done}/{len(futures)} shards")
    return [results[k] for k in sorted(results)]


@flow(name="corpus-shards", flow_run_name="corpus-shards", on_running=[record_process])
def corpus_shards_flow(config: BuildCorpusConfig, num_shards: int) -> dict:
    """The Ray-parallel part: synthesize every shard, fit the codebook, label every shard."""
    progress = create_progress_artifact(progress=0.0, key="corpus-synthesis",
                                        description="Shards synthesized (TTS + features)")
    paths = stages.BuildPaths(Path(config.out))
    shards = [paths.of_shard(i) for i in range(num_shards)]
    total, node = cluster_cpus()
    threads = task_threads(config.workers, config.threads_per_worker, total, node)
    config = config.model_copy(update={"threads_per_worker": threads})  # each task runs what it reserves
    synthesis = stages.SynthesisOptions.of(config)
    with remote_options(num_cpus=threads, **RAY_OPTIONS):
        stage1 = _gather([synthesize_shard_task.submit(shard, synthesis) for shard in shards],
                         config, "speech+features", progress)
        stages.check_codebook_frames(config, stage1)
        fit = stages.fit_threads(config.workers, threads, node)
        codebook = stages.CodebookOptions.of(config.model_copy(update={"threads_per_worker": fit}))
        with remote_options(num_cpus=fit):
            codebook_sha = fit_codebook_task.submit(paths, num_shards, codebook).result()
        _report(config, f"codebook: {codebook_sha[:12]}", note=True)
        labelled = create_progress_artifact(progress=0.0, key="corpus-labelling",
                                            description="Shards labelled and written")
        entries = _gather([label_shard_task.submit(shard, paths.codebook, codebook_sha) for shard in shards],
                          config, "units+shards", labelled)
    return {"stage1": stage1, "entries": entries, "codebook_sha": codebook_sha}


def _counts_table(manifest: dict) -> list[dict]:
    t = manifest["totals"]
    rows = [{"what": "source records", "count": t["source_records"]},
            {"what": "rows", "count": t["rows"]},
            {"what": "rejected", "count": t["rejected"]},
            {"what": "shards", "count": len(manifest["shards"])},
            {"what": "audio hours", "count": t["audio_hours"]}]
    rows += [{"what": f"rejected: {r}", "count": n} for r, n in manifest["rejects_by_reason"].items()]
    return rows + _asr_rows(manifest.get("asr"))


def _asr_rows(asr: dict | None) -> list[dict]:
    """The ASR gate's lines of the counts artifact (none without --asr-check)."""
    if asr is None:
        return []
    rows = [{"what": "rejected by the ASR gate", "count": asr["rejected"]}]
    for voice, t in asr["wer_by_voice"].items():
        rows += [{"what": f"mean question WER ({voice})", "count": t["question_wer"]},
                 {"what": f"mean answer WER ({voice})", "count": t["answer_wer"]}]
    return rows


def _report_repairs(config: BuildCorpusConfig, rebuilt: list[str]) -> None:
    """Name every damaged file this run rebuilt: run log (terminal, UI) and a table artifact."""
    if not rebuilt:
        return
    get_run_logger().warning(f"build-corpus: rebuilt {len(rebuilt)} damaged file(s) that failed their "
                             f"sha256: {', '.join(rebuilt)}")
    create_table_artifact(key="corpus-repairs", table=[{"rebuilt file": f} for f in rebuilt],
                          description=f"Damaged files rebuilt in {config.out}")


@flow(name="build-corpus", flow_run_name=corpus_run_name, on_running=[record_process])
def build_corpus(config: BuildCorpusConfig) -> str:
    """Build a speech corpus from a QA source; returns the corpus directory.

    Args:
        config: The build: QA source, output folder, TTS, frame features and units, sharding, checks.
    """
    out = Path(config.out)
    lock = stages.acquire_lock(out)  # refuses an --out that is a file
    try:
        identity = stages.plan_build(config)  # before Ray starts: a user mistake fails in a second
    except EchoxError:  # (a missing source, a source inside --out, ... : see inspect_build)
        lock.release(remove_created=True)  # a refused folder is left as it was found
        raise
    try:
        _report(config, f"build-corpus: {identity['num_source_records']} records → "
                        f"{identity['num_shards']} shards in {out}", note=True)
        if config.ray_address:
            get_run_logger().info(f"Connecting to an existing Ray instance at {config.ray_address}")
            progress.note(f"Connecting to an existing Ray instance at {config.ray_address}")
        # A caller's Ray (tests, notebooks, the pipeline) is used and left running.
        cpus = os.cpu_count() or 1  # a local Ray gets the CPUs the shard tasks will reserve
        local = task_threads(config.workers, config.threads_per_worker, cpus, cpus)
        with ray_session(config.ray_address, num_cpus=config.workers * local) as ray:
            # The workers get absolute paths: on a cluster they do not share the driver's working directory.
            parts = corpus_shards_flow.with_options(task_runner=RayTaskRunner())(
                config=config.absolute(), num_shards=identity["num_shards"])
            ray.stop_in_background()  # the workers are done: stop them while the driver writes the manifest
            manifest = stages.finalize_build(config, identity, parts["stage1"], parts["entries"],
                                             parts["codebook_sha"])
    finally:
        lock.release()
    create_table_artifact(key="corpus-counts", table=_counts_table(manifest),
                          description=f"Corpus build counts for {out}")
    _report_repairs(config, stages.rebuilt_files(parts["stage1"], parts["entries"]))
    _report(config, "build-corpus: " + json.dumps(manifest["totals"]))
    if config.progress:
        t = manifest["totals"]
        progress.note(f"build-corpus: {t['rows']} rows of {t['source_records']} records ({t['rejected']} "
                      f"rejected), {t['audio_hours'] * 60:.1f} min of audio")
    if manifest.get("status") == "failed":
        kept = (" (the previous build is kept in .echox-previous)"
                if (out / ".echox-previous").exists() else "")
        raise EchoxError(f"{manifest['reason']} No manifest was written; see {out / 'failure.json'}{kept}")
    return str(out)
