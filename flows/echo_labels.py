"""The echo pseudo-label flow: S2T + T2C checkpoints label a corpus in model-holding Ray actors."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from core import progress
from core.errors import EchoxError
from core.runs import record_process
from core.runtime import ray_session
from flows.policy import RETRY
from tasks import echo_labels as stages
from tasks.configs import EchoLabelsConfig

NAMESPACE = "echox-echo-labels"


def _report(config: EchoLabelsConfig, msg: str, *, note: bool = False) -> None:
    """Progress to the run's log (UI; the terminal with --verbose) unless quiet; a `note` to the terminal's
    progress too."""
    if config.progress:
        get_run_logger().info(msg)
        if note:
            progress.note(msg)


# Untagged, like the corpus build's shard tasks (see flows.build_corpus).
@task(name="echo-label-shard", task_run_name="echo-label-shard-{job[shard]}", **RETRY)
def label_shard_task(actor: str, job: dict) -> dict:
    """Hand one corpus shard to the named labelling actor and wait for its entry."""
    import ray

    labeler = ray.get_actor(actor, namespace=NAMESPACE)
    kwargs = {k: job[k] for k in ("sha256", "first_row", "run_hash")}
    return ray.get(labeler.label_shard.remote(job["corpus_shard"], job["out_path"], **kwargs))


def start_actors(config: EchoLabelsConfig, run_id: str) -> dict[str, object]:
    """Start `workers` named labelling actors (each loads both models once); handles by name, all ready.

    The caller must hold the handles while the actors work: Ray ends an actor (named or not, unless
    detached) once its creator drops every handle to it."""
    import ray

    cls = ray.remote(stages.EchoLabeler)
    device = "cuda" if config.num_gpus_per_actor > 0 else "cpu"
    s2t, t2c = (str(stages.checkpoint_path(p).resolve()) for p in (config.s2t, config.t2c))
    actors = {}
    for i in range(config.workers):
        name = f"echo-labeler-{run_id}-{i}"
        actors[name] = cls.options(name=name, namespace=NAMESPACE, num_cpus=config.cpus_per_actor,
                                   num_gpus=config.num_gpus_per_actor, max_restarts=1).remote(
            s2t, t2c, device, config.cpus_per_actor,
            batch_size=config.batch_size, max_units=config.max_units)
    ray.get([a.ready.remote() for a in actors.values()])  # a model that fails to load fails here, once
    return actors


def stop_actors(actors: dict[str, object]) -> None:
    """Kill the labelling actors."""
    import ray

    for actor in actors.values():
        with contextlib.suppress(ValueError):  # already gone
            ray.kill(actor)


def _run_jobs(config: EchoLabelsConfig, jobs: list[dict], names: list[str], artifact: object) -> list[dict]:
    """Submit shard tasks round-robin over the actors, at most two per actor in flight; entries by shard."""
    pending, running, entries = list(jobs), {}, {}
    limit = 2 * len(names)
    with progress.row("echo-label shards", len(jobs), "shards", show=config.progress) as row:
        while pending or running:
            # num_cpus=0: the task only waits on its actor, so it must not take the CPUs the actors hold.
            with remote_options(num_cpus=0):
                while pending and len(running) < limit:
                    job = pending.pop(0)
                    running[label_shard_task.submit(names[job["shard"] % len(names)], job)] = job["shard"]
            done = next(as_completed(list(running)))
            shard = running.pop(done)
            entries[shard] = {**done.result(), "shard": shard}
            update_progress_artifact(artifact, progress=100.0 * len(entries) / len(jobs))
            row.update(len(entries))
            state = "verified, skipped" if entries[shard]["skipped"] else f"{entries[shard]['num_rows']} rows"
            _report(config, f"  echo labels: {len(entries)}/{len(jobs)} shards (shard {shard}: {state})")
    return [entries[k] for k in sorted(entries)]


@flow(name="echo-label-shards", flow_run_name="echo-label-shards", on_running=[record_process])
def echo_shards_flow(config: EchoLabelsConfig, jobs: list[dict]) -> list[dict]:
    """The Ray-parallel part: start the actors, label every shard through them, stop the actors."""
    artifact = create_progress_artifact(progress=0.0, key="echo-labelling",
                                        description="Corpus shards labelled with echo pseudo-labels")
    actors = start_actors(config, uuid.uuid4().hex[:8])
    try:
        entries = _run_jobs(config, jobs, list(actors), artifact)
    finally:
        stop_actors(actors)
    return entries


@flow(name="echo-labels", flow_run_name="echo-labels", on_running=[record_process])
def echo_labels(config: EchoLabelsConfig) -> str:
    """Echo pseudo-labels of a corpus; returns the output directory."""
    from tasks.out_dir import acquire_lock

    config = config.absolute()  # the actors (on a cluster: other machines) do not share this directory
    out = Path(config.out)
    lock = acquire_lock(out)
    try:
        plan = stages.plan_run(config.corpus, config.s2t, config.t2c, config.out,
                               max_units=config.max_units, overwrite=config.overwrite)
    except EchoxError:
        lock.release(remove_created=True)  # a refused folder is left as it was found
        raise
    try:
        if plan["done"]:
            _report(config, f"echo-labels: {out} already holds this run's verified labels; skipped",
                    note=True)
            manifest = json.loads((out / "manifest.json").read_text())
        else:
            rate = stages.check_t2c_ends(config.corpus, config.t2c, max_units=config.max_units,
                                         min_rate=config.min_t2c_end_rate, samples=config.t2c_check_samples)
            _report(config, f"echo-labels: the T2C ends {100 * rate:.0f} % of sampled answer segments "
                            f"within {config.max_units} units", note=True)
            _report(config, f"echo-labels: {plan['corpus']['rows']} rows in {len(plan['jobs'])} shards "
                            f"→ {out} ({config.workers} actors)", note=True)
            with ray_session(config.ray_address, num_cpus=config.workers * config.cpus_per_actor):
                entries = echo_shards_flow.with_options(task_runner=RayTaskRunner())(
                    config=config, jobs=plan["jobs"])
            manifest = stages.finalize_run(config.out, plan, entries)
    finally:
        lock.release()
    create_table_artifact(key="echo-label-stats", table=stages.stats_rows(manifest),
                          description=f"Echo pseudo-label statistics for {out}")
    _report(config, "echo-labels: " + json.dumps(manifest["totals"]))
    if config.progress:
        t = manifest["totals"]
        progress.note(f"echo-labels: {t['rows']} rows ({t['rejected']} rejected), {t['segments']} segments, "
                      f"Y′ token accuracy {t['token_accuracy']:.3f}")
    return str(out)
