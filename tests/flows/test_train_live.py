"""The live training artifacts: a driver thread follows a metrics.jsonl that grows line by line, and the run's
progress, loss-curve and metrics artifacts read back from the session's Prefect server say what it saw."""

from __future__ import annotations

import json
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow

from flows.train_live import LiveTraining
from tasks.configs import TrainFlowConfig

pytestmark = pytest.mark.usefixtures("prefect_server")


def _cfg(out: Path, stage: str) -> TrainFlowConfig:
    return TrainFlowConfig(stage=stage, corpus=str(out / "corpus"), out=str(out), max_steps=6, log_every=1,
                           publish_every=2)


def _row(step: int) -> dict:
    return {"step": step, "loss": 3.0 / step, "lr": 1e-3, "tokens": 40 * step, "tokens_per_s": 400.0,
            "elapsed_s": 0.5 * step, "epoch": step / 6}


def _wait_for(live: LiveTraining, step: int) -> None:
    deadline = time.monotonic() + 60
    while live.step < step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the watcher never showed step {step} (at {live.step})")
        time.sleep(0.02)


def _artifacts(run_id: UUID, key: str) -> list:
    """The run's artifacts of `key`, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(sort=ArtifactSort.CREATED_DESC, artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return found[::-1]  # oldest first


def _flow_run_id() -> UUID:
    from prefect.context import get_run_context

    return get_run_context().flow_run.id  # type: ignore[union-attr]


@flow(name="test-live-training")
def trains_six_steps(out: str) -> tuple[UUID, float]:
    """Six metrics lines, one at a time, under a watcher; the progress artifact as the server had it at 3."""
    cfg = _cfg(Path(out), "t2c")
    with LiveTraining(cfg, interval_s=0.05) as live:
        for step in range(1, 7):
            with open(Path(out) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(_row(step)) + "\n")
            _wait_for(live, step)
            if step == 3:
                halfway = _artifacts(_flow_run_id(), "train-t2c-progress")[0].data
    return _flow_run_id(), halfway


@flow(name="test-live-training-fails")
def fails_at_step_two(out: str) -> UUID:
    """Two metrics lines, then the trainer fails."""
    try:
        with LiveTraining(_cfg(Path(out), "s2t"), interval_s=0.05):
            (Path(out) / "metrics.jsonl").write_text("".join(json.dumps(_row(s)) + "\n" for s in (1, 2)))
            raise RuntimeError("a rank died")
    except RuntimeError:
        pass
    return _flow_run_id()


def test_progress_follows_every_line_and_the_curve_every_publish_every_steps(tmp_path: Path) -> None:
    run_id, halfway = trains_six_steps(str(tmp_path))
    assert halfway == 50.0
    [progress] = _artifacts(run_id, "train-t2c-progress")
    assert progress.type == "progress" and progress.data == 100.0
    assert progress.description == "Stage t2c: step 6/6 · loss 0.5000 · 400 tokens/s · done"
    curves = _artifacts(run_id, "train-t2c-loss")
    tables = _artifacts(run_id, "train-t2c-metrics")
    assert len(curves) == len(tables) == 2  # at steps 2 and 4; the flow's final publish draws step 6
    assert "image/png;base64" in curves[-1].data
    last = {r["metric"]: r["last"] for r in json.loads(tables[-1].data)}
    assert last["step"] == 4 and last["loss"] == 0.75


def test_a_failed_run_keeps_its_last_step_and_says_it_stopped(tmp_path: Path) -> None:
    run_id = fails_at_step_two(str(tmp_path))
    [progress] = _artifacts(run_id, "train-s2t-progress")
    assert progress.data == pytest.approx(100 * 2 / 6)
    assert progress.description.startswith("Stage s2t: step 2/6 · loss 1.5000")
    assert progress.description.endswith("· stopped: RuntimeError")
