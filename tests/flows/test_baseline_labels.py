"""`echox baseline-labels`: the CLI runs the flow (a real Prefect server) and writes verified labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tasks.test_baseline_labels import random_checkpoints
from tests.tasks.test_echo_labels import tiny_rows, write_tiny_corpus


def test_the_cli_writes_the_baseline_labels_through_the_flow(
        tmp_path: Path, prefect_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main
    from flows.pipeline_steps import labels_done

    corpus = write_tiny_corpus(tmp_path / "corpus", tiny_rows())
    s2t, t2c = random_checkpoints(tmp_path)
    out = tmp_path / "labels"
    args = ["baseline-labels", "--corpus", str(corpus), "--s2t", str(s2t), "--t2c", str(t2c),
            "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert f"baseline labels written to {out}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert labels_done(out) and manifest["labels"] == "corpus" and manifest["totals"]["rows"] == 6
    assert main([*args, "--max-units", "4"]) == 2  # another run in the same folder needs --overwrite
    assert "overwrite" in capsys.readouterr().err
