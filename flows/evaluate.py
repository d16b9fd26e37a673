"""The evaluation flow: synthesize the eval questions, answer them with a checkpoint, report accuracy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from core import progress
from core.errors import InputError
from core.runs import record_process
from flows.run_names import evaluate_run_name
from tasks import evaluate as ev
from tasks.configs import EvaluateConfig


@task(name="synthesize-questions", tags=["eval", "tts"])
def synthesize_questions_task(config: EvaluateConfig) -> str:
    """Read the eval set and speak its questions (cached); returns the questions manifest path."""
    cache = Path(config.audio_cache) if config.audio_cache else None
    path = ev.prepare_questions(Path(config.eval_set), Path(config.out), tts=config.tts_choice(),
                                voices=config.voices,
                                seed=config.seed, limit=config.limit, cache_dir=cache,
                                max_reject_fraction=config.max_reject_fraction)
    return str(path)


@task(name="answer-questions", tags=["eval", "inference"])
def answer_questions_task(config: EvaluateConfig, questions: str) -> str:
    """Answer and score every question with the checkpoint; returns the report path."""
    extra = {} if not config.train_source else {"train_overlap": overlap_with_training(config)}
    artifact = create_progress_artifact(progress=0.0, key="evaluation-progress",
                                        description="Eval questions answered")
    step = {"last": 0.0}
    with progress.row("answer questions", None, "questions") as row:

        def report_progress(done: int, total: int) -> None:
            row.update(done, total=total)
            pct = 100.0 * done / total
            if pct - step["last"] >= 10 or done == total:  # a handful of API calls, not one per question
                update_progress_artifact(artifact, progress=pct)
                step["last"] = pct

        answer(config, questions, extra, report_progress)
    return config.out


def answer(config: EvaluateConfig, questions: str, extra: dict, report: Callable[[int, int], None]) -> None:
    """Answer and score the questions in the config's mode, reporting (done, total) to `report`."""
    if config.mode == "text":
        ev.answer_text_questions(Path(config.eval_set), Path(questions), Path(config.out),
                                 system_prompt=config.system_prompt, max_new_tokens=config.max_new_tokens,
                                 limit=config.limit, device=config.device,
                                 max_reject_fraction=config.max_reject_fraction,
                                 model_name=config.model or f"preset {config.preset}",
                                 batch_size=config.batch_size, extra=extra, progress=report)
    else:
        ev.answer_questions(Path(questions), Path(config.model), Path(config.out),  # type: ignore[arg-type]
                            t2c=Path(config.t2c) if config.t2c else None, device=config.device,
                            max_new_tokens=config.max_new_tokens, max_units=config.max_units,
                            vocoder=Path(config.vocoder) if config.vocoder else None, asr=config.asr,
                            tts=config.tts_choice(), extra=extra, progress=report,
                            audio_cache=Path(config.audio_cache) if config.audio_cache else None)


def overlap_with_training(config: EvaluateConfig) -> int:
    """Eval questions that also occur in the training source (warned about: knowledge is measured on
    held-out questions)."""
    overlap = ev.train_overlap(Path(config.eval_set), Path(str(config.train_source)))
    if overlap:
        get_run_logger().warning(f"evaluate: {overlap} eval question(s) also occur in the training source "
                                 f"{config.train_source}; knowledge should be measured on held-out ones")
    return overlap


@task(name="prepare-text-llm", tags=["eval"])
def prepare_text_llm_task(config: EvaluateConfig) -> str:
    """Text mode: the LLM directory to load (the --model directory, or the preset's base LLM, built once)."""
    from core import runtime
    from tasks.eval_text import text_llm_dir

    cache = Path(config.cache_dir) if config.cache_dir else runtime.state_dir() / "models"
    return str(text_llm_dir(model=config.model, preset=config.preset, overrides=config.preset_overrides,
                            cache_dir=cache))


def publish(report: dict) -> None:
    """Summary and item tables plus a markdown summary as artifacts of the run."""
    s = report["summary"]
    accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
    create_table_artifact(key="evaluation-summary", table=ev.summary_rows(report),
                          description=f"Spoken-QA accuracy {accuracy} of {report['model']}")
    n = len(report["items"])
    create_table_artifact(key="evaluation-items", table=ev.item_rows(report, 50),
                          description=f"First {min(50, n)} of {n} items (accuracy {accuracy})")
    create_markdown_artifact(key="evaluation-report", markdown=ev.summary_markdown(report),
                             description="Spoken-QA evaluation summary")


@flow(name="evaluate", flow_run_name=evaluate_run_name, on_running=[record_process])
def evaluate(config: EvaluateConfig) -> str:
    """Spoken-QA evaluation of a checkpoint; returns the path of the JSON report.

    Args:
        config: The evaluation: checkpoint (or base LLM), eval set, TTS, report path and limits.
    """
    import json

    # Cheap checks first, so a wrong path fails before minutes of speech synthesis.
    if config.mode == "speech":
        ev.check_checkpoints(Path(config.model), Path(config.t2c) if config.t2c else None,  # type: ignore[arg-type]
                             vocoder=bool(config.vocoder))
    if not Path(config.eval_set).exists():
        raise InputError(f"eval set not found: {config.eval_set}")
    if config.train_source and not Path(config.train_source).exists():
        raise InputError(f"training source not found: {config.train_source}")
    # Text mode answers the written questions: the "questions" input is the LLM directory to load.
    questions = prepare_text_llm_task(config) if config.mode == "text" else synthesize_questions_task(config)
    out = answer_questions_task(config, questions)
    report = json.loads(Path(out).read_text())
    publish(report)
    get_run_logger().info("evaluate: " + "; ".join(f"{r['metric']} {r['value']}"
                                                   for r in ev.summary_rows(report)))
    return out
