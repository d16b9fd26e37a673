"""Results files (bench/results/<stage>.json, run.json) and the BENCHMARKS.md report built from them.

Every stage result carries the run_id it was measured in; ratios against the baseline are only
taken between results of the same run, never across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Result = dict[str, Any] | None
RUN_FILE = "run.json"
TARGET_HOURS = 6000
GOALS = {"overhead_default": 1.05, "overhead_1_worker": 1.10, "scaling": 1.7, "share": 0.05}


PREVIOUS = "previous"


def write_stage_json(results_dir: Path, result: dict[str, Any]) -> Path:
    """Write one stage's result as <results>/<stage>.json; a full run's result it replaces from another
    full run is kept as <results>/previous/<stage>.json, so the report can show a rerun's agreement."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['stage']}.json"
    if path.exists() and not result.get("quick"):
        old = json.loads(path.read_text())
        if old.get("run_id") != result.get("run_id") and not old.get("quick") and not old.get("error"):
            (results_dir / PREVIOUS).mkdir(exist_ok=True)
            path.replace(results_dir / PREVIOUS / path.name)
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_run_json(results_dir: Path, info: dict[str, Any]) -> Path:
    """Write the run's machine, versions, command and settings."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / RUN_FILE
    path.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_results(results_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(run info, stage results by name) from a results directory."""
    run = json.loads((results_dir / RUN_FILE).read_text()) if (results_dir / RUN_FILE).exists() else {}
    stages = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.name != RUN_FILE:
            data = json.loads(path.read_text())
            stages[data.get("stage", path.stem)] = data
    return run, stages


def write_report(results_dir: Path, report_path: Path) -> str:
    """Render BENCHMARKS.md from the results directory; returns the text."""
    from bench.stages import STAGES

    run, stages = load_results(results_dir)
    ordered = {k: stages[k] for k in [*STAGES, *sorted(stages)] if k in stages}
    previous = results_dir / PREVIOUS / "corpus_build.json"
    text = render(run, ordered, json.loads(previous.read_text()) if previous.exists() else None)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    return text


# ---------------------------------------------------------------- formatting
def fmt_s(x: float | None) -> str:
    """Seconds, readable at any scale."""
    if x is None:
        return "–"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def fmt_n(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands grouped)."""
    if x is None:
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_wall(w: dict[str, Any]) -> str:
    """Median wall time with its range and repeat count."""
    if not w or w.get("median") is None:
        return "–"
    if w["n"] == 1:
        return f"{fmt_s(w['median'])} (n=1)"
    return f"{fmt_s(w['median'])} ({fmt_s(w['min'])}–{fmt_s(w['max'])}, n={w['n']})"


def one_line(res: dict[str, Any]) -> str:
    """A one-line summary of a stage result for the terminal."""
    if res.get("error"):
        return f"FAILED: {str(res['error'])[:300]}"
    if res.get("skipped"):
        return f"skipped: {res['skipped']}"
    parts = [f"{c['name']} {fmt_s(c['wall_s']['median'])}" for c in res.get("cases", [])]
    return "; ".join(parts)


def _median(v: Any) -> Any:
    """The median of a stats dict, or the value itself."""
    return v.get("median") if isinstance(v, dict) and "median" in v else v


def _extras(c: dict[str, Any]) -> str:
    """Scalar extras of a case (stats dicts shown by their median)."""
    out = []
    for k, v in (c.get("extra") or {}).items():
        v = _median(v)
        if isinstance(v, int | float):
            out.append(f"{k} {fmt_n(v)}")
        elif isinstance(v, dict) and k == "phases_s":
            continue
        elif v is not None and not isinstance(v, dict | list):
            out.append(f"{k} {v}")
    return ", ".join(out)


def stage_table(res: dict[str, Any]) -> list[str]:
    """A markdown table of a stage's cases."""
    rows = ["| Case | Parameters | Wall, median (range, n) | Throughput | Peak RSS (tree) | Other |",
            "|---|---|---|---|---|---|"]
    for c in res.get("cases", []):
        params = ", ".join(f"{k}={v}" for k, v in c["params"].items() if k != "roles")
        tput = ", ".join(f"{fmt_n(v)} {k.removesuffix('_per_s')}/s" for k, v in c["throughput"].items())
        rss = f"{c['peak_rss_mb']:.0f} MiB" if c.get("peak_rss_mb") else "–"
        rows.append(f"| {c['name']} | {params} | {fmt_wall(c['wall_s'])} | {tput or '–'} | {rss} | "
                    f"{_extras(c) or '–'} |")
    return rows


# ---------------------------------------------------------------- corpus-level analysis
def _find(res: dict[str, Any] | None, **params: Any) -> dict[str, Any] | None:
    """The case whose params include all of `params`."""
    for c in (res or {}).get("cases", []):
        if all(c["params"].get(k) == v for k, v in params.items()):
            return c
    return None


def _wall(c: dict[str, Any] | None) -> float | None:
    return c["wall_s"]["median"] if c else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def corpus_analysis(run: dict[str, Any], base: Result, flow: Result) -> dict[str, Any]:
    """Overhead and scaling ratios, phase shares and memory, from results of one run."""
    same_run = bool(base and flow and base.get("run_id") == flow.get("run_id"))
    n = (run.get("settings") or {}).get("scaling_size", 300)
    cores = (run.get("machine") or {}).get("logical_cores") or 2
    b = _find(base, records=n)
    default = _find(flow, records=n, workers=2, threads_setting=None)
    one_default = _find(flow, records=n, workers=1, threads_per_worker=cores)
    w1, w2 = _find(flow, records=n, workers=1, threads_per_worker=1), _find(flow, records=n, workers=2,
                                                                            threads_per_worker=1)
    phases = ((b or {}).get("extra") or {}).get("phases_s") or {}
    bwall = sum(phases.values()) or None  # the phases of one loop run cover all of its wall time
    io = sum(phases.get(k, 0.0) for k in ("dump_features", "write_arrow"))
    bw = _wall(b) if same_run else None  # never a ratio across runs
    return {"records": n, "same_run": same_run, "baseline": b, "default": default, "one_default": one_default,
            "w1": w1, "w2": w2,
            "overhead_default": _ratio(_wall(default), bw),
            "overhead_1_worker": _ratio(_wall(one_default), bw),
            "scaling": _ratio(_wall(w1), _wall(w2)),
            "label_share": _ratio(phases.get("label"), bwall), "io_share": _ratio(io, bwall),
            "fit_share": _ratio(phases.get("kmeans_fit"), bwall)}


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def goals_table(a: dict[str, Any]) -> list[str]:
    """The issue's goals against this run's figures."""
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    def times(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}×"

    d = a["default"]
    rss = f"{d['peak_rss_mb']:.0f} MiB (2 workers)" if d and d.get("peak_rss_mb") else "–"
    if a["one_default"] and a["one_default"].get("peak_rss_mb"):
        rss += f", {a['one_default']['peak_rss_mb']:.0f} MiB (1 worker)"
    n = a["records"]
    return [
        "| Goal | Target | Measured | Verdict |", "|---|---|---|---|",
        f"| Overhead: default build (2 workers) / plain loop, {n} records | ≤ 1.05× | "
        f"{times(a['overhead_default'])} | {_verdict(a['overhead_default'], 1.05, False)} |",
        f"| Overhead: 1-worker build / plain loop, {n} records | ≤ 1.10× | {times(a['overhead_1_worker'])} | "
        f"{_verdict(a['overhead_1_worker'], 1.10, False)} |",
        f"| Scaling: 2 workers over 1, one compute thread each | ≥ 1.7× | {times(a['scaling'])} | "
        f"{_verdict(a['scaling'], 1.7, True)} |",
        f"| k-means labelling share of the loop's time | < 5% | {pct(a['label_share'])} | "
        f"{_verdict(a['label_share'], 0.05, False)} |",
        f"| Shard/feature I/O share of the loop's time | < 5% | {pct(a['io_share'])} | "
        f"{_verdict(a['io_share'], 0.05, False)} |",
        f"| Peak resident memory of the build (process tree) | reported | {rss} | – |",
    ]


def shard_note(records: int, shard_size: int, workers: int) -> str:
    """How evenly the build's shard tasks spread over the workers (the bound it puts on the speed-up)."""
    from tasks.build_corpus import shard_sizes

    sizes = shard_sizes(records, shard_size)
    loads = [0] * workers
    for size in sizes:  # each shard goes to the worker that frees up first
        loads[loads.index(min(loads))] += size
    bound = records / max(loads)
    size = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}–{max(sizes)}"
    text = (f"The default build splits {records} records into {len(sizes)} shard task(s) of {size} records; "
            f"on {workers} workers the busiest one gets {max(loads)} records, so the per-shard stages can "
            f"speed up by at most {bound:.2f}× over one worker")
    if bound < workers - 1e-9:
        text += " (smaller shards, or a shard count that is a multiple of the workers, would lift this bound)"
    return text + "."


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of wall seconds over audio seconds."""
    if not points:
        return None
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else my / mx
    return my - slope * mx, slope


def growth_section(run: dict[str, Any], base: Result, flow: Result, scaling: float | None) -> list[str]:
    """Cost growth with corpus size and the extrapolation to 6,000 hours of audio."""
    cores = (run.get("machine") or {}).get("logical_cores") or 2
    sizes = sorted({c["params"]["records"] for c in (flow or {}).get("cases", [])})
    rows = ["| Records | Audio | Plain loop wall | Build wall (default) | Build: audio h per core-hour | "
            "Build: audio h per CPU-hour |", "|---|---|---|---|---|---|"]
    points = []
    for n in sizes:
        f = _find(flow, records=n, workers=2, threads_setting=None)
        b = _find(base, records=n)
        if not f:
            continue
        audio = f["work"]["audio_s"]
        wall, cpu = _wall(f), _median(f.get("cpu_s"))
        points.append((audio, wall))
        per_core = (audio / 3600) / (wall / 3600 * cores)
        per_cpu = (audio / cpu) if cpu else None
        rows.append(f"| {n} | {audio / 60:.1f} min | {fmt_s(_wall(b))} | {fmt_s(wall)} | {per_core:.2f} | "
                    f"{fmt_n(per_cpu)} |")
    fit = _fit_line(points)
    if not fit:
        return ["No corpus-build results yet."]
    a, slope = fit
    hours = TARGET_HOURS
    core_hours = hours * slope * cores
    efficiency = (scaling or 0) / 2
    fit_text = (f"Fit over {len(points)} sizes: wall ≈ {a:.1f} s + {slope:.4f} × audio seconds (a fixed "
                f"start-up cost plus {1 / slope:.1f} s of speech per wall second on {cores} cores)."
                if len(points) > 1 else
                "Only one size was measured: the fixed start-up cost is not separated from the rest.")
    cluster = (f"≈ {core_hours / (64 * efficiency):,.0f} h on a 64-core Ray cluster at the 2-worker "
               f"efficiency measured here ({100 * efficiency:.0f}%)" if efficiency else
               f"≈ {core_hours / 64:,.0f} h on a 64-core Ray cluster with perfect scaling")
    return [
        *rows, "", fit_text, "",
        f"**Extrapolation to {hours:,} hours of audio** (TTS + MFCC units, this build's defaults): "
        f"≈ {core_hours:,.0f} core-hours, i.e. {hours / core_hours:.2f} hours of audio per core-hour; "
        f"≈ {hours * slope / 24:,.0f} days on this {cores}-core machine, or {cluster}. The k-means fit does "
        "not grow with the corpus (it samples at most 100,000 frames); labelling and I/O grow linearly.",
        "",
        "Per GPU-hour: not measured — this machine has no GPU (the CPU figures above are the ones to scale).",
    ]


def corpus_section(run: dict[str, Any], base: Result, flow: Result) -> list[str]:
    """Goals, the baseline-vs-build table, and notes on what the ratios mean."""
    a = corpus_analysis(run, base, flow)
    out = ["## Goals of issue 7", ""]
    if not a["same_run"]:
        out += ["Baseline and corpus build are not both present from the same run; no ratios are quoted.", ""]
    out += [*goals_table(a), ""]
    if flow and a["default"] and a["default"]["extra"].get("shard_size"):
        out += [shard_note(a["records"], a["default"]["extra"]["shard_size"], workers=2), ""]
    out += ["## Corpus build vs the plain loop", "",
            "| Case | Records | Workers × threads | Wall, median (range, n) | Audio s/s | Records/s | "
            "CPU s (tree) | Peak RSS (tree) | vs plain loop |", "|---|---|---|---|---|---|---|---|---|"]
    for c in (base or {}).get("cases", []) + (flow or {}).get("cases", []):
        p = c["params"]
        b = _find(base, records=p["records"]) if a["same_run"] else None
        ratio = _ratio(_wall(c), _wall(b)) if "workers" in p else None
        wt = f"{p['workers']} × {p['threads_per_worker']}" if "workers" in p else "1 process"
        cpu, tput = _median(c.get("cpu_s")), c["throughput"]
        roles = f" ({', '.join(p['roles'])})" if p.get("roles") else ""
        out.append(f"| {c['name']}{roles} | {p['records']} | {wt} | {fmt_wall(c['wall_s'])} | "
                   f"{fmt_n(tput.get('audio_s_per_s'))} | {fmt_n(tput.get('records_per_s'))} | "
                   f"{fmt_n(cpu)} | {c.get('peak_rss_mb') or 0:.0f} MiB | "
                   f"{'–' if ratio is None else f'{ratio:.2f}×'} |")
    if a["baseline"]:
        phases = a["baseline"]["extra"].get("phases_s") or {}
        out += ["", f"Plain-loop phases at {a['records']} records: " +
                ", ".join(f"{k} {fmt_s(v)}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]))]
    out += build_phase_table(flow)
    notes = [break_even(c, a["baseline"], t) for c, t in ((a["default"], 1.05), (a["one_default"], 1.10))
             if a["same_run"] and c]
    if any(notes):
        out += ["", "Fixed and per-record cost of each build against the loop (fixed = everything but the "
                    "speech + features phase):", "", *[f"- {n}" for n in notes if n]]
    out += missed_note(a)
    growth = growth_section(run, base, flow, a["scaling"])
    return [*out, "", "## Cost growth with corpus size", "", *growth, ""]


LOOP_FIXED_PHASES = ("load_models", "kmeans_fit")  # the plain loop's costs that do not grow with records
BUILD_VARIABLE_PHASE = "speech + features"


def break_even(case: dict[str, Any] | None, base: dict[str, Any] | None, target: float) -> str | None:
    """Split the build and the loop into fixed and per-record seconds; say at what size `target` holds.

    A straight-line model from one size, so a projection: it separates a miss caused by fixed costs
    (which larger corpora amortize) from one caused by slower per-record work (which they do not).
    """
    if not case or not base:
        return None
    phases = (case.get("extra") or {}).get("phases_s") or {}
    loop = (base.get("extra") or {}).get("phases_s") or {}
    n = case["params"]["records"]
    if BUILD_VARIABLE_PHASE not in phases or not loop:
        return None
    fixed, per = _wall(case) - phases[BUILD_VARIABLE_PHASE], phases[BUILD_VARIABLE_PHASE] / n
    loop_fixed = sum(loop.get(k, 0.0) for k in LOOP_FIXED_PHASES)
    loop_per = (_wall(base) - loop_fixed) / n
    head = (f"`{case['name']}`: {fmt_s(fixed)} fixed + {1000 * per:.0f} ms per record, against the loop's "
            f"{fmt_s(loop_fixed)} + {1000 * loop_per:.0f} ms per record")
    if target * loop_per <= per:
        return head + f"; its per-record work alone is over {target:.2f}× the loop's, so size does not help."
    size = (fixed - target * loop_fixed) / (target * loop_per - per)
    return head + (f"; by this line it is within {target:.2f}× of the loop from about {max(size, 1):,.0f} "
                   "records (a projection from one size).")


def missed_note(a: dict[str, Any]) -> list[str]:
    """Why an overhead or scaling goal was missed, from the phase table, and what would close the gap."""
    goals = (("overhead_default", 1.05, False), ("overhead_1_worker", 1.10, False), ("scaling", 1.7, True))
    missed = [k for k, target, up in goals if a[k] is not None and _verdict(a[k], target, up) != "met"]
    phases = [((c or {}).get("extra") or {}).get("phases_s") or {} for c in (a["w1"], a["w2"])]
    if not missed or not all(BUILD_VARIABLE_PHASE in p for p in phases):
        return []
    (p1, p2), w1, w2 = phases, _wall(a["w1"]), _wall(a["w2"])
    parallel = p1[BUILD_VARIABLE_PHASE] / p2[BUILD_VARIABLE_PHASE]
    fixed = w2 - p2[BUILD_VARIABLE_PHASE]
    names = {"overhead_default": "the default build's overhead",
             "overhead_1_worker": "the 1-worker overhead", "scaling": "the scaling goal"}
    what = " and ".join(names[k] for k in missed)
    return ["", f"Why {what} missed: the shard work itself scales {parallel:.2f}× from 1 to 2 workers, "
            f"but about {fmt_s(fixed)} of every build does not shrink with workers or records (start-up, "
            "the codebook fit and labelling barriers, finalize and Ray shutdown; see the phase table), so "
            f"the whole build scales {w1 / w2:.2f}×, and a 1-worker build pays it on top of the loop's "
            "time. What would close the gap: larger corpora (the fixed part is amortized; see the "
            "projections above); a long-lived Ray cluster (`--ray-address`) so a build does not start and "
            "stop Ray; and fewer, larger labelling tasks with the codebook fit on every CPU of the build. "
            "The last two are estimates from the phase table, not measured here."]


def build_phase_table(flow: Result) -> list[str]:
    """Where each build case's wall time went (medians over its runs, from its Prefect task runs)."""
    cases = [c for c in (flow or {}).get("cases", []) if (c.get("extra") or {}).get("phases_s")]
    if not cases:
        return []
    from bench.cases import BUILD_PHASES

    names = [k for k in BUILD_PHASES if k in cases[0]["extra"]["phases_s"]]
    out = ["", "Where the build's time goes (median seconds; phases from the task runs in the Prefect API; "
                "the codebook fit and labelling wait for every shard; each worker's first shard includes "
                "loading its models):", "",
           "| Case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in cases:
        ph = c["extra"]["phases_s"]
        out.append(f"| {c['name']} | " + " | ".join(fmt_s(ph.get(k)) for k in names) + " |")
    return out


# ---------------------------------------------------------------- the document
def header(run: dict[str, Any], stages: dict[str, dict[str, Any]]) -> list[str]:
    """Title, provenance and warnings."""
    out = ["# Benchmarks", "",
           f"Generated by `{run.get('command', 'python -m bench.run')}` (run {run.get('run_id', '?')}, "
           f"started {run.get('started_at', '?')}, {fmt_s(run.get('wall_s'))} in all). "
           "Re-create with `make bench`; results are in `bench/results/*.json`.", ""]
    if run.get("quick") or any(s.get("quick") for s in stages.values()):
        out += ["> **Quick mode**: tiny workloads that check the harness. These figures are not "
                "representative and must not be quoted.", ""]
    load = run.get("load_avg_start")
    if load and load[0] > 0.5:
        out += [f"> **Noisy**: the load average was {load} when the run started (other work on the machine).",
                ""]
    others = sorted({s.get("run_id") for s in stages.values()} - {run.get("run_id")})
    if others:
        out += [f"> Some stages come from other runs ({', '.join(map(str, others))}): see each stage.", ""]
    return out


def machine_section(run: dict[str, Any]) -> list[str]:
    """Machine, versions and commands."""
    m, v = run.get("machine") or {}, run.get("versions") or {}
    out = ["## Machine and versions", "", "| | |", "|---|---|",
           f"| CPU | {m.get('cpu_model', '?')} |",
           f"| Cores | {m.get('logical_cores', '?')} logical, {m.get('physical_cores', '?')} physical |",
           f"| Memory | {m.get('ram_gib', '?')} GiB |",
           f"| OS | {m.get('os', '?')} ({m.get('machine', '?')}) |",
           f"| GPU | {m.get('gpu') or 'none'} |",
           f"| Load average (start → end) | {run.get('load_avg_start')} → {run.get('load_avg_end')} |"]
    out += [f"| {k} | {val} |" for k, val in v.items()]
    if run.get("prefect_server_start_s") is not None:
        start = fmt_s(run["prefect_server_start_s"])
        out.append(f"| Prefect server start (once, before the builds) | {start} |")
    return [*out, ""]


COMMANDS = [
    "make bench                                   # = python -m bench.run: every stage (~25 min on 2 cores)",
    "python -m bench.run --with-1000              # adds the 1,000-record corpus size (long)",
    "python -m bench.run --stages tts,kmeans --repeats 5",
    "python -m bench.run --stages baseline --stage-args '{\"baseline\": {\"all_sizes\": true}}'",
    "python -m bench.run --quick                  # harness check; writes under bench/work/quick",
    "python -m bench.baseline --source qa.jsonl --out DIR   # the plain loop on its own",
]


def stage_sections(stages: dict[str, dict[str, Any]]) -> list[str]:
    """One section per stage: its table, notes, command, or why it is missing."""
    out = ["## Stages", ""]
    for name, res in stages.items():
        if name in ("baseline", "corpus_build"):
            continue
        out += [f"### {name}", "", f"`{res.get('command', '')}` — run {res.get('run_id')}, load "
                f"{res.get('load_avg_start')}", ""]
        if res.get("error"):
            out += [f"**Failed**: `{str(res['error'])[:500]}`", ""]
        elif res.get("skipped"):
            out += [f"**Not measured**: {res['skipped']}", ""]
        else:
            out += [*stage_table(res), ""]
        out += [f"- {n}" for n in res.get("notes", [])]
        out += [""] if res.get("notes") else []
    return out


METHOD = [
    "## Method", "",
    "- Each stage runs in its own process; each corpus-level run (plain loop or Prefect+Ray build) in a "
    "fresh process per repeat. The corpus_build stage runs rounds of (plain loop, then every build case), "
    "so each ratio compares runs made under the same machine load. Medians of the repeats are quoted with "
    "their range.",
    "- Build phases come from the build's own task runs in the Prefect API (first shard task start, last "
    "shard end, codebook fit end, last label end), so they add up to the build's wall time.",
    "- Peak memory: RSS summed over the process tree (driver, raylet, Ray workers, TTS subprocesses), "
    "sampled every 0.2 s; shared pages count once per process, so it is an upper bound. The Prefect "
    "server is shared by all builds and not included.",
    "- A child's peak RSS is also taken from the kernel when it is reaped (wait4), for processes shorter "
    "than one sampling interval.",
    "- CPU time: the larger of two lower bounds (per-process sampling; getrusage of reaped children).",
    "- Threads: `threads_per_worker` sets torch's intra-op threads and Piper's onnxruntime intra-op "
    "threads (inter-op 1) in each Ray worker; Ray gives each worker one CPU (OMP_NUM_THREADS=1).",
    "- The plain loop (bench/baseline.py) runs the same functions as the build — spoken_form, Piper, "
    "MFCCFeatures, fit_kmeans (same K, iterations, frame cap), label_frames + dedup, write_arrow — in one "
    "process with the libraries' default threading: dump features, fit, dump labels, one Arrow file.",
    "",
]


def baseline_result(stages: dict[str, dict[str, Any]]) -> Result:
    """The plain loop measured in the corpus build's own rounds, else the separate baseline stage."""
    flow = stages.get("corpus_build") or {}
    if flow.get("baseline_cases"):
        return {**flow, "cases": flow["baseline_cases"]}
    return stages.get("baseline")


def rerun_section(run: dict[str, Any], flow: Result, previous: Result) -> list[str]:
    """The goal ratios of this run's corpus build beside those of the previous full run."""
    if not flow or not previous or previous.get("run_id") == flow.get("run_id"):
        return []
    now = corpus_analysis(run, baseline_result({"corpus_build": flow}), flow)
    before = corpus_analysis(run, baseline_result({"corpus_build": previous}), previous)
    rows = [("Overhead: default build / plain loop", "overhead_default"),
            ("Overhead: 1-worker build / plain loop", "overhead_1_worker"),
            ("Scaling: 2 workers over 1", "scaling")]

    def cell(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}×"

    out = ["## Rerun", "", f"The same goals from the previous full run of the corpus build "
           f"({previous.get('run_id')}, kept in `bench/results/previous/`), to show how far the ratios "
           "move between runs:", "", f"| Goal | This run ({flow.get('run_id')}) | Previous run | Change |",
           "|---|---|---|---|"]
    for label, key in rows:
        a, b = now[key], before[key]
        change = f"{100 * (a / b - 1):+.1f}%" if a and b else "–"
        out.append(f"| {label} | {cell(a)} | {cell(b)} | {change} |")
    return [*out, ""]


def render(run: dict[str, Any], stages: dict[str, dict[str, Any]], previous: Result = None) -> str:
    """The whole report (`previous`: the corpus build of the previous full run, if kept)."""
    base, flow = baseline_result(stages), stages.get("corpus_build")
    failed = [f"- `{n}`: {s.get('error') or s.get('skipped')}" for n, s in stages.items()
              if s.get("error") or s.get("skipped")]
    out = [*header(run, stages), *machine_section(run),
           "## Commands", "", "```", *COMMANDS, "```", ""]
    if base or flow:
        out += corpus_section(run, base, flow)
        out += rerun_section(run, flow, previous)
    out += stage_sections(stages)
    if failed:
        out += ["## Not measured or failed", "", *failed, ""]
    out += METHOD
    return "\n".join(out)

