"""A run's chatter in a log file: everything this process and its children write, but what echox says.

`RunLog.open(folder)` points file descriptors 1 and 2 at `folder/logs/echox-<time>.log` (os.dup2, so C++
output such as Gloo's and every child started from now on, Ray's and the Prefect server's included, land
there too), and with them `sys.stdout`, `sys.stderr` and the logging handlers that wrote to them (Prefect's
console handler, Ray's). What echox itself has to say goes to `out` / `err`: the terminal as it was.
`close()` puts everything back. One at a time per process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

LOG_DIR = "logs"
"""The folder of a run's log files, in its run folder (output folders that echox owns accept it)."""


def _terminal(stream: Any, fd: int, saved: int) -> IO[str]:
    """Where echox's own `fd` output goes while the log is open: a file on the saved descriptor when
    `stream` writes to `fd` itself, else `stream` (a test's capture, which dup2 does not reach)."""
    try:
        direct = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        direct = False
    if not direct:
        return stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(saved, "w", buffering=1, encoding=encoding, errors="replace", closefd=False)


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every stream handler of every logger (root included)."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    found: dict[int, logging.StreamHandler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                found[id(handler)] = handler
    return list(found.values())


def _point(handler: logging.StreamHandler, stream: IO[str]) -> None:
    """Make a stream handler (and the rich console of Prefect's) write to `stream`."""
    handler.setStream(stream)
    console = getattr(handler, "console", None)
    if console is not None and hasattr(console, "file"):
        console.file = stream


class RunLog:
    """The open log of a run; `out`/`err` are the terminal."""

    def __init__(self, path: Path, log: IO[str], saved: dict[int, int], streams: tuple[Any, Any],
                 out: IO[str], err: IO[str], handlers: dict[logging.StreamHandler, Any]) -> None:
        self.path, self.log, self.saved, self.streams = path, log, saved, streams
        self.out, self.err, self.handlers = out, err, handlers
        self.started = time.monotonic()

    @classmethod
    def open(cls, folder: Path) -> RunLog:
        """Send this process's output to a new log file in `folder/logs/` (created)."""
        path = Path(folder) / LOG_DIR / time.strftime("echox-%Y%m%d-%H%M%S.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - until close
        streams = (sys.stdout, sys.stderr)
        for stream in streams:
            stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        out, err = _terminal(streams[0], 1, saved[1]), _terminal(streams[1], 2, saved[2])
        handlers = {h: h.stream for h in _stream_handlers() if h.stream in streams}
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        sys.stdout = sys.stderr = log
        for handler in handlers:
            _point(handler, log)
        return cls(path, log, saved, streams, out, err, handlers)

    def write(self, text: str) -> None:
        """Add `text` to the log (what echox said on the terminal, so the log reads whole)."""
        self.log.write(text)

    def close(self, error: BaseException | None = None) -> None:
        """Put the terminal back (an unexpected `error`'s traceback is written to the log first)."""
        if error is not None:
            self.log.write("".join(traceback.format_exception(error)))
        for stream in (self.out, self.err, self.log):
            stream.flush()
        sys.stdout, sys.stderr = self.streams
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
        # Handlers made while the log was open (Prefect's, when it was imported then) write to stderr again.
        for handler in _stream_handlers():
            if handler.stream is self.log:
                _point(handler, self.handlers.get(handler, self.streams[1]))
        for stream in (self.out, self.err):
            if stream not in self.streams:
                stream.close()
        for saved in self.saved.values():
            os.close(saved)
        # Left open: a straggling thread or child may still write to it, and it is one descriptor.
