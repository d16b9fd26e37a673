"""A stage's artifacts while it trains, and when it has finished.

The ranks (Ray Train workers or one local process) have no Prefect run context; they write metrics.jsonl.
`LiveTraining` is a thread of the driver (the train task) that reads that file every few seconds: the
progress artifact `train-<stage>-progress` follows every metrics line (step / max_steps, loss, tokens/s,
ETA), and the loss-curve and metrics-table artifacts are refreshed every `publish_every` steps under the
keys that the final `publish_metrics` writes. The same reads move the stage's row of the terminal's progress
(core/progress.py).
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from core import progress
from tasks.configs import TrainFlowConfig
from tasks.plots import loss_curve_markdown, read_metrics
from tasks.train_metrics import METRICS_FILE, progress_fields, progress_text


def loss_keys(stage: str) -> tuple[str, ...]:
    """The metrics the stage's loss curve shows (its registry entry's loss_keys)."""
    from models.stages import get_stage

    return get_stage(stage).loss_keys


def publish_metrics(cfg: TrainFlowConfig, metrics: list[dict] | None = None) -> None:
    """Loss curve (markdown with a plot) and metrics so far (table) as artifacts; reads metrics.jsonl unless
    given its lines."""
    if metrics is None:
        path = Path(cfg.out) / METRICS_FILE
        metrics = read_metrics(path) if path.exists() else []
    if not metrics:
        return
    key = f"train-{cfg.stage}"
    create_markdown_artifact(key=f"{key}-loss", description=f"Stage {cfg.stage} loss curve",
                             markdown=loss_curve_markdown(metrics, f"{cfg.stage} loss", loss_keys(cfg.stage)))
    first, last = metrics[0], metrics[-1]
    rows = [{"metric": k, "first": round(first[k], 5), "last": round(last[k], 5)}
            for k in last if isinstance(last[k], int | float) and k in first]
    create_table_artifact(key=f"{key}-metrics", table=rows, description=f"Stage {cfg.stage}: {cfg.out}")


def row_name(cfg: TrainFlowConfig) -> str:
    """The stage's row in the terminal's progress: `train s2t`, with the run folder when it is named
    otherwise (`train echo (baseline)`: two rows of one stage can run at once in a pipeline)."""
    folder = Path(cfg.out).name.removesuffix(".new")
    return f"train {cfg.stage}" + ("" if folder == cfg.stage else f" ({folder})")


class LiveTraining:
    """`with LiveTraining(cfg): train(...)`: the stage's progress artifact and its refreshed loss curve while
    the `with` block trains. A Prefect API error is logged once and never stops the training."""

    def __init__(self, cfg: TrainFlowConfig, *, interval_s: float = 5.0) -> None:
        self.cfg, self.interval_s = cfg, interval_s
        self.path = Path(cfg.out) / METRICS_FILE
        self.progress_id: Any = None
        self.seen: tuple[int, int] | None = None  # (size, mtime_ns) of the metrics file last read
        self.step = 0  # the newest step the progress artifact shows
        self.published = 0  # the step of the last live loss-curve refresh
        self.warned = False
        self.row = row_name(cfg)
        self.shown: list[dict] = []  # the metrics lines the terminal's row shows
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> LiveTraining:
        self.logger = get_run_logger()
        progress.start(self.row, self.cfg.max_steps, "steps")
        try:
            self.progress_id = create_progress_artifact(
                progress=0.0, key=f"train-{self.cfg.stage}-progress",
                description=progress_text(self.cfg.stage, [], self.cfg.max_steps))
        except Exception as e:  # the API unreachable: train anyway, and refresh the loss curve if it returns
            self._warn_once(e)
        context = contextvars.copy_context()  # the task's run context: artifacts belong to this run
        self.thread = threading.Thread(target=context.run, args=(self._watch,), daemon=True,
                                       name=f"live-{self.cfg.stage}")
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.poll(final=True, failed=error)
        progress.finish(self.row, self._summary(error), ok=error is None)

    def _summary(self, error: BaseException | None) -> str:
        """What the terminal's row leaves: the last step and loss (and what stopped it)."""
        rows = self.shown
        text = f"{rows[-1]['step']}/{self.cfg.max_steps} steps · loss {rows[-1]['loss']:.4f}" if rows else ""
        return f"{text} · {type(error).__name__}".lstrip(" ·") if error is not None else text

    def _watch(self) -> None:
        """Poll until stopped."""
        while not self.stop.wait(self.interval_s):
            self.poll()

    def poll(self, *, final: bool = False, failed: BaseException | None = None) -> None:
        """Read metrics.jsonl if it changed (or the run failed): update the progress artifact; refresh the
        loss curve every `publish_every` steps (not at the end: the flow's final publish writes it then)."""
        try:
            rows = self._read(changed_only=failed is None)
            if rows is None:
                return
            self._show_terminal(rows)
            self._show_progress(rows, failed)
            step = rows[-1]["step"] if rows else 0
            every = self.cfg.publish_every
            if not final and step < self.cfg.max_steps and step // every > self.published // every:
                publish_metrics(self.cfg, rows)
                self.published = step
        except Exception as e:  # the API down, a torn file: training goes on, the UI catches up later
            self._warn_once(e)

    def _warn_once(self, error: Exception) -> None:
        """Log the first failure to update the artifacts (later ones would repeat it every few seconds)."""
        if not self.warned:
            self.logger.warning(f"live training artifacts of stage {self.cfg.stage} not updated: "
                                f"{type(error).__name__}: {error}")
            self.warned = True

    def _read(self, *, changed_only: bool) -> list[dict] | None:
        """The metrics lines; None when `changed_only` and the file has not changed since the last read."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None if changed_only else []
        if changed_only and self.seen == (st.st_size, st.st_mtime_ns):
            return None
        self.seen = (st.st_size, st.st_mtime_ns)
        return [r for r in read_metrics(self.path) if "step" in r and "loss" in r]

    def _show_terminal(self, rows: list[dict]) -> None:
        """The terminal's row: step / max_steps, loss, tokens/s, ETA (when a new step came)."""
        if rows and (not self.shown or rows[-1]["step"] != self.shown[-1]["step"]):
            progress.update(self.row, rows[-1]["step"], **progress_fields(rows, self.cfg.max_steps))
        self.shown = rows or self.shown

    def _show_progress(self, rows: list[dict], failed: BaseException | None) -> None:
        """step / max_steps as the progress, the progress line (and a failure) as its description."""
        step = rows[-1]["step"] if rows else 0
        if self.progress_id is None or (step == self.step and failed is None):
            return
        text = progress_text(self.cfg.stage, rows, self.cfg.max_steps)
        if failed is not None:
            text = f"{text} · stopped: {type(failed).__name__}"
        update_progress_artifact(self.progress_id, progress=min(100.0, 100.0 * step / self.cfg.max_steps),
                                 description=text)
        self.step = step
