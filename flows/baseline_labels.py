"""The no-echo baseline's labels flow: the echo-label format filled from the corpus's own answers.

No model runs and no Ray: the corpus is read shard by shard in this process (tasks/baseline_labels.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from core.errors import EchoxError
from core.runs import record_process
from tasks import baseline_labels as stages
from tasks.configs import BaselineLabelsConfig
from tasks.echo_labels import stats_rows


def _statistics(manifest: dict) -> list[dict]:
    """The echo-label statistics that mean something here (no T2C generated anything)."""
    return [r for r in stats_rows(manifest) if "T2C" not in r["statistic"] and "Y′" not in r["statistic"]]


@flow(name="baseline-labels", flow_run_name="baseline-labels", on_running=[record_process])
def baseline_labels(config: BaselineLabelsConfig) -> str:
    """The no-echo baseline's labels of a corpus; returns the output directory."""
    from tasks.out_dir import acquire_lock

    out = Path(config.out)
    lock = acquire_lock(out)
    try:
        plan = stages.plan_labels(config.corpus, config.s2t, config.t2c, config.out,
                                  max_units=config.max_units, overwrite=config.overwrite)
    except EchoxError:
        lock.release(remove_created=True)  # a refused folder is left as it was found
        raise
    try:
        manifest = stages.write_labels(plan, config.s2t, config.t2c, config.out)
    finally:
        lock.release()
    create_table_artifact(key="baseline-label-stats", table=_statistics(manifest),
                          description=f"No-echo baseline label statistics for {out}")
    if config.progress:
        get_run_logger().info("baseline-labels: " + json.dumps(manifest["totals"]))
    return str(out)
