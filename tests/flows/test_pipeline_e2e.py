"""The whole DAG on configs/tiny.yaml against a real Prefect server; checked through its API and its UI
(rendered by headless Debian chromium, which `make test` installs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import CHECK_CORPUS, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> tuple[dict, Path, str]:
    from flows.pipeline import load_pipeline_config, pipeline

    out = tmp_path_factory.mktemp("pipeline") / "tiny"
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", out=str(out),
                               source=str(ROOT / "data/tiny/qa.jsonl"),
                               eval_set=str(ROOT / "data/tiny/eval.jsonl"))
    state = pipeline(config=cfg, return_state=True)
    return state.result(), out, str(state.state_details.flow_run_id)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_every_step_produced_its_output(pipeline_run: tuple[dict, Path, str]) -> None:
    import sys

    paths, out, _ = pipeline_run
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out / "corpus"),
                          "--source", str(ROOT / "data/tiny/qa.jsonl")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    for stage in ("s2t", "t2c", "echo"):
        assert (out / stage / "model" / "config.json").exists()
    assert json.loads((out / "echo-labels" / "manifest.json").read_text())["shards"]
    report = json.loads(Path(paths["report"]).read_text())
    assert report


def test_flow_run_and_artifacts_are_in_the_server(pipeline_run: tuple[dict, Path, str]) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, _, run_id = pipeline_run
    with _client() as client:
        run = client.read_flow_run(run_id)  # this run: other tests' pipeline runs share the server
        assert run.state.is_completed()
        assert client.read_flow(run.flow_id).name == "pipeline"
        keys = ["corpus-counts", "train-s2t-loss", "train-t2c-metrics", "train-echo-loss"]
        for key in keys:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert arts, f"no artifact {key}"


def test_rerun_skips_verified_steps(pipeline_run: tuple[dict, Path, str]) -> None:
    from flows.pipeline import load_pipeline_config, pipeline

    _, out, _ = pipeline_run
    model = out / "s2t" / "model" / "model.safetensors"
    before = model.stat().st_mtime_ns
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", out=str(out),
                               source=str(ROOT / "data/tiny/qa.jsonl"),
                               eval_set=str(ROOT / "data/tiny/eval.jsonl"))
    pipeline(config=cfg)
    assert model.stat().st_mtime_ns == before


class _Text(HTMLParser):
    """The text of an HTML document, without its scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _browse(url: str, png: Path) -> str:
    """Open `url` in headless Debian chromium, let its scripts render it (virtual time), save a screenshot
    to `png`; returns the text the page shows."""
    res = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={png.parent / 'profile'}",
                          "--window-size=1400,1000", "--virtual-time-budget=15000", f"--screenshot={png}",
                          "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 20_000, res.stderr[-2000:]  # a rendered page, not blank
    text = _Text()
    text.feed(res.stdout)
    return " ".join(text.parts)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed "
                    "(`make test` installs it)")
def test_ui_shows_the_finished_run_and_its_artifacts(pipeline_run: tuple[dict, Path, str],
                                                     prefect_server: str, tmp_path: Path) -> None:
    """What a user sees in the Prefect UI, rendered by a browser: the pipeline run's page says Completed, its
    plan artifact's page shows the run's name and steps, and the corpus-counts artifact's page its table."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    _, _, run_id = pipeline_run
    with _client() as client:  # this run's plan: other tests' pipeline runs share the server
        mine = ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-plan"]),
                              flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        plan = client.read_artifacts(artifact_filter=mine)[0]
        latest = ArtifactFilter(key=ArtifactFilterKey(any_=["corpus-counts"]))
        counts = client.read_artifacts(artifact_filter=latest, sort=ArtifactSort.CREATED_DESC, limit=1)[0]
        run, counts_run = client.read_flow_run(plan.flow_run_id), client.read_flow_run(counts.flow_run_id)
    assert run.state.is_completed()
    ui = prefect_server.removesuffix("/api")
    page = _browse(f"{ui}/runs/flow-run/{run.id}", tmp_path / "run.png")
    assert "Can't connect" not in page, page[:500]  # the UI reached this server's API
    assert run.name in page and "pipeline" in page and "Completed" in page, page[:2000]
    page = _browse(f"{ui}/artifacts/artifact/{plan.id}", tmp_path / "plan.png")
    assert "pipeline-plan" in page and run.name in page and "echo-labels" in page, page[:2000]
    page = _browse(f"{ui}/artifacts/artifact/{counts.id}", tmp_path / "counts.png")
    assert "corpus-counts" in page and counts_run.name in page, page[:2000]
    assert "source records" in page and "audio hours" in page, page[:2000]  # the table's rows


def test_echo_targets_bench_trains_both_modes_from_the_run(pipeline_run: tuple[dict, Path, str],
                                                           tmp_path: Path) -> None:
    """bench/echo_targets.py on the finished run: stage III offline (the run's labels) and online (the
    run's T2C as teacher), then both answer the run's held-out questions; the table has a row per mode."""
    from bench.echo_targets import main

    _, out, _ = pipeline_run
    report = tmp_path / "echo_targets.json"
    assert main(["--run", str(out), "--steps", "2", "--threads", "1", "--work", str(tmp_path / "work"),
                 "--json", str(report)]) == 0
    rows = {r["mode"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"offline", "online"}
    assert rows["offline"]["guard_masked"] is None and 0.0 <= rows["online"]["guard_masked"] <= 1.0
    for row in rows.values():
        assert row["steps"] == 2 and row["s_per_step"] > 0 and row["eval"]["items"] > 0
        assert (tmp_path / "work" / row["mode"] / "model" / "config.json").exists()


def test_echo_targets_bench_names_what_a_run_lacks(tmp_path: Path) -> None:
    from bench.echo_targets import main

    with pytest.raises(SystemExit, match=r"not a finished offline pipeline run .* missing: .*echo-labels"):
        main(["--run", str(tmp_path)])
