"""Services echox starts: Prefect servers die with their owner and stop on request, dead runs are
marked Crashed (by the next start, and by the server when their heartbeats stop), and a Ray or Prefect
server that echox starts listens on loopback only.

Each test starts at most two Prefect servers (about 6-20 s each here) and reuses them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from core import runs, runtime, server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _env(state: Path, **extra: str) -> dict[str, str]:
    """A child environment: this worktree's code, its own state folder, no Prefect server configured."""
    env = {**os.environ, "ECHOX_STATE_DIR": str(state), "PREFECT_HOME": str(state / "prefect"), **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("PREFECT_API_URL", None)
    env["ECHOX_SERVER_PORT"] = str(server.free_port())  # never pick up a server someone runs on 4200
    return env


def _python(code: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Run `code` in its own session (so it can be killed as a group), stdout to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _echox(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python -m echox.cli ARGS` in its own session."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "echox.cli", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait(predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> object:
    """Poll `predicate` until it is truthy; fail with `what` (and the log's tail) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")


def _running(pids: list[int]) -> list[int]:
    """The pids among `pids` that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _server_pids(root: int) -> list[int]:
    """`prefect server` processes among the descendants of `root`, and their descendants."""
    pids = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "prefect" in " ".join(p.cmdline()) and "server" in p.cmdline():
                pids += [p.pid, *(c.pid for c in p.children(recursive=True))]
        except psutil.Error:
            continue
    return pids


def _group_pids(pgid: int) -> list[int]:
    """Every running process of process group `pgid`."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


def _listen_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(ip, port) of every TCP LISTEN socket held by `pids`."""
    wanted = set(pids)
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in wanted}


def test_sigkill_of_the_cli_takes_its_temporary_server_down(tmp_path: Path) -> None:
    """A run's private Prefect server dies within seconds of a SIGKILL of the run's process group."""
    log = tmp_path / "cli.log"
    proc = _python("""
        import time
        from core import runtime
        runtime.configure()
        print("URL", runtime.ensure_prefect_api(), flush=True)
        time.sleep(600)
    """, _env(tmp_path / "state"), log)
    try:
        line = _wait(lambda: [w for w in log.read_text().split() if w.startswith("http://")], 150,
                     "the temporary server", log)
        url = line[0]  # type: ignore[index]
        assert server.is_healthy(url)
        pids = _server_pids(proc.pid)
        assert pids, "no prefect server process found under the CLI"
        os.killpg(proc.pid, signal.SIGKILL)  # atexit never runs
        proc.wait(timeout=10)
        _wait(lambda: not server.is_healthy(url, timeout=0.3) and not _running(pids), 15,
              "the orphaned server to stop")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_temporary_server_listens_on_loopback_and_removes_its_log(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 only; a clean stop removes prefect-server-PORT.log, a failed start keeps and names it."""
    state = tmp_path / "state"
    proc, url = server.start_temporary(state)
    try:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        log = state / f"prefect-server-{port}.log"
        assert log.exists()
        sockets = _listen_addresses(_group_pids(proc.pid))
        assert port in {p for _, p in sockets}, sockets
        assert {ip for ip, _ in sockets} <= LOOPBACK, sockets
    finally:
        clean = server.stop(proc)
    assert clean and not log.exists()
    assert not server.is_healthy(url)

    def never_healthy(url: str, proc: object = None, timeout: float = 0) -> None:
        raise RuntimeError("prefect server exited with code 1")

    monkeypatch.setattr(server, "wait_healthy", never_healthy)
    with pytest.raises(RuntimeError, match=r"see .*prefect-server-\d+\.log") as err:
        server.start_temporary(state)
    kept = Path(str(err.value).rsplit("see ", 1)[1])
    assert kept.exists()


def _start_echox_server(tmp_path: Path, name: str) -> tuple[subprocess.Popen, str, Path, dict[str, str]]:
    """`echox server` on a free port with its own state folder, healthy."""
    env = _env(tmp_path / "state")
    port = server.free_port()
    log = tmp_path / f"{name}.log"
    proc = _echox(["server", "--port", str(port)], env, log)
    url = server.api_url(port=port)
    _wait(lambda: server.is_healthy(url) or proc.poll() is not None, 150, "echox server", log)
    assert proc.poll() is None, log.read_text()
    return proc, url, log, env


def test_echox_server_stops_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to `echox server` (not its group) stops its Prefect server and exits 0."""
    proc, url, log, _ = _start_echox_server(tmp_path, "server")
    try:
        pids = _server_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()
        _wait(lambda: not server.is_healthy(url, timeout=0.3) and not _running(pids), 10,
              "the server to stop")
        assert not (tmp_path / "state" / server.PID_FILE).exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_echox_server_stop_finds_the_running_server(tmp_path: Path) -> None:
    """`echox server --stop` stops a server that `echox server` started from the same folder."""
    proc, url, log, env = _start_echox_server(tmp_path, "server")
    try:
        entry = server.recorded(tmp_path / "state")
        assert entry is not None and server.is_alive(entry)
        res = subprocess.run([sys.executable, "-m", "echox.cli", "server", "--stop"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "stopped the Prefect server" in res.stdout, res.stdout + res.stderr
        _wait(lambda: not server.is_healthy(url, timeout=0.3), 10, "the server to stop")
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert not server.is_alive(entry)
        res = subprocess.run([sys.executable, "-m", "echox.cli", "server", "--stop"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert "no Prefect server was started" in res.stdout, res.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_flow_run_of_a_killed_process_is_marked_crashed(tmp_path: Path, prefect_server: str) -> None:
    """A flow run left Running by a SIGKILLed process is Crashed after the next start against the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    env = {**_env(tmp_path / "state"), "PREFECT_API_URL": prefect_server}
    log = tmp_path / "flow.log"
    proc = _python("""
        import time
        from prefect import flow
        from prefect.runtime import flow_run
        from core.runs import record_process

        @flow(name="sleeper", on_running=[record_process])
        def sleeper() -> None:
            print("RUN", flow_run.id, flush=True)
            time.sleep(600)

        sleeper()
    """, env, log)

    def recorded_run() -> object:
        ids = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("RUN ")]
        if not ids:
            return None
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(ids[0]))
        return run if run.infrastructure_pid else None

    try:
        run = _wait(recorded_run, 120, "a running flow run with its process recorded", log)
        assert run.infrastructure_pid.endswith(f":{proc.pid}")  # type: ignore[attr-defined]
        assert run.state.type == StateType.RUNNING  # type: ignore[attr-defined]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    started = time.monotonic()
    runtime.ensure_prefect_api()  # the next start: PREFECT_API_URL names the session's server
    assert time.monotonic() - started < 5
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state  # type: ignore[attr-defined]
    assert state.type == StateType.CRASHED, state
    assert str(proc.pid) in (state.message or "")
    with get_client(sync_client=True) as client:  # that start also gave the server the heartbeat automation
        (automation,) = client.read_automations_by_name(runs.AUTOMATION)
    assert automation.trigger.within.total_seconds() == runs.SILENCE_S  # type: ignore[union-attr]


def _heartbeats(api_url: str, run_id: str) -> int:
    """How many heartbeat events of flow run `run_id` the server has stored."""
    body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 10}
    req = urllib.request.Request(f"{api_url}/events/filter", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return len(json.load(resp)["events"])


def test_a_run_whose_heartbeats_stop_is_crashed_by_the_server(tmp_path: Path) -> None:
    """With no echox start afterwards, the server's automation (core/runs.py) sets a Running flow run whose
    heartbeats stopped to Crashed. On a private server, with 30 s heartbeats and 45 s of silence (echox's
    are 60 s and SILENCE_S), so that the test takes about a minute."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect_default = 180  # s between heartbeats of a process that echox did not configure
    assert max(3 * runs.HEARTBEAT_S, prefect_default) < runs.SILENCE_S
    srv, url = server.start_temporary(tmp_path / "server")
    try:
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            assert runs.watch_heartbeats(client, silence_s=45)
            env = {**_env(tmp_path / "state"), "PREFECT_API_URL": url,
                   "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
            log = tmp_path / "flow.log"
            proc = _python("""
                import time
                from prefect import flow
                from prefect.runtime import flow_run

                @flow(name="silent")
                def silent() -> None:
                    print("RUN", flow_run.id, flush=True)
                    time.sleep(600)

                silent()
            """, env, log)
            try:
                ids = _wait(lambda: [line.split()[1] for line in log.read_text().splitlines()
                                     if line.startswith("RUN ")], 120, "the flow run", log)
                run_id = ids[0]  # type: ignore[index]
                _wait(lambda: _heartbeats(url, run_id), 60, "its first heartbeat", log)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            state = _wait(lambda: (s := client.read_flow_run(uuid.UUID(run_id)).state).is_crashed() and s,
                          45 + 60, "the automation to crash the run")
        assert state.type == StateType.CRASHED  # type: ignore[attr-defined]
        assert "no heartbeat for 45 s" in (state.message or "")  # type: ignore[attr-defined]
    finally:
        server.stop(srv)


def test_every_echox_flow_records_its_process() -> None:
    """The crash check needs each flow run's process: every echox flow carries the on_running hook."""
    from prefect import Flow

    from core.runs import record_process
    from flows import build_corpus, echo_labels, evaluate, pipeline, train

    flows = [obj for mod in (build_corpus, echo_labels, evaluate, pipeline, train)
             for obj in vars(mod).values() if isinstance(obj, Flow) and obj.__module__ == mod.__name__]
    assert len(flows) >= 8
    assert all(record_process in f.on_running_hooks for f in flows), [f.name for f in flows]


def test_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """GCS, raylet, workers and agents of a Ray started through ray_init_kwargs bind no wildcard address."""
    env = _env(tmp_path / "state")
    for key in ("ECHOX_BIND_HOST", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
        env.pop(key, None)
    code = """
        import json, os
        from core import runtime
        runtime.configure()
        import psutil, ray
        ray.init(**runtime.ray_init_kwargs(1, object_store_mb=128))
        ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker is up too
        me = psutil.Process()
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        found = [[c.laddr.ip, c.laddr.port, c.pid] for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
        print("LISTEN " + json.dumps({"node": ray.util.get_node_ip_address(), "sockets": found}), flush=True)
        ray.shutdown()
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    lines = [line for line in res.stdout.splitlines() if line.startswith("LISTEN ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("LISTEN "))
    assert report["node"] == "127.0.0.1"
    assert len(report["sockets"]) >= 3, report  # GCS, raylet, worker at least
    wide = [s for s in report["sockets"] if s[0] not in LOOPBACK]
    assert not wide, f"listening beyond loopback: {wide}"


def test_local_ray_keeps_its_workers_across_a_task_that_takes_every_cpu(tmp_path: Path) -> None:
    """The corpus build's shape: one-CPU tasks, then one task reserving both CPUs (the codebook fit), then
    one-CPU tasks again (labelling). The later tasks run in the same worker processes as the first (with
    Ray's 1 s idle-worker timeout it stopped them and the labels waited for fresh workers)."""
    env = _env(tmp_path / "state")
    env.pop("RAY_ADDRESS", None)
    code = """
        import json, os, time
        from core import runtime
        runtime.configure()
        import ray
        ray.init(**runtime.ray_init_kwargs(2, object_store_mb=128))
        def pid(wait):
            time.sleep(wait)
            return os.getpid()
        one, both = ray.remote(num_cpus=1)(pid), ray.remote(num_cpus=2)(pid)
        first = set(ray.get([one.remote(1.0) for _ in range(4)]))
        ray.get(both.remote(3.0))  # longer than Ray's default idle timeout
        later = set(ray.get([one.remote(0.5) for _ in range(4)]))
        print("PIDS " + json.dumps([sorted(first), sorted(later)]), flush=True)
        ray.shutdown()
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    lines = [line for line in res.stdout.splitlines() if line.startswith("PIDS ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    first, later = (set(pids) for pids in json.loads(lines[-1].removeprefix("PIDS ")))
    assert len(first) == 2 and later <= first, (first, later)


def test_bind_host_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """ECHOX_BIND_HOST widens the local Ray on request; by default it is pinned to 127.0.0.1."""
    monkeypatch.delenv("ECHOX_BIND_HOST", raising=False)
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    monkeypatch.setenv(key, os.environ.get(key, "1"))
    if "ray._private.ray_constants" in sys.modules:  # restored after the test, like the variable
        monkeypatch.setattr(sys.modules["ray._private.ray_constants"], "ENABLE_RAY_CLUSTER",
                            sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER)
    assert runtime.ray_init_kwargs(2)["_node_ip_address"] == "127.0.0.1"
    monkeypatch.setenv("ECHOX_BIND_HOST", "10.1.2.3")
    assert runtime.ray_init_kwargs(2)["_node_ip_address"] == "10.1.2.3"
    monkeypatch.setenv("ECHOX_BIND_HOST", "0.0.0.0")
    assert "_node_ip_address" not in runtime.ray_init_kwargs(2)
