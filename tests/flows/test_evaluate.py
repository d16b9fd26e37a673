"""The evaluate flow end to end on a real Prefect server: espeak questions, a tiny S2T checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import write_jsonl

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

QUESTIONS = [
    {"id": "gk-1", "question": "What is the capital of France?", "answer": "The capital of France is Paris.",
     "aliases": ["Paris"], "category": "general"},
    {"id": "ar-1", "question": "What is 3 plus 4?", "answers": ["7", "seven"], "category": "arithmetic"},
    '{"id": "broken", "question": "Who?",',
    {"id": "gk-2", "question": "Who wrote Hamlet?", "answers": ["William Shakespeare", "Shakespeare"],
     "category": "general"},
]


@pytest.fixture(scope="module")
def s2t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny S2T model saved the way training saves it."""
    from models.io import save_model
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from tests.models.conftest import TEXTS

    tmp = tmp_path_factory.mktemp("eval-s2t")
    preset = resolve_preset("tiny")
    base = prepare_base_llm(preset, corpus_texts=TEXTS * 3, cache_dir=tmp / "cache", seed=0)
    return save_model(build_s2t(preset, base, seed=0), tmp / "model")


@pytest.fixture(scope="module")
def evaluated(s2t_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
              prefect_server: str) -> tuple[dict, Path]:
    from flows.evaluate import EvaluateConfig, evaluate

    tmp = tmp_path_factory.mktemp("eval-run")
    src = write_jsonl(tmp / "eval.jsonl", QUESTIONS)
    cfg = EvaluateConfig(model=str(s2t_checkpoint), eval_set=str(src), out=str(tmp / "out" / "report.json"),
                         tts="espeak", max_new_tokens=8)
    out = evaluate(config=cfg)
    return json.loads(Path(out).read_text()), tmp


def test_report_structure_and_accuracy(evaluated: tuple[dict, Path], s2t_checkpoint: Path) -> None:
    from data_specs.eval_results import ITEM_SCHEMA, validate_report

    report, _ = evaluated
    table = validate_report(report)
    assert report["stage"] == "s2t" and report["model"] == str(s2t_checkpoint) and report["tts"] == "espeak"
    assert [r["id"] for r in report["items"]] == ["gk-1", "ar-1", "gk-2"]
    assert set(report["items"][0]) == set(ITEM_SCHEMA.names)
    correct = table.column("correct").to_pylist()
    assert report["summary"]["accuracy"] == pytest.approx(sum(correct) / 3)
    assert report["summary"]["items"] == 3 and set(report["by_category"]) == {"general", "arithmetic"}
    assert report["by_category"]["general"]["items"] == 2
    assert [(r["line"], r["id"]) for r in report["rejects"]] == [(3, None)]
    for row in report["items"]:
        assert 0 < row["num_tokens"] <= 8 and row["latency_s"] >= row["first_token_s"] > 0
        assert row["unit_accuracy"] is None and row["question_seconds"] > 0.5
        assert row["matched"] is None or row["correct"]
        assert isinstance(row["heard"], str) and row["heard_wer"] >= 0  # the CTC head's transcript
    assert report["summary"]["question_wer"] == pytest.approx(
        sum(r["heard_wer"] for r in report["items"]) / 3, rel=1e-6)
    assert report["items"][1]["spoken_question"] == "What is three plus four?"
    assert report["items"][0]["gold"] == ["Paris"]
    assert report["items"][0]["reference"] == "The capital of France is Paris."


def test_artifacts_are_in_the_server(evaluated: tuple[dict, Path]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report, _ = evaluated
    with get_client(sync_client=True) as client:
        found = {}
        for key in ("evaluation-summary", "evaluation-items", "evaluation-report"):
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert arts, f"no artifact {key}"
            found[key] = arts[-1]
    items = json.loads(found["evaluation-items"].data)
    assert [r["id"] for r in items] == [r["id"] for r in report["items"]]
    assert [r["correct"] for r in items] == [r["correct"] for r in report["items"]]
    summary = json.loads(found["evaluation-summary"].data)
    assert summary[0]["metric"] == "accuracy"
    assert "Spoken-QA evaluation" in found["evaluation-report"].data


def test_cli_reruns_from_the_audio_cache(evaluated: tuple[dict, Path], s2t_checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    first, tmp = evaluated
    out = tmp / "out" / "report-cli.json"
    assert main(["evaluate", "--model", str(s2t_checkpoint), "--eval-set", str(tmp / "eval.jsonl"),
                 "--out", str(out), "--tts", "espeak", "--max-new-tokens", "8", "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and str(out) in printed
    questions = json.loads((tmp / "out" / "report-cli.questions.json").read_text())
    assert questions["cache_hits"] == 2  # same tts-cache folder, same texts and voices: nothing re-spoken
    report = json.loads(out.read_text())
    # Greedy decoding of the same checkpoint on the same audio gives the same answers.
    assert [r["response"] for r in report["items"]] == [r["response"] for r in first["items"][:2]]


def test_cli_rejects_a_bad_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    assert main(["evaluate", "--model", "m", "--eval-set", "e.jsonl", "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_cli_fails_fast_on_a_missing_checkpoint(evaluated: tuple[dict, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    _, tmp = evaluated
    missing = tmp / "no-such-model"
    assert main(["evaluate", "--model", str(missing), "--eval-set", str(tmp / "eval.jsonl"),
                 "--out", str(tmp / "missing" / "r.json"), "--tts", "espeak"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp / "missing").exists()  # nothing was synthesized


def test_text_mode_scores_a_base_llm_on_written_questions(tmp_path: Path, prefect_server: str) -> None:
    """--mode text: the base LLM directory answers the written questions; same report, no speech fields."""
    from data_specs.eval_results import validate_report
    from flows.evaluate import EvaluateConfig, evaluate
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tests.models.conftest import TEXTS

    llm = prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=tmp_path / "cache",
                           seed=0)
    src = write_jsonl(tmp_path / "eval.jsonl", QUESTIONS)
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "t1", "question": "what is the capital of FRANCE", "answer": "Paris."},
        {"id": "t2", "question": "How tall is Everest?", "answer": "8849 metres."}])
    cfg = EvaluateConfig(mode="text", model=str(llm), eval_set=str(src), out=str(tmp_path / "text.json"),
                         max_new_tokens=6, train_source=str(train))
    report = json.loads(Path(evaluate(config=cfg)).read_text())
    validate_report(report)
    assert report["mode"] == "text" and report["stage"] == "text-llm" and report["tts"] is None
    assert [r["id"] for r in report["items"]] == ["gk-1", "ar-1", "gk-2"]
    assert [(r["line"], r["id"]) for r in report["rejects"]] == [(3, None)]
    for row in report["items"]:
        assert row["voice"] is None and row["question_seconds"] is None and row["unit_accuracy"] is None
        assert row["spoken_question"] == row["question"] and 0 < row["num_tokens"] <= 6
    low, high = report["summary"]["accuracy_ci95"]
    assert 0.0 <= low <= report["summary"]["accuracy"] <= high <= 1.0
    assert report["train_overlap"] == 1  # "What is the capital of France?" is also a training question
