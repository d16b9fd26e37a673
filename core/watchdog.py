"""Parent-death watchdog: `python -m core.watchdog PARENT_PID PGID` stops process group PGID once
PARENT_PID has exited, even by SIGKILL (atexit handlers and signal handlers never run then).

It runs in a session of its own, so a SIGKILL sent to the parent's group does not reach it; it is the
parent's child, so the parent's death shows as a change of its own parent pid (no pid-reuse race).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
TERM_GRACE_S = 10.0


def group_alive(pgid: int) -> bool:
    """True while some process of group `pgid` exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def group_running(pgid: int) -> bool:
    """True while a process of group `pgid` runs; zombies do not count (no one may reap them)."""
    import psutil

    if not group_alive(pgid):
        return False
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def stop_group(pgid: int, grace: float = TERM_GRACE_S) -> None:
    """SIGTERM group `pgid`, then SIGKILL whatever is left after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_running(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def watch(parent: int, pgid: int, poll: float = POLL_S) -> int:
    """Poll until `parent` is gone (then stop `pgid`) or `pgid` ended by itself; return 0."""
    while True:
        if os.getppid() != parent:  # reparented: the parent died, however it died
            stop_group(pgid)
            return 0
        if not group_alive(pgid):
            return 0
        time.sleep(poll)


def spawn(pgid: int) -> subprocess.Popen:
    """Start a watchdog that stops group `pgid` when this process dies."""
    cmd = [sys.executable, "-m", "core.watchdog", str(os.getpid()), str(pgid)]
    root = str(Path(__file__).resolve().parents[1])  # this echox, wherever the caller's cwd is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    # Own session: a group SIGKILL aimed at this process must not take the watchdog with it.
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: PARENT_PID PGID."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m core.watchdog PARENT_PID PGID", file=sys.stderr)
        return 2
    return watch(int(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
