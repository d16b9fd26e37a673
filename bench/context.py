"""The benchmark run's settings (handed to every stage process as JSON) and the result record helpers."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.workload import Workspace

T = TypeVar("T")


@dataclass(frozen=True)
class BenchContext:
    """Settings of one benchmark run."""

    work: str
    """Scratch directory: workloads, cached audio/frames/corpora, build outputs, logs."""
    run_id: str
    """Identifies the run; ratios are only taken between results of the same run."""
    quick: bool = False
    """Tiny workloads for building and debugging the harness (figures are not representative)."""
    repeats: int = 3
    """Repeats of each in-process stage measurement (the median is quoted)."""
    build_repeats: int = 2
    """Repeats of each corpus-level run (baseline loop, Prefect+Ray build)."""
    sizes: tuple[int, ...] = (100, 300)
    """Corpus sizes (records) of the cost-growth runs."""
    scaling_size: int = 300
    """Records of the overhead and 1-vs-2-worker runs."""
    tts: str = "piper"
    """TTS engine of the corpus-level runs."""
    seed: int = 0
    """Seed of the workload and every stage."""
    stage_args: dict[str, Any] = field(default_factory=dict)
    """Per-stage overrides (e.g. {"train": {"steps": 10}}) for tests and experiments."""

    @property
    def ws(self) -> Workspace:
        """Cached derived inputs under the work directory."""
        return Workspace(Path(self.work) / "inputs", self.seed)

    @property
    def cores(self) -> int:
        """CPU cores of this machine."""
        return os.cpu_count() or 1

    def pick(self, full: T, quick: T) -> T:
        """`quick` in quick mode, `full` otherwise."""
        return quick if self.quick else full

    def arg(self, stage: str, name: str, default: T) -> T:
        """A per-stage override, or the default."""
        return self.stage_args.get(stage, {}).get(name, default)

    def path(self, *parts: str) -> Path:
        """A path under the work directory (parents created)."""
        p = Path(self.work).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def dir(self, *parts: str) -> Path:
        """A directory under the work directory (created)."""
        p = Path(self.work).joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def to_json(self) -> str:
        """JSON image of the settings."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BenchContext:
        """Settings from their JSON image."""
        data = json.loads(text)
        data["sizes"] = tuple(data["sizes"])
        return cls(**data)


def case(name: str, params: dict[str, Any], measured: dict[str, Any], *,
         work: dict[str, float] | None = None, rates: dict[str, float] | None = None,
         **extra: Any) -> dict[str, Any]:
    """One measured case: timing stats, peak RSS and throughput (work amounts / median wall time).

    `rates` are throughputs measured some other way (e.g. tokens/s from the trainer's own windows).
    """
    wall = measured["wall_s"]["median"]
    throughput = {f"{unit}_per_s": round(amount / wall, 4) for unit, amount in (work or {}).items()
                  if wall}
    throughput |= {k: round(v, 4) for k, v in (rates or {}).items() if v is not None}
    return {"name": name, "params": params, "wall_s": measured["wall_s"], "cpu_s": measured.get("cpu_s"),
            "peak_rss_mb": measured.get("peak_rss_mb"), "work": work or {}, "throughput": throughput,
            "extra": extra}


def skipped(reason: str) -> dict[str, Any]:
    """A stage that could not be measured, and why."""
    return {"cases": [], "skipped": reason}
