"""The whole DAG as one flow: corpus → units → stage I ∥ stage II → echo labels → echo training → evaluation.

Every step takes and returns paths. A step whose outputs verify (manifest checksums, final checkpoint)
is skipped on a rerun, so a crashed or extended pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from echox.config import BuildCorpusConfig, PipelineConfig, TrainFlowConfig, TrainStep, build, load_yaml


def corpus_config(cfg: PipelineConfig) -> BuildCorpusConfig:
    """The corpus step's config (options from `corpus:`)."""
    data = {"source": cfg.source, "out": str(Path(cfg.out) / "corpus"), "seed": cfg.seed,
            "ray_address": cfg.ray_address, "codebook": cfg.codebook, **cfg.corpus}
    return build(BuildCorpusConfig, data, "pipeline.corpus")  # type: ignore[return-value]


def stage_config(cfg: PipelineConfig, stage: str, step: TrainStep, **paths: str | None) -> TrainFlowConfig:
    """The training step's config for `stage` (resuming the checkpoints a killed run of it left)."""
    out = Path(cfg.out) / stage
    data = {"stage": stage, "corpus": str(Path(cfg.out) / "corpus"), "out": str(out),
            "preset": cfg.preset, "preset_overrides": cfg.preset_overrides, "seed": cfg.seed,
            "ray_address": cfg.ray_address, "resume": (out / "checkpoints").is_dir(), **step.model_dump(),
            **paths}
    return build(TrainFlowConfig, data, f"pipeline.{stage}")  # type: ignore[return-value]


def echo_labels_config(cfg: PipelineConfig) -> Any:
    """The echo-labels step's config (options from `echo_labels:`)."""
    from flows.echo_labels import EchoLabelsConfig

    out = Path(cfg.out)
    data = {"corpus": str(out / "corpus"), "s2t": str(out / "s2t" / "model"),
            "t2c": str(out / "t2c" / "model"), "out": str(out / "echo-labels"),
            "ray_address": cfg.ray_address, **cfg.echo_labels}
    return build(EchoLabelsConfig, data, "pipeline.echo_labels")


def evaluate_config(cfg: PipelineConfig) -> Any:
    """The evaluation step's config (options from `evaluate:`)."""
    from flows.evaluate import EvaluateConfig

    out = Path(cfg.out)
    data = {"model": str(out / "echo" / "model"), "t2c": str(out / "t2c" / "model"),
            "eval_set": cfg.eval_set, "out": str(out / "eval" / "report.json"), **cfg.evaluate}
    return build(EvaluateConfig, data, "pipeline.evaluate")


def validate(cfg: PipelineConfig) -> None:
    """Build every step's config up front, so a bad field fails before any work (naming the field)."""
    corpus_config(cfg)
    for stage in ("s2t", "t2c", "echo"):
        stage_config(cfg, stage, getattr(cfg, stage))
    echo_labels_config(cfg)
    if cfg.eval_set:
        evaluate_config(cfg)


def load_pipeline_config(path: Path, **overrides: Any) -> PipelineConfig:
    """A pipeline config from YAML (unknown or bad fields are named in the error)."""
    data = {**load_yaml(path), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = build(PipelineConfig, data, str(path))
    validate(cfg)  # type: ignore[arg-type]
    return cfg  # type: ignore[return-value]


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


def train_stages(cfg: PipelineConfig) -> None:
    """Stages I and II (independent): in parallel when resources allow, else one after the other."""
    from flows.train import publish, train_task

    todo = []
    for tc in (stage_config(cfg, "s2t", cfg.s2t), stage_config(cfg, "t2c", cfg.t2c)):
        if training_done(tc):
            get_run_logger().info(f"{tc.stage}: final checkpoint verifies, skipped")
        else:
            todo.append(tc)
    if _parallel(cfg) and len(todo) == 2:
        import ray

        from echox.runtime import ray_init_kwargs

        if not ray.is_initialized():  # one Ray for both trainers, so neither shuts it down
            ray.init(address=cfg.ray_address, **({} if cfg.ray_address else ray_init_kwargs(None)))
        futures = [(tc, train_task.submit(tc)) for tc in todo]
        results = [(tc, fut.result()) for tc, fut in futures]
    else:
        results = [(tc, train_task(tc)) for tc in todo]
    for tc, summary in results:
        publish(tc, summary)


@flow(name="pipeline", flow_run_name="pipeline")
def pipeline(config: PipelineConfig) -> dict:
    """Run the whole DAG; returns the paths of every step's output."""
    from flows.build_corpus import build_corpus
    from flows.echo_labels import echo_labels
    from flows.train import train

    log = get_run_logger()
    validate(config)
    out = Path(config.out)
    c = corpus_config(config)
    if corpus_done(c):
        log.info(f"corpus: {c.out} verifies, skipped")
    else:
        build_corpus(config=c)
    train_stages(config)
    if labels_done(out / "echo-labels"):
        log.info("echo labels: manifest verifies, skipped")
    else:
        echo_labels(config=echo_labels_config(config))
    echo_cfg = stage_config(config, "echo", config.echo, echo_labels=str(out / "echo-labels"),
                            s2t=str(out / "s2t" / "model"), t2c=str(out / "t2c" / "model"))
    if training_done(echo_cfg):
        log.info("echo: final checkpoint verifies, skipped")
    else:
        train(cfg=echo_cfg)
    paths = {name: str(out / name) for name in ("corpus", "s2t", "t2c", "echo-labels", "echo")}
    if config.eval_set:
        from flows.evaluate import evaluate

        paths["report"] = str(evaluate(config=evaluate_config(config)))
    return paths
