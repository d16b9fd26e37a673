"""Self-distillation targets (the llm-answers step): the base LLM's answers replace the source's, every
source record is answered or rejected, and the pipeline builds its corpus from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from tasks.llm_answers import (
    REJECTS_FILE,
    SOURCE_FILE,
    SUMMARY_FILE,
    AnswerOptions,
    answer_records,
    first_sentence,
    llm_answers_done,
    write_llm_answers,
)
from tasks.source import read_source
from tests.conftest import qa, write_jsonl


def _records(tmp_path: Path, rows: list) -> list:
    records, rejects = read_source(write_jsonl(tmp_path / "src.jsonl", rows))
    assert not rejects
    return records


def test_answers_replace_the_reference_and_empty_ones_are_rejected(tmp_path: Path) -> None:
    rows = [qa(0, aliases=["Paris"], category="general"), qa(1), qa(2, voice="v", aliases=None)]
    records = _records(tmp_path, rows)
    said = ["It is Paris. Really.", "  ", "No idea."]
    replies = dict(zip([r.question for r in records], said, strict=True))
    batches: list[int] = []

    def answer(questions: list[str]) -> list[str]:
        batches.append(len(questions))
        return [replies[q] for q in questions]

    rows, rejects, agree = answer_records(records, answer, batch_size=2, first=True)
    assert batches == [2, 1]
    assert [r["id"] for r in rows] == [records[0].id, records[2].id]
    assert rows[0]["answer"] == "It is Paris." and rows[0]["reference_answer"] == records[0].answer
    assert rows[0]["aliases"] == ["Paris"] and rows[0]["category"] == "general"
    assert rows[0]["source_line"] == 1
    assert rows[1]["voice"] == "v" and "aliases" not in rows[1]
    assert agree == 1  # only the first record has aliases, and its answer holds one
    assert [(r.id, r.stage) for r in rejects] == [(records[1].id, "llm-answers")]
    assert "answer is empty" in rejects[0].reason


@pytest.mark.parametrize(("text", "first"), [
    ("The capital of France is Paris. It is large.", "The capital of France is Paris."),
    ("Wilbur D. Wright and J.K. Rowling met Dr. Who. Then", "Wilbur D. Wright and J.K. Rowling met Dr. Who."),
    ('He said "no." Then he left.', 'He said "no."'),
    ("It is 3.5 km long! Yes.", "It is 3.5 km long!"),
    ("To solve this, we divide:\n\n12 / 6 = 2.", "To solve this, we divide:"),
    ("Paris", "Paris"),
])
def test_first_sentence(text: str, first: str) -> None:
    assert first_sentence(text) == first


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init instruct LLM saved as an HF directory: the path a user's local LLM takes."""
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tests.models.conftest import TEXTS

    return prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3,
                            cache_dir=tmp_path_factory.mktemp("llm"), seed=0)


def test_written_source_accounts_for_every_record_and_reads_back(tmp_path: Path, tiny_llm: Path) -> None:
    from tasks.eval_text import TextAnswerer

    # questions of different lengths, so a batch's prompts are left-padded
    rows = [qa(i, question="What is " + " and ".join(["one"] * (3 * i + 1)) + "?") for i in range(5)]
    source = write_jsonl(tmp_path / "qa.jsonl", [*rows, "{not json", {"id": "x"}])
    out = tmp_path / "answers"
    options = AnswerOptions(system_prompt="Be brief.", max_new_tokens=6, batch_size=3)
    summary = write_llm_answers(source, tiny_llm, out, options)
    answered, rejects = read_source(out / SOURCE_FILE)  # a QA source the corpus reads like any other
    rejected = [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]
    assert summary["source_records"] == 7 == len(answered) + len(rejected) and not rejects
    assert {r["stage"] for r in rejected} <= {"source", "llm-answers"} and len(rejected) >= 2
    assert summary["answered"] == len(answered) and llm_answers_done(out)
    # the batched answers are the ones the text row's one-at-a-time answerer gives
    single = TextAnswerer(tiny_llm, system_prompt="Be brief.", max_new_tokens=6)
    assert [r.answer for r in answered] == [single.answer(r.question)["response"] for r in answered]
    references = {r["id"]: r["answer"] for r in rows}
    assert all(r.extra["reference_answer"] == references[r.id] for r in answered)
    (out / SOURCE_FILE).write_text((out / SOURCE_FILE).read_text() + "\n")
    assert not llm_answers_done(out)  # a changed file is not the one its summary was written with
    (out / SUMMARY_FILE).unlink()
    assert not llm_answers_done(out)


def _pipeline(tmp_path: Path, **extra: object) -> object:
    from flows.pipeline_config import PipelineConfig

    tmp_path.mkdir(parents=True, exist_ok=True)
    source = write_jsonl(tmp_path / "qa.jsonl", [qa(i) for i in range(3)])
    return PipelineConfig(source=str(source), out=str(tmp_path / "run"), preset="smollm2-135m", **extra)


def test_pipeline_builds_its_corpus_from_the_llm_answers(tmp_path: Path) -> None:
    from flows.pipeline_config import corpus_config, llm_answers_config, planned_outputs, validate
    from flows.pipeline_plan import make_plan

    cfg = _pipeline(tmp_path, llm_answers={"batch_size": 4}, evaluate={"max_new_tokens": 32})
    validate(cfg)
    planned = planned_outputs(cfg)
    answers = llm_answers_config(cfg, planned)
    assert answers.source == cfg.source and answers.max_new_tokens == 32  # the evaluation's length
    assert answers.system_prompt == "Answer the question in one short sentence."
    assert corpus_config(cfg, planned).source == str(tmp_path / "run" / "llm-answers" / "source.jsonl")
    plans = {p.step: p for p in make_plan(cfg)}
    assert list(plans)[:2] == ["llm-answers", "corpus"] and plans["llm-answers"].action == "run"
    # the corpus's source is the step's output: its fingerprint stands for it, not a sha256 of a file that
    # does not exist yet (which would change once it does, and redo the corpus on the next run)
    assert plans["corpus"].fingerprint["inputs"]["source"] is None
    assert plans["corpus"].fingerprint["inputs"]["llm-answers"] == plans["llm-answers"].fingerprint["digest"]
    plain = {p.step: p for p in make_plan(_pipeline(tmp_path / "plain"))}
    assert "llm-answers" not in plain and plain["corpus"].fingerprint["inputs"]["source"] is not None


def test_a_changed_prompt_redoes_the_answers_and_what_reads_them(tmp_path: Path) -> None:
    from flows.pipeline_plan import make_plan

    first = {p.step: p.fingerprint["digest"] for p in make_plan(_pipeline(tmp_path, llm_answers={}))}
    batch = {p.step: p.fingerprint["digest"] for p in
             make_plan(_pipeline(tmp_path, llm_answers={"batch_size": 2, "device": "cpu"}))}
    prompt = {p.step: p.fingerprint["digest"] for p in
              make_plan(_pipeline(tmp_path, llm_answers={"system_prompt": "Answer in one word."}))}
    assert batch == first  # how the questions are batched does not change the answers
    assert prompt["llm-answers"] != first["llm-answers"] and prompt["corpus"] != first["corpus"]


def test_a_random_llm_has_no_answers_to_distil(tmp_path: Path) -> None:
    from flows.pipeline_config import PipelineConfig, validate

    source = write_jsonl(tmp_path / "qa.jsonl", [qa(0)])
    cfg = PipelineConfig(source=str(source), out=str(tmp_path / "run"), preset="tiny", llm_answers={})
    with pytest.raises(ConfigError, match=r"pipeline.llm_answers: .*random-init LLM"):
        validate(cfg)
