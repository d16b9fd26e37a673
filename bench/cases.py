"""Corpus-level cases, each run in a fresh process: the plain baseline loop or the Prefect+Ray build.

The parent (a stage process) samples the child's whole process tree (Ray's raylet and workers
included) for peak memory and CPU; the child times its own work after importing what it needs.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.context import BenchContext
from bench.measure import run_measured

REPO = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 3 * 3600
# A build's wall time, cut at: first shard task start, last shard end, codebook end, last label end.
# Each worker's first shard also loads its models, so that load counts under "speech + features".
BUILD_PHASES = ("start-up (plan, Ray, worker start)", "speech + features", "codebook fit", "labelling",
                "finalize + stop Ray")


def case_dir(ctx: BenchContext, spec: dict[str, Any], rep: int) -> Path:
    """The output directory of one run of a case."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(spec.items()) if k in ("records", "workers",
                                                                        "threads_per_worker"))
    return Path(ctx.work) / "corpus-runs" / f"{spec['kind']}-{tag}-r{rep}"


def run_case_process(ctx: BenchContext, spec: dict[str, Any], rep: int) -> dict[str, Any]:
    """Run one case in `python -m bench.run --case`, measured; returns its result with process figures."""
    out = case_dir(ctx, spec, rep)
    shutil.rmtree(out, ignore_errors=True)  # a leftover build would be resumed, not rebuilt
    out.mkdir(parents=True)
    full = {**spec, "source": str(ctx.ws.workload(spec["records"])), "out": str(out / "corpus"),
            "seed": ctx.seed}
    (out / "spec.json").write_text(json.dumps(full, indent=2))
    argv = [sys.executable, "-m", "bench.run", "--case", str(out / "spec.json"), "--result",
            str(out / "result.json")]
    result = run_measured(argv, result_path=out / "result.json", timeout_s=CASE_TIMEOUT_S, cwd=REPO,
                          log_path=out / "log.txt")
    shutil.rmtree(out / "corpus", ignore_errors=True)  # keep the logs, not the audio
    return result


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side: run the case the spec names and return its own figures."""
    if spec["kind"] == "baseline":
        return _baseline(spec)
    if spec["kind"] == "flow":
        return _flow(spec)
    raise ValueError(f"unknown case kind {spec['kind']!r}")


def _baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop; the driver's imports happen before the clock starts (as for the flow)."""
    import tasks.features
    import tasks.text_norm
    import tasks.tts
    import tasks.units  # noqa: F401
    from bench.baseline import BaselineConfig, run_baseline

    return run_baseline(BaselineConfig(source=spec["source"], out=spec["out"], tts=spec["tts"],
                                       seed=spec["seed"]))


def _flow(spec: dict[str, Any]) -> dict[str, Any]:
    """flows.build_corpus with the spec's workers and threads, against the running Prefect server."""
    from core import runtime

    runtime.configure()
    runtime.ensure_prefect_api()  # the bench starts one; this only checks it is set
    from flows.build_corpus import build_corpus
    from tasks.configs import BuildCorpusConfig

    cfg = BuildCorpusConfig(source=spec["source"], out=spec["out"], tts=spec["tts"], workers=spec["workers"],
                            threads_per_worker=spec["threads_setting"], seed=spec["seed"],
                            progress=False, overwrite=True)
    started = time.time()
    t0 = time.perf_counter()
    build_corpus(config=cfg)
    wall = time.perf_counter() - t0
    manifest = json.loads((Path(spec["out"]) / "manifest.json").read_text())
    totals = manifest["totals"]
    return {"wall_s": wall, "rows": totals["rows"], "source_records": totals["source_records"],
            "audio_seconds": totals["audio_hours"] * 3600, "shards": len(manifest["shards"]),
            "shard_size": cfg.shard_size, "phases_s": build_phases(started, started + wall)}


def _task_spans(since: float) -> list[tuple[str, float, float]]:
    """(name, start, end) in epoch seconds of every finished task run that started after `since`."""
    import asyncio
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=datetime.fromtimestamp(since, UTC)))

    async def read() -> list[tuple[str, float, float]]:
        runs: list = []
        async with get_client() as client:
            while page := await client.read_task_runs(task_run_filter=after, limit=200, offset=len(runs)):
                runs += page  # the API serves at most 200 a request
        return [(r.name, r.start_time.timestamp(), r.end_time.timestamp()) for r in runs
                if r.start_time and r.end_time]

    return asyncio.run(read())


def build_phases(started: float, ended: float) -> dict[str, float]:
    """Where a build's wall time went, from its task runs in the Prefect API (this process's build only:
    the bench runs one build at a time against its server). The phases add up to the wall time."""
    spans = _task_spans(started - 1.0)
    synth = [s for s in spans if s[0].startswith("synthesize-shard")]
    fit = [s for s in spans if s[0].startswith("fit-codebook")]
    label = [s for s in spans if s[0].startswith("label-shard")]
    if not (synth and fit and label):
        return {}
    marks = [started, min(s[1] for s in synth), max(s[2] for s in synth), max(s[2] for s in fit),
             max(s[2] for s in label), ended]
    return {name: round(b - a, 3) for name, a, b in zip(BUILD_PHASES, marks[:-1], marks[1:], strict=True)}
