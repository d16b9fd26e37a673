"""The whole DAG as one flow: corpus → stage I ∥ stage II → echo labels → echo training → evaluation.

The steps are data (flows/pipeline_steps.py: STEPS); the plan (flows/pipeline_plan.py) says, per step,
skip / resume / redo / run and why, from each step's recorded fingerprint. The flow publishes the plan as
a table artifact, then runs what it says in DAG order: independent training stages together when the
resources allow, each step taking its inputs' output paths, recording its fingerprint when it finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from core import progress
from core.runs import record_process
from flows.pipeline_config import (  # noqa: F401 - load_pipeline_config is part of this module's interface
    PipelineConfig,
    load_pipeline_config,
    validate,
)
from flows.pipeline_plan import StepPlan, format_plan, input_outputs, make_plan, plan_rows
from flows.pipeline_steps import (  # noqa: F401 - the done checks' old home
    STEPS,
    corpus_done,
    folder,
    get_step,
    inputs_of,
    labels_done,
    output_path,
    training_done,
)
from flows.run_names import pipeline_run_name
from tasks import fingerprint as fp
from tasks.configs import TrainFlowConfig
from tasks.out_dir import recover_swap, swap_in

LOG_VERB = {"skip": "skipped", "resume": "resumed", "redo": "redone", "run": "run"}
PipelineStep = Literal[tuple(step.name for step in STEPS)]  # type: ignore[valid-type]
"""A step of the DAG: the choices of `from_step` and `only` in the Prefect form."""
ROW_VERB = {"resume": "resumed", "redo": "redone"}  # what a step's finished progress row says (else: done)


def _parallel(cfg: PipelineConfig, group: list[TrainFlowConfig]) -> bool:
    """Whether the training stages of `group` (independent of each other) should train at once.

    Never two with launcher local: they would train in threads of this one process, whose preparation
    (importing transformers lazily, building the cached base LLM) is not thread-safe."""
    if sum(tc.launcher == "local" for tc in group) > 1:
        return False
    if cfg.parallel_training is not None:
        return cfg.parallel_training
    if cfg.ray_address:
        return True  # a cluster schedules them all; Ray Train waits for resources if it must
    need = sum(tc.workers for tc in group if tc.launcher == "ray")
    return not any(tc.use_gpu for tc in group) and (os.cpu_count() or 1) >= len(group) * max(need, 1)


def _cpu_share(cfg: PipelineConfig, group: list[TrainFlowConfig]) -> Any:
    """Per stage training at once on this machine: its workers' threads, so that the stages together
    reserve the CPUs there are (one stage alone would take them all). A cluster, or a stage that sets
    threads_per_worker, is left to Ray."""
    workers = sum(tc.workers for tc in group if tc.launcher == "ray")
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))

    def share(tc: TrainFlowConfig) -> dict:
        keep = cfg.ray_address or tc.launcher != "ray" or tc.threads_per_worker
        return {} if keep else {"threads_per_worker": threads}

    return share


# ------------------------------------------------------------------ training steps
def start_training(cfg: PipelineConfig, plan: StepPlan, done: dict[str, str]) -> TrainFlowConfig:
    """Prepare the run folder of a training step (fresh, or the checkpoints it resumes) and its config."""
    work = Path(plan.work)
    if not plan.resume:
        shutil.rmtree(work, ignore_errors=True)  # an unfinished run of another config, or a stale .new
    work.mkdir(parents=True, exist_ok=True)
    fp.write(work, plan.fingerprint or {}, fp.PENDING)  # a killed run is resumed only by this fingerprint
    tc = get_step(plan.step).config(cfg, done)
    return tc.model_copy(update={"out": str(work), "resume": plan.resume})


def finish_training(plan: StepPlan, tc: TrainFlowConfig, summary: dict) -> str:
    """Publish a finished training step, record its fingerprint and put it in place; its model folder."""
    from flows.train import publish
    from tasks.shards import write_json

    publish(tc, summary)
    work, where = Path(plan.work), Path(plan.folder)
    fp.write(work, plan.fingerprint or {})
    (work / fp.PENDING).unlink(missing_ok=True)
    if work != where:  # a redo beside the old run: the fingerprint moves in with the output
        summary_path = work / "summary.json"
        summary = {k: v.replace(str(work), str(where)) if k in ("model_dir", "checkpoint") else v
                   for k, v in json.loads(summary_path.read_text()).items()}
        write_json(summary_path, summary)
        swap_in(work, where)
    return str(where / "model")


def train_stages(cfg: PipelineConfig, plans: list[StepPlan], done: dict[str, str]) -> dict[str, str]:
    """Training steps that do not depend on each other: at once when resources allow, else in turn."""
    from flows.train import train_task

    configs = [(plan, start_training(cfg, plan, done)) for plan in plans]
    if len(configs) > 1 and _parallel(cfg, [tc for _, tc in configs]):
        from core.runtime import ray_session

        with ray_session(cfg.ray_address):  # one Ray for all trainers, so none shuts it down
            share = _cpu_share(cfg, [tc for _, tc in configs])
            futures = [(plan, tc, train_task.submit(tc.model_copy(update=share(tc)))) for plan, tc in configs]
            results = [(plan, tc, fut.result()) for plan, tc, fut in futures]
    else:
        results = [(plan, tc, train_task(tc)) for plan, tc in configs]
    return {plan.step: finish_training(plan, tc, summary) for plan, tc, summary in results}


# ------------------------------------------------------------------ other steps
def run_step(cfg: PipelineConfig, plan: StepPlan, done: dict[str, str]) -> str:
    """Run a corpus, echo-labels or evaluation step (in its folder, or beside it and then renamed into
    place); record its fingerprint when it has finished. Returns the path later steps read."""
    step = get_step(plan.step)
    step_cfg: Any = step.config(cfg, done)
    work, where = Path(plan.work), Path(plan.folder)
    update: dict[str, Any] = {"out": str(work)} if work != where else {}
    if "overwrite" in type(step_cfg).model_fields:  # the pipeline owns the folder: replace it safely
        update["overwrite"] = True
    (work / fp.NAME).unlink(missing_ok=True)  # stale until this run finishes
    result = step.run(step_cfg.model_copy(update=update))
    fp.write(work, plan.fingerprint or {})
    if work != where:
        swap_in(work, where)
        return output_path(cfg, step)
    return result


# ------------------------------------------------------------------ the flow
def _ready(cfg: PipelineConfig, plans: list[StepPlan], finished: set[str]) -> list[StepPlan]:
    return [p for p in plans if set(inputs_of(get_step(p.step), cfg)) <= finished]


@contextlib.contextmanager
def _rows(plans: list[StepPlan]) -> Iterator[None]:
    """A progress row per step of `plans` while the block runs them (failed if it raises)."""
    for p in plans:
        progress.start(p.step)
    try:
        yield
    except BaseException:
        for p in plans:
            progress.finish(p.step, ok=False)
        raise
    for p in plans:
        progress.finish(p.step, ROW_VERB.get(p.action, ""))


def execute(cfg: PipelineConfig, plans: list[StepPlan]) -> dict[str, str]:
    """Run the plan's steps in DAG order; returns every step's output (name → path later steps read)."""
    done = input_outputs(cfg)
    finished = {p.step for p in plans if p.action == "skip"}
    todo = [p for p in plans if p.action != "skip"]
    while todo:
        ready = _ready(cfg, todo, finished)
        if not ready:  # a step whose input neither ran nor was skipped: a bug in STEPS' order
            raise RuntimeError(f"no step of {[p.step for p in todo]} has its inputs ready")
        training = [p for p in ready if get_step(p.step).training]
        batch = training if len(training) > 1 else ready[:1]
        with _rows(batch):
            if get_step(batch[0].step).training:
                done |= train_stages(cfg, batch, done)
            else:
                done[batch[0].step] = run_step(cfg, batch[0], done)
        finished |= {p.step for p in batch}
        todo = [p for p in todo if p not in batch]
    return done


@flow(name="pipeline", flow_run_name=pipeline_run_name, on_running=[record_process])
def pipeline(config: PipelineConfig, from_step: PipelineStep | None = None,
             only: PipelineStep | None = None) -> dict:
    """Run the DAG's steps that the plan says need running; returns the paths of every step's output.

    Args:
        config: The whole DAG: sources, output folder, model preset and each step's section.
        from_step: Redo this step and every step after it, whatever their fingerprints say.
        only: Run only this step, on the existing outputs of the steps before it (which must verify).
    """
    from prefect.artifacts import create_table_artifact

    log = get_run_logger()
    validate(config)
    for step in STEPS:  # a rename interrupted mid-swap: the previous output goes back first
        if step.beside and recover_swap(folder(config, step)):
            log.warning(f"{step.name}: put back the previous output an interrupted redo had moved aside")
    plans = make_plan(config, from_step=from_step, only=only)
    create_table_artifact(key="pipeline-plan", table=plan_rows(plans),
                          description=f"Pipeline plan for {config.out}")
    log.info("plan:\n" + format_plan(plans))
    progress.note(f"plan for {config.out}:\n" + format_plan(plans))
    for p in plans:
        log.info(f"{p.step}: {LOG_VERB[p.action]} ({p.reason})")
    done = execute(config, plans)
    paths = {p.step: p.folder for p in plans if p.step != "evaluate"}
    if "evaluate" in done and any(p.step == "evaluate" for p in plans):
        paths["report"] = done["evaluate"]
    return paths
