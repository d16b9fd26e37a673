"""Ray nodes started the way an operator starts them (`ray start`), each in its own process group, so a
test stops or kills exactly its own nodes (never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RayNode:
    """One `ray start --block` process group and its temp dir."""

    proc: subprocess.Popen
    temp: Path
    killed: bool = field(default=False)

    def kill(self) -> None:
        """SIGKILL the whole node (raylet, its workers, and the GCS on a head): a lost machine."""
        if not self.killed:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.killed = True

    def stop(self) -> None:
        """Stop the node (SIGTERM its group, SIGKILL after 30 s) and remove its temp dir."""
        if not self.killed:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def start_node(*args: str, cwd: Path | None = None, settle_s: float = 8.0) -> RayNode:
    """`ray start --block ARGS` on loopback with its own temp dir (short: Ray's socket paths must fit 107
    bytes), from `cwd`; waits `settle_s` for it to come up."""
    temp = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PYTHONPATH", None)  # a node has the venv, not this checkout: the job ships the code
    # A test session's own local Ray sets Ray's single-machine switch in os.environ (core.runtime); a
    # node of a multi-node cluster must not inherit it (`ray start --address` refuses to join then).
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    log = temp / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ray_bin), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", f"--temp-dir={temp}", *args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    time.sleep(settle_s)
    if proc.poll() is not None:
        said = log.read_text(errors="replace")[-2000:]
        shutil.rmtree(temp, ignore_errors=True)
        raise RuntimeError(f"ray start {' '.join(args)} exited with {proc.returncode}:\n{said}")
    return RayNode(proc, temp)


def start_head(port: int, num_cpus: int, cwd: Path | None = None) -> RayNode:
    """A head node (GCS on `port`), without dashboard."""
    return start_node("--head", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
                      cwd=cwd)


def start_worker(address: str, num_cpus: int, cwd: Path | None = None) -> RayNode:
    """A second node joining the head at `address`."""
    return start_node(f"--address={address}", f"--num-cpus={num_cpus}", cwd=cwd)
