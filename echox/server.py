"""A local Prefect server (UI + API) on 127.0.0.1 with its database under the project's state folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_PORT = 4200


def api_url(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    """The API address of a local server."""
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 0.5) -> bool:
    """True when a Prefect API answers /health at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def server_env(state: Path) -> dict[str, str]:
    """Environment of the server process: SQLite under `state` unless a database URL is set."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(state / "prefect"))
    db = state / "prefect" / "server.db"
    env.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{db}")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.pop("PREFECT_API_URL", None)  # the server itself must not be a client of another one
    return env


def start(state: Path, port: int = DEFAULT_PORT, *, log: Path | None = None) -> subprocess.Popen:
    """Start `prefect server start` in the background; return the process (not yet healthy)."""
    (state / "prefect").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(cmd, env=server_env(state), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_temporary(state: Path) -> tuple[subprocess.Popen, str]:
    """A private server for one run, on a free port; the caller stops it. Returns (process, API URL)."""
    port = free_port()
    proc = start(state, port, log=state / f"prefect-server-{port}.log")
    url = api_url(port=port)
    try:
        wait_healthy(url, proc)
    except RuntimeError:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process group started by `start`."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


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


def ensure_background(state: Path, port: int = DEFAULT_PORT) -> str:
    """A server on `port` that outlives this process (started if none answers); returns the API URL."""
    url = api_url(port=port)
    if is_healthy(url):
        return url
    proc = start(state, port, log=state / "prefect-server.log")
    (state / "prefect-server.pid").write_text(str(proc.pid))
    wait_healthy(url, proc)
    return url


def stop_background(state: Path) -> str:
    """Stop the server `ensure_background` started; says what it did."""
    import signal

    pid_file = state / "prefect-server.pid"
    if not pid_file.exists():
        return "no background Prefect server was started from this folder"
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"the background Prefect server (pid {pid}) had already stopped"
    return f"stopped the background Prefect server (pid {pid})"
