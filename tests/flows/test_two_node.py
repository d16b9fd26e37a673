"""Two Ray nodes on this machine, started as an operator would: a head from another working directory and
a second node joining it, each with its own CPUs and temp dir. The CLI's build-corpus, train and echo-labels
run against it with relative output paths and land where the driver expects; a node lost mid-build leaves
a build that completes on the head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHECK_CORPUS, qa, write_jsonl
from tests.helpers.ray_nodes import RayNode, start_head, start_worker
from tests.tasks.test_echo_labels import tiny_checkpoints, tiny_rows, write_tiny_corpus

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, RayNode, RayNode]]:
    """A head (2 CPUs, started in its own folder) and a second node (1 CPU); their address."""
    from core.server import free_port

    port = free_port()
    (tmp_path / "head-cwd").mkdir()
    head = start_head(port, num_cpus=2, cwd=tmp_path / "head-cwd")
    address = f"127.0.0.1:{port}"
    try:
        worker = start_worker(address, num_cpus=1, cwd=tmp_path / "head-cwd")
    except RuntimeError:
        head.stop()
        raise
    yield address, head, worker
    worker.stop()
    head.stop()


def _driver(tmp_path: Path, prefect_server: str) -> tuple[Path, dict]:
    """The driver's own working directory (not the repo, not the head's) and its environment."""
    cwd = tmp_path / "driver"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return cwd, env


def _echox(args: list[str], cwd: Path, env: dict, timeout: float = 400) -> str:
    res = subprocess.run([sys.executable, "-m", "echox.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    return log


def _check_corpus(out: Path, src: Path) -> None:
    check = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", str(src)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_build_train_and_label_on_two_nodes_with_relative_paths(cluster: tuple[str, RayNode, RayNode],
                                                                 tmp_path: Path, prefect_server: str) -> None:
    address, _, _ = cluster
    cwd, env = _driver(tmp_path, prefect_server)
    write_jsonl(cwd / "qa.jsonl", [qa(i) for i in range(1, 7)])
    _echox(["build-corpus", "--source", "qa.jsonl", "--out", "outputs/corpus", "--tts", "espeak",
            "--num-units", "8", "--shard-size", "2", "--workers", "3", "--quiet", "--ray-address", address],
           cwd, env)
    _check_corpus(cwd / "outputs" / "corpus", cwd / "qa.jsonl")
    assert not (tmp_path / "head-cwd" / "outputs").exists()  # nothing landed in a worker's directory

    _echox(["train", "--stage", "t2c", "--corpus", "outputs/corpus", "--out", "outputs/t2c",
            "--preset", "tiny", "--max-steps", "4", "--batch-size", "2", "--log-every", "2",
            "--ckpt-every", "2", "--workers", "2", "--cache-dir", "outputs/llm-cache",
            "--ray-address", address], cwd, env)
    summary = json.loads((cwd / "outputs" / "t2c" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2
    assert (cwd / "outputs" / "t2c" / "model").is_dir()

    rows = tiny_rows(6)
    write_tiny_corpus(cwd / "tiny-corpus", rows, shards=3)
    tiny_checkpoints(cwd / "tiny", rows)
    _echox(["echo-labels", "--corpus", "tiny-corpus", "--s2t", "tiny/s2t", "--t2c", "tiny/t2c",
            "--out", "outputs/labels", "--workers", "2", "--batch-size", "2", "--max-units", "64",
            "--min-t2c-end-rate", "0", "--quiet", "--ray-address", address], cwd, env)
    manifest = json.loads((cwd / "outputs" / "labels" / "manifest.json").read_text())
    assert manifest["totals"]["rows"] + manifest["totals"]["rejected"] == len(rows)


def test_a_node_lost_mid_build_leaves_a_build_that_completes_on_the_head(
        cluster: tuple[str, RayNode, RayNode], tmp_path: Path, prefect_server: str) -> None:
    address, _, worker = cluster
    cwd, env = _driver(tmp_path, prefect_server)
    write_jsonl(cwd / "qa.jsonl", [qa(i) for i in range(1, 13)])
    log = cwd / "build.log"
    cmd = [sys.executable, "-m", "echox.cli", "build-corpus", "--source", "qa.jsonl", "--out", "corpus",
           "--tts", "espeak", "--num-units", "8", "--shard-size", "2", "--workers", "3",
           "--ray-address", address]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "speech+features: 1/" not in log.read_text(errors="replace"):  # the build is under way
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    worker.kill()  # the second node is lost with whatever it was running
    assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    _check_corpus(cwd / "corpus", cwd / "qa.jsonl")
