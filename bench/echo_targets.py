"""Online vs offline echo targets: the cost of a stage-III step and the held-out unit accuracy each gives.

    python -m bench.echo_targets --run outputs/demo [--steps N] [--work DIR] [--json FILE]
    python -m bench.run --stages echo_targets --stage-args '{"echo_targets": {"run": "outputs/demo"}}'

From a finished pipeline run (its corpus, stage-I and stage-II models, echo labels and the evaluation's
spoken questions), trains stage III twice from the same models, seed and options (the run's `echo:`
section; one local process, so the two are timed alike): offline on the run's echo labels, online with
the frozen T2C making each step's targets. Then both models answer the evaluation's held-out questions
(tasks.evaluate.answer_questions, the evaluate step's own scoring): the unit accuracy and edit distance
against T2C(reference answer). Prints the markdown table; `--json` keeps the figures (in the bench
harness's stage format, so BENCHMARKS.md renders it like the harness's own run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import timed

MODES = {"offline": "echo", "online": "echo-online"}


def run_paths(run: Path) -> dict[str, Path]:
    """The inputs this comparison reads from a finished pipeline run; SystemExit naming what is missing."""
    paths = {"corpus": run / "corpus", "s2t": run / "s2t" / "model", "t2c": run / "t2c" / "model",
             "labels": run / "echo-labels", "questions": run / "eval" / "report.questions.json",
             "fingerprint": run / "echo" / "fingerprint.json"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"{run} is not a finished offline pipeline run (echo labels and an evaluation); "
                         f"missing: {', '.join(missing)}")
    return paths


def echo_options(fingerprint: Path) -> dict[str, Any]:
    """The run's stage-III training options (preset, steps, batch, lr, ...), from its recorded fingerprint."""
    config = json.loads(fingerprint.read_text())["config"]
    keys = ("preset", "preset_overrides", "max_steps", "batch_size", "grad_accum", "lr", "warmup_steps",
            "seed", "log_every")
    return {k: config[k] for k in keys if k in config}


def train(mode: str, paths: dict[str, Path], options: dict[str, Any], steps: int, out: Path,
          threads: int) -> dict[str, Any]:
    """Train stage III in `mode` for `steps`; wall time, s/step and tokens/s (median of metrics windows
    after the first) and, online, the mean fraction of rows the teacher's guard masked."""
    from tasks.train import TrainConfig, run_local
    from tasks.train_stage import prepare_stage

    stage = MODES[mode]
    build = prepare_stage(stage, options["preset"], options.get("preset_overrides", {}), paths["corpus"],
                          out.parent / "llm-cache", seed=options.get("seed", 0), s2t=str(paths["s2t"]),
                          t2c=str(paths["t2c"]))
    shutil.rmtree(out, ignore_errors=True)
    log_every = min(options.get("log_every", 10), max(1, steps // 4))
    cfg = TrainConfig(stage=stage, corpus_dir=str(paths["corpus"]), out_dir=str(out),
                      labels_dir=str(paths["labels"]) if mode == "offline" else None, max_steps=steps,
                      batch_size=options["batch_size"], grad_accum=options.get("grad_accum", 1),
                      lr=options["lr"], warmup_steps=min(options.get("warmup_steps", 0), steps),
                      log_every=log_every, ckpt_every=steps, seed=options.get("seed", 0), num_threads=threads)
    wall, cpu, rss, summary = timed(lambda: run_local(cfg, build))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    later = [r for r in rows if r["step"] > log_every] or rows
    return {"mode": mode, "stage": stage, "steps": steps, "examples": summary["examples"],
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(rss, 1),
            "s_per_step": round(rows[-1]["elapsed_s"] / rows[-1]["step"], 3),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in later), 1),
            "guard_masked": round(statistics.fmean(r["guard_masked"] for r in rows), 3)
            if "guard_masked" in rows[0] else None,
            "final": {k: round(rows[-1][k], 4) for k in ("loss", "s2t", "echo", "denoise") if k in rows[-1]}}


def held_out(model: Path, paths: dict[str, Path], out: Path) -> dict[str, Any]:
    """The evaluate step's scoring of `model` on the run's spoken held-out questions."""
    from tasks.evaluate import answer_questions

    report = answer_questions(paths["questions"], model, out, t2c=paths["t2c"])
    s = report["summary"]
    return {"items": s["items"], "correct": s["correct"], "unit_accuracy": s["unit_accuracy"],
            "unit_edit_distance": s["unit_edit_distance"]}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of both modes."""
    lines = ["| Targets | Steps | s/step | tokens/s | Rows the guard masked | Final L_echo | Held-out unit "
             "accuracy | Unit edit distance | Correct answers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["eval"]
        masked = "–" if r["guard_masked"] is None else f"{100 * r['guard_masked']:.1f} %"
        lines.append(f"| {r['mode']} | {r['steps']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{masked} | {r['final'].get('echo', float('nan')):.3f} | {e['unit_accuracy']:.3f} | "
                     f"{e['unit_edit_distance']:.3f} | {e['correct']}/{e['items']} |")
    return lines


NOTES = [
    "Both modes train stage III from the same stage-I and stage-II models, seed and options (the run's echo "
    "section's batch, lr and warm-up), in one local process with the same threads; s/step and tokens/s from "
    "metrics.jsonl (tokens/s: the median of the metrics windows after the first; tokens are S2T answer "
    "tokens plus echo unit targets, so a masked row lowers them).",
    "Online's extra cost is the frozen T2C's batched greedy generation of every segment's units in every "
    "step; offline paid it once, in the echo-labels step, which online does not run.",
    "Held-out: the evaluation's spoken questions of the run (never trained on), scored as the evaluate step "
    "scores them: the Echo decoder teacher-forced on R = T2C(reference answer) (unit accuracy) and "
    "generating freely (edit distance to R, lower is better).",
    "Final L_echo is the training loss on the step's own targets: offline targets stay fixed and are fitted "
    "closely; online ones follow the S2T as it trains.",
]


def compare(run: Path, *, steps: int | None, work: Path, threads: int) -> dict[str, Any]:
    """Both modes trained and scored; the harness's stage result (rows, markdown, notes)."""
    paths = run_paths(run)
    options = echo_options(paths["fingerprint"])
    steps = steps or options["max_steps"]
    rows = []
    for mode in MODES:
        row = train(mode, paths, options, steps, work / mode, threads)
        row["eval"] = held_out(work / mode / "model", paths, work / f"eval-{mode}.json")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {"cases": [], "run": str(run), "options": options, "rows": rows, "markdown": table(rows),
            "notes": NOTES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo_targets", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished pipeline run with offline echo labels")
    p.add_argument("--steps", type=int, default=None,
                   help="stage-III steps of each mode (default: the run's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    p.add_argument("--work", type=Path, default=Path("bench/work/echo_targets"))
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = p.parse_args(argv)
    load = [round(x, 2) for x in os.getloadavg()]
    result = compare(args.run, steps=args.steps, work=args.work, threads=args.threads)
    if args.json:
        command = " ".join(["python -m bench.echo_targets", *(argv if argv is not None else sys.argv[1:])])
        result |= {"stage": "echo_targets", "run_id": time.strftime("%Y%m%d-%H%M%S"), "command": command,
                   "load_avg_start": load}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join([*result["markdown"], "", *[f"- {n}" for n in result["notes"]]]))
    return 0

if __name__ == "__main__":
    sys.exit(main())
