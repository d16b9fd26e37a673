"""`echox evaluate`: spoken-QA accuracy of a checkpoint on an eval set, as a JSON report and a table."""

from __future__ import annotations

import argparse


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Register the `evaluate` subcommand."""
    p = sub.add_parser("evaluate", help="spoken-QA accuracy of an s2t or echo checkpoint on an eval set")
    p.add_argument("--model", required=True, help="s2t or echo checkpoint (model directory or run directory)")
    p.add_argument("--eval-set", required=True,
                   help="JSONL with id, question, answers (or answer + aliases), optional category")
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--t2c", default=None, help="T2C checkpoint: adds Echo-decoder unit metrics")
    p.add_argument("--tts", choices=["piper", "espeak"], default="piper")
    p.add_argument("--voices", nargs="+", default=None, help="voices to choose from per question")
    p.add_argument("--seed", type=int, default=0, help="seed of the voice choice")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-units", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="only the first N valid questions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-reject-fraction", type=float, default=0.25,
                   help="fail when more than this fraction of the eval items is rejected (default 0.25)")
    p.add_argument("--audio-cache", default=None,
                   help="question audio cache (default: tts-cache beside --out)")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Validate the options, run the flow, print the summary table."""
    import json
    from pathlib import Path

    from echox import runtime
    from echox.config import EvaluateConfig, from_cli

    cfg = from_cli(EvaluateConfig, vars(args), "evaluate")
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.evaluate import evaluate
    from tasks.evaluate import format_report

    out = evaluate(config=cfg)
    report = json.loads(Path(out).read_text())
    print(format_report(report))
    print(f"report written to {out}")
    return 0
