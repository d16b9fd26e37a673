"""Every deployment in prefect.yaml points at a real flow and its parameters validate against it."""

from __future__ import annotations

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
            assert cfg.t2c.unit_vocab_size > cfg.corpus["num_units"] == 1000


def test_pipeline_config_errors_name_the_field(tmp_path: Path) -> None:
    from flows.pipeline import load_pipeline_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("source: a.jsonl\nout: o\ns2t: {max_steps: 0}\ncorpus: {num_unitz: 5}\n")
    with pytest.raises(ConfigError, match=r"s2t\.max_steps"):
        load_pipeline_config(bad)
    bad.write_text("source: a.jsonl\nout: o\ncorpus: {num_unitz: 5}\n")
    with pytest.raises(ConfigError, match="num_unitz"):
        load_pipeline_config(bad)
