"""The knowledge table from hand-written reports: rows, intervals, per category, ratios, the two goals (exact
counts, hand-computed), rows that were not run, comparability, the commands that regenerate each row."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from data_specs.eval_results import ITEM_SCHEMA
from tasks import fingerprint as fp
from tasks.evaluate import write_report
from tasks.knowledge import build_table, is_current, write_knowledge

CATS = ("geo", "math")


def items(correct: list[bool], *, s2s: list[bool] | None = None, ceiling: list[bool] | None = None,
          unit: float | None = None) -> list[dict[str, Any]]:
    """Report item rows: item i is `q<i>`, category geo for even i, math for odd i."""
    rows = []
    for i, ok in enumerate(correct):
        row: dict[str, Any] = dict.fromkeys(f.name for f in ITEM_SCHEMA)
        row |= {"id": f"q{i}", "line": i + 1, "question": f"q {i}?", "spoken_question": f"q {i}?",
                "category": CATS[i % 2], "gold": ["yes"], "reference": "Yes.",
                "response": "yes" if ok else "no", "correct": ok, "matched": "yes" if ok else None,
                "num_tokens": 1, "latency_s": 0.1,
                "unit_accuracy": unit}
        if s2s is not None:
            row |= {"s2s_response": "", "s2s_correct": s2s[i], "s2s_seconds": 1.0, "ceiling_response": "",
                    "ceiling_correct": ceiling[i] if ceiling else None}
        rows.append(row)
    return rows


def write(run: Path, folder: str, rows: list[dict[str, Any]], *, mode: str = "speech", model: str = "m",
          eval_set: str = "data/eval.jsonl", fingerprint: dict | None = None, **params: Any) -> Path:
    """A valid report of `rows` at run/folder/report.json (and the step's fingerprint, if given)."""
    out = run / folder / "report.json"
    write_report(out, {"model": model, "stage": "text-llm" if mode == "text" else "echo", "mode": mode,
                       "eval_set": eval_set, **params}, rows, [], 1.5)
    if fingerprint is not None:
        fp.write(run / folder, fp.make(folder, "v", fingerprint, {}))
    return out


def bools(k: int, n: int) -> list[bool]:
    return [True] * k + [False] * (n - k)


def complete_run(run: Path, *, text: int = 10, s2t: int = 9, echo: int = 8) -> Path:
    """Every row's report, on 20 questions: text LLM 10/20, S2T 9/20, echo text 8/20, its spoken answers
    5/20 beside a ceiling of 15/20; the baseline 6/20 with unit accuracy only; the encoder's WER 0.25."""
    write(run, "eval-text", items(bools(text, 20)), mode="text", model="preset smollm2-135m",
          system_prompt="Answer.", limit=None, max_new_tokens=64, device="cpu",
          fingerprint={"mode": "text", "preset": "smollm2-135m", "preset_overrides": {}})
    write(run, "eval-s2t", items(bools(s2t, 20)), model=str(run / "s2t" / "model"), tts="piper", seed=0)
    write(run, "eval", items(bools(echo, 20), s2s=bools(5, 20), ceiling=bools(15, 20), unit=0.5),
          model=str(run / "echo" / "model"), t2c=str(run / "t2c" / "model"),
          vocoder=str(run / "vocoder" / "model"), asr="pocketsphinx", tts="piper", seed=0,
          fingerprint={"mode": "speech", "max_units": 500})
    write(run, "eval-baseline", items(bools(6, 20), unit=0.25))
    (run / "encoder").mkdir(parents=True)
    summary = {"rows": 40, "utterances": 80, "wer": 0.25, "cer": 0.1, "question_wer": 0.3}
    (run / "encoder" / "asr_eval.json").write_text(json.dumps({"summary": summary, "items": []}))
    for stage in ("s2t", "echo"):
        fp.write(run / stage, fp.make(stage, "v", {"preset": "smollm2-135m", "preset_overrides": {}}, {}))
    return run


def rows_of(table: dict) -> dict[str, dict]:
    return {r["key"]: r for r in table["rows"]}


def test_a_complete_run_gives_every_row(tmp_path: Path) -> None:
    table = build_table(complete_run(tmp_path))
    rows = rows_of(table)
    assert {k: (r["correct"], r["items"]) for k, r in rows.items() if "correct" in r} == {
        "text-llm": (10, 20), "s2t": (9, 20), "echo-text": (8, 20), "echo-speech": (5, 20),
        "asr-ceiling": (15, 20), "baseline-text": (6, 20)}
    assert rows["text-llm"]["ci95"] == pytest.approx([0.2993, 0.7007], abs=1e-4)  # Wilson 10/20, by hand
    assert rows["s2t"]["vs_text_llm"] == pytest.approx(0.9) and rows["echo-text"]["vs_text_llm"] == 0.8
    assert rows["echo-speech"]["metric"] == "s2s_accuracy"
    # items 0..4 spoke right: q0, q2, q4 are geo, q1, q3 math
    assert {c: (v["correct"], v["items"]) for c, v in rows["echo-speech"]["by_category"].items()} == {
        "geo": (3, 10), "math": (2, 10)}
    assert rows["echo-text"]["by_category"]["geo"]["correct"] == 4  # q0 q2 q4 q6 of q0..q7
    assert (rows["baseline-speech"]["metric"], rows["baseline-speech"]["value"]) == ("unit_accuracy", 0.25)
    assert rows["baseline-speech"]["vs_text_llm"] is None  # a mean, not k/n: no ratio
    assert (rows["encoder"]["value"], rows["encoder"]["cer"], rows["encoder"]["items"]) == (0.25, 0.1, 40)
    assert rows["encoder"]["vs_text_llm"] is None and rows["asr-ceiling"]["vs_text_llm"] is None
    assert rows["echo-text"]["fingerprint"] == fp.read(tmp_path / "eval")["digest"]
    assert table["comparable"] and table["notes"] == []


def test_goals_are_computed_from_exact_counts(tmp_path: Path) -> None:
    """S2T 9/20 = 0.90 × and echo 8/20 = exactly 0.80 × the text LLM's 10/20: goal (a) passes (at the
    boundary); echo 40 % − S2T 45 % = −5 points: goal (b) fails."""
    table = build_table(complete_run(tmp_path))
    a, b = table["goals"]
    assert a["status"] == "pass" and [c["passed"] for c in a["checks"]] == [True, True]
    assert a["checks"][1]["value"] == pytest.approx(0.8)
    assert b["status"] == "fail" and b["checks"][0]["value"] == pytest.approx(-5.0)
    assert "= −5.0 points (goal ≥ −2)" in b["checks"][0]["detail"].replace("= -", "= −")
    assert table["speech"]["s2s_of_ceiling"] == pytest.approx(5 / 15)


@pytest.mark.parametrize(("text", "s2t", "echo", "a", "b"), [
    (10, 9, 7, "fail", "fail"),  # echo 7/20 = 0.70 × text; 35 − 45 = −10 points
    (10, 8, 8, "pass", "pass"),  # 0.80 × both; 0 points
    (0, 0, 0, "undefined", "pass"),  # the text LLM answered none: no ratio
])
def test_goal_outcomes(tmp_path: Path, text: int, s2t: int, echo: int, a: str, b: str) -> None:
    goals = build_table(complete_run(tmp_path, text=text, s2t=s2t, echo=echo))["goals"]
    assert (goals[0]["status"], goals[1]["status"]) == (a, b)


def test_exactly_two_points_below_passes(tmp_path: Path) -> None:
    """42/100 and 40/100: −2 points exactly (floats would say −2.0000000000000018 and fail it)."""
    write(tmp_path, "eval-s2t", items(bools(42, 100)))
    write(tmp_path, "eval", items(bools(40, 100)))
    check = build_table(tmp_path)["goals"][1]["checks"][0]
    assert check["passed"] and check["status"] == "pass"


def test_missing_and_unreadable_reports_are_rows_that_say_so(tmp_path: Path) -> None:
    write(tmp_path, "eval", items(bools(3, 4)))  # no vocoder, no T2C
    (tmp_path / "eval-s2t").mkdir()
    (tmp_path / "eval-s2t" / "report.json").write_text("{not json")
    table = build_table(tmp_path)
    rows = rows_of(table)
    assert rows["text-llm"]["status"] == "not run" and rows["encoder"]["status"] == "not run"
    assert rows["s2t"]["status"].startswith("unreadable")
    assert rows["echo-speech"]["status"] == "not scored" and rows["asr-ceiling"]["status"] == "not scored"
    assert rows["echo-text"]["vs_text_llm"] is None
    assert [g["status"] for g in table["goals"]] == ["not run", "not run"]
    assert table["goals"][0]["checks"][1]["missing"] == ["text LLM"]
    assert table["speech"]["status"] == "not run"


def test_an_empty_run_folder_is_a_table_of_rows_not_run(tmp_path: Path) -> None:
    table = build_table(tmp_path)
    assert {r["status"] for r in table["rows"]} == {"not run"}


def test_a_text_llm_of_another_preset_is_not_comparable(tmp_path: Path) -> None:
    run = complete_run(tmp_path)
    fp.write(run / "s2t", fp.make("s2t", "v", {"preset": "tiny", "preset_overrides": {}}, {}))
    table = build_table(run)
    assert not table["comparable"] and "preset smollm2-135m" in table["notes"][0]
    assert [g["status"] for g in table["goals"]] == ["not comparable", "not comparable"]


def test_rows_of_other_eval_sets_or_questions_are_noted(tmp_path: Path) -> None:
    write(tmp_path, "eval-text", items(bools(5, 10)), mode="text", eval_set="other.jsonl")
    write(tmp_path, "eval-s2t", items(bools(5, 9)))
    table = build_table(tmp_path)
    assert not table["comparable"] and "different eval sets" in table["notes"][0]
    assert "different questions" in table["notes"][1]


def test_knowledge_files_and_their_staleness(tmp_path: Path) -> None:
    run = complete_run(tmp_path / "run")
    out = run / "knowledge"
    assert not is_current(run, out)
    write_knowledge(run, out)
    assert json.loads((out / "knowledge.json").read_text())["goals"][0]["status"] == "pass"
    markdown = (out / "knowledge.md").read_text()
    assert "| text LLM | written question" in markdown and "| 10/20 | 50.0 % | 29.9–70.1 % |" in markdown
    assert is_current(run, out)
    write(run, "eval-s2t", items(bools(3, 20)))  # a report rewritten after the table
    assert not is_current(run, out)


def test_each_row_names_the_command_that_writes_its_report_again(tmp_path: Path) -> None:
    from echox.cli import options, parser

    rows = rows_of(build_table(complete_run(tmp_path)))
    commands = {k: r["command"] for k, r in rows.items() if r.get("command")}
    assert set(commands) == {"text-llm", "s2t", "echo-text", "echo-speech", "asr-ceiling", "baseline-text",
                             "baseline-speech"}
    text = options(parser().parse_args(shlex.split(commands["text-llm"])[1:]))
    assert (text.mode, text.preset, text.system_prompt, text.out) == (
        "text", "smollm2-135m", "Answer.", str(tmp_path / "eval-text" / "report.json"))
    echo = options(parser().parse_args(shlex.split(commands["echo-speech"])[1:]))
    assert (echo.model, echo.vocoder, echo.max_units) == (str(tmp_path / "echo" / "model"),
                                                          str(tmp_path / "vocoder" / "model"), 500)
    assert "--asr" not in commands["s2t"] and "--max-units" not in commands["s2t"]  # defaults left out
