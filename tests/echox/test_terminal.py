"""`echox` commands that run flows: progress and a summary on the terminal, the chatter in the run's log
(named at the end), `--verbose` to stream it; errors still reach the user. A noisy test command stands in
for a flow here; tests/echox/test_quiet_cli.py runs real ones."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from core import progress
from core.config import Frozen
from core.errors import InputError
from echox import cli, terminal
from echox.cli_options import Command

CHILD = "import sys; print('(RayTrainWorker pid=7) [Gloo] Rank 0 is connected', file=sys.stderr)"


class NoisyOptions(Frozen):
    """The test command's options."""

    out: str = Field(description="Run folder.")
    fail: str = Field("", description="'user': a user mistake; 'bug': an unexpected error.")


def _noisy(opts: NoisyOptions) -> int:
    terminal.begin(opts.out)  # options valid: the work starts
    print("INFO | Flow run 'x' - Beginning flow run")  # Prefect's engine
    subprocess.run([sys.executable, "-c", CHILD], check=True)  # a child writing to the inherited fd 2
    os.write(2, b"(PlacementGroupCleaner pid=9) Failed to query Ray Train Controller actor state\n")
    with progress.row("work", 2, "items") as row:
        row.update(1)
        row.update(2)
    logging.getLogger("tasks.noisy").warning("skipping checkpoint step-3: rng.pt is refused")  # echox's own
    logging.getLogger("tasks.noisy").info("an info line")
    run_logger = logging.getLogger("prefect.flow_runs")  # a flow's get_run_logger(), without its handlers
    for path in (__file__, "/venv/site-packages/prefect/task_engine.py"):  # echox's flow, Prefect's engine
        run_logger.filter(logging.makeLogRecord({"name": run_logger.name, "levelno": logging.WARNING,
                                                 "levelname": "WARNING", "pathname": path,
                                                 "msg": f"rebuilt 1 damaged file (from {Path(path).name})"}))
    if opts.fail == "user":
        raise InputError("the input is wrong")
    if opts.fail == "bug":
        raise RuntimeError("a bug")
    terminal.say("result written")
    return 0


@pytest.fixture()
def noisy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with the noisy command."""
    monkeypatch.delenv(terminal.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, Command("noisy", NoisyOptions, _noisy, help="noise",  # type: ignore[arg-type]
                                                                 verbose=True)])


CHATTER = ("Beginning flow run", "[Gloo]", "PlacementGroupCleaner")


def _log_named(text: str) -> Path:
    found = re.findall(r"full log: (\S+)", text)
    assert len(found) == 1, text
    return Path(found[0])


def test_a_run_shows_progress_and_a_summary_and_logs_the_chatter(
        noisy: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["noisy", "--out", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert not any(c in out for c in CHATTER), out
    lines = out.splitlines()
    assert lines[0].startswith("echox noisy: Ray and Prefect output goes to ")
    assert "work: 1/2 items" in lines and "✓ work: 2/2 items in 0s" in lines and "result written" in lines
    assert "warning: skipping checkpoint step-3: rng.pt is refused" in lines  # echox's warnings are shown
    assert "warning: rebuilt 1 damaged file (from test_terminal.py)" in lines
    assert "task_engine" not in out and "an info line" not in out  # not Prefect's, nor echox's info
    assert re.match(r"echox noisy: done in \d+s; full log: ", lines[-1])
    log = _log_named(out)
    assert log.parent == tmp_path / "run" / "logs"
    text = log.read_text()
    assert all(c in text for c in CHATTER) and "result written" in text
    assert isinstance(progress._sink, progress.NullSink)  # the display is gone with the command,
    assert not logging.getLogger("tasks").handlers  # and so are its listeners on echox's loggers
    assert not any(isinstance(getattr(f, "__self__", None), terminal._OwnWarnings)
                   for f in logging.getLogger("prefect.flow_runs").filters)


def test_a_user_mistake_is_one_line_and_the_log_path(noisy: None, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["noisy", "--out", str(tmp_path), "--fail", "user"]) == 2
    out, err = capfd.readouterr()
    assert err.splitlines()[0] == "echox noisy: error: the input is wrong"
    assert "✗ work" not in out and "✓ work" in out  # the row had finished; the error is on stderr
    assert "Traceback" not in out + err and not any(c in out + err for c in CHATTER)
    assert "echox noisy: error: the input is wrong" in _log_named(err).read_text()


def test_an_unexpected_error_keeps_its_traceback_and_names_the_log(
        noisy: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="a bug"):  # Python prints its traceback on the terminal
        cli.main(["noisy", "--out", str(tmp_path), "--fail", "bug"])
    out, err = capfd.readouterr()
    assert "Beginning flow run" not in out + err
    assert "RuntimeError: a bug" in _log_named(err).read_text()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_verbose_streams_the_chatter_and_writes_no_log(noisy: None, tmp_path: Path, how: str,
                                                       capfd: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["noisy", "--out", str(tmp_path / "run")]
    if how == "flag":
        argv.append("--verbose")
    else:
        monkeypatch.setenv(terminal.VERBOSE_ENV, "1")
    assert cli.main(argv) == 0
    out, err = capfd.readouterr()
    assert all(c in out + err for c in CHATTER) and "result written" in out
    assert "full log" not in out + err and not (tmp_path / "run" / "logs").exists()
