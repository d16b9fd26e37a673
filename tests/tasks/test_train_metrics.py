"""Metrics lines: rank 0 writes metrics.jsonl and TensorBoard events, every rank reports; progress text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.train_metrics import MetricsLog, duration, progress_text, report_interval_s, seconds_per_step


def scalars_of(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar, as TensorBoard itself reads the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _row(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "lr": 1e-3, "tokens_per_s": 100.0, "elapsed_s": 2.0 * step,
            "tokens": 10 * step, "epoch": step / 4}


def test_rank_zero_writes_the_file_and_tensorboard_and_every_rank_reports(tmp_path: Path) -> None:
    reported: list[tuple[int, dict]] = []
    logs = [MetricsLog(tmp_path, rank=r, start_step=0, report=lambda row, r=r: reported.append((r, row)))
            for r in (0, 1)]
    for step in (2, 4):
        for log in logs:
            log.write(_row(step, 1.0 / step))
    assert scalars_of(tmp_path / "tb", "loss") == [(2, 0.5), (4, 0.25)]  # flushed before close
    for log in logs:
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]  # rank 1 writes no file
    assert [(r, row["step"]) for r, row in reported] == [(0, 2), (1, 2), (0, 4), (1, 4)]
    assert {"lr", "tokens", "epoch", "elapsed_s"} <= set(_tags(tmp_path / "tb"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tb"]


def test_a_report_is_due_first_last_and_once_per_controller_poll(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert report_interval_s() == 2.0  # Ray Train's default health check
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3600")
    log = MetricsLog(tmp_path, rank=1, start_step=0, report=lambda row: None)
    assert log.report_due(last=False)  # nothing reported yet
    log.write(_row(1, 1.0), report=True)
    assert not log.report_due(last=False) and log.report_due(last=True)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0")
    log = MetricsLog(tmp_path, rank=1, start_step=0, report=lambda row: None)
    log.write(_row(1, 1.0), report=True)
    assert log.report_due(last=False)
    assert not MetricsLog(tmp_path, rank=1, start_step=0).report_due(last=True)  # no Ray: never


def _tags(tb_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return acc.Tags()["scalars"]


def test_a_resume_hides_the_steps_past_its_checkpoint_and_a_fresh_start_clears(tmp_path: Path) -> None:
    first = MetricsLog(tmp_path, rank=0, start_step=0)
    for step in (1, 2, 3, 4):
        first.write(_row(step, 10.0 + step))
    first.close()  # "crashed" after step 4; the checkpoint it resumes from is step 2
    resumed = MetricsLog(tmp_path, rank=0, start_step=2)
    for step in (3, 4, 5):
        resumed.write(_row(step, 20.0 + step))
    resumed.close()
    assert scalars_of(tmp_path / "tb", "loss") == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    MetricsLog(tmp_path, rank=0, start_step=0).close()
    assert len(list((tmp_path / "tb").iterdir())) == 1  # the earlier attempts' event files are gone


def test_progress_text_gives_step_loss_speed_and_eta() -> None:
    rows = [_row(s, 2.0) for s in (10, 20, 30)]
    rows[-1]["elapsed_s"] = 80.0  # 3 s per step over the window 10 → 30
    assert seconds_per_step(rows) == pytest.approx(3.0)
    assert seconds_per_step(rows[:1]) == pytest.approx(2.0)
    text = progress_text("s2t", rows, 200)
    assert text == "Stage s2t: step 30/200 · loss 2.0000 · 100 tokens/s · ETA 8m 30s"
    assert progress_text("s2t", [], 200) == "Stage s2t: starting (0/200 steps)"
    assert progress_text("s2t", [_row(200, 1.5)], 200).endswith("· done")
    assert [duration(s) for s in (0.4, 59, 61, 3725)] == ["0s", "59s", "1m 01s", "1h 02m"]
