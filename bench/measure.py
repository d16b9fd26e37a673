"""Measuring tools: wall time, CPU time and peak memory of a whole process tree, and machine facts.

Ray workers, the raylet and TTS subprocesses are separate processes, so memory and CPU are sampled
over the tree (a process and all its descendants) by a background thread.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

MB = 1 << 20
VERSIONED = ("torch", "torchaudio", "ray", "prefect", "prefect-ray", "fairseq2", "pyarrow", "numpy",
             "onnxruntime", "piper-tts", "transformers", "datasets", "lhotse", "webdataset")


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw runs of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "runs": [round(v, 4) for v in vals]}


def _rusage_cpu(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or its reaped children."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class TreeMonitor:
    """Samples the summed RSS and the CPU time of a process and its descendants until stopped.

    CPU time is the larger of two lower bounds: per-process CPU seen by sampling (misses the last
    interval of short-lived processes) and getrusage of reaped children (misses orphans that Ray
    kills without reaping). RSS is summed over processes, so shared pages count once per process.
    """

    def __init__(self, pid: int | None = None, *, interval_s: float = 0.2) -> None:
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self.own = self.pid == os.getpid()
        self.peak_rss = 0
        self.start_rss = 0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-monitor")
        self._rusage_start = 0.0

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> int:
        """Take one sample; return the summed RSS in bytes."""
        total = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    total += proc.memory_info().rss
                    t = proc.cpu_times()
                    self._cpu_last[proc.pid] = t.user + t.system
            except psutil.Error:
                continue  # exited between listing and reading
        self.peak_rss = max(self.peak_rss, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeMonitor:
        self.start_rss = self.sample()
        self._cpu_start = dict(self._cpu_last)
        self._rusage_start = self._rusage()
        self._thread.start()
        return self

    def _rusage(self) -> float:
        own = _rusage_cpu(resource.RUSAGE_SELF) if self.own else 0.0
        return _rusage_cpu(resource.RUSAGE_CHILDREN) + own

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.rusage_cpu_s = self._rusage() - self._rusage_start

    @property
    def sampled_cpu_s(self) -> float:
        """CPU seconds spent in the tree while monitored, from per-process samples."""
        return sum(v - self._cpu_start.get(pid, 0.0) for pid, v in self._cpu_last.items())

    @property
    def cpu_s(self) -> float:
        """Best estimate of the tree's CPU seconds (the larger of the two lower bounds)."""
        return max(self.sampled_cpu_s, getattr(self, "rusage_cpu_s", 0.0))

    @property
    def peak_rss_mb(self) -> float:
        """Peak summed RSS in MiB."""
        return self.peak_rss / MB


def timed(fn: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """Run fn once in this process: (wall s, CPU s of the tree, peak tree RSS MiB, fn's result)."""
    with TreeMonitor() as mon:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    return wall, mon.cpu_s, mon.peak_rss_mb, out


def repeat(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Run fn `repeats` times; wall/CPU stats, the peak RSS over all runs, and the last result."""
    walls, cpus, peak, out = [], [], 0.0, None
    for _ in range(repeats):
        wall, cpu, rss, out = timed(fn)
        walls.append(wall)
        cpus.append(cpu)
        peak = max(peak, rss)
    return {"wall_s": stats(walls), "cpu_s": stats(cpus), "peak_rss_mb": round(peak, 1), "result": out}


def run_measured(argv: list[str], *, result_path: Path, timeout_s: float, cwd: Path | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> dict[str, Any]:
    """Run a child process, sampling its tree; merge its JSON result with the tree's peak RSS and CPU."""
    result_path.unlink(missing_ok=True)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeMonitor(proc.pid) as mon:
            rc, child_peak_mb = _wait_with_rusage(proc, timeout_s)
        wall = time.perf_counter() - t0
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    out: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    out["process"] = {"returncode": rc, "wall_s": round(wall, 3), "tree_cpu_s": round(mon.cpu_s, 3),
                      "tree_peak_rss_mb": round(max(mon.peak_rss_mb, child_peak_mb), 1),
                      "log": str(log_path) if log_path else None}
    if rc != 0 and "error" not in out:
        tail = _tail(log_path) if log_path else ""
        out["error"] = "timed out" if rc is None else f"exit status {rc}: {tail}"
    return out


def _wait_with_rusage(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, float]:
    """Reap a child (killing its tree past timeout_s): (exit status or None, its own peak RSS in MiB).

    The kernel's peak RSS of the reaped child covers processes that finish between two samples of
    the tree monitor (a short --quick stage can); the tree's summed peak stays the sampled one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
        if time.monotonic() > deadline:
            _kill_tree(proc.pid)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            return None, 0.0
        time.sleep(0.05)


def _tail(path: Path, chars: int = 1500) -> str:
    """The end of a log file."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _kill_tree(pid: int) -> None:
    """Kill a timed-out child and every process it started (only that tree)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def versions() -> dict[str, str]:
    """Installed versions of the stack (read from package metadata, nothing imported)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS and load of this machine."""
    from tasks.results import cpu_model

    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "ram_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
            "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
            "gpu": _gpu(), "python_executable": sys.executable}


def _gpu() -> str | None:
    """The CUDA device name, or None (checked in a subprocess-free way through torch if imported)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]
