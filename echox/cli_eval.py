"""`echox evaluate`: spoken-QA accuracy of a checkpoint on an eval set, as a JSON report and a table;
`echox knowledge`: the table of a pipeline run's reports (no Prefect, no Ray)."""

from __future__ import annotations

from pathlib import Path

from core import runtime
from core.errors import InputError
from echox import terminal
from echox.cli_options import Command, Flag
from echox.commands import KnowledgeOptions
from tasks.configs import EvaluateConfig


def run_evaluate(cfg: EvaluateConfig) -> int:
    """Run the flow on validated options, print the summary table."""
    import json

    from tasks.evaluate import check_checkpoints, check_vocoder_pair

    if not Path(cfg.eval_set).exists():
        raise InputError(f"eval set not found: {cfg.eval_set}")
    if cfg.train_source and not Path(cfg.train_source).exists():
        raise InputError(f"training source not found: {cfg.train_source}")
    if cfg.mode == "speech":  # before Prefect starts
        check_checkpoints(Path(cfg.model), Path(cfg.t2c) if cfg.t2c else None,  # type: ignore[arg-type]
                          vocoder=bool(cfg.vocoder))
        if cfg.vocoder:
            check_vocoder_pair(Path(cfg.model), Path(cfg.vocoder))  # type: ignore[arg-type]
    else:
        from tasks.eval_text import check_text_llm

        check_text_llm(model=cfg.model, preset=cfg.preset, overrides=cfg.preset_overrides)
    terminal.begin(Path(cfg.out).parent)  # the report's folder: the questions manifest is written there too
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.evaluate import evaluate
    from tasks.evaluate import format_report

    out = evaluate(config=cfg)
    terminal.say(format_report(json.loads(Path(out).read_text())))
    terminal.say(f"report written to {out}")
    return 0


def run_knowledge(opts: KnowledgeOptions) -> int:
    """Print the knowledge table of a run folder; write it (--out) and RESULTS.md (--results)."""
    from tasks.knowledge import build_table
    from tasks.knowledge_format import table_markdown, terminal_text
    from tasks.shards import atomic_write

    run = Path(opts.run)
    if not run.is_dir():
        raise InputError(f"--run {opts.run}: no such folder (give a pipeline's out, e.g. outputs/demo)")
    if opts.config and not Path(opts.config).is_file():
        raise InputError(f"--config {opts.config}: no such file")
    table = build_table(run)
    print(terminal_text(table), end="")
    if opts.out:
        atomic_write(Path(opts.out), lambda p: p.write_text(table_markdown(table)))
        print(f"table written to {opts.out}")
    if opts.results:
        from tasks.results import write_results

        path = write_results(run, Path(opts.results), table, Path(opts.config) if opts.config else None)
        print(f"results written to {path} (loss curves in {path.parent / 'results'})")
    return 0


EVAL_COMMANDS = [
    Command("evaluate", EvaluateConfig, run_evaluate,  # type: ignore[arg-type]
            help="spoken-QA accuracy of an s2t or echo checkpoint (or, --mode text, of a base LLM)",
            description="Speak the eval set's questions (cached TTS), answer them with the checkpoint and "
                        "score the answers with the whole-word alias match; a JSON report, a table, and "
                        "Prefect artifacts. --mode text asks a base instruct LLM the written questions: the "
                        "knowledge a speech model built on it can keep.",
            flags={"preset_overrides": Flag(flag="--set", help="override a preset field (--mode text "
                                            "--preset), e.g. --set llm_path=/models/llama (repeatable)")},
            verbose=True),
    Command("knowledge", KnowledgeOptions, run_knowledge,  # type: ignore[arg-type]
            help="the knowledge table of a pipeline run: text LLM, S2T, echo (text, speech), baseline",
            description="Read a pipeline run folder's evaluation reports and print the knowledge table: each "
                        "row's accuracy k/n with its Wilson 95 % interval, per category and relative to the "
                        "text LLM, and the two goals (spoken-question accuracy ≥ 80 % of the text LLM's; "
                        "echo text within 2 points of S2T's). A missing report is a row that says 'not run'. "
                        "--results writes RESULTS.md (make experiment).",
            flags={"run": Flag(metavar="DIR"), "out": Flag(metavar="FILE.md"),
                   "results": Flag(metavar="RESULTS.md")}),
]
