"""Every deployment in prefect.yaml points at a real flow and its parameters validate against it; against a
real Prefect server, `prefect deploy --all` registers them with typed, described forms and concurrency limits,
and runs get names that say what they are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from flows.deployments import check_parameters, load_spec, to_deployments

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_validates() -> None:
    specs = load_spec(ROOT / "prefect.yaml")
    assert {s["name"] for s in specs} == {"build-corpus", "retrain", "pipeline", "evaluate"}
    for spec in specs:
        check_parameters(spec)


def test_build_corpus_schedule_is_inactive_by_default() -> None:
    deps = {d.name: d for d in to_deployments(ROOT / "prefect.yaml")}
    (schedule,) = deps["build-corpus"].schedules
    assert schedule.active is False and schedule.schedule.cron == "0 2 * * *"


def test_echox_serve_takes_the_concurrency_limits() -> None:
    """`echox serve` reads concurrency_limit as `prefect deploy` does: one build, one pipeline at a time."""
    deps = {d.name: d for d in to_deployments(ROOT / "prefect.yaml")}
    for name in ("build-corpus", "pipeline"):
        assert deps[name].concurrency_limit == 1
        assert deps[name].concurrency_options.collision_strategy.value == "ENQUEUE"
    assert deps["retrain"].concurrency_limit is None


def test_a_bad_parameter_is_named() -> None:
    spec = {"name": "x", "entrypoint": "flows/build_corpus.py:build_corpus",
            "parameters": {"config": {"source": "a", "out": "b", "num_unitz": 3}}}
    with pytest.raises(ConfigError, match="num_unitz"):
        check_parameters(spec)


def test_shipped_pipeline_configs_validate() -> None:
    from flows.pipeline import load_pipeline_config

    for name in ("tiny", "demo", "demo-smollm2", "experiment-smollm2", "paper-3b", "paper-8b"):
        cfg = load_pipeline_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.out
        if name.startswith("paper-"):  # the paper's unit language: more unit-words than K units
            assert cfg.t2c.unit_vocab_size > cfg.corpus.num_units == 1000
        if name.startswith("paper-") or name == "demo":  # stage III as the paper trains it
            assert cfg.echo.targets == "online" and cfg.echo.stage() == "echo-online"


def test_pipeline_config_errors_name_the_field(tmp_path: Path) -> None:
    from flows.pipeline import load_pipeline_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("source: a.jsonl\nout: o\ns2t: {max_steps: 0}\ncorpus: {num_unitz: 5}\n")
    with pytest.raises(ConfigError, match=r"s2t\.max_steps"):
        load_pipeline_config(bad)
    bad.write_text("source: a.jsonl\nout: o\ncorpus: {num_unitz: 5}\n")
    with pytest.raises(ConfigError, match="num_unitz"):
        load_pipeline_config(bad)


# ------------------------------------------------------------------ against a real Prefect server
def _prefect(args: list[str], api_url: str) -> subprocess.CompletedProcess:
    """`prefect ARGS` from the repository's folder, against `api_url`, this worktree's code first."""
    env = {**os.environ, "PREFECT_API_URL": api_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def deployed(prefect_server: str) -> dict:
    """The deployments of prefect.yaml, as `prefect deploy --all` registers them after the one documented
    set-up command (README: `prefect work-pool create echox --type process`)."""
    from prefect.client.orchestration import get_client

    for args in (["work-pool", "create", "echox", "--type", "process"], ["deploy", "--all"]):
        res = _prefect(args, prefect_server)
        assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def _undescribed(schema: dict) -> list[str]:
    """Properties of a parameter schema (its top level and every model it defines) without a description."""
    models = {"(parameters)": schema, **(schema.get("definitions") or {})}
    return [f"{name}.{prop}" for name, model in models.items()
            for prop, spec in (model.get("properties") or {}).items() if not spec.get("description")]


@pytest.mark.integration
def test_prefect_deploy_all_registers_every_deployment(deployed: dict) -> None:
    """From the repository's folder: the four deployments, on the pool, run in that folder (no pull step to
    set up), one run at a time for build-corpus and pipeline."""
    assert set(deployed) == {"build-corpus", "retrain", "pipeline", "evaluate"}
    for dep in deployed.values():
        assert dep.work_pool_name == "echox" and dep.enforce_parameter_schema
        step = {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        assert dep.pull_steps == [step]
    for name in ("build-corpus", "pipeline"):
        assert deployed[name].global_concurrency_limit.limit == 1
        assert deployed[name].concurrency_options.collision_strategy.value == "ENQUEUE"
    assert deployed["retrain"].global_concurrency_limit is None


@pytest.mark.integration
def test_every_deployment_form_is_typed_and_described(deployed: dict) -> None:
    """Every parameter (and every field of the models they hold) has a description; stage and steps are
    choices; the pipeline's sections are models, not free-form dicts."""
    for name, dep in deployed.items():
        assert not _undescribed(dep.parameter_openapi_schema), name
    stage = deployed["retrain"].parameter_openapi_schema["properties"]["stage"]
    assert {"s2t", "t2c", "echo"} <= set(stage["enum"])
    pipeline = deployed["pipeline"].parameter_openapi_schema
    (choices, _none) = pipeline["properties"]["from_step"]["anyOf"]
    assert {"corpus", "echo-labels", "evaluate"} <= set(choices["enum"])
    sections = pipeline["definitions"]["PipelineConfig"]["properties"]
    for section, model in {"corpus": "CorpusOptions", "echo_labels": "EchoLabelsOptions",
                           "evaluate": "EvaluateOptions", "pretrain": "PretrainOptions",
                           "s2t": "TrainStep"}.items():
        assert sections[section]["$ref"] == f"#/definitions/{model}", section
    corpus = pipeline["definitions"]["CorpusOptions"]["properties"]
    assert "num_units" in corpus and "source" not in corpus  # the pipeline names the corpus's source
    assert "espeak" in corpus["tts"]["enum"]


@pytest.mark.integration
def test_a_second_build_corpus_run_waits_for_the_first(deployed: dict) -> None:
    """Under the concurrency limit a second run is held back (AwaitingConcurrencySlot), not started beside
    the first to fail on the output folder's lock, and it gets the slot once the first one ends. The
    states are proposed as a worker proposes them."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Pending, Running

    with get_client(sync_client=True) as client:
        build = deployed["build-corpus"].id
        first, second = (client.create_flow_run_from_deployment(build) for _ in range(2))
        assert client.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
        held = client.set_flow_run_state(second.id, Pending())
        assert held.status.value != "ACCEPT"
        assert client.read_flow_run(second.id).state.name == "AwaitingConcurrencySlot"
        client.set_flow_run_state(first.id, Running())
        client.set_flow_run_state(first.id, Completed())
        assert client.set_flow_run_state(second.id, Pending()).status.value == "ACCEPT"
        client.set_flow_run_state(second.id, Completed(), force=True)  # leave no slot taken


def _failed_run_name(flow_fn: object, **params: object) -> str:
    """Run a flow that fails at once (its inputs do not exist); the name its run got on the server."""
    from prefect.client.orchestration import get_client

    state = flow_fn.with_options(retries=0)(**params, return_state=True)  # type: ignore[attr-defined]
    assert state.is_failed(), state
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


@pytest.mark.integration
def test_flow_run_names_say_what_the_run_is(tmp_path: Path, prefect_server: str) -> None:
    """build-corpus/<source>-<date>, retrain/<stage>-<data version>, pipeline/<output>-<date>,
    evaluate/<model>-on-<eval set>: the names the runs get on the server."""
    from flows.build_corpus import build_corpus
    from flows.evaluate import evaluate
    from flows.pipeline import pipeline
    from flows.pipeline_config import PipelineConfig
    from flows.train import retrain
    from tasks.configs import BuildCorpusConfig, EvaluateConfig

    stamp = r"-\d{8}-\d{4}"
    corpus = BuildCorpusConfig(source=str(tmp_path / "qa_train.jsonl"), out=str(tmp_path / "corpus"))
    assert re.fullmatch("qa_train" + stamp, _failed_run_name(build_corpus, config=corpus))
    assert _failed_run_name(retrain, stage="t2c", data_version="v7", corpus=str(tmp_path / "none"),
                            out_root=str(tmp_path / "retrain")) == "t2c-v7"
    run = PipelineConfig(source=str(tmp_path / "qa.jsonl"), out=str(tmp_path / "nightly"))
    assert re.fullmatch("nightly" + stamp, _failed_run_name(pipeline, config=run, only="echo"))
    ev = EvaluateConfig(model=str(tmp_path / "echo" / "model"), eval_set=str(tmp_path / "qa_eval.jsonl"),
                        out=str(tmp_path / "report.json"))
    assert _failed_run_name(evaluate, config=ev) == "echo-on-qa_eval"
