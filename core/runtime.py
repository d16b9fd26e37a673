"""Process environment for Ray and Prefect: quiet, offline, state under the project's folder."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from core.errors import EchoxError
from core.runs import HEARTBEAT_S

DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",  # Ray 2.60 turns token auth on by default
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",  # nothing is downloaded at run time
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # a run silent for long is Crashed (core/runs.py)
}


def state_dir() -> Path:
    """The project's state folder (Prefect home, caches); ECHOX_STATE_DIR overrides it."""
    return Path(os.environ.get("ECHOX_STATE_DIR", Path.cwd() / ".state")).resolve()


def configure(*, prefect_home: Path | None = None) -> None:
    """Set environment defaults; call before importing prefect or ray. Existing values win."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = prefect_home or state_dir() / "prefect"
    os.environ.setdefault("PREFECT_HOME", str(home))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def ensure_prefect_api() -> str:
    """Make sure PREFECT_API_URL names a live server that Ray workers can reach too.

    Prefect's own ephemeral server lives inside one process, so each Ray worker would start a
    private one of its own (slow, and its task runs would not show with the flow). Instead: use
    the configured URL, else a running `echox server`, else start a temporary server for this
    process (stopped at exit, and by a watchdog if this process is killed). Flow runs left Running
    by a dead process are marked Crashed, and the server gets the automation that crashes runs whose
heartbeats stop (core/runs.py). Call before Ray starts, so workers inherit the variable.
    """
    import atexit

    from core import runs, server

    url = use_local_server()
    if not url:
        try:
            proc, url = server.start_temporary(state_dir())
        except RuntimeError as e:
            raise EchoxError(f"could not start a Prefect server: {e} (or set PREFECT_API_URL)") from e
        atexit.register(_stop_temporary, proc)
        os.environ["PREFECT_API_URL"] = url
    runs.mark_crashed(url)
    return url


def _stop_temporary(proc: object) -> None:
    """Stop this run's private server at exit; name its log if it did not stop cleanly."""
    import sys

    from core import server

    if not server.stop(proc) and getattr(proc, "log", None):  # type: ignore[arg-type]
        print(f"echox: the temporary Prefect server did not stop cleanly; see {proc.log}", file=sys.stderr)


def use_local_server() -> str | None:
    """Point Prefect at a running `echox server` when no API URL is set; return the URL used."""
    from core.server import api_url, is_healthy

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    url = api_url(port=int(os.environ.get("ECHOX_SERVER_PORT", "4200")))
    if is_healthy(url, timeout=0.3):
        os.environ["PREFECT_API_URL"] = url
        return url
    return None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind_host() -> str:
    """Where a Ray that echox starts listens: ECHOX_BIND_HOST, default 127.0.0.1 (loopback only)."""
    return os.environ.get("ECHOX_BIND_HOST", "").strip() or "127.0.0.1"


IDLE_WORKER_KEEP_MS = 60_000
"""How long a local Ray keeps an idle worker process (Ray's default: 1 s). The corpus build's codebook fit
reserves every CPU of the build, and Ray then stopped the idle shard workers, so the labelling tasks after
it waited about 3 s for fresh workers to import torch; the same workers now label."""


def ray_init_kwargs(num_cpus: int | None, *, object_store_mb: int = 512) -> dict:
    """Arguments for a local ray.init: bounded CPUs and object store, no dashboard, loopback only.

    Only for a Ray that echox starts itself; joining a cluster (`ray_address`) uses none of this.
    ECHOX_BIND_HOST=<this machine's IP> (or 0.0.0.0: Ray's own choice) lets other machines reach it.
    """
    kwargs: dict = {"include_dashboard": False, "object_store_memory": object_store_mb << 20,
                    "log_to_driver": True, "configure_logging": False,
                    "_system_config": {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    host = bind_host()
    if host in LOOPBACK:
        _ray_single_machine()
        kwargs["_node_ip_address"] = "127.0.0.1"
    elif host not in ("0.0.0.0", "::"):
        kwargs["_node_ip_address"] = host
    return kwargs


def _ray_single_machine() -> None:
    """Put Ray in single-machine mode: GCS, raylet, workers and agents listen on 127.0.0.1 only.

    Ray turns a node address of 127.0.0.1 into the machine's external IP (and then listens on every
    interface) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its switch for one-machine use, which it
    reads once at import: set it for the processes Ray spawns and for an already imported Ray.
    """
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


class RaySession:
    """The Ray a `ray_session` uses: started by it (and stopped by it) or found running."""

    def __init__(self, started: bool) -> None:
        self.started = started
        self._stopper: threading.Thread | None = None

    def stop_in_background(self) -> None:
        """Begin stopping a Ray this session started while the caller goes on (no-op otherwise)."""
        import ray

        if self.started and self._stopper is None:
            self._stopper = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            self._stopper.start()

    def close(self) -> None:
        """Stop a Ray this session started (waiting for a background stop)."""
        import ray

        if not self.started:
            return
        if self._stopper is not None:
            self._stopper.join()
        else:
            ray.shutdown()


# The project's packages: what a cluster's workers import. Shipped with the job (Ray's runtime_env
# py_modules) when echox joins a cluster, so a node needs the venv, not this checkout at the same path.
PROJECT_PACKAGES = ("core", "data_specs", "echox", "flows", "models", "tasks")


def project_root() -> Path:
    """The checkout this code runs from."""
    return Path(__file__).resolve().parents[1]


def shipped_code() -> dict:
    """runtime_env shipping this checkout's packages to every worker of a cluster (ECHOX_SHIP_CODE=0: off)."""
    if os.environ.get("ECHOX_SHIP_CODE", "1") == "0":
        return {}
    root = project_root()
    modules = [str(root / name) for name in PROJECT_PACKAGES if (root / name).is_dir()]
    return {"py_modules": modules, "excludes": ["__pycache__", "*.pyc"]}


def job_runtime_env(address: str | None, runtime_env: dict | None) -> dict:
    """The runtime_env of a Ray job echox starts: the caller's, plus the shipped code on a cluster."""
    env = dict(shipped_code()) if address else {}
    for key, value in (runtime_env or {}).items():
        env[key] = {**env.get(key, {}), **value} if isinstance(value, dict) else value
    return env


def task_threads(workers: int, given: int | None, total_cpus: int, node_cpus: int) -> int:
    """Threads of one of `workers` parallel Ray tasks or training workers, which are also the CPUs it
    reserves: `given` when set, else the cluster's CPUs shared among the workers, at most one node's."""
    if given:
        return given
    return max(1, min(node_cpus, total_cpus // workers))


def cluster_cpus() -> tuple[int, int]:
    """(all CPUs, CPUs of the largest alive node) of the Ray this process is connected to."""
    import ray

    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = int(sum(nodes))
    return max(total, 1), max(int(max(nodes, default=1)), 1)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 512,
                runtime_env: dict | None = None) -> Iterator[RaySession]:
    """Use the Ray this process already has (tests, notebooks, a pipeline); else join the cluster at
    `address`, or start a bounded local Ray. What the session started, it stops on exit."""
    configure()  # RAY_AUTH_MODE and friends must be set before ray.init
    import ray

    started = not ray.is_initialized()
    if started:
        env = job_runtime_env(address, runtime_env)
        extra = {"runtime_env": env} if env else {}
        if address:
            ray.init(address=address, configure_logging=False, **extra)
        else:
            ray.init(**ray_init_kwargs(num_cpus, object_store_mb=object_store_mb), **extra)
    session = RaySession(started)
    try:
        yield session
    finally:
        session.close()
