"""The process-wide progress sink: rows that finish with their block, and the shared rendering."""

from __future__ import annotations

from typing import Any

import pytest

from core import progress


class Recorder:
    """A sink that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, row: str, total: int | None, unit: str) -> None:
        self.events.append(("start", row, total, unit))

    def update(self, row: str, done: int, fields: dict[str, Any]) -> None:
        self.events.append(("update", row, done, fields))

    def finish(self, row: str, ok: bool, summary: str) -> None:
        self.events.append(("finish", row, ok, summary))

    def note(self, text: str) -> None:
        self.events.append(("note", text))


@pytest.fixture()
def recorder() -> Any:
    sink = Recorder()
    previous = progress.install(sink)
    yield sink
    progress.install(previous)


def test_a_row_finishes_with_its_block_and_fails_with_it(recorder: Recorder) -> None:
    with progress.row("shards", 2, "shards") as row:
        row.update(1)
        row.update(2, loss=1.5)
        row.summary = "2 shards"
    with pytest.raises(RuntimeError), progress.row("train s2t", 10, "steps"):
        raise RuntimeError("boom")
    with progress.row("hidden", 3, show=False) as row:  # --quiet
        row.update(1)
    progress.note("hello")
    assert recorder.events == [
        ("start", "shards", 2, "shards"), ("update", "shards", 1, {}), ("update", "shards", 2, {"loss": 1.5}),
        ("finish", "shards", True, "2 shards"), ("start", "train s2t", 10, "steps"),
        ("finish", "train s2t", False, ""), ("note", "hello")]


def test_the_default_sink_shows_nothing() -> None:
    assert isinstance(progress._sink, progress.NullSink)
    with progress.row("x", 1) as row:
        row.update(1)


def test_fields_and_eta_read_as_text() -> None:
    text = progress.fields_text({"loss": 2.31, "tokens_per_s": 1234.4, "eta_s": 260, "total": 9, "lr": None})
    assert text == "loss 2.3100 · 1,234 tokens/s · ETA 4m 20s"
    assert progress.fields_text({"eta_s": 0.4, "shard": 3}) == "shard 3"  # "ETA 0s" says nothing
    assert progress.eta_s(10.0, 2, 6) == 20.0
    assert progress.eta_s(10.0, 0, 6) is None and progress.eta_s(10.0, 6, 6) is None
    assert progress.eta_s(10.0, 2, None) is None
