"""The benchmark harness: a --quick run on a tiny workload writes results with the expected fields.

No timing assertions: figures depend on the machine. The report is also checked on hand-made results,
where the ratios are known.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import corpus_analysis, render, shard_note
from bench.workload import qa_pairs
from tests.conftest import ROOT

STAT_KEYS = {"median", "min", "max", "n", "runs"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--stages", "text_norm,shards,baseline",
           "--tts", "espeak", "--sizes", "3", "--scaling-size", "3", "--repeats", "2",
           "--work", str(tmp / "work"), "--results", str(tmp / "results"), "--report", str(tmp / "B.md")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp


def _case_ok(case: dict) -> None:
    assert {"name", "params", "wall_s", "cpu_s", "peak_rss_mb", "work", "throughput", "extra"} <= set(case)
    assert set(case["wall_s"]) == STAT_KEYS and case["wall_s"]["median"] > 0
    assert case["peak_rss_mb"] > 10  # at least the Python process itself


def test_quick_run_writes_stage_results(quick_run: Path) -> None:
    for stage in ("text_norm", "shards", "baseline"):
        res = json.loads((quick_run / "results" / f"{stage}.json").read_text())
        assert res["stage"] == stage and res["quick"] is True and not res.get("error"), res
        assert res["command"].startswith(f"python -m bench.run --stages {stage}")
        assert res["process"]["returncode"] == 0 and res["process"]["tree_peak_rss_mb"] > 10
        assert res["cases"]
        for case in res["cases"]:
            _case_ok(case)
    text = json.loads((quick_run / "results" / "text_norm.json").read_text())["cases"][0]
    assert text["wall_s"]["n"] == 2 and text["throughput"]["records_per_s"] > 0


def test_baseline_builds_a_corpus_shaped_result(quick_run: Path) -> None:
    (case,) = json.loads((quick_run / "results" / "baseline.json").read_text())["cases"]
    assert case["work"]["records"] == 3 and case["work"]["audio_s"] > 1
    phases = case["extra"]["phases_s"]
    assert {"tts", "features", "kmeans_fit", "label", "write_arrow"} <= set(phases)


def test_run_info_and_report(quick_run: Path) -> None:
    run = json.loads((quick_run / "results" / "run.json").read_text())
    assert run["machine"]["logical_cores"] >= 1 and run["machine"]["ram_gib"] > 0
    assert {"torch", "ray", "prefect", "fairseq2", "python"} <= set(run["versions"])
    report = (quick_run / "B.md").read_text()
    assert "**Quick mode**" in report and "## Machine and versions" in report and "### shards" in report


def test_workload_is_seeded() -> None:
    assert qa_pairs(20, seed=1) == qa_pairs(20, seed=1) != qa_pairs(20, seed=2)
    assert all(r["question"].endswith("?") and r["aliases"] for r in qa_pairs(50))


def _case(name: str, wall: float, **params: object) -> dict:
    return {"name": name, "params": params, "wall_s": {"median": wall, "min": wall, "max": wall, "n": 1},
            "cpu_s": {"median": 2 * wall}, "peak_rss_mb": 100.0, "throughput": {},
            "work": {"audio_s": 3600.0, "records": 300}, "extra": {"shard_size": 64, "phases_s": {
                "tts": 80.0, "label": 4.0, "write_arrow": 1.0, "dump_features": 1.0, "kmeans_fit": 14.0}}}


def _results(flow_run: str = "r1") -> tuple[dict, dict, dict]:
    run = {"run_id": "r1", "settings": {"scaling_size": 300}, "machine": {"logical_cores": 2}}
    base = {"stage": "baseline", "run_id": "r1", "cases": [_case("b", 100.0, records=300)]}
    flow = {"stage": "corpus_build", "run_id": flow_run, "cases": [
        _case("d", 104.0, records=300, workers=2, threads_per_worker=1, threads_setting=None),
        _case("w1", 180.0, records=300, workers=1, threads_per_worker=1, threads_setting=1),
        _case("w1d", 120.0, records=300, workers=1, threads_per_worker=2, threads_setting=None)]}
    return run, base, flow


def test_report_ratios_and_goals() -> None:
    run, base, flow = _results()
    a = corpus_analysis(run, base, flow)
    assert a["overhead_default"] == pytest.approx(1.04) and a["overhead_1_worker"] == pytest.approx(1.2)
    assert a["scaling"] == pytest.approx(180 / 104)
    assert a["label_share"] == pytest.approx(0.04) and a["io_share"] == pytest.approx(0.02)
    text = render(run, {"baseline": base, "corpus_build": flow})
    assert "| 1.04× | met |" in text and "| 1.20× | **missed** |" in text
    assert "Extrapolation to 6,000 hours" in text


def test_no_ratio_across_runs() -> None:
    run, base, flow = _results(flow_run="r2")
    a = corpus_analysis(run, base, flow)
    assert a["overhead_default"] is None and a["scaling"] == pytest.approx(180 / 104)


def test_interleaved_baseline_is_preferred() -> None:
    run, base, flow = _results()
    flow["baseline_cases"] = [_case("b", 80.0, records=300)]  # measured in the build's own rounds
    text = render(run, {"baseline": base, "corpus_build": flow})
    assert "| 1.30× | **missed** |" in text  # 104 / 80, not 104 / 100


def test_short_child_peak_rss_is_counted(tmp_path: Path) -> None:
    from bench.measure import run_measured

    out = run_measured([sys.executable, "-c", "b = bytearray(64 << 20)"], result_path=tmp_path / "r.json",
                       timeout_s=60)  # over before the monitor's first 0.2 s sample
    assert out["process"]["returncode"] == 0 and out["process"]["tree_peak_rss_mb"] > 64


def test_shard_note_bounds_the_speedup() -> None:
    assert "at most 1.67×" in shard_note(300, 64, workers=2)  # 5 shards of 60: 3 on the busiest worker
    assert "at most 2.00×" in shard_note(256, 64, workers=2)


def test_tree_monitor_sums_children(tmp_path: Path) -> None:
    from bench.measure import run_measured

    script = ("import json, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'b = bytearray(200 << 20); import time; "
              "time.sleep(1.5)'])\n"
              "child.wait()\n"
              f"open({str(tmp_path / 'r.json')!r}, 'w').write(json.dumps({{'ok': True}}))\n")
    out = run_measured([sys.executable, "-c", script], result_path=tmp_path / "r.json", timeout_s=60)
    assert out["ok"] and out["process"]["returncode"] == 0
    assert out["process"]["tree_peak_rss_mb"] > 200  # the grandchild's 200 MiB counted in the tree


def test_break_even_separates_fixed_from_per_record_cost() -> None:
    from bench.report import break_even

    build = _case("build", 100.0, records=100)
    build["extra"]["phases_s"] = {"start-up (plan, Ray, worker start)": 12.0, "speech + features": 80.0}
    loop = _case("loop", 90.0, records=100)
    loop["extra"]["phases_s"] = {"tts": 84.0, "load_models": 1.0, "kmeans_fit": 4.0}
    # build: 20 s + 0.8 s/record; loop: 5 s + 0.85 s/record → 1.05× from (20 - 5.25) / (0.8925 - 0.8) records
    assert "from about 159 records" in break_even(build, loop, 1.05)
    build["extra"]["phases_s"]["speech + features"] = 95.0  # 0.95 s/record: slower than 1.10 × 0.85
    assert "size does not help" in break_even(build, loop, 1.10)


def test_rerun_keeps_the_previous_result_and_compares_it(tmp_path: Path) -> None:
    from bench.report import write_report, write_run_json, write_stage_json

    run, base, flow = _results()
    first = {**flow, "baseline_cases": base["cases"]}
    second = {**first, "run_id": "r2", "cases": [{**c, "wall_s": {**c["wall_s"]}} for c in flow["cases"]]}
    second["cases"][0]["wall_s"]["median"] = 110.0  # default build: 1.04× before, 1.10× now
    write_run_json(tmp_path, {**run, "run_id": "r2"})
    write_stage_json(tmp_path, first)
    write_stage_json(tmp_path, second)
    assert json.loads((tmp_path / "previous" / "corpus_build.json").read_text())["run_id"] == "r1"
    text = write_report(tmp_path, tmp_path / "B.md")
    assert "| Overhead: default build / plain loop | 1.10× | 1.04× | +5.8% |" in text
    write_stage_json(tmp_path, {**second, "quick": True})  # a quick run never replaces what is kept
    assert json.loads((tmp_path / "previous" / "corpus_build.json").read_text())["run_id"] == "r1"


def test_build_phases_add_up_to_the_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.cases as cases

    spans = [("synthesize-shard-0", 104.0, 130.0), ("synthesize-shard-1", 105.0, 140.0),
             ("fit-codebook-1a2", 140.5, 142.0), ("label-shard-1", 142.2, 143.0),
             ("label-shard-0", 142.1, 142.5)]
    monkeypatch.setattr(cases, "_task_spans", lambda since: spans)
    phases = cases.build_phases(100.0, 145.0)
    assert list(phases) == list(cases.BUILD_PHASES)
    assert list(phases.values()) == [4.0, 36.0, 2.0, 1.0, 2.0] and sum(phases.values()) == 45.0
    monkeypatch.setattr(cases, "_task_spans", lambda since: spans[:2])  # no codebook task seen: no phases
    assert cases.build_phases(100.0, 145.0) == {}


def test_missed_goals_are_explained_from_the_phases() -> None:
    run, base, flow = _results()
    for c in flow["cases"]:  # 12 s of every build is fixed; the rest is the shard work
        c["extra"]["phases_s"] = {"start-up (plan, Ray, worker start)": 12.0,
                                  "speech + features": c["wall_s"]["median"] - 12.0}
    text = render(run, {"baseline": base, "corpus_build": flow})
    assert "Why the 1-worker overhead missed: the shard work itself scales 1.83× from 1 to 2 workers" in text
    assert "about 12.00 s of every build" in text and "scales 1.73×" in text
