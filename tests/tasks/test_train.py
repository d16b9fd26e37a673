"""The training loop: it learns, resumes onto the identical curve, and keeps DDP ranks in sync."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, InputError, IntegrityError
from tasks.train import TrainConfig, _fit, lr_factor, run_local, run_ray, write_loop_json
from tests.helpers import dummy_model as dm
from tests.helpers.dummy_model import SimulatedCrash
from tests.tasks.test_train_metrics import scalars_of

ROOT = Path(__file__).resolve().parents[2]
HOOKS = {"save_fn": dm.save_model, "make_collator": dm.make_collator, "example_length": dm.example_length}
COMPARED = ("loss", "ce", "reg", "lr", "grad_norm", "tokens", "epoch")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 counting sequences in 2 shards."""
    return dm.write_corpus(tmp_path_factory.mktemp("train") / "corpus", dm.corpus_table(64, seed=1))


def _config(corpus: Path, out: Path, **kw: object) -> TrainConfig:
    base = {"stage": "t2c", "corpus_dir": str(corpus), "out_dir": str(out), "max_steps": 6, "batch_size": 4,
            "lr": 3e-2, "warmup_steps": 2, "log_every": 1, "ckpt_every": 2, "keep_checkpoints": 2,
            "bucket_size": 16, "num_threads": 1}
    return TrainConfig(**{**base, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warmup_then_cosine() -> None:
    f = functools.partial(lr_factor, warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.55)
    assert f(14) == pytest.approx(0.1) and f(20) == pytest.approx(0.1)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="grad_accum"):
        TrainConfig(stage="t2c", corpus_dir="c", out_dir="o", grad_accum=0)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        TrainConfig(stage="t2c", corpus_dir="c", out_dir="o", min_lr_ratio=1.5)
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({"stage": "t2c", "corpus_dir": "c", "out_dir": "o", "bogus": 1})
    cfg = TrainConfig.from_dict({"stage": "t2c", "corpus_dir": "c", "out_dir": "o", "adam_betas": [0.8, 0.9]})
    assert cfg.adam_betas == (0.8, 0.9)


def test_single_process_learns(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(corpus, out, max_steps=30, log_every=5, ckpt_every=7, grad_accum=2)
    summary = run_local(cfg, dm.build, **HOOKS)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [5, 7, 10, 14, 15, 20, 21, 25, 28, 30]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["ce"] + rows[-1]["reg"], rel=1e-5)
    assert rows[-1]["lr"] < rows[1]["lr"] and all(r["tokens_per_s"] > 0 for r in rows)
    assert summary["steps"] == 30 and summary["world_size"] == 1 and summary["final_loss"] == rows[-1]["loss"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000028", "step-000030"]
    # The final model loads back and is the trained one (it predicts the next unit).
    model = dm.build()
    from safetensors.torch import load_model

    load_model(model, str(out / "model" / "model.safetensors"))
    model.eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    assert model(ids, ids)["ce"].item() > 1.0  # labels = inputs is wrong for a counting model …
    assert model(ids, (ids + 1) % dm.VOCAB)["ce"].item() < 0.5  # … the next unit is right


def test_frozen_parameters_stay_frozen(corpus: Path, tmp_path: Path) -> None:
    run_local(_config(corpus, tmp_path / "run", max_steps=3), dm.build, **HOOKS)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert torch.equal(weights["frozen_scale"], torch.ones(32))


@pytest.mark.parametrize("log_every", [1, 4])
def test_resume_continues_the_identical_curve(corpus: Path, tmp_path: Path, log_every: int) -> None:
    straight = tmp_path / "straight"
    run_local(_config(corpus, straight, log_every=log_every), dm.build, **HOOKS)

    crashed = tmp_path / "crashed"
    crash_at_step_5 = functools.partial(dm.make_crashing_collator, crash_at=5)  # checkpoint at 4, dies in 5
    with pytest.raises(SimulatedCrash):
        run_local(_config(corpus, crashed, log_every=log_every), dm.build,
                  **{**HOOKS, "make_collator": crash_at_step_5})
    logged = [1, 2, 3, 4, 5, 6] if log_every == 1 else [2, 4, 6]  # checkpoints (every 2) are logged too
    assert [r["step"] for r in _metrics(crashed)] == [s for s in logged if s <= 4]
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line torn by the crash
    (crashed / "checkpoints" / "step-000004" / "optimizer.pt").write_bytes(b"torn")  # newest is corrupt too
    summary = run_local(_config(corpus, crashed, resume=True, log_every=log_every), dm.build, **HOOKS)

    assert summary["resumed_from"].endswith("step-000002")
    a, b = _metrics(straight), _metrics(crashed)
    assert [r["step"] for r in b] == logged
    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    straight_summary = json.loads((straight / "summary.json").read_text())
    assert summary["param_checksums"] == straight_summary["param_checksums"]
    # TensorBoard shows the resumed curve once: the steps logged after the checkpoint, then redone, are hidden
    assert scalars_of(crashed / "tb", "loss") == [(r["step"], pytest.approx(r["loss"])) for r in b]


def test_resume_skips_a_checkpoint_torch_refuses_to_unpickle(corpus: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A newest rng.pt that pickles os.system (its sha256 re-recorded) is skipped with one warning line;
    the run resumes from the checkpoint before it and ends where the uninterrupted run ends."""
    from tests.tasks.test_checkpoint import poison

    straight = tmp_path / "straight"
    run_local(_config(corpus, straight), dm.build, **HOOKS)
    crashed = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):
        run_local(_config(corpus, crashed), dm.build,
                  **{**HOOKS, "make_collator": functools.partial(dm.make_crashing_collator, crash_at=5)})
    ran = tmp_path / "code-ran"
    poison(crashed / "checkpoints" / "step-000004", "rng.pt", marker=ran)
    with caplog.at_level(logging.WARNING, logger="tasks.checkpoint"):
        summary = run_local(_config(corpus, crashed, resume=True), dm.build, **HOOKS)
    assert summary["resumed_from"].endswith("step-000002") and not ran.exists()
    skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and "\n" not in skipped[0] and "rng.pt" in skipped[0], skipped
    straight_summary = json.loads((straight / "summary.json").read_text())
    assert summary["param_checksums"] == straight_summary["param_checksums"]


def test_refuses_stale_checkpoints_and_bad_corpus(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_local(_config(corpus, out, max_steps=2), dm.build, **HOOKS)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_local(_config(corpus, out, max_steps=2), dm.build, **HOOKS)
    bad = dm.write_corpus(tmp_path / "bad", dm.corpus_table(8), shards=1)
    shard = next(bad.glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(IntegrityError, match=shard.name):
        run_local(_config(bad, tmp_path / "run2"), dm.build, **HOOKS)
    with pytest.raises(InputError):
        run_local(_config(tmp_path / "missing", tmp_path / "run3"), dm.build, **HOOKS)


def _check_ddp_run(out: Path, summary: dict) -> None:
    """Two ranks, identical parameters on both, and the loss went down."""
    assert summary["world_size"] == 2
    assert len(summary["param_checksums"]) == 2 and len(set(summary["param_checksums"])) == 1
    rows = _metrics(out)
    assert rows[-1]["step"] == 20 and rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert (out / "model" / "model.safetensors").exists()


def test_torchrun_two_ranks_gloo(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cfg = _config(corpus, out, max_steps=20, log_every=5, ckpt_every=10, grad_accum=2)
    hooks = {name: f"tests.helpers.dummy_model:{fn.__name__}" for name, fn in HOOKS.items()}
    loop = write_loop_json(tmp_path / "loop.json", cfg, "tests.helpers.dummy_model:build", **hooks)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasks.train", "--config", str(loop)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_ddp_run(out, json.loads((out / "summary.json").read_text()))


def test_torchrun_entry_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "loop.json"
    bad.write_text(json.dumps({"train": {"stage": "t2c"}, "build": "tests.helpers.dummy_model:build"}))
    proc = subprocess.run([sys.executable, "-m", "tasks.train", "--config", str(bad)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "error: train config" in proc.stderr


@pytest.mark.integration  # about 35 s here: under the 60 s that would make it `slow`
def test_ray_train_two_workers(corpus: Path, tmp_path: Path, ray_session: None) -> None:
    from tests.helpers.ray_reports import RecordReports

    out = tmp_path / "ray"
    cfg = replace(_config(corpus, out, max_steps=20, log_every=5, ckpt_every=10), workers=2, num_threads=0)
    reports = tmp_path / "reports.jsonl"
    _check_ddp_run(out, run_ray(cfg, dm.build, callbacks=[RecordReports(str(reports))], **HOOKS))
    # Ray Train's controller got metrics lines from both ranks in lockstep: the first and the last always,
    # the others as often as it takes reports (every 2 s); rank 0's are metrics.jsonl's lines
    rounds = [json.loads(line) for line in reports.read_text().splitlines()]
    steps = [ranks[0]["step"] for ranks in rounds]
    assert steps[0] == 5 and steps[-1] == 20 and steps == sorted(set(steps))
    assert all([r["step"] for r in ranks] == [ranks[0]["step"]] * 2 for ranks in rounds)
    logged = {r["step"]: r for r in _metrics(out)}
    assert all(ranks[0]["loss"] == ranks[1]["loss"] == logged[ranks[0]["step"]]["loss"] for ranks in rounds)


def test_ray_worker_errors_surface_as_themselves() -> None:
    from ray.train import WorkerGroupError

    class FailingTrainer:
        def __init__(self, failures: dict) -> None:
            self.failures = failures

        def fit(self) -> None:
            raise WorkerGroupError("workers failed", self.failures)

    with pytest.raises(IntegrityError, match="shard x"):
        _fit(FailingTrainer({1: ZeroDivisionError("later rank"), 0: IntegrityError("shard x is corrupt")}))
    with pytest.raises(RuntimeError, match="rank 1: ZeroDivisionError"):
        _fit(FailingTrainer({1: ZeroDivisionError("boom")}))


@pytest.mark.integration
def test_ray_train_restarts_a_lost_worker_from_its_checkpoint(corpus: Path, tmp_path: Path, ray_session: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 is SIGKILLed right after the step-10 checkpoint: Ray Train restarts the worker group
    (FailureConfig), the new attempt resumes this launch's checkpoint, and the run finishes."""
    from tasks.corpus_paths import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "train-rank1-step-10:kill")
    out = tmp_path / "ray"
    cfg = replace(_config(corpus, out, max_steps=20, log_every=5, ckpt_every=10), workers=2, num_threads=0)
    summary = run_ray(cfg, dm.build, **HOOKS)
    assert (out / ".echox" / "faults" / "train-rank1-step-10-kill").exists()  # the kill fired
    assert summary["steps"] == 20 and summary["resumed_from"].endswith("step-000010")
    assert [r["step"] for r in _metrics(out)] == [5, 10, 15, 20]  # one continuous curve


@pytest.mark.integration
def test_ray_train_does_not_retry_a_user_mistake(tmp_path: Path, ray_session: None) -> None:
    """A missing corpus fails every attempt the same way: the restarted attempt fails at once with it."""
    out = tmp_path / "ray"
    cfg = replace(_config(tmp_path / "no-corpus", out), workers=2, num_threads=0, max_failures=1)
    with pytest.raises(InputError, match="no-corpus"):
        run_ray(cfg, dm.build, **HOOKS)
    assert json.loads((out / "launch.json").read_text())["kind"] == "InputError"
