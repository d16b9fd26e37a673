"""A local Prefect server (UI + API) on 127.0.0.1 with its database under the project's state folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PORT = 4200
HOST = "127.0.0.1"  # never all interfaces: the API has no authentication
PID_FILE = "prefect-server.pid"


class ServerProcess(subprocess.Popen):
    """A `prefect server start` process group, with its log and (for a private server) its watchdog."""

    log: Path | None = None
    temporary: bool = False  # a per-run server: its log is removed when it stops cleanly
    watchdog: subprocess.Popen | None = None


class Terminated(BaseException):
    """SIGTERM arrived while `sigterm_raises` was active.

    A BaseException, like KeyboardInterrupt: a library's `except Exception` (Prefect's client, the
    Crashed-run bookkeeping) must not swallow a request to stop."""


def api_url(host: str = HOST, port: int = DEFAULT_PORT) -> str:
    """The API address of a local server."""
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 0.5) -> bool:
    """True when a Prefect API answers /health at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def server_env(state: Path, port: int = DEFAULT_PORT) -> dict[str, str]:
    """Environment of the server process: SQLite under `state` unless a database URL is set."""
    env = dict(os.environ)
    # The UI asks the API at PREFECT_UI_API_URL, which defaults to these settings, not to --port: without
    # them the UI of a server on another port than 4200 talks to whatever answers (or not) on 4200.
    env["PREFECT_SERVER_API_HOST"] = HOST
    env["PREFECT_SERVER_API_PORT"] = str(port)
    env.setdefault("PREFECT_HOME", str(state / "prefect"))
    db = state / "prefect" / "server.db"
    env.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{db}")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.pop("PREFECT_API_URL", None)  # the server itself must not be a client of another one
    return env


def start(state: Path, port: int = DEFAULT_PORT, *, log: Path | None = None,
          watch: bool = False) -> ServerProcess:
    """Start `prefect server start` in the background; return the process (not yet healthy).

    With `watch`, a watchdog stops the server when this process dies, even by SIGKILL.
    """
    from core import watchdog

    (state / "prefect").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    # Own session: Ctrl-C in the terminal is handled by us (stop), not delivered to the server directly.
    proc = ServerProcess(cmd, env=server_env(state, port), stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    if log:
        out.close()
    proc.log = log
    if watch:
        proc.watchdog = watchdog.spawn(proc.pid)
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_temporary(state: Path) -> tuple[ServerProcess, str]:
    """A private server for one run, on a free port, that dies with this process; the caller stops it.

    Returns (process, API URL). Its log is removed by a clean `stop`; on a failed start it is kept
    and named in the error.
    """
    port = free_port()
    log = state / f"prefect-server-{port}.log"
    proc = start(state, port, log=log, watch=True)
    proc.temporary = True
    url = api_url(port=port)
    try:
        wait_healthy(url, proc)
    except RuntimeError as e:
        proc.temporary = False  # keep the log: it says why
        stop(proc)
        raise RuntimeError(f"{e}; see {log}") from e
    return proc, url


def stop(proc: ServerProcess | subprocess.Popen) -> bool:
    """Terminate a server process group started by `start`; True when it stopped cleanly.

    A temporary server's log is removed after a clean stop.
    """
    clean = proc.poll() is None
    if clean:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            clean = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    dog = getattr(proc, "watchdog", None)
    if dog is not None and dog.poll() is None:
        dog.terminate()
        dog.wait(timeout=10)
    log = getattr(proc, "log", None)
    if clean and getattr(proc, "temporary", False) and log is not None:
        log.unlink(missing_ok=True)
    return clean


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Block until the API answers; raise RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        time.sleep(0.5)
    raise RuntimeError(f"prefect server at {url} not healthy after {timeout:.0f} s")


def record(state: Path, proc: subprocess.Popen, port: int, started_by: str) -> None:
    """Write the pid file that `echox server --stop` reads (pid, port, start time against pid reuse)."""
    import psutil

    entry = {"pid": proc.pid, "port": port, "created": psutil.Process(proc.pid).create_time(),
             "started_by": started_by}
    tmp = state / f"{PID_FILE}.tmp"
    tmp.write_text(json.dumps(entry))
    tmp.replace(state / PID_FILE)


def recorded(state: Path) -> dict | None:
    """The pid file's entry, or None when there is none (an old file holding just a pid is read too)."""
    path = state / PID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else {"pid": int(entry)}


def forget(state: Path, proc: subprocess.Popen) -> None:
    """Remove the pid file if it still names `proc`."""
    entry = recorded(state)
    if entry is not None and entry.get("pid") == proc.pid:
        (state / PID_FILE).unlink(missing_ok=True)


def is_alive(entry: dict) -> bool:
    """True when the recorded server process still runs (and is the same process, not a reused pid)."""
    import psutil

    try:
        p = psutil.Process(int(entry["pid"]))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        created = entry.get("created")
        return created is None or abs(p.create_time() - float(created)) < 1.0
    except psutil.Error:
        return False


def ensure_background(state: Path, port: int = DEFAULT_PORT) -> str:
    """A server on `port` that outlives this process (started if none answers); points Prefect at it
    (PREFECT_API_URL) and returns the API URL."""
    url = api_url(port=port)
    if not is_healthy(url):
        proc = start(state, port, log=state / "prefect-server.log")
        record(state, proc, port, "echox demo")
        wait_healthy(url, proc)
    # Set before the crash check imports prefect, which reads its settings once, at import.
    os.environ["PREFECT_API_URL"] = url
    from core import runs

    runs.mark_crashed(url)
    return url


def stop_background(state: Path) -> str:
    """Stop the server recorded for this folder (by `echox server` or `echox demo`); says what it did."""
    from core import watchdog

    entry = recorded(state)
    if entry is None:
        return "no Prefect server was started from this folder"
    (state / PID_FILE).unlink(missing_ok=True)
    pid = int(entry["pid"])
    where = f" on port {entry['port']}" if "port" in entry else ""
    if not is_alive(entry):
        return f"the Prefect server{where} (pid {pid}) had already stopped"
    watchdog.stop_group(pid)
    return f"stopped the Prefect server{where} (pid {pid})"


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (so `finally` clauses run) instead of killing us."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
