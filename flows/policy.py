"""The retry policy of every per-shard task (corpus build, echo labels): one place, one rule."""

from __future__ import annotations

from typing import Any

from core.errors import EchoxError


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unexpected failures only: a user mistake (EchoxError) would fail the same way again."""
    return not isinstance(getattr(state, "data", None), EchoxError)


# Two retry layers, both safe because every stage skips work whose verified output exists:
# Prefect retries a task that raised (with backoff); Ray reruns a task whose worker process died
# (SIGKILL, OOM), under the same Prefect task run id — Prefect 3.9 then simply runs it again.
RETRY = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": transient}
RAY_OPTIONS = {"max_retries": 3, "retry_exceptions": False}
