"""`echox knowledge`: prints the table of a run folder (no Prefect, no Ray), writes it and RESULTS.md;
a missing run folder is one line and exit 2; `make experiment` runs the pipeline and then it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.tasks.test_knowledge import complete_run


def test_prints_the_table_and_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    run = complete_run(tmp_path / "run")
    assert main(["knowledge", "--run", str(run), "--out", str(tmp_path / "k.md")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"text LLM\s+10/20\s+50\.0 %\s+\(95 % CI 29\.9–70\.1 %\)", printed)
    assert re.search(r"S2T \(stage I\)\s+9/20\s+45\.0 %.*vs text LLM: 0\.90×", printed)
    assert "goal (a) spoken-question accuracy (S2T and echo text) ≥ 80 % of the text LLM's: PASS" in printed
    assert "goal (b) echo text accuracy within 2 points of S2T's (at most 2 below): FAIL" in printed
    assert (tmp_path / "k.md").read_text().startswith(f"# Knowledge kept: `{run}`")


def test_a_missing_run_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    assert main(["knowledge", "--run", str(tmp_path / "nope")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == (f"echox knowledge: error: --run {tmp_path / 'nope'}: no such folder (give a pipeline's "
                   "out, e.g. outputs/demo)")
    assert captured.out == ""


def test_results_md_from_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    run = complete_run(tmp_path / "run")
    metrics = [{"step": s, "loss": 5.0 / s, "ce": 1.0, "ctc": 2.0} for s in (10, 20, 30)]
    (run / "s2t" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "s2t" / "summary.json").write_text(json.dumps({"stage": "s2t", "steps": 30, "elapsed_s": 12.4}))
    config = ROOT / "configs" / "experiment-smollm2.yaml"
    results = tmp_path / "out" / "RESULTS.md"
    assert main(["knowledge", "--run", str(run), "--results", str(results), "--config", str(config)]) == 0
    text = results.read_text()
    png = tmp_path / "out" / "results" / "s2t-loss.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 100_000
    assert "![s2t loss](results/s2t-loss.png)" in text and "| s2t | 30 | 0.5000 | 0.1667 | 12 s |" in text
    for section in ("## Knowledge kept", "## Goals", "## Reading", "## Encoder pretraining", "## Training",
                    "## Wall time per step", "## Commands", "## Config hashes", "## Machine"):
        assert section in text, section
    reading = text.split("## Reading")[1].split("##")[0]
    goal = "Goal (a), spoken-question accuracy (S2T and echo text) ≥ 80 % of the text LLM's: **pass**"
    assert goal in reading
    assert "= −5.0 points (goal ≥ −2)" in reading.replace("= -", "= −")
    assert not re.search(r"TODO|TBD|XXX|\?\?", text)
    assert "WER 0.250, CER 0.100 on 40 held-out rows" in text
    assert f"echox pipeline --config {config}" in text and "sha256" in text
    assert "logical CPUs" in text and "torch " in text
    assert "fingerprint (sha256)" in text and "| s2t | s2t | `" in text
    assert "## Training targets\n\nThe QA source's reference answers" in text


def test_results_md_names_the_llm_answers_as_targets(tmp_path: Path) -> None:
    from tasks.knowledge import write_knowledge
    from tasks.results import results_markdown

    run = complete_run(tmp_path / "run")
    (run / "llm-answers").mkdir()
    (run / "llm-answers" / "summary.json").write_text(json.dumps({
        "answered": 419, "source_records": 421, "rejected": 2, "max_new_tokens": 40, "first_sentence": True,
        "system_prompt": "Be brief.", "agree_with_reference": 156, "with_aliases": 419,
        "answer_wall_s": 131.6}))
    table = write_knowledge(run, tmp_path / "k")
    text = results_markdown(run, tmp_path / "RESULTS.md", table)
    targets = text.split("## Training targets")[1].split("##")[0]
    assert "419 of 421 source records answered, 2 rejected" in targets and "first sentence kept" in targets
    assert "156 of the 419 answers" in targets and '"Be brief."' in targets
    assert "| llm-answers | 132 | the base LLM answering the training questions" in text


def test_imports_neither_prefect_nor_ray(tmp_path: Path) -> None:
    run = complete_run(tmp_path / "run")
    code = ("import sys; from echox.cli import main; "
            f"rc = main(['knowledge', '--run', {str(run)!r}, '--results', {str(tmp_path / 'R.md')!r}]); "
            "print('loaded', sorted(m for m in ('prefect', 'ray', 'torch') if m in sys.modules)); "
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "loaded []" in res.stdout and "text LLM" in res.stdout


def test_make_experiment_runs_the_pipeline_then_the_results(tmp_path: Path) -> None:
    from echox.cli import options, parser
    from flows.pipeline_config import load_pipeline_config

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bexperiment\b", makefile, re.M)
    recipe = re.search(r"^experiment:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no experiment target"
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    commands = [shlex.split(line.split("-m echox.cli", 1)[1]) for line in lines]
    assert [c[0] for c in commands] == ["pipeline", "knowledge"]
    pipeline, knowledge = (options(parser().parse_args(c)) for c in commands)
    cfg = load_pipeline_config(ROOT / pipeline.config)
    assert cfg.out == knowledge.run == "outputs/experiment-smollm2" and knowledge.results == "RESULTS.md"
    assert cfg.preset == "smollm2-135m" and cfg.vocoder is not None and cfg.knowledge is not None
    assert cfg.knowledge.s2t
