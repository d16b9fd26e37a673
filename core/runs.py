"""Flow runs whose process died: each run records its process, the next start marks dead ones Crashed.

A flow run killed with SIGKILL (or on a lost machine) never reports a final state, so Prefect shows it
Running forever. Every echox flow records `host:pid` as the run's `infrastructure_pid` (the format
Prefect's process workers use) when it starts running; the next echox start against the same server
asks for the Running flow runs in one query and sets those whose process is gone on this host to Crashed.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)
MAX_RUNS = 200  # Running flow runs looked at per start; more than enough for one machine


def process_id(pid: int | None = None) -> str:
    """This process (or `pid`) as `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def record_process(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow `on_running` hook: store this process as the run's infrastructure_pid."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, infrastructure_pid=process_id())


def owner_gone(infrastructure_pid: str | None, started: float | None) -> bool:
    """True when `host:pid` names a process of this host that no longer runs.

    A pid reused by a process created after the run started counts as gone; another host's
    process, or a run without a recorded process, is never judged.
    """
    import psutil

    host, _, pid = (infrastructure_pid or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return started is not None and proc.create_time() > started + 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: it exists
        return False


def mark_crashed(api_url: str | None = None) -> list[str]:
    """Set Running flow runs whose process is gone to Crashed; return their names. Never raises."""
    try:
        return _mark_crashed(api_url)
    except Exception as e:  # a bookkeeping step must not stop the run that asked for it
        log.warning("could not check for crashed flow runs: %s", e)
        return []


def _mark_crashed(api_url: str | None) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:  # an in-process ephemeral API has no runs of other processes
        return []
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    marked = []
    # Settings are read once at import: name the server explicitly rather than trust the environment.
    with temporary_settings({PREFECT_API_URL: url}), \
            get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=running, limit=MAX_RUNS):
            started = run.start_time.timestamp() if run.start_time else None
            if owner_gone(run.infrastructure_pid, started):
                message = f"its process ({run.infrastructure_pid}) is gone"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                marked.append(run.name)
    if marked:
        log.warning("marked %d flow run(s) whose process died as Crashed: %s", len(marked), ", ".join(marked))
    return marked
