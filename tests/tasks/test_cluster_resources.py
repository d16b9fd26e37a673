"""What a task reserves on a Ray cluster and what it is handed there: threads = reserved CPUs, code shipped
with the job, paths made absolute in the driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import runtime
from core.runtime import task_threads
from tasks.build_corpus import fit_threads
from tasks.configs import BuildCorpusConfig


@pytest.mark.parametrize(("workers", "given", "total", "node", "expected"), [
    (2, None, 2, 2, 1),     # a 2-core laptop, 2 workers: one thread each (as before)
    (1, None, 2, 2, 2),     # one worker takes the laptop's two cores
    (2, 3, 2, 2, 3),        # a configured count wins
    (4, None, 64, 16, 16),  # a cluster of 4 × 16: never more than one node holds
    (8, None, 64, 16, 8),   # 8 workers share 64 CPUs
    (8, None, 4, 4, 1),     # more workers than CPUs: one each
])
def test_task_threads(workers: int, given: int | None, total: int, node: int, expected: int) -> None:
    assert task_threads(workers, given, total, node) == expected
    assert task_threads(workers, given or 0, total, node) == expected  # training's "unset" is num_threads 0


def test_fit_threads_use_the_builds_cpus_within_a_node() -> None:
    assert fit_threads(2, 1, 2) == 2
    assert fit_threads(8, 8, 16) == 16


def test_code_is_shipped_only_when_joining_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    caller = {"env_vars": {"PYTHONPATH": "/x"}}
    assert runtime.job_runtime_env(None, caller) == caller  # a local Ray imports from this checkout
    env = runtime.job_runtime_env("10.0.0.1:6379", caller)
    shipped = {Path(p).name for p in env["py_modules"]}
    assert {"core", "tasks", "models", "flows", "data_specs", "echox"} <= shipped
    assert all(Path(p).is_dir() and Path(p).is_absolute() for p in env["py_modules"])
    assert env["env_vars"] == {"PYTHONPATH": "/x"} and "__pycache__" in env["excludes"]
    monkeypatch.setenv("ECHOX_SHIP_CODE", "0")
    assert runtime.job_runtime_env("10.0.0.1:6379", None) == {}


def test_corpus_config_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = BuildCorpusConfig(source="data/qa.jsonl", out="outputs/corpus", codebook="cb.npz")
    fixed = cfg.absolute()
    assert fixed.source == str(tmp_path / "data" / "qa.jsonl")
    assert fixed.out == str(tmp_path / "outputs" / "corpus")
    assert fixed.codebook == str(tmp_path / "cb.npz") and fixed.feature_checkpoint is None


def test_training_and_labelling_paths_are_made_absolute(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.configs import EchoLabelsConfig, TrainFlowConfig

    monkeypatch.chdir(tmp_path)
    train = TrainFlowConfig(stage="t2c", corpus="c", out="runs/t2c", cache_dir="cache").absolute()
    assert (train.corpus, train.out, train.cache_dir) == (str(tmp_path / "c"), str(tmp_path / "runs" / "t2c"),
                                                         str(tmp_path / "cache"))
    assert train.s2t is None and train.stage == "t2c"
    labels = EchoLabelsConfig(corpus="c", s2t="a", t2c="b", out="o").absolute()
    assert [labels.corpus, labels.s2t, labels.t2c, labels.out] == [str(tmp_path / n) for n in "cabo"]
