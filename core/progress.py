"""Progress of what this process is running, for whoever shows it: one process-wide sink.

Driver-side code reports named rows (`start`, `update`, `finish`) and one-line `note`s; the sink decides
what to show. The default sink shows nothing (flows run by a deployment or a test log to Prefect as
before); the CLI installs a live display or plain progress lines (echox/progress_view.py). Rows are
updated from more than one thread (the training poller, parallel training steps): sinks lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol


class Sink(Protocol):
    """Where progress goes."""

    def start(self, row: str, total: int | None, unit: str) -> None:
        """A row begins: `total` units of work (None: a row with no count, e.g. a pipeline step)."""

    def update(self, row: str, done: int, fields: dict[str, Any]) -> None:
        """`done` units of the row's work are done; `fields` add to the line (loss, tokens_per_s, eta_s)."""

    def finish(self, row: str, ok: bool, summary: str) -> None:
        """The row has ended (failed unless `ok`); `summary` says with what."""

    def note(self, text: str) -> None:
        """A line worth showing as it is."""


class NullSink:
    """Shows nothing."""

    def start(self, row: str, total: int | None, unit: str) -> None:
        """Nothing."""

    def update(self, row: str, done: int, fields: dict[str, Any]) -> None:
        """Nothing."""

    def finish(self, row: str, ok: bool, summary: str) -> None:
        """Nothing."""

    def note(self, text: str) -> None:
        """Nothing."""


_lock = threading.Lock()
_sink: Sink = NullSink()


def install(sink: Sink) -> Sink:
    """Make `sink` this process's sink; returns the one it replaces (to put back)."""
    global _sink
    with _lock:
        previous, _sink = _sink, sink
    return previous


def start(row: str, total: int | None = None, unit: str = "") -> None:
    """Begin a row (`total` units of `unit`, or None for a row without a count)."""
    _sink.start(row, total, unit)


def update(row: str, done: int, **fields: Any) -> None:
    """Progress of a row: `done` units (and `total=` to change it), loss=, tokens_per_s=, eta_s=, ..."""
    _sink.update(row, done, fields)


def finish(row: str, summary: str = "", *, ok: bool = True) -> None:
    """End a row, with what it came to."""
    _sink.finish(row, ok, summary)


def note(text: str) -> None:
    """A one-line message for the terminal."""
    _sink.note(text)


class Row:
    """A row begun by `row()`: `update` it; set `summary` to what it came to."""

    def __init__(self, name: str, shown: bool) -> None:
        self.name, self.shown, self.summary = name, shown, ""

    def update(self, done: int, **fields: Any) -> None:
        """`done` units, and the fields of `update()`."""
        if self.shown:
            update(self.name, done, **fields)


@contextlib.contextmanager
def row(name: str, total: int | None = None, unit: str = "", *, show: bool = True) -> Iterator[Row]:
    """`with row("speech+features", 6, "shards") as r: ... r.update(done)`: a row that finishes with the
    block (failed if it raises). `show=False` (a --quiet run) shows nothing."""
    handle = Row(name, show)
    if show:
        start(name, total, unit)
    try:
        yield handle
    except BaseException:
        if show:
            finish(name, handle.summary, ok=False)
        raise
    if show:
        finish(name, handle.summary)


# ---- rendering, shared by the sinks --------------------------------------------------------------------

def duration(seconds: float) -> str:
    """3h 05m, 4m 20s, 12s."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def fields_text(fields: dict[str, Any]) -> str:
    """The fields of an update as text: loss 2.3100 · 1,234 tokens/s · ETA 4m 20s (others as `name value`)."""
    parts = []
    for key, value in fields.items():
        if value is None or key == "total":
            continue
        if key == "loss":
            parts.append(f"loss {value:.4f}")
        elif key == "tokens_per_s":
            parts.append(f"{value:,.0f} tokens/s")
        elif key == "eta_s":
            if value >= 1:  # "ETA 0s" says nothing
                parts.append(f"ETA {duration(value)}")
        else:
            parts.append(f"{key} {value}")
    return " · ".join(parts)


def eta_s(elapsed_s: float, done: int, total: int | None) -> float | None:
    """Seconds left at the mean pace so far (None without a count or before the first unit)."""
    if not total or done <= 0 or done >= total:
        return None
    return elapsed_s / done * (total - done)
