"""The llm-answers step: the base LLM answers the training questions, and its answers become the corpus's
targets (self-distillation, tasks/llm_answers.py). Publishes a summary table and sample answers."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core import progress, runtime
from core.runs import record_process
from tasks.configs import LLMAnswersConfig

SAMPLES = 8
"""Answers shown beside their reference in the artifact."""


def _samples_markdown(source: Path) -> str:
    import json

    lines = ["| question | the LLM's answer (the target) | reference answer |", "|---|---|---|"]
    with source.open(encoding="utf-8") as f:
        for _, line in zip(range(SAMPLES), f, strict=False):
            row = json.loads(line)
            cells = (str(row[k]).replace("|", "\\|") for k in ("question", "answer", "reference_answer"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@flow(name="llm-answers", flow_run_name="llm-answers", on_running=[record_process])
def llm_answers(config: LLMAnswersConfig) -> str:
    """Write `config.out`/source.jsonl (the source with the base LLM's answers); returns its path."""
    from tasks.eval_text import text_llm_dir
    from tasks.llm_answers import SOURCE_FILE, AnswerOptions, write_llm_answers

    cache = Path(config.cache_dir) if config.cache_dir else runtime.state_dir() / "models"
    llm_dir = text_llm_dir(model=None, preset=config.preset, overrides=config.preset_overrides,
                           cache_dir=cache)
    options = AnswerOptions(system_prompt=config.system_prompt or None, max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size, first_sentence=config.first_sentence)
    out = Path(config.out)
    with progress.row("answer training questions", None, "questions") as row:
        summary = write_llm_answers(Path(config.source), llm_dir, out, options, device=config.device,
                                    progress=lambda done, total: row.update(done, total=total))
    agree = f"{summary['agree_with_reference']}/{summary['with_aliases']}"
    create_table_artifact(key="llm-answers", table=[
        {"measure": "source records", "value": summary["source_records"]},
        {"measure": "answered (the corpus's targets)", "value": summary["answered"]},
        {"measure": "rejected", "value": summary["rejected"]},
        {"measure": "answers holding a reference alias", "value": agree},
        {"measure": "seconds answering", "value": summary["answer_wall_s"]}],
        description=f"The base LLM's answers to {config.source}'s questions: the training targets")
    create_markdown_artifact(key="llm-answers-samples", markdown=_samples_markdown(out / SOURCE_FILE),
                             description="The first answers beside their references")
    get_run_logger().info(f"llm-answers: {summary['answered']} answered, {summary['rejected']} rejected; "
                          f"{agree} hold a reference alias ({summary['answer_wall_s']:.0f} s)")
    return str(out / SOURCE_FILE)
