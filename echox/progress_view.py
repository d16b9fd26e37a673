"""The terminal's view of core.progress: a live display (rich) on a terminal, plain lines elsewhere.

Both show one row per running piece of work (shards, training steps with loss, tokens/s and ETA) and
leave a line behind when a row ends: `✓ speech+features: 6/6 shards in 12s`, `✗ s2t: stopped after 40s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from core.progress import duration, eta_s, fields_text


@dataclass
class Row:
    """A running row: its count and the fields of its last update."""

    total: int | None
    unit: str
    started: float
    done: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """Take an update (a `total` field changes the count)."""
        self.done = done
        self.total = fields.get("total", self.total)
        self.fields = {k: v for k, v in fields.items() if k != "total"}

    def count(self) -> str:
        """`3/6 shards`, or '' for a row without a count."""
        return f"{self.done}/{self.total} {self.unit}".rstrip() if self.total else ""

    def info(self, now: float) -> str:
        """The fields, with an ETA at the mean pace when the caller gave none."""
        fields = dict(self.fields)
        if "eta_s" not in fields:
            fields["eta_s"] = eta_s(now - self.started, self.done, self.total)
        return fields_text(fields)

    def status(self, now: float) -> str:
        """`3/6 shards · ETA 12s`."""
        return " · ".join(p for p in (self.count(), self.info(now)) if p)

    def line(self, name: str, now: float) -> str:
        """`name: 3/6 shards · ETA 12s`."""
        return f"{name}: {self.status(now)}"

    def ended(self, name: str, ok: bool, summary: str, now: float) -> str:
        """The line a finished row leaves: `✓ name: summary in 12s` (✗ and `stopped after` if it failed)."""
        took = duration(now - self.started)
        what = summary or self.count()
        return (f"✓ {name}: {what or 'done'} in {took}" if ok
                else f"✗ {name}: {what + ', ' if what else ''}stopped after {took}")


class PlainSink:
    """Progress as plain lines (CI logs, pipes, tests): a row's first update and then one every `interval_s`
    seconds; the line a row leaves when it ends; notes."""

    def __init__(self, out: IO[str], interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.interval_s, self.clock = out, interval_s, clock
        self.rows: dict[str, Row] = {}
        self.printed: dict[str, float] = {}
        self.lock = threading.Lock()

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def start(self, row: str, total: int | None, unit: str) -> None:
        """Remember the row; a row without a count says that it started."""
        with self.lock:
            self.rows[row] = Row(total, unit, self.clock())
            if total is None:
                self._print(f"{row}: started")

    def update(self, row: str, done: int, fields: dict[str, Any]) -> None:
        """Print the row's line if it is due."""
        with self.lock:
            now = self.clock()
            state = self.rows.setdefault(row, Row(None, "", now))
            state.update(done, fields)
            last = self.printed.get(row)
            if last is None or now - last >= self.interval_s:  # the last one: the line `finish` prints
                self._print(state.line(row, now))
                self.printed[row] = now

    def finish(self, row: str, ok: bool, summary: str) -> None:
        """Print the line the row leaves."""
        with self.lock:
            now = self.clock()
            state = self.rows.pop(row, None) or Row(None, "", now)
            self.printed.pop(row, None)
            self._print(state.ended(row, ok, summary, now))

    def note(self, text: str) -> None:
        """Print it."""
        with self.lock:
            self._print(text)

    def close(self) -> None:
        """Rows still open (a failed run) leave a ✗ line."""
        for row in list(self.rows):
            self.finish(row, False, "")


class LiveSink:
    """Progress as a rich live display: a bar per running row, the rows' lines printed above it."""

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Bar(BarColumn):
            """No bar for a row without a count."""

            def render(self, task: Any) -> Any:
                return Text("") if task.total is None else super().render(task)

        self.console = Console(file=out)
        # redirect_*=False: while the display runs, what goes to sys.stdout/err is chatter for the log.
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), Bar(bar_width=24),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True, redirect_stdout=False,
                                 redirect_stderr=False, refresh_per_second=4)
        self.rows: dict[str, tuple[Row, Any]] = {}
        self.lock = threading.Lock()
        self.running = False

    def _show(self, name: str) -> None:
        row, task = self.rows[name]
        self.progress.update(task, total=row.total, completed=row.done, status=row.status(time.monotonic()))

    def start(self, row: str, total: int | None, unit: str) -> None:
        """Add the row to the display (started with the first row)."""
        with self.lock:
            if not self.running:
                self.progress.start()
                self.running = True
            state = Row(total, unit, time.monotonic())
            self.rows[row] = (state, self.progress.add_task(row, total=total, status=state.count()))

    def update(self, row: str, done: int, fields: dict[str, Any]) -> None:
        """Move the row's bar and fields."""
        with self.lock:
            if row not in self.rows:
                return
            self.rows[row][0].update(done, fields)
            self._show(row)

    def finish(self, row: str, ok: bool, summary: str) -> None:
        """Take the row off the display and print the line it leaves above it."""
        with self.lock:
            now = time.monotonic()
            state, task = self.rows.pop(row, (Row(None, "", now), None))
            if task is not None:
                self.progress.remove_task(task)
            self.print(state.ended(row, ok, summary, now))

    def note(self, text: str) -> None:
        """Print it above the display."""
        self.print(text)

    def print(self, text: str) -> None:
        """`text` as it is (no markup, colours, emoji or wrapping), above the display."""
        self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def close(self) -> None:
        """Rows still open leave a ✗ line; the display stops."""
        for row in list(self.rows):
            self.finish(row, False, "")
        if self.running:
            self.progress.stop()
            self.running = False
