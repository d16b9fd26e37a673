"""A run's chatter in its log file: Python and C-level output, children and logging handlers; the terminal
kept for what echox says, and put back whole."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.run_log import LOG_DIR, RunLog

CHILD = "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"


def test_everything_but_the_terminal_goes_to_the_log(tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("test_run_log.lib")
    before = logging.StreamHandler(sys.stderr)  # like Ray's and Prefect's handlers, made at import
    logger.addHandler(before)
    capfd.readouterr()
    log = RunLog.open(tmp_path)
    try:
        during = logging.StreamHandler(sys.stderr)  # made while the log is open (Prefect imported then)
        logger.addHandler(during)
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"fd 1, as C++ writes it\n")
        os.write(2, b"fd 2, as Gloo writes it\n")
        logger.warning("a library warning")
        subprocess.run([sys.executable, "-c", CHILD], check=True)  # inherits the descriptors, as Ray does
        log.out.write("for the user\n")
        log.err.write("an error for the user\n")
        log.write("said: for the user\n")
    finally:
        log.close()
    captured = capfd.readouterr()
    assert captured.out == "for the user\n" and captured.err == "an error for the user\n"
    assert log.path.parent == tmp_path / LOG_DIR and log.path.name.startswith("echox-")
    text = log.path.read_text()
    for line in ("python stdout", "python stderr", "fd 1, as C++ writes it", "fd 2, as Gloo writes it",
                 "child stdout", "child stderr", "said: for the user"):
        assert line in text, line
    assert text.count("a library warning") == 2  # both handlers wrote it there
    # All of it is back: descriptors, sys streams, and both handlers write to stderr again.
    print("after")
    os.write(2, b"fd 2 after\n")
    logger.warning("warning after")
    logger.removeHandler(before)
    logger.removeHandler(during)
    captured = capfd.readouterr()
    assert captured.out == "after\n" and "fd 2 after" in captured.err
    assert captured.err.count("warning after") == 2 and "after" not in log.path.read_text()


def test_an_unexpected_error_leaves_its_traceback_in_the_log(tmp_path: Path) -> None:
    log = RunLog.open(tmp_path)
    try:
        raise ValueError("not a user mistake")
    except ValueError as e:
        log.close(e)
    text = log.path.read_text()
    assert "Traceback" in text and "ValueError: not a user mistake" in text
