"""A Ray Train callback that appends what the ranks reported to a JSONL file (it runs in Ray Train's
controller, another process, so a file is how a test reads it back)."""

from __future__ import annotations

import json
from typing import Any

from ray.train import UserCallback


class RecordReports(UserCallback):
    """One line per `ray.train.report` round: the list of every rank's metrics."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Append this round's metrics (metrics[i] is rank i's)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
