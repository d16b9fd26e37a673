"""The whole DAG on configs/tiny.yaml against a real Prefect server; checked through its API and UI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CHECK_CORPUS, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> tuple[dict, Path]:
    from flows.pipeline import load_pipeline_config, pipeline

    out = tmp_path_factory.mktemp("pipeline") / "tiny"
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", out=str(out),
                               source=str(ROOT / "data/tiny/qa.jsonl"),
                               eval_set=str(ROOT / "data/tiny/eval.jsonl"))
    return pipeline(config=cfg), out


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_every_step_produced_its_output(pipeline_run: tuple[dict, Path]) -> None:
    import sys

    paths, out = pipeline_run
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out / "corpus"),
                          "--source", str(ROOT / "data/tiny/qa.jsonl")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    for stage in ("s2t", "t2c", "echo"):
        assert (out / stage / "model" / "config.json").exists()
    assert json.loads((out / "echo-labels" / "manifest.json").read_text())["shards"]
    report = json.loads(Path(paths["report"]).read_text())
    assert report


def test_flow_run_and_artifacts_are_in_the_server(pipeline_run: tuple[dict, Path]) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowFilter, FlowFilterName

    with _client() as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
        assert runs and runs[0].state.is_completed()
        keys = ["corpus-counts", "train-s2t-loss", "train-t2c-metrics", "train-echo-loss"]
        for key in keys:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert arts, f"no artifact {key}"


def test_rerun_skips_verified_steps(pipeline_run: tuple[dict, Path]) -> None:
    from flows.pipeline import load_pipeline_config, pipeline

    _, out = pipeline_run
    model = out / "s2t" / "model" / "model.safetensors"
    before = model.stat().st_mtime_ns
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", out=str(out),
                               source=str(ROOT / "data/tiny/qa.jsonl"),
                               eval_set=str(ROOT / "data/tiny/eval.jsonl"))
    pipeline(config=cfg)
    assert model.stat().st_mtime_ns == before


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_ui_renders_the_finished_run(pipeline_run: tuple[dict, Path], prefect_server: str,
                                     tmp_path: Path) -> None:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with _client() as client:
        run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))[0]
    png = tmp_path / "run.png"
    url = f"{prefect_server.removesuffix('/api')}/runs/flow-run/{run.id}"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
                    "--virtual-time-budget=15000", f"--screenshot={png}", url],
                   capture_output=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 20_000  # a rendered page, not a blank one
