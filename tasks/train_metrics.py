"""A training run's metrics lines: where a rank writes them, and how the waiting driver summarises them.

Rank 0 appends each line to `metrics.jsonl` and writes its scalars as TensorBoard events in `tb/` beside it
(`tensorboard --logdir RUN/tb`). Under Ray Train every rank also hands lines to `ray.train.report`: a barrier
that every rank must reach equally often, and one that blocks until Ray Train's controller has taken the
previous report, which it does once per health check (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default).
So rank 0 decides which lines are reported (the last one, and others at most once per that interval), and
the ranks share the decision in the all-reduce that averages the line. No Prefect here: this runs on the
ranks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.progress import duration, fields_text  # noqa: F401 - duration is re-exported (its old home)

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
ETA_WINDOW = 5
"""Metrics lines the ETA's pace is measured over (the recent pace, not the whole run's mean)."""

Report = Callable[[dict[str, Any]], Any]


def ray_report() -> Report:
    """`ray.train.report` (imported when a Ray Train rank asks for it)."""
    from ray import train

    return train.report


def report_interval_s() -> float:
    """How often Ray Train's controller takes a report (its health-check interval)."""
    return float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


class MetricsLog:
    """One rank's sink of metrics lines: rank 0 writes metrics.jsonl and TensorBoard; `report`, if given,
    gets the lines that `report_due` picked, on every rank."""

    def __init__(self, out_dir: Path, *, rank: int, start_step: int, report: Report | None = None) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.report = report
        self.interval_s = report_interval_s()
        self.last_report = -math.inf
        self.writer = open_tensorboard(Path(out_dir) / TB_DIR, start_step) if rank == 0 else None

    def report_due(self, *, last: bool) -> bool:
        """Whether this line should be reported (asked on rank 0): the last line, and others once the
        controller has had time to take the previous report."""
        return self.report is not None and (last or time.monotonic() - self.last_report >= self.interval_s)

    def write(self, row: dict[str, Any], *, report: bool = True) -> None:
        """Append the line (rank 0: file and TensorBoard, flushed so a viewer sees it now); report it if
        `report` (the same on every rank)."""
        if self.writer is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            for name, value in scalar_items(row):
                self.writer.add_scalar(name, value, global_step=row["step"])
            self.writer.flush()
        if report and self.report is not None:
            self.report(row)
            self.last_report = time.monotonic()

    def close(self) -> None:
        """Close the TensorBoard event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_tensorboard(log_dir: Path, start_step: int) -> Any:
    """A SummaryWriter on `log_dir`. A fresh run (step 0) clears what an earlier attempt left there; a resumed
    one hides, by `purge_step`, the events its checkpoint step did not reach (as metrics.jsonl is trimmed)."""
    from torch.utils.tensorboard import SummaryWriter

    if start_step == 0:
        shutil.rmtree(log_dir, ignore_errors=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1 if start_step else None)


def scalar_items(row: dict[str, Any]) -> list[tuple[str, float]]:
    """The line's finite numbers other than the step, as (name, value)."""
    return [(k, float(v)) for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


# ---- the driver's view (a thread of the Prefect task reads metrics.jsonl while the ranks train) -----------

def seconds_per_step(rows: Sequence[dict]) -> float | None:
    """Training seconds per step over the last ETA_WINDOW lines (elapsed_s / step from one line)."""
    if not rows or not rows[-1].get("step"):
        return None
    last, first = rows[-1], rows[max(0, len(rows) - ETA_WINDOW)]
    if last["step"] > first["step"]:
        return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return last["elapsed_s"] / last["step"]


def progress_fields(rows: Sequence[dict], max_steps: int) -> dict[str, float | None]:
    """The newest line's loss and tokens/s, and the ETA at the recent pace (None once done or unknown)."""
    last = rows[-1]
    pace = seconds_per_step(rows)
    eta = pace * (max_steps - last["step"]) if pace is not None and last["step"] < max_steps else None
    return {"loss": last["loss"], "tokens_per_s": last.get("tokens_per_s", 0.0), "eta_s": eta}


def progress_text(stage: str, rows: Sequence[dict], max_steps: int) -> str:
    """One line for the progress artifact: step / max_steps, loss, tokens/s and the ETA."""
    if not rows:
        return f"Stage {stage}: starting (0/{max_steps} steps)"
    step = rows[-1]["step"]
    text = f"Stage {stage}: step {step}/{max_steps} · " + fields_text(progress_fields(rows, max_steps))
    return text + (" · done" if step >= max_steps else "")
