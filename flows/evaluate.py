"""The evaluation flow: synthesize the eval questions, answer them with a checkpoint, report accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import Field

from echox.config import Frozen
from echox.errors import InputError
from echox.runs import record_process
from tasks import evaluate as ev


class EvaluateConfig(Frozen):
    """Parameters of a spoken-QA evaluation of an S2T or echo checkpoint."""

    model: str = Field(description="Checkpoint to evaluate: an s2t or echo model directory (or its run "
                       "directory).")
    eval_set: str = Field(description="Eval set: JSONL (or Parquet / datasets directory) with id, question "
                          "and answers (a list), or answer + aliases as in data/sample/qa_eval.jsonl.")
    out: str = Field(description="Path of the JSON report; the questions manifest is written beside it.")
    t2c: str | None = Field(None, description="T2C checkpoint: adds Echo-decoder unit accuracy and unit edit "
                            "distance against T2C(reference answer) (echo checkpoints only).")
    tts: Literal["piper", "espeak"] = Field("piper", description="TTS engine that speaks the questions.")
    voices: list[str] | None = Field(None, description="Voices to choose from per question (seeded); "
                                     "default: the engine's list.")
    seed: int = Field(0, description="Seed of the per-question voice choice.")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer (text tokens).")
    max_units: int = Field(1000, ge=1, description="Longest unit sequence per segment (length guard).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N valid questions.")
    device: str = Field("cpu", description="Torch device of the model (cpu, cuda, cuda:1).")
    audio_cache: str | None = Field(None, description="Folder of cached question audio (default: "
                                    "tts-cache beside the report); keyed by a content hash.")


@task(name="synthesize-questions", tags=["eval", "tts"])
def synthesize_questions_task(config: EvaluateConfig) -> str:
    """Read the eval set and speak its questions (cached); returns the questions manifest path."""
    cache = Path(config.audio_cache) if config.audio_cache else None
    path = ev.prepare_questions(Path(config.eval_set), Path(config.out), tts=config.tts, voices=config.voices,
                                seed=config.seed, limit=config.limit, cache_dir=cache)
    return str(path)


@task(name="answer-questions", tags=["eval", "inference"])
def answer_questions_task(config: EvaluateConfig, questions: str) -> str:
    """Answer and score every question with the checkpoint; returns the report path."""
    progress = create_progress_artifact(progress=0.0, key="evaluation-progress",
                                        description="Eval questions answered")
    step = {"last": 0.0}

    def report_progress(done: int, total: int) -> None:
        pct = 100.0 * done / total
        if pct - step["last"] >= 10 or done == total:  # a handful of API calls, not one per question
            update_progress_artifact(progress, progress=pct)
            step["last"] = pct

    ev.answer_questions(Path(questions), Path(config.model), Path(config.out),
                        t2c=Path(config.t2c) if config.t2c else None, device=config.device,
                        max_new_tokens=config.max_new_tokens, max_units=config.max_units,
                        progress=report_progress)
    return config.out


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


@flow(name="evaluate", flow_run_name="evaluate", on_running=[record_process])
def evaluate(config: EvaluateConfig) -> str:
    """Spoken-QA evaluation of a checkpoint; returns the path of the JSON report."""
    import json

    # Cheap checks first, so a wrong path fails before minutes of speech synthesis.
    ev.check_checkpoints(Path(config.model), Path(config.t2c) if config.t2c else None)
    if not Path(config.eval_set).exists():
        raise InputError(f"eval set not found: {config.eval_set}")
    questions = synthesize_questions_task(config)
    out = answer_questions_task(config, questions)
    report = json.loads(Path(out).read_text())
    publish(report)
    get_run_logger().info("evaluate: " + "; ".join(f"{r['metric']} {r['value']}"
                                                   for r in ev.summary_rows(report)))
    return out
