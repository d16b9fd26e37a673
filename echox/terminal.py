"""What a command that runs flows shows in its terminal: progress, what echox says, a summary.

Once a command has validated its options and its work starts (`begin(run_folder)`), the chatter of Ray,
Gloo and Prefect's engine goes to `RUN_FOLDER/logs/echox-<time>.log` (core/run_log.py), progress is shown
live on a terminal and as plain lines elsewhere (echox/progress_view.py), and the log is named at the end.
`--verbose` (or ECHOX_VERBOSE=1) streams the chatter as before instead. Handlers print through `say`, so
that their output reaches the terminal either way. One command per process at a time: this is
process-wide state, as the file descriptors it redirects are.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import progress, runtime
from core.progress import duration
from core.run_log import RunLog
from echox.progress_view import LiveSink, PlainSink

VERBOSE_ENV = "ECHOX_VERBOSE"
# The log is a file that keeps every line: Ray neither colours its prefixes nor folds repeated lines
# (its "[repeated 3x across cluster]" notes are coloured too). Set before Ray is imported: it reads the
# second one then.
LOG_ENV = {"RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0"}


# Where echox's own warnings are logged: its packages' module loggers (a handler there; Prefect configures
# none of them) and the flows' run loggers (a filter there: Prefect replaces those loggers' handlers when it
# is imported, which is after `begin`, but keeps their filters).
OWN_LOGGERS = ("core", "models", "tasks", "flows")
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _OwnWarnings(logging.Handler):
    """Warnings (and errors) logged by echox's own code, shown on the terminal too: a damaged file rebuilt,
    a checkpoint skipped. Prefect's and Ray's, logged from their code, stay in the log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.root = str(runtime.project_root())

    def emit(self, record: logging.LogRecord) -> None:
        """Show the record if echox's code logged it."""
        try:
            if record.pathname.startswith(self.root):
                progress.note(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)

    def tap(self, record: logging.LogRecord) -> bool:
        """As a logger's filter: show what `emit` shows, and keep every record."""
        if record.levelno >= self.level:
            self.emit(record)
        return True

    def attach(self) -> None:
        """Listen on echox's loggers."""
        for name in OWN_LOGGERS:
            logging.getLogger(name).addHandler(self)
        for name in RUN_LOGGERS:
            logging.getLogger(name).addFilter(self.tap)

    def detach(self) -> None:
        """Stop listening."""
        for name in OWN_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeFilter(self.tap)


@dataclass
class _Run:
    """The command running in this process, and its log and display once its work has begun."""

    command: str = "echox"
    verbose: bool = False
    log: RunLog | None = None
    sink: LiveSink | PlainSink | None = None
    previous: progress.Sink | None = None
    warnings: _OwnWarnings | None = None
    failed: bool = False
    environ: dict[str, str | None] = field(default_factory=dict)  # LOG_ENV's values before the log
    started: float = field(default_factory=time.monotonic)


_run = _Run()


def configure(command: str, *, verbose: bool = False) -> None:
    """A command starts: stream its chatter if `verbose` (or ECHOX_VERBOSE=1), else keep it for a log."""
    global _run
    _run = _Run(command, verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0"))


def begin(folder: str | Path) -> None:
    """The work starts: unless verbose, chatter goes to a log under `folder` and progress is shown."""
    if _run.verbose or _run.log is not None:
        return
    _run.environ = {k: os.environ.get(k) for k in LOG_ENV}
    os.environ.update(LOG_ENV)
    _run.log = RunLog.open(Path(folder))
    out = _run.log.out
    _run.sink = LiveSink(out) if out.isatty() else PlainSink(out)
    _run.previous = progress.install(_run.sink)
    _run.warnings = _OwnWarnings()
    _run.warnings.attach()
    say(f"echox {_run.command}: Ray and Prefect output goes to {_run.log.path} (--verbose shows it here)")


def say(text: str = "", *, err: bool = False) -> None:
    """Print `text` on the terminal (stderr if `err`), whether or not the chatter goes to a log."""
    log, sink = _run.log, _run.sink
    if log is None:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
        return
    if isinstance(sink, LiveSink) and not err:
        sink.print(text)  # above the live display
    else:
        stream = log.err if err else log.out
        stream.write(text + "\n")
        stream.flush()
    log.write(text + "\n")


def _stop_display() -> None:
    if _run.warnings is not None:
        _run.warnings.detach()
        _run.warnings = None
    if _run.sink is not None:
        _run.sink.close()
        progress.install(_run.previous or progress.NullSink())
        _run.sink = None


def error(message: str) -> None:
    """The run failed with `message` (one line, on stderr)."""
    _run.failed = True
    _stop_display()
    say(message, err=True)


def end(error: BaseException | None = None) -> None:
    """The command is over: stop the display, put the terminal back, name the log (and the time taken)."""
    _stop_display()
    log, _run.log = _run.log, None
    if log is None:
        return
    log.close(error if isinstance(error, Exception) else None)
    for key, value in _run.environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if _run.failed or error is not None:
        print(f"full log: {log.path}", file=sys.stderr, flush=True)
    else:
        print(f"echox {_run.command}: done in {duration(time.monotonic() - _run.started)}; "
              f"full log: {log.path}", flush=True)
