"""`echox` as a user runs it (a child process, output to a pipe): progress and a summary on the terminal,
no Ray, Gloo or Prefect engine lines; those in the run folder's log named at the end; `--verbose` streams
them. (The mechanics, on a stand-in command: tests/echox/test_terminal.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHECK_CORPUS, qa, write_jsonl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# What the terminal used to show: Ray's worker prefixes and dedup hints, Gloo, Ray Train's actors, and
# Prefect's engine (its log lines carry a level: "| INFO    |").
CHATTER = re.compile(r"\(\S+ pid=\d+|Ray deduplicates|log deduplication|Gloo|PlacementGroupCleaner|"
                     r"TrainController|\| (INFO|WARNING|ERROR) +\||Started a local Ray instance")


def _echox(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "echox.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def _log_named(stdout: str) -> Path:
    found = re.findall(r"full log: (\S+)$", stdout, re.M)
    assert len(found) == 1, stdout
    return Path(found[0])


@pytest.fixture(scope="module")
def env(prefect_server: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}
    env.pop("ECHOX_VERBOSE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> tuple[list[str], Path, str]:
    """A 6-record espeak build, as a user runs it: (its arguments, its --out, what it printed)."""
    tmp = tmp_path_factory.mktemp("quiet")
    src = write_jsonl(tmp / "qa.jsonl", [qa(i) for i in range(1, 7)])
    out = tmp / "corpus"
    args = ["build-corpus", "--source", str(src), "--out", str(out), "--tts", "espeak", "--num-units", "8",
            "--shard-size", "3", "--workers", "2"]
    res = _echox(args, env)
    assert res.stderr == ""
    return args, out, res.stdout


def test_build_corpus_shows_progress_and_a_summary_and_logs_the_chatter(built: tuple) -> None:
    args, out, printed = built
    assert not CHATTER.search(printed), printed
    lines = printed.splitlines()
    assert lines[0] == f"echox build-corpus: Ray and Prefect output goes to {_log_named(printed)} " \
                       "(--verbose shows it here)"
    for expected in ("build-corpus: 6 records → 2 shards in", "speech+features: 1/2 shards",
                     "✓ speech+features: 2/2 shards in", "codebook: ", "✓ units+shards: 2/2 shards in",
                     "build-corpus: 6 rows of 6 records (0 rejected)", f"corpus written to {out}"):
        assert any(line.startswith(expected) for line in lines), (expected, printed)
    assert re.match(r"echox build-corpus: done in .+; full log: ", lines[-1])
    log = _log_named(printed)
    assert log.parent == out / "logs"
    text = log.read_text()
    assert "for flow 'build-corpus'" in text and "(synthesize-shard pid=" in text
    assert "\x1b[" not in text  # Ray's prefixes uncoloured in a file
    source = args[args.index("--source") + 1]
    check = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", source],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # a corpus with its logs/ is still a corpus


def test_verbose_streams_the_chatter_and_writes_no_log(built: tuple, env: dict[str, str]) -> None:
    args, out, _ = built
    logs = sorted((out / "logs").iterdir())
    res = _echox([*args, "--verbose"], env)  # the same build: a resume, every shard verified
    streamed = res.stdout + res.stderr
    assert "for flow 'build-corpus'" in streamed and "full log" not in streamed
    assert sorted((out / "logs").iterdir()) == logs


@pytest.mark.slow
def test_training_shows_steps_and_loss_without_ray_train_or_gloo(built: tuple, env: dict[str, str]) -> None:
    _, corpus, _ = built
    run = corpus.parent / "t2c"
    res = _echox(["train", "--stage", "t2c", "--corpus", str(corpus), "--out", str(run), "--preset", "tiny",
                  "--max-steps", "4", "--batch-size", "2", "--log-every", "1", "--ckpt-every", "2",
                  "--workers", "2", "--cache-dir", str(corpus.parent / "llm")], env)
    assert res.stderr == "" and not CHATTER.search(res.stdout), res.stdout
    row = r"^train t2c: \d/4 steps · loss \d\.\d{4} · [\d,]+ tokens/s"  # the first update (then every 10 s)
    assert re.search(row, res.stdout, re.M), res.stdout
    assert re.search(r"^✓ train t2c: 4/4 steps · loss \d\.\d{4} in ", res.stdout, re.M), res.stdout
    assert f"model written to {run / 'model'}" in res.stdout
    text = _log_named(res.stdout).read_text()
    assert "(RayTrainWorker pid=" in text and "[Gloo]" in text
