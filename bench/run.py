"""`make bench`: measure every stage, write bench/results/<stage>.json and BENCHMARKS.md.

    python -m bench.run [--stages a,b] [--quick] [--repeats N] [--build-repeats N] [--with-1000]

Every stage runs in its own process (peak memory is per stage); corpus-level cases run one process
per repeat. `--quick` shrinks every workload to check the harness and writes under bench/work/quick
instead of bench/results (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGE_TIMEOUT_S = 4 * 3600


def parser() -> argparse.ArgumentParser:
    """The command line."""
    from bench.stages import DEFAULT_STAGES, STAGES

    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, from: {', '.join(STAGES)} (default: all but baseline, which "
                        "corpus_build runs in its own rounds)")
    p.add_argument("--quick", action="store_true", help="tiny workloads (harness check; not figures)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of in-process stages (default 3)")
    p.add_argument("--build-repeats", type=int, default=None,
                   help="repeats of each corpus-level run (default 2)")
    p.add_argument("--with-1000", action="store_true", help="add the 1,000-record corpus size (long)")
    p.add_argument("--sizes", default=None, help="corpus sizes, e.g. 100,300 (default; quick: 8)")
    p.add_argument("--scaling-size", type=int, default=None, help="records of the overhead/scaling runs")
    p.add_argument("--tts", choices=["piper", "espeak"], default="piper", help="TTS of corpus-level runs")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default bench/work)")
    p.add_argument("--results", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--report", type=Path, default=None, help="report path (default BENCHMARKS.md)")
    p.add_argument("--stage-args", default="{}",
                   help='per-stage overrides as JSON, e.g. {"train": {"steps": 8}}')
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--ctx", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)  # internal: run one corpus-level case
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def context(args: argparse.Namespace, run_id: str) -> Any:
    """The run's settings from the arguments (quick mode shrinks the defaults)."""
    from bench.context import BenchContext

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([8] if args.quick else [100, 300])
    if args.with_1000 and 1000 not in sizes:
        sizes.append(1000)
    scaling = args.scaling_size or (8 if args.quick else 300)
    quick_default = 1 if args.quick else None
    return BenchContext(
        work=str(work_dir(args).resolve()), run_id=run_id, quick=args.quick,
        repeats=args.repeats or quick_default or 3, build_repeats=args.build_repeats or quick_default or 2,
        sizes=tuple(sorted(sizes)), scaling_size=scaling, tts=args.tts,
        stage_args=json.loads(args.stage_args))


def work_dir(args: argparse.Namespace) -> Path:
    """Scratch directory: bench/work, or bench/work/quick in quick mode."""
    return args.work or REPO / "bench" / "work" / ("quick" if args.quick else "full")


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results directory, report path); quick runs stay inside the scratch directory."""
    if args.quick:
        return args.results or work_dir(args) / "results", args.report or work_dir(args) / "BENCHMARKS.md"
    return args.results or REPO / "bench" / "results", args.report or REPO / "BENCHMARKS.md"


def selected(args: argparse.Namespace) -> list[str]:
    """The stages to run, in the harness's order; unknown names are an error."""
    from bench.stages import STAGES

    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    return [n for n in STAGES if n in names]


def stage_command(name: str, args: argparse.Namespace) -> str:
    """The command that re-runs one stage with this run's options."""
    extra = " --quick" if args.quick else ""
    extra += f" --tts {args.tts}" if args.tts != "piper" else ""
    return f"python -m bench.run --stages {name}{extra}"


def run_stage_process(ctx: Any, name: str) -> dict[str, Any]:
    """Run one stage in a fresh, measured process."""
    from bench.measure import run_measured

    logs = ctx.dir("logs")
    ctx_path = logs / f"{name}.ctx.json"
    ctx_path.write_text(ctx.to_json())
    argv = [sys.executable, "-m", "bench.run", "--stage", name, "--ctx", str(ctx_path), "--result",
            str(logs / f"{name}.result.json")]
    return run_measured(argv, result_path=logs / f"{name}.result.json", timeout_s=STAGE_TIMEOUT_S, cwd=REPO,
                        log_path=logs / f"{name}.log")


def _environment(ctx: Any) -> None:
    """Quiet, offline Ray/Prefect settings, with state kept under the scratch directory."""
    os.environ.setdefault("ECHOX_STATE_DIR", str(Path(ctx.work) / "state"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    from core import runtime

    runtime.configure()


def run_benchmarks(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the selected stages; write their results and the report."""
    from bench import report
    from bench.measure import load_average, machine, versions
    from bench.stages import NEEDS_PREFECT

    run_id = time.strftime("%Y%m%d-%H%M%S")
    ctx = context(args, run_id)
    results_dir, report_path = output_paths(args)
    names = selected(args)
    _environment(ctx)
    info: dict[str, Any] = {"run_id": run_id, "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                            "command": " ".join(["python -m bench.run", *argv]), "quick": args.quick,
                            "stages": names, "settings": json.loads(ctx.to_json()), "machine": machine(),
                            "versions": versions(), "load_avg_start": load_average()}
    if info["load_avg_start"][0] > 0.5:
        print(f"[bench] warning: load average {info['load_avg_start']}: other work is running, figures "
              "will be noisy", flush=True)
    t_run = time.perf_counter()
    if NEEDS_PREFECT & set(names):
        from core import runtime

        t0 = time.perf_counter()
        info["prefect_api"] = runtime.ensure_prefect_api()
        info["prefect_server_start_s"] = round(time.perf_counter() - t0, 2)
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        load0 = load_average()
        res = run_stage_process(ctx, name)
        res.update(stage=name, run_id=run_id, quick=args.quick, command=stage_command(name, args),
                   load_avg_start=load0, load_avg_end=load_average())
        report.write_stage_json(results_dir, res)
        print(f"[bench] {name}: {report.one_line(res)}", flush=True)
    info.update(load_avg_end=load_average(), wall_s=round(time.perf_counter() - t_run, 1))
    report.write_run_json(results_dir, info)
    report.write_report(results_dir, report_path)
    print(f"[bench] results in {results_dir}, report {report_path}", flush=True)
    return 0


def _stage_main(name: str, ctx_path: Path, result: Path) -> int:
    """Child: run one stage function and write its result JSON."""
    from bench.context import BenchContext
    from bench.stages import STAGES

    ctx = BenchContext.from_json(ctx_path.read_text())
    try:
        out, rc = STAGES[name](ctx), 0
    except Exception as e:  # a failed stage is reported, and the run goes on to the next one
        traceback.print_exc()
        out, rc = {"cases": [], "error": f"{type(e).__name__}: {e}"}, 1
    result.write_text(json.dumps(out, indent=2, default=str))
    return rc


def _case_main(spec_path: Path, result: Path) -> int:
    """Child: run one corpus-level case and write its result JSON."""
    from bench.cases import run_case

    out = run_case(json.loads(spec_path.read_text()))
    result.write_text(json.dumps(out, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.stage:
        return _stage_main(args.stage, args.ctx, args.result)
    if args.case:
        return _case_main(args.case, args.result)
    return run_benchmarks(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
