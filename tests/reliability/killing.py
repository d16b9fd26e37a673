"""Helpers of the kill tests: start `echox` in its own process group, kill the group when a condition
holds, and check that nothing it started outlived it; the corpus checks the reruns are compared by."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import CHECK_CORPUS
from tests.reliability.conftest import Cli


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float, log: Path,
             poll: float = 0.02) -> None:
    """Poll `predicate` until true; fail with the log's tail if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(poll)


def kill_group(proc: subprocess.Popen) -> dict[psutil.Process, str]:
    """SIGKILL the process group of `proc`; return every descendant it had just before, with its name."""
    family = {}
    try:
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                family[p] = p.name()
    except psutil.NoSuchProcess:
        pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return family


def survivors(family: dict[psutil.Process, str], timeout: float = 20) -> list[psutil.Process]:
    """The processes of `family` still running (not zombies) after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(family)
    while time.monotonic() < deadline:
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.2)
    return alive


def kill_when(cli: Cli, args: list[str], log: Path, ready: Callable[[], bool],
              timeout: float = 300) -> dict[psutil.Process, str]:
    """Start `echox ARGS`, SIGKILL its process group once `ready()`, check nothing outlived it; return
    the processes it had (name by process)."""
    proc = cli.popen(args, log)
    family: dict[psutil.Process, str] = {}
    try:
        wait_for(ready, proc, timeout, log)
        family = kill_group(proc)
        assert proc.returncode == -signal.SIGKILL
        alive = survivors(family)
        assert not alive, f"processes outlived the killed driver: {[family[p] for p in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in family:  # only processes this test started
            with contextlib.suppress(psutil.Error):
                p.kill()
    return family


def corpus_ids(out: Path) -> list[str]:
    """The sorted row ids of a corpus, read through `datasets`."""
    import datasets

    return sorted(datasets.load_from_disk(str(out))["id"])


def check_corpus(out: Path, src: Path) -> None:
    """The corpus contract checker passes on `out` built from `src`."""
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def expected_ids(n: int) -> list[str]:
    """The ids of `qa_rows(n)`, sorted."""
    return sorted(f"q{i}" for i in range(1, n + 1))
