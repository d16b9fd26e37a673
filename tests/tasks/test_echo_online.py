"""Stage III with online echo targets through the real training loop: it trains on the corpus (no echo
labels), logs how many rows the teacher's guard masked, saves an ordinary echo checkpoint without the
teacher, and a crashed run resumes onto the uninterrupted run's parameters (the targets are remade, the
same, from the restored states)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.t2c import GeneratedUnits
from tests.helpers.dummy_model import SimulatedCrash
from tests.tasks.test_baseline_labels import random_checkpoints
from tests.tasks.test_echo_labels import K, tiny_rows, write_tiny_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny corpus (6 rows) and random-init stage I and II checkpoints."""
    root = tmp_path_factory.mktemp("echo-online")
    corpus = write_tiny_corpus(root / "corpus", tiny_rows())
    s2t, t2c = random_checkpoints(root)
    return {"root": root, "corpus": corpus, "s2t": s2t, "t2c": t2c}


def _rule(texts: list[list[int]], max_units: int = 1000) -> list[GeneratedUnits]:
    """Stands in for a random T2C's generation, which never ends within a short guard: units from the
    segment's ids; a segment whose ids sum to a multiple of 3 hits the guard."""
    return [GeneratedUnits([t % K for t in ids], sum(ids) % 3 == 0) for ids in texts]


def build_online(s2t: Path, t2c: Path, rule: bool = True) -> torch.nn.Module:
    """The echo-online stage's model as the trainer builds it (models.factory), with the rule teacher."""
    from models.factory import build_for_stage
    from models.presets import preset_to_dict, resolve_preset

    preset = preset_to_dict(resolve_preset("tiny", online_max_units=8))
    model = build_for_stage("echo-online", preset, "", s2t_checkpoint=str(s2t), t2c_checkpoint=str(t2c),
                            seed=0)
    if rule:
        model.teacher.generate_units = _rule
    return model


class CrashAt:
    """The stage's collator, raising SimulatedCrash on its `crash_at`-th batch."""

    def __init__(self, stage: str, model: torch.nn.Module, *, crash_at: int) -> None:
        from tasks.collate import make_collator

        self.inner, self.calls, self.crash_at = make_collator(stage, model), 0, crash_at

    def __call__(self, rows: list[dict]) -> dict:
        self.calls += 1
        if self.calls == self.crash_at:
            raise SimulatedCrash(f"batch {self.calls}")
        return self.inner(rows)


def _config(env: dict, out: Path, **kw: object):
    from tasks.train import TrainConfig

    return TrainConfig(**{"stage": "echo-online", "corpus_dir": str(env["corpus"]), "out_dir": str(out),
                          "max_steps": 6, "batch_size": 3, "lr": 3e-3, "warmup_steps": 1, "log_every": 1,
                          "ckpt_every": 2, "num_threads": 1, **kw})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_online_training_logs_the_guard_and_saves_an_echo_checkpoint(env: dict, tmp_path: Path) -> None:
    from safetensors import safe_open

    from tasks.inference import load_checkpoint_model
    from tasks.train import run_local

    build = functools.partial(build_online, env["s2t"], env["t2c"])
    summary = run_local(_config(env, tmp_path / "run"), build)
    metrics = _metrics(tmp_path / "run")
    assert summary["steps"] == 6 and summary["examples"] == 6  # one example per corpus row, no labels
    assert all(0.0 <= m["guard_masked"] <= 1.0 for m in metrics)
    assert any(0.0 < m["guard_masked"] < 1.0 for m in metrics), [m["guard_masked"] for m in metrics]
    assert all(m["echo"] > 0 and torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert metrics[-1]["echo"] < metrics[0]["echo"], (metrics[0], metrics[-1])
    model = load_checkpoint_model(tmp_path / "run", "echo")  # what evaluate and speak load
    assert model.teacher is None
    with safe_open(str(tmp_path / "run" / "model" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("teacher") for k in f.keys())  # noqa: SIM118 - safe_open has no __iter__


def test_a_crashed_online_run_resumes_onto_the_same_parameters(env: dict, tmp_path: Path) -> None:
    from tasks.train import run_local

    build = functools.partial(build_online, env["s2t"], env["t2c"])
    straight = run_local(_config(env, tmp_path / "straight"), build)
    with pytest.raises(SimulatedCrash):
        run_local(_config(env, tmp_path / "crashed"), build,
                  make_collator=functools.partial(CrashAt, crash_at=4))  # checkpoint at 2, dies in 4
    resumed = run_local(_config(env, tmp_path / "crashed", resume=True), build)
    assert resumed["resumed_from"].endswith("step-000002")
    assert resumed["param_checksums"] == straight["param_checksums"]
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "crashed")
    assert [m["guard_masked"] for m in a] == [m["guard_masked"] for m in b]


def test_the_train_command_runs_the_online_stage_with_the_real_teacher(env: dict, tmp_path: Path) -> None:
    """`echox train --stage echo-online` end to end with the random T2C itself as the teacher (a short
    guard it never meets: every row masked, the S2T still trains): a one-line refusal without --t2c, and
    a run that finishes with the guard's count in its metrics."""
    args = [sys.executable, "-m", "echox.cli", "train", "--stage", "echo-online",
            "--corpus", str(env["corpus"]), "--preset", "tiny", "--set", "online_max_units=4",
            "--launcher", "local", "--max-steps", "2", "--batch-size", "3", "--log-every", "1",
            "--ckpt-every", "2"]
    bad = subprocess.run([*args, "--out", str(tmp_path / "bad"), "--s2t", str(env["s2t"])],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "needs --s2t and --t2c" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
    run = tmp_path / "run"
    ok = subprocess.run([*args, "--out", str(run), "--s2t", str(env["s2t"]), "--t2c", str(env["t2c"])],
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == [1, 2] and all(m["guard_masked"] == 1.0 for m in metrics)
    assert all(m["echo"] == 0.0 and m["s2t"] > 0 for m in metrics)
