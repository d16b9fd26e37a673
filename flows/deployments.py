"""The deployments of prefect.yaml, loaded as objects: validated by the tests, served by `echox serve`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError


def load_spec(path: Path) -> list[dict[str, Any]]:
    """The `deployments:` entries of a prefect.yaml."""
    if not path.exists():
        raise ConfigError(f"deployment file not found: {path}")
    return list((yaml.safe_load(path.read_text()) or {}).get("deployments") or [])


def load_flow(entrypoint: str) -> Any:
    """The flow object an entrypoint (`flows/x.py:fn`) names, imported as a module of this project."""
    file, _, name = entrypoint.partition(":")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def check_parameters(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a deployment's parameters against its flow's signature; returns them coerced."""
    flow = load_flow(spec["entrypoint"])
    try:
        return flow.validate_parameters(spec.get("parameters") or {})
    except Exception as e:  # Prefect raises ParameterTypeError / SignatureMismatchError
        raise ConfigError(f"deployment {spec['name']!r}: {e}") from e


def concurrency_limit(spec: dict[str, Any]) -> Any:
    """A deployment's `concurrency_limit` (a number, or limit + collision_strategy) as Prefect's config."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    value = spec.get("concurrency_limit")
    if value is None or isinstance(value, int):
        return value
    return ConcurrencyLimitConfig(**value)


def to_deployments(path: Path) -> list[Any]:
    """RunnerDeployments (for prefect.serve) of every entry, with their schedules, tags and concurrency
    limits (as `prefect deploy` reads them)."""
    from prefect.client.schemas.schedules import construct_schedule
    from prefect.deployments.schedules import create_deployment_schedule_create

    out = []
    for spec in load_spec(path):
        check_parameters(spec)
        schedules = [create_deployment_schedule_create(
            construct_schedule(cron=s["cron"], timezone=s.get("timezone")), active=s.get("active", True))
            for s in spec.get("schedules") or []]
        out.append(load_flow(spec["entrypoint"]).to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=spec.get("parameters") or {}, schedules=schedules or None,
            concurrency_limit=concurrency_limit(spec)))
    return out
