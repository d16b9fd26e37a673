"""The whole DAG as one flow: corpus → units → stage I ∥ stage II → echo labels → echo training → evaluation.

Every step takes and returns paths. A step whose outputs verify (manifest checksums, final checkpoint)
is skipped on a rerun, so a crashed or extended pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, get_run_logger

from core.runs import record_process
from flows.pipeline_config import (  # noqa: F401 - load_pipeline_config is part of this module's interface
    ECHO_STAGE,
    FIRST_STAGES,
    PipelineConfig,
    corpus_config,
    echo_labels_config,
    evaluate_config,
    load_pipeline_config,
    stage_config,
    validate,
)
from tasks.configs import BuildCorpusConfig, TrainFlowConfig


# ------------------------------------------------------------------ skip checks
def corpus_done(c: BuildCorpusConfig) -> bool:
    """The corpus exists, its shards verify, and it was built from this config and source."""
    from tasks import build_corpus as stages
    from tasks.shards import load_manifest, verify_manifest

    out = Path(c.out)
    manifest = load_manifest(out)
    build_json = stages.BuildPaths(out).build_json
    if manifest is None or verify_manifest(out, manifest) or not build_json.exists():
        return False
    recorded = json.loads(build_json.read_text())
    return manifest.get("config_hash") == recorded["hash"] == stages.config_hash(
        c, recorded["source_sha256"]) and Path(c.source).exists()


def training_done(tc: TrainFlowConfig) -> bool:
    """The run finished its steps and its final checkpoint verifies."""
    from tasks.checkpoint import verify_checkpoint

    summary_path = Path(tc.out) / "summary.json"
    if not summary_path.exists() or not (Path(tc.out) / "model" / "config.json").exists():
        return False
    summary = json.loads(summary_path.read_text())
    try:
        verify_checkpoint(Path(summary["checkpoint"]))
    except Exception:  # any failure to verify means: redo the step
        return False
    return int(summary["steps"]) >= tc.max_steps


def labels_done(out: Path) -> bool:
    """The echo labels exist and every shard verifies."""
    from tasks.shards import load_manifest, verify_manifest

    manifest = load_manifest(out)
    return manifest is not None and not verify_manifest(out, manifest)


# ------------------------------------------------------------------ steps
def _parallel(cfg: PipelineConfig) -> bool:
    if cfg.parallel_training is not None:
        return cfg.parallel_training
    if cfg.ray_address:
        return True  # a cluster schedules both; Ray Train waits for resources if it must
    need = sum(s.workers for s in (cfg.s2t, cfg.t2c) if s.launcher == "ray")
    return not (cfg.s2t.use_gpu or cfg.t2c.use_gpu) and (os.cpu_count() or 1) >= 2 * max(need, 1)


def train_stages(cfg: PipelineConfig, done: dict[str, str]) -> dict[str, str]:
    """Stages I and II (independent): in parallel when resources allow, else one after the other.

    Returns each stage's final model directory (what the later steps take as input)."""
    from flows.train import publish, train_task

    todo, models = [], {}
    for tc in (stage_config(cfg, s, done) for s in FIRST_STAGES):
        if training_done(tc):
            get_run_logger().info(f"{tc.stage}: final checkpoint verifies, skipped")
            models[tc.stage] = str(Path(tc.out) / "model")
        else:
            todo.append(tc)
    if _parallel(cfg) and len(todo) == 2:
        from core.runtime import ray_session

        with ray_session(cfg.ray_address):  # one Ray for both trainers, so neither shuts it down
            futures = [(tc, train_task.submit(tc)) for tc in todo]
            results = [(tc, fut.result()) for tc, fut in futures]
    else:
        results = [(tc, train_task(tc)) for tc in todo]
    for tc, summary in results:
        publish(tc, summary)
        models[tc.stage] = str(Path(tc.out) / "model")
    return models


@flow(name="pipeline", flow_run_name="pipeline", on_running=[record_process])
def pipeline(config: PipelineConfig) -> dict:
    """Run the whole DAG; returns the paths of every step's output.

    Each step takes its inputs from what the steps before it returned (or, when skipped, the outputs
    that verified), never from a path rebuilt by convention."""
    from flows.build_corpus import build_corpus
    from flows.echo_labels import echo_labels
    from flows.train import train

    log = get_run_logger()
    validate(config)
    out = Path(config.out)
    c = corpus_config(config)
    done: dict[str, str] = {}
    if corpus_done(c):
        log.info(f"corpus: {c.out} verifies, skipped")
        done["corpus"] = c.out
    else:
        done["corpus"] = build_corpus(config=c)
    done |= train_stages(config, done)
    labels = echo_labels_config(config, done)
    if labels_done(Path(labels.out)):
        log.info("echo labels: manifest verifies, skipped")
        done["echo-labels"] = labels.out
    else:
        done["echo-labels"] = echo_labels(config=labels)
    echo_cfg = stage_config(config, ECHO_STAGE, done)
    if training_done(echo_cfg):
        log.info("echo: final checkpoint verifies, skipped")
        done[ECHO_STAGE] = str(Path(echo_cfg.out) / "model")
    else:
        done[ECHO_STAGE] = train(cfg=echo_cfg)
    paths = {name: str(out / name) for name in ("corpus", *FIRST_STAGES, "echo-labels", ECHO_STAGE)}
    if config.eval_set:
        from flows.evaluate import evaluate

        paths["report"] = str(evaluate(config=evaluate_config(config, done)))
    return paths
