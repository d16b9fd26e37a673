"""The corpus-build part of the benchmark report: the goals table, growth, phases and break-even."""

from __future__ import annotations

from typing import Any

from bench.fmt import fmt_n, fmt_s, fmt_wall, median_of

Result = dict[str, Any] | None
TARGET_HOURS = 6000
GOALS = {"overhead_default": 1.05, "overhead_1_worker": 1.10, "scaling": 1.7, "share": 0.05}


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
        wall, cpu = _wall(f), median_of(f.get("cpu_s"))
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
        cpu, tput = median_of(c.get("cpu_s")), c["throughput"]
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
