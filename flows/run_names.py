"""Flow-run names that say what a run is about, made from its parameters when it starts.

Prefect shows a run under its flow's name (`build-corpus / qa_train-20261130-0200`); without these every
nightly build would be told apart only by Prefect's random names. Each is a `flow_run_name` callable:
Prefect calls it with no arguments inside the run, where `prefect.runtime` holds the parameters (a config
object when called from Python, a dict when a deployment started the run).
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

STAMP = "%Y%m%d-%H%M"
"""The run's scheduled start (UTC) in its name: a nightly build is named after the night it is for."""


def _config() -> Any:
    """This run's `config` parameter."""
    from prefect.runtime import flow_run

    return flow_run.parameters.get("config")


def _field(config: Any, name: str) -> Any:
    """A field of a config given as a model or as a dict."""
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def _stamp() -> str:
    """The run's scheduled start time as STAMP (UTC)."""
    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time.astimezone(UTC).strftime(STAMP)


def corpus_run_name() -> str:
    """`<source name>-<date>`, e.g. qa_train-20261130-0200."""
    return f"{Path(str(_field(_config(), 'source'))).stem}-{_stamp()}"


def pipeline_run_name() -> str:
    """`<output folder name>-<date>`, e.g. demo-20261130-2230."""
    return f"{Path(str(_field(_config(), 'out'))).name}-{_stamp()}"


def evaluate_run_name() -> str:
    """`<model>-on-<eval set>`, e.g. echo-on-qa_eval (a checkpoint's `<run>/model` folder is named after
    its run; a text-mode base LLM after its preset)."""
    config = _config()
    model = _field(config, "model")
    if model:
        path = Path(str(model))
        what = path.parent.name if path.name == "model" else path.name
    else:
        what = str(_field(config, "preset"))
    return f"{what}-on-{Path(str(_field(config, 'eval_set'))).stem}"
