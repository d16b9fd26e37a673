"""Faults during a corpus build: SIGKILL of the driver or a Ray worker, transient errors, concurrent builds.

Each test checks the exact row set afterwards (the corpus checker plus the id list), so a lost or
duplicated record fails it. Training-side faults (a killed run resumes from its last checkpoint,
atomic checkpoint writes) are covered in tests/tasks/test_checkpoint.py and tests/tasks/test_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from core.errors import ConfigError, InputError
from tasks.configs import BuildCorpusConfig
from tests.reliability.conftest import Cli, build_args, qa_rows, write_source
from tests.reliability.killing import (
    check_corpus,
    corpus_ids,
    expected_ids,
    kill_group,
    kill_when,
    survivors,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_driver_sigkill_then_rerun_finishes_exactly_once(cli: Cli, tmp_path: Path) -> None:
    """Kill the CLI process group at the first finished shard; the rerun completes without redoing it."""
    src = write_source(tmp_path / "qa.jsonl", qa_rows(24))
    out = tmp_path / "out"
    log = tmp_path / "run1.log"
    family = kill_when(cli, build_args(src, out), log,
                       lambda: any((out / ".echox" / "audio").glob("*.done.json")), timeout=240)
    assert {"raylet", "gcs_server"} <= set(family.values()), f"Ray was not running: {set(family.values())}"
    assert not (out / "manifest.json").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / ".echox" / "audio").glob("*.done.json")}
    audio_before = {p.name: p.stat().st_mtime_ns for p in (out / ".echox" / "audio").glob("*.arrow")
                    if p.name.replace(".arrow", ".done.json") in done_before}
    assert done_before  # the kill came after at least one shard was finished

    res = cli.run(build_args(src, out))
    assert res.returncode == 0, res.stderr[-3000:]
    check_corpus(out, src)
    assert corpus_ids(out) == expected_ids(24)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {**manifest["totals"], "rows": 24, "rejected": 0, "source_records": 24}
    for name, mtime in {**done_before, **audio_before}.items():
        assert (out / ".echox" / "audio" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert not list(out.rglob("*.tmp")), "temp files of the killed run were left behind"


def _kill_one_worker(task_title: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker of this process that is running `task_title` (ray::<task name>)."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        for p in me.children(recursive=True):
            try:
                if p.name().startswith(task_title) or p.cmdline()[:1] == [task_title]:
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
                    return
            except psutil.Error:
                continue
        time.sleep(0.01)


def _cfg(src: Path, out: Path, **kw: object) -> BuildCorpusConfig:
    base = {"source": str(src), "out": str(out), "tts": "espeak", "num_units": 8, "shard_size": 3,
            "workers": 2, "progress": False}
    return BuildCorpusConfig(**{**base, **kw})


def test_sigkill_of_a_ray_worker_is_retried(tmp_path: Path, ray_session: None) -> None:
    """A worker killed mid-shard is rerun by Ray (same Prefect task run); the corpus is still exact."""
    from flows.build_corpus import build_corpus

    src = write_source(tmp_path / "qa.jsonl", qa_rows(15))
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_worker, args=("ray::synthesize-shard", killed, stop),
                              daemon=True)
    killer.start()
    try:
        build_corpus(config=_cfg(src, out))
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "no synthesize-shard worker was caught running"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    check_corpus(out, src)
    assert corpus_ids(out) == expected_ids(15)


def test_worker_dying_after_prefect_completed_is_harmless(tmp_path: Path, ray_session: None) -> None:
    """prefect-ray #82: Ray reruns a task Prefect already marked Completed; the rerun finds the verified
    shard and returns its marker instead of redoing (or duplicating) it."""
    from prefect import flow
    from prefect_ray import RayTaskRunner

    from flows.build_corpus import synthesize_shard_task
    from tasks import build_corpus as stages

    cfg = _cfg(write_source(tmp_path / "qa.jsonl", qa_rows(6)), tmp_path / "out")
    stages.plan_build(cfg)
    flag = tmp_path / "died-once"

    def die_once(task: object, run: object, state: object) -> None:  # runs in the worker after Completed
        if not flag.exists():  # remember the finished markers, then die before Ray gets the result
            audio = Path(cfg.out, ".echox", "audio")
            done = {p.name: p.stat().st_mtime_ns for p in audio.glob("*.done.json")}
            flag.write_text(json.dumps(done))
            os.kill(os.getpid(), signal.SIGKILL)

    @flow(task_runner=RayTaskRunner())
    def stage1() -> list[dict]:
        hooked = synthesize_shard_task.with_options(on_completion=[die_once])
        paths, options = stages.BuildPaths(Path(cfg.out)), stages.SynthesisOptions.of(cfg)
        return [f.result() for f in [hooked.submit(paths.of_shard(i), options) for i in range(2)]]

    markers = stage1()
    done_at_kill = json.loads(flag.read_text())
    assert done_at_kill  # the killed task's own shard was finished when its worker died
    paths = stages.BuildPaths(Path(cfg.out))
    on_disk = [json.loads(paths.stage1_done(i).read_text()) for i in range(2)]
    assert markers == on_disk and [m["rows"] for m in markers] == [3, 3]
    for name, mtime in done_at_kill.items():  # Ray's rerun found the verified shard: not redone
        assert (paths.work / "audio" / name).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (paths.work / "audio").iterdir()) == [
        "shard-00000.arrow", "shard-00000.done.json", "shard-00001.arrow", "shard-00001.done.json"]


def test_transient_task_failure_is_retried_with_backoff(tmp_path: Path, ray_session: None) -> None:
    """A shard whose first attempt raises is retried by Prefect after its delay; the run succeeds."""
    from prefect_ray.context import remote_options

    from flows.build_corpus import RETRY, build_corpus
    from tasks.build_corpus import FAULT_ENV

    src = write_source(tmp_path / "qa.jsonl", qa_rows(6))
    out = tmp_path / "out"
    # Ray workers of the session were started before this test: hand the hook to fresh ones.
    spec = "synthesize-shard-1:raise,label-shard-0:raise"
    with remote_options(runtime_env={"env_vars": {FAULT_ENV: spec}}):
        state = build_corpus(config=_cfg(src, out), return_state=True)
    assert state.is_completed(), state.message
    fired = sorted(p.name for p in (out / ".echox" / "faults").iterdir())
    assert fired == ["label-shard-0-raise", "synthesize-shard-1-raise"]
    check_corpus(out, src)
    assert corpus_ids(out) == expected_ids(6)
    for name in ("synthesize-shard-1", "label-shard-0"):  # failed, waited its backoff, then completed
        states = _task_run_states(state.state_details.flow_run_id, name, until="Completed")
        assert [s.name for s in states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
        waiting = states[2]
        delay = (waiting.state_details.scheduled_time - waiting.timestamp).total_seconds()
        assert delay == pytest.approx(RETRY["retry_delay_seconds"][0], abs=0.5)


def _task_run_states(flow_run_id: object, task_run_name: str, until: str, timeout: float = 20) -> list:
    """The state history of one task run of the build's subflow, once it reaches `until`."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:  # states arrive as events: wait for them
        while True:
            subflows = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
            runs = client.read_task_runs(flow_run_filter=subflows, task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(any_=[task_run_name])))
            states = client.read_task_run_states(runs[0].id) if runs else []
            states.sort(key=lambda s: s.timestamp)
            if (states and states[-1].name == until) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def test_user_errors_are_not_retried_but_unexpected_ones_are() -> None:
    from prefect.states import Failed

    from flows.policy import RETRY, transient

    assert RETRY["retries"] >= 1 and RETRY["retry_condition_fn"] is transient
    assert transient(None, None, Failed(data=RuntimeError("disk hiccup")))
    assert not transient(None, None, Failed(data=InputError("K too large")))
    assert not transient(None, None, Failed(data=ConfigError("bad voice")))


def test_fault_hook_fires_once_per_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.build_corpus import FAULT_ENV, BuildPaths, inject_fault

    paths = BuildPaths(tmp_path)
    inject_fault(paths, "synthesize-shard-0")  # unset: nothing happens
    monkeypatch.setenv(FAULT_ENV, "synthesize-shard-0:raise, label-shard-2:raise")
    with pytest.raises(RuntimeError, match="injected transient fault at synthesize-shard-0"):
        inject_fault(paths, "synthesize-shard-0")
    inject_fault(paths, "synthesize-shard-0")  # the retry passes
    inject_fault(paths, "synthesize-shard-1")  # not named
    monkeypatch.setenv(FAULT_ENV, "label-shard-2:explode")
    with pytest.raises(ValueError, match="unknown action"):
        inject_fault(paths, "label-shard-2")


def test_two_builds_into_one_directory_cannot_interleave(cli: Cli, tmp_path: Path) -> None:
    """While one build holds the output directory, a second fails fast with a 'locked' message."""
    src = write_source(tmp_path / "qa.jsonl", qa_rows(12))
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    first = cli.popen(build_args(src, out), log)
    try:
        lock = out / ".echox" / "lock"
        wait_for(lambda: lock.exists() and lock.read_text().startswith("pid"), first, 120, log)
        started = time.monotonic()
        second = cli.run(build_args(src, out), timeout=120)
        took = time.monotonic() - started
        assert first.poll() is None, "the first build should still be running"
    finally:
        survivors(kill_group(first), timeout=10)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{out} is locked by a running build (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert took < 60
    assert not (out / "manifest.json").exists()
