"""`--ray-address`: the corpus build runs on a separately started Ray cluster (`ray start --head`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHECK_CORPUS, qa, write_jsonl
from tests.helpers.ray_nodes import start_head

pytestmark = pytest.mark.integration


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A Ray head on loopback in its own process group (stopped by killing the group, not `ray stop`,
    which would also stop the test session's Ray)."""
    from core.server import free_port

    port = free_port()
    head = start_head(port, num_cpus=2)
    yield f"127.0.0.1:{port}"
    head.stop()


def test_build_corpus_runs_on_an_existing_cluster(ray_head: str, tmp_path: Path, prefect_server: str) -> None:
    src = write_jsonl(tmp_path / "qa.jsonl", [qa(i) for i in range(1, 7)])
    out = tmp_path / "corpus"
    cmd = [sys.executable, "-m", "echox.cli", "build-corpus", "--source", str(src), "--out", str(out),
           "--tts", "espeak", "--num-units", "8", "--shard-size", "3", "--ray-address", ray_head]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PREFECT_API_URL": prefect_server})
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert f"Connecting to an existing Ray instance at {ray_head}" in log
    check = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", str(src)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
