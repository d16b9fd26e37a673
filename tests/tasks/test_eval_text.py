"""Text mode of the evaluation (the base LLM's knowledge) and the Wilson intervals of every report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ConfigError, InputError
from tasks import evaluate as ev
from tasks.configs import EvaluateConfig
from tasks.eval_text import text_llm_dir
from tests.conftest import ROOT


@pytest.mark.parametrize(("correct", "n", "expected"), [
    (0, 10, (0.0, 0.2775)),  # hand-computed: (z²/2n ± z·sqrt(z²/4n²)) / (1 + z²/n)
    (5, 10, (0.2366, 0.7634)),
    (10, 10, (0.7225, 1.0)),
    (24, 59, (0.2909, 0.5341)),  # SmolLM2-135M-Instruct's 24 of 59 (ENV.md); centre 0.4125, half 0.1216
    (1, 1, (0.2065, 1.0)),
])
def test_wilson_interval(correct: int, n: int, expected: tuple[float, float]) -> None:
    low, high = ev.wilson_interval(correct, n)
    assert (low, high) == pytest.approx(expected, abs=1e-4)
    assert low <= correct / n <= high


def test_wilson_interval_of_nothing_is_none() -> None:
    assert ev.wilson_interval(0, 0) is None


def test_summary_has_intervals_overall_and_per_category() -> None:
    items = [{"correct": c, "category": cat} for c, cat in
             [(True, "a"), (False, "a"), (True, "b"), (True, "b"), (False, None)]]
    summary, by_cat = ev.summarize(items)
    assert summary["accuracy_ci95"] == pytest.approx(ev.wilson_interval(3, 5))
    assert by_cat["b"]["accuracy_ci95"] == pytest.approx(ev.wilson_interval(2, 2))
    text = ev.accuracy_text(summary)
    assert text.startswith("0.600 (3/5, 95% CI ") and math.isclose(float(text[-10:-6]), 0.23, abs_tol=0.01)


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "--model (an s2t or echo checkpoint) is required"),
    ({"model": "m", "preset": "smollm2-135m"}, "--preset selects a base LLM for --mode text"),
    ({"mode": "text"}, "exactly one of --model"),
    ({"mode": "text", "model": "m", "preset": "smollm2-135m"}, "exactly one of --model"),
    ({"mode": "text", "preset": "smollm2-135m", "t2c": "t"}, "--t2c and --vocoder score an echo checkpoint"),
    ({"model": "m", "batch_size": 4}, "--batch-size batches the written questions of --mode text"),
])
def test_mode_needs_its_inputs(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        EvaluateConfig(eval_set="e.jsonl", out="r.json", **fields)


def test_text_mode_refuses_what_has_no_knowledge(tmp_path: Path) -> None:
    ckpt = tmp_path / "s2t"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"stage": "s2t"}))
    with pytest.raises(ConfigError, match="echox s2t checkpoint"):
        text_llm_dir(model=str(ckpt), preset=None, overrides={}, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="random-init LLM"):
        text_llm_dir(model=None, preset="tiny", overrides={}, cache_dir=tmp_path)
    with pytest.raises(InputError, match="not an HF causal-LM directory"):
        text_llm_dir(model=str(tmp_path), preset=None, overrides={}, cache_dir=tmp_path)
    with pytest.raises(InputError, match="no such directory"):
        text_llm_dir(model=str(tmp_path / "nope"), preset=None, overrides={}, cache_dir=tmp_path)


def test_prompt_is_the_chat_template_with_the_system_turn(tmp_path: Path) -> None:
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tasks.eval_text import TextAnswerer, is_hf_llm_dir
    from tests.models.conftest import TEXTS

    llm = prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=tmp_path, seed=0)
    assert is_hf_llm_dir(llm) and text_llm_dir(model=str(llm), preset=None, overrides={}, cache_dir=tmp_path)
    with_system = TextAnswerer(llm, system_prompt="Be brief.", max_new_tokens=4)
    plain = TextAnswerer(llm, system_prompt="", max_new_tokens=4)
    text = with_system.tokenizer.decode(with_system.prompt_ids("Who wrote Hamlet?"))
    assert text.index("system") < text.index("Be brief.") < text.index("Who wrote Hamlet?")
    assert text.rstrip().endswith("assistant")
    assert "Be brief." not in plain.tokenizer.decode(plain.prompt_ids("Who wrote Hamlet?"))
    answered = with_system.answer("Who wrote Hamlet?")
    assert 0 < answered["num_tokens"] <= 4 and answered["latency_s"] > 0


def test_cli_refuses_text_mode_on_a_random_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from echox.cli import main

    eval_set = tmp_path / "e.jsonl"
    eval_set.write_text('{"id": "a", "question": "Q?", "answer": "A"}\n')
    code = main(["evaluate", "--mode", "text", "--preset", "tiny", "--eval-set", str(eval_set),
                 "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and "random-init LLM" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_batched_answers_are_the_lone_answers_in_order(tmp_path: Path) -> None:
    """--batch-size N: the written questions are answered N at a time (left-padded prompts); each item holds
    the answer, token count and (shared) latency a lone generation gives, in the eval set's order."""
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tasks.eval_text import TextAnswerer, answer_written
    from tests.models.conftest import TEXTS

    llm = prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=tmp_path, seed=0)
    questions = ["Who wrote Hamlet?", "What is " + " and ".join(["one"] * 7) + "?", "Why?"]
    eval_set = tmp_path / "e.jsonl"
    eval_set.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": ["Paris"]}) + "\n"
                                for i, q in enumerate(questions)))
    answerer = TextAnswerer(llm, system_prompt="Be brief.", max_new_tokens=5)
    lone = [answerer.answer(q) for q in questions]
    together = answerer.answer_many(questions)
    assert [(a["response"], a["num_tokens"]) for a in together] == [(a["response"], a["num_tokens"])
                                                                    for a in lone]
    assert len({a["latency_s"] for a in together}) == 1 and together[0]["latency_s"] > 0
    seen: list[tuple[int, int]] = []
    rows, rejects = answer_written(eval_set, llm, system_prompt="Be brief.", max_new_tokens=5, limit=None,
                                   device="cpu", max_reject_fraction=1.0, batch_size=2,
                                   progress=lambda done, total: seen.append((done, total)))
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and not rejects
    assert [r["response"] for r in rows] == [a["response"] for a in lone]
    assert seen == [(2, 3), (3, 3)]  # progress per batch


def test_heard_eval_set_writes_the_questions_as_the_llm_reads_them(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """tools/heard_eval_set.py: each question as the character CTC hears it without error, written back by
    the lexicon decoder (cased by default, lower case with lexicon_cased=false); every valid record kept."""
    import importlib.util

    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tests.models.conftest import TEXTS

    spec = importlib.util.spec_from_file_location("heard_eval_set", ROOT / "tools" / "heard_eval_set.py")
    tool = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(tool)  # type: ignore[union-attr]
    llm = prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=tmp_path, seed=0)
    eval_set = tmp_path / "e.jsonl"
    eval_set.write_text(json.dumps({"id": "a", "question": "What is the capital of France?",
                                    "answers": ["Paris"], "category": "general"}) + "\n" + "{broken\n")
    local = ["--preset", "tiny", "--set", "llm=path", "--set", f"llm_path={llm}", "--cache-dir",
             str(tmp_path)]
    assert tool.main([str(eval_set), str(tmp_path / "cased.jsonl"), *local]) == 0
    lower_case = ["--set", "lexicon_cased=false"]
    assert tool.main([str(eval_set), str(tmp_path / "lower.jsonl"), *local, *lower_case]) == 0
    cased, lower = (json.loads((tmp_path / f).read_text()) for f in ("cased.jsonl", "lower.jsonl"))
    assert lower["question"] == "what is the capital of france?" and lower["answers"] == ["Paris"]
    assert cased["question"].startswith("What is the capital of ") and cased["written_question"] == (
        "What is the capital of France?")
    out = capsys.readouterr()
    assert "1 questions written" in out.out and "1 records of" in out.err  # the broken line, as evaluated
    assert tool.main([str(eval_set), str(tmp_path / "x.jsonl"), "--preset", "tiny"]) == 1  # random: no words
    assert "random-init LLM" in capsys.readouterr().err
