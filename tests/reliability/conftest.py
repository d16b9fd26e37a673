"""Fixtures for the reliability tests: tiny QA sources and the `echox` CLI, in a subprocess or in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def qa_rows(n: int) -> list[dict]:
    """`n` short valid QA records q1..qn."""
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}.",
             "aliases": [str(2 * i)]} for i in range(1, n + 1)]


def write_source(path: Path, rows: list[dict | bytes]) -> Path:
    """A JSONL source (dicts as JSON, bytes verbatim)."""
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def build_args(src: Path, out: Path, *extra: str) -> list[str]:
    """`echox build-corpus` arguments for a tiny espeak build (K=8, 3 records a shard, 2 workers)."""
    return ["build-corpus", "--source", str(src), "--out", str(out), "--tts", "espeak", "--num-units", "8",
            "--shard-size", "3", "--workers", "2", "--quiet", *extra]


@dataclass
class Cli:
    """Runs `echox` as a user would: a child process (own session, so it can be killed as a group)."""

    env: dict[str, str]

    def popen(self, args: list[str], log: Path) -> subprocess.Popen:
        """Start `python -m echox.cli ARGS` in its own process group, output to `log`."""
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "echox.cli", *args], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `python -m echox.cli ARGS` to completion, capturing text output."""
        return subprocess.run([sys.executable, "-m", "echox.cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli(prefect_server: str) -> Cli:
    """The CLI with the session's Prefect server (no private server per call) and quiet, offline defaults."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return Cli(env)


def assert_user_error(rc: int, stderr: str, command: str, match: str) -> None:
    """Exit code 2, one `echox CMD: error:` message containing `match` (a config error lists its
    fields on the lines below), and no traceback."""
    prefix = f"echox {command}: error: "
    assert rc == 2, stderr[-3000:]
    assert stderr.count(prefix) == 1, stderr[-3000:]
    message = stderr[stderr.index(prefix):]
    assert match in message, message
    assert "Traceback" not in stderr, stderr[-3000:]
