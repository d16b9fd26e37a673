"""The terminal's view of the progress: plain lines (pipes, CI) and the live display (a terminal)."""

from __future__ import annotations

import io

from echox.progress_view import LiveSink, PlainSink


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_first_update_then_one_per_interval_and_a_line_per_finished_row() -> None:
    out, clock = io.StringIO(), Clock()
    sink = PlainSink(out, interval_s=10, clock=clock)
    sink.start("corpus", None, "")
    sink.start("speech+features", 6, "shards")
    clock.now += 4
    sink.update("speech+features", 1, {})
    clock.now += 4
    sink.update("speech+features", 2, {})  # within the interval: not printed
    clock.now += 8
    sink.update("speech+features", 3, {})
    clock.now += 4
    sink.finish("speech+features", True, "")
    sink.note("codebook: 85f551e08494")
    sink.start("train s2t", 100, "steps")
    sink.update("train s2t", 20, {"loss": 3.2101, "tokens_per_s": 1700.2, "eta_s": 130})
    clock.now += 65
    sink.finish("train s2t", False, "20/100 steps · loss 3.2101 · RuntimeError")
    sink.close()  # still open: the pipeline step
    assert out.getvalue().splitlines() == [
        "corpus: started",
        "speech+features: 1/6 shards · ETA 20s",
        "speech+features: 3/6 shards · ETA 16s",
        "✓ speech+features: 3/6 shards in 20s",
        "codebook: 85f551e08494",
        "train s2t: 20/100 steps · loss 3.2101 · 1,700 tokens/s · ETA 2m 10s",
        "✗ train s2t: 20/100 steps · loss 3.2101 · RuntimeError, stopped after 1m 05s",
        "✗ corpus: stopped after 1m 25s",
    ]


def test_a_finished_row_without_a_summary_says_done() -> None:
    out, clock = io.StringIO(), Clock()
    sink = PlainSink(out, clock=clock)
    sink.start("s2t", None, "")
    clock.now += 3725
    sink.finish("s2t", True, "resumed")
    sink.start("t2c", None, "")
    sink.finish("t2c", True, "")
    lines = out.getvalue().splitlines()
    assert lines[-3:] == ["✓ s2t: resumed in 1h 02m", "t2c: started", "✓ t2c: done in 0s"]


class Tty(io.StringIO):
    """A terminal, as far as rich can tell."""

    def isatty(self) -> bool:
        return True


def test_live_display_draws_rows_and_prints_finished_rows_and_notes_above() -> None:
    out = Tty()
    sink = LiveSink(out)
    sink.start("speech+features", 6, "shards")
    sink.update("speech+features", 2, {})
    sink.progress.refresh()
    drawn = out.getvalue()
    assert "speech+features" in drawn and "2/6 shards" in drawn
    sink.update("not started", 1, {})  # ignored, not an error
    sink.note("codebook: [85f5] :smile:")  # as it is: no markup, no emoji
    sink.finish("speech+features", True, "")
    sink.start("train s2t", 10, "steps")
    sink.close()
    text = out.getvalue()
    assert "codebook: [85f5] :smile:" in text
    assert "✓ speech+features: 2/6 shards in 0s" in text
    assert "✗ train s2t: 0/10 steps, stopped after 0s" in text
    assert not sink.running
