"""Flow runs whose process died are marked Crashed: by the server when their heartbeats stop, and by the
next echox start when their process is gone from this host.

A flow run killed with SIGKILL (or on a lost machine) never reports a final state, so Prefect shows it
Running forever. Two checks catch it:

- Heartbeats: every flow run sends a `prefect.flow-run.heartbeat` event every HEARTBEAT_S seconds (Prefect's
  flow engine does; runtime.configure sets the interval). An automation on the server, AUTOMATION, sets a
  Running flow run that has sent no event for SILENCE_S seconds to Crashed: whatever host it ran on, with no
  echox command needed afterwards. Each echox start against a server makes sure it exists.
- Processes: every echox flow records `host:pid` as the run's `infrastructure_pid` (the format Prefect's
  process workers use) when it starts running; the next echox start against the same server asks for the
  Running flow runs in one query and sets those whose process is gone on this host to Crashed at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)
MAX_RUNS = 200  # Running flow runs looked at per start; more than enough for one machine
HEARTBEAT_S = 60
"""Seconds between a flow run's heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; Prefect allows 30 or more)."""
SILENCE_S = 300
"""A Running flow run silent this long is Crashed: five heartbeats missed, and longer than the 180 s of
Prefect's own default, so runs from processes that echox did not configure are never crashed alive."""
AUTOMATION = "echox: crash flow runs whose heartbeats stopped"


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


def heartbeat_automation(silence_s: int = SILENCE_S) -> Any:
    """The automation that sets a flow run Crashed when `silence_s` seconds pass after a heartbeat of it
    with no further event of it (another heartbeat, or any state change: completed, failed, paused...)."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(match={"prefect.resource.id": "prefect.flow-run.*"},
                           for_each={"prefect.resource.id"}, after={"prefect.flow-run.heartbeat"},
                           expect={"prefect.flow-run.*"},
                           posture=Posture.Proactive, threshold=1, within=timedelta(seconds=silence_s))
    message = (f"no heartbeat for {silence_s} s: its process died (or lost the server); "
               f"marked by the automation {AUTOMATION!r}")
    return AutomationCore(name=AUTOMATION, description="Flow runs whose process died are Crashed, not "
                          "Running forever (echox: core/runs.py).", trigger=trigger,
                          actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)])


def watch_heartbeats(client: Any, silence_s: int = SILENCE_S) -> bool:
    """Make sure the server has AUTOMATION, as `heartbeat_automation(silence_s)`; True when it was created
    or changed."""
    wanted = heartbeat_automation(silence_s)
    found = client.read_automations_by_name(AUTOMATION)
    fields = {"trigger", "actions", "enabled"}
    if found and found[0].model_dump(include=fields) == wanted.model_dump(include=fields):
        return False
    if found:
        client.update_automation(found[0].id, wanted)
    else:
        client.create_automation(wanted)
    return True


def mark_crashed(api_url: str | None = None) -> list[str]:
    """At a start against a server: make sure it has the heartbeat automation, and set Running flow runs
    whose process is gone to Crashed; return their names. Never raises."""
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
        try:
            watch_heartbeats(client)
        except Exception as e:  # the process check below still runs
            log.warning("could not set up the heartbeat automation: %s", e)
        for run in client.read_flow_runs(flow_run_filter=running, limit=MAX_RUNS):
            started = run.start_time.timestamp() if run.start_time else None
            if owner_gone(run.infrastructure_pid, started):
                message = f"its process ({run.infrastructure_pid}) is gone"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                marked.append(run.name)
    if marked:
        log.warning("marked %d flow run(s) whose process died as Crashed: %s", len(marked), ", ".join(marked))
    return marked
