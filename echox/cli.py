"""The `echox` command line: one subcommand per job; user mistakes print a message, not a traceback.

Options come from pydantic models (the flows' configs, echox/commands.py for the rest): each is declared
once with its default and description. Every command validates its options (and what its input files
alone can show) before it starts Prefect or Ray, so a mistake fails in about a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from core import runtime
from core.config import build
from core.errors import EchoxError
from echox import terminal
from echox.cli_echo import ECHO_COMMANDS, run_vocode
from echox.cli_eval import EVAL_COMMANDS
from echox.cli_options import Command, Flag, add_commands, given
from echox.commands import (
    AskOptions,
    DemoOptions,
    PipelineOptions,
    ServeOptions,
    ServerOptions,
    T2COptions,
    VocodeOptions,
)
from tasks.configs import BuildCorpusConfig, ExportConfig, TrainFlowConfig


def _run_build_corpus(cfg: BuildCorpusConfig) -> int:
    from tasks.build_corpus import inspect_build

    inspect_build(cfg)  # every mistake the input shows, in about a second, before Prefect or Ray start
    terminal.begin(cfg.out)
    runtime.ensure_prefect_api()
    from flows.build_corpus import build_corpus

    out = build_corpus(config=cfg)
    terminal.say(f"corpus written to {out} (manifest: {Path(out) / 'manifest.json'})")
    return 0


def _run_train(cfg: TrainFlowConfig) -> int:
    from tasks.train_stage import check_train_inputs

    check_train_inputs(cfg)
    terminal.begin(cfg.out)
    runtime.ensure_prefect_api()
    from flows.train import train  # after validation: a bad option fails without importing Prefect

    terminal.say(f"model written to {train(cfg=cfg)}")
    return 0


def _run_export(cfg: ExportConfig) -> int:
    from tasks.export import export_corpus, get_exporter

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = export_corpus(cfg.corpus, cfg.to, cfg.out, overwrite=cfg.overwrite,
                           progress=progress if cfg.progress else None)
    rec = result.record
    print(f"exported {rec['counts']['rows']} rows ({rec['counts']['utterances']} utterances) as {cfg.to} to "
          f"{result.out}: {rec['bytes'] / 1e6:.1f} MB in {rec['export_seconds']:.1f} s (export.json)")
    print(f"load: {get_exporter(cfg.to).load.format(out=result.out)}")
    return 0


def _run_ask(opts: AskOptions) -> int:
    from tasks.inference import answer, check_window, load_audio, load_s2t

    model = load_s2t(opts.model)
    audio = load_audio(opts.audio)
    check_window(model, audio, opts.audio)
    print(answer(model, audio, max_new_tokens=opts.max_new_tokens, sample=opts.sample,
                 temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed))
    return 0


def _run_t2c(opts: T2COptions) -> int:
    from tasks.inference import load_checkpoint_model, text_to_units

    units, truncated = text_to_units(load_checkpoint_model(opts.model, "t2c"), opts.text, opts.max_units)
    print(" ".join(map(str, units)))
    if truncated:
        print(f"(stopped at the --max-units guard of {opts.max_units})", file=sys.stderr)
    return 0


def _run_pipeline(opts: PipelineOptions) -> int:
    from flows.pipeline_config import load_pipeline_config
    from flows.pipeline_plan import format_plan, make_plan

    cfg = load_pipeline_config(Path(opts.config), out=opts.out)
    plans = make_plan(cfg, from_step=opts.from_step, only=opts.only)  # from configs and files alone
    if opts.dry_run:
        print(f"plan for {cfg.out}:\n{format_plan(plans)}")
        return 0
    terminal.begin(cfg.out)
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.pipeline import pipeline

    _print_outputs(pipeline(config=cfg, from_step=opts.from_step, only=opts.only))
    return 0


def _print_outputs(paths: dict) -> None:
    import json

    width = max((len(name) for name in paths), default=0)
    terminal.say("\noutputs:\n" + "\n".join(f"  {name:{width}s} {path}" for name, path in paths.items()))
    if "report" in paths:
        from tasks.evaluate import answer_wav_line, format_report

        report = json.loads(Path(paths["report"]).read_text())
        terminal.say("\n" + format_report(report))
        terminal.say(answer_wav_line(Path(paths["report"]), report))
    if "knowledge" in paths:  # the text LLM's row beside the trained models': the knowledge kept
        from tasks.knowledge import build_table
        from tasks.knowledge_format import terminal_text

        terminal.say("\n" + terminal_text(build_table(Path(paths["knowledge"]).parent)).rstrip("\n"))


def _run_demo(opts: DemoOptions) -> int:
    import os

    from core import server
    from flows.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(Path(opts.config))
    terminal.begin(cfg.out)
    # Before prefect is imported: its settings are read once, at import.
    external = None if opts.no_server else runtime.use_local_server()  # a server that outlives the demo
    left_running = not (opts.no_server or external)
    if left_running:  # leave a UI running after the demo, so its runs and artifacts can be browsed
        os.environ["PREFECT_API_URL"] = server.ensure_background(runtime.state_dir())
    else:
        runtime.ensure_prefect_api()
    from flows.pipeline import pipeline

    ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    terminal.say(f"echox demo: the whole DAG on {cfg.source} → {cfg.out}\nPrefect UI: {ui}")
    _print_outputs(pipeline(config=cfg))
    if left_running or external:  # a per-run server (--no-server) is gone by now
        terminal.say(f"\nPrefect UI (runs, logs, artifacts): {ui}  — stop it: echox server --stop")
    return 0


def _run_serve(opts: ServeOptions) -> int:
    runtime.ensure_prefect_api()  # before prefect is imported (it reads its settings then)
    from prefect import serve

    from flows.deployments import to_deployments

    deployments = to_deployments(Path(opts.file))
    print(f"serving {len(deployments)} deployments: " + ", ".join(d.name for d in deployments), flush=True)
    serve(*deployments)
    return 0


def _run_server(opts: ServerOptions) -> int:
    import signal

    from core import runs, server

    state = runtime.state_dir()
    if opts.stop:
        print(server.stop_background(state))
        return 0
    url = server.api_url(port=opts.port)
    if server.is_healthy(url):
        print(f"a Prefect server already answers at {url}; UI: {url[:-4]}")
        return 0
    log = state / "prefect-server.log"
    # The watchdog stops the server if this process is killed outright (SIGKILL skips `finally`).
    proc = server.start(state, opts.port, log=log, watch=True)
    server.record(state, proc, opts.port, "echox server")  # so `echox server --stop` finds it
    try:
        with server.sigterm_raises():
            server.wait_healthy(url, proc)
            runs.mark_crashed(url)
            print(f"Prefect UI:  {url[:-4]}\nPrefect API: {url}\nlog: {log}\n"
                  f"echox commands on this machine report to it automatically "
                  f"(elsewhere: export PREFECT_API_URL={url}). Ctrl-C or `echox server --stop` stops it.",
                  flush=True)
            rc = proc.wait()
        return 0 if rc in (0, -signal.SIGTERM) else rc  # SIGTERM: `echox server --stop`
    except (KeyboardInterrupt, server.Terminated):
        return 0
    except RuntimeError as e:
        raise EchoxError(f"{e}; see {log}") from e
    finally:
        server.stop(proc)
        server.forget(state, proc)


COMMANDS = [
    Command("build-corpus", BuildCorpusConfig, _run_build_corpus,  # type: ignore[arg-type]
            help="QA text → speech → units → Arrow corpus shards",
            description="Build a speech corpus from a QA source: spoken forms, TTS, frame features, k-means "
                        "units, Arrow shards, rejects and a manifest. A rerun resumes; --overwrite replaces "
                        "only a previous build's own files.",
            flags={"progress": Flag(negate="--quiet", help="no per-shard progress")}, verbose=True),
    Command("train", TrainFlowConfig, _run_train,  # type: ignore[arg-type]
            help="train stage I (s2t), II (t2c), III (echo) or the unit vocoder under DDP",
            description="Train one stage under DDP (Ray Train, or one local process). Checkpoints, metrics "
                        "and the final model go to --out; --resume continues from the last verified "
                        "checkpoint.",
            flags={"preset_overrides": Flag(flag="--set", help="override a preset field, e.g. --set "
                                            "llm_path=/models/llama (repeatable)")}, verbose=True),
    Command("export", ExportConfig, _run_export,  # type: ignore[arg-type]
            help="copy a corpus into hf-audio (datasets + Audio), lhotse or webdataset form",
            description="Export a verified corpus for speech libraries: a datasets copy whose audio columns "
                        "are Audio (WAV bytes), Lhotse manifests (two cuts per row: <id>-question, "
                        "<id>-answer, units and durations as custom fields) or WebDataset tar shards. "
                        "Written to a temp folder beside --out and renamed into place; export.json records "
                        "the source, counts and versions.",
            flags={"progress": Flag(negate="--quiet", help="no per-shard progress")}),
    Command("ask", AskOptions, _run_ask, help="answer a spoken question with a stage-I (or echo) checkpoint"),  # type: ignore[arg-type]
    Command("t2c", T2COptions, _run_t2c, help="units for a text with a stage-II checkpoint"),  # type: ignore[arg-type]
    Command("vocode", VocodeOptions, run_vocode,  # type: ignore[arg-type]
            help="units → a 16 kHz WAV with a unit vocoder (--units, or --corpus with --id)"),
    Command("pipeline", PipelineOptions, _run_pipeline, help="run the whole DAG from a YAML config",  # type: ignore[arg-type]
            description="Run the whole DAG: corpus → stage I ∥ stage II → echo labels → echo training → "
                        "evaluation. A rerun redoes only what a change invalidates: each step records a "
                        "fingerprint of its config and inputs; an unchanged step whose outputs verify is "
                        "skipped, a larger max_steps resumes, any other change redoes the step and the "
                        "steps after it. --dry-run prints that plan.",
            flags={"from_step": Flag(flag="--from")}, verbose=True),
    Command("demo", DemoOptions, _run_demo,  # type: ignore[arg-type]
            help="the whole DAG on the bundled sample (configs/demo.yaml), with the UI", verbose=True),
    Command("server", ServerOptions, _run_server,  # type: ignore[arg-type]
            help="start a local Prefect server (UI + API) on 127.0.0.1"),
    Command("serve", ServeOptions, _run_serve,  # type: ignore[arg-type]
            help="serve the deployments of prefect.yaml (schedules, UI-triggered runs)"),
    *EVAL_COMMANDS, *ECHO_COMMANDS,
]


def version() -> str:
    """The installed echox version (the source tree's when not installed)."""
    try:
        return metadata.version("echox")
    except metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    ap = argparse.ArgumentParser(prog="echox", description="EchoX echo-training data pipeline and trainer")
    ap.add_argument("--version", action="version", version=f"echox {version()}")
    add_commands(ap.add_subparsers(dest="command", required=True), COMMANDS)
    return ap


def field_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    """FIELD=VALUE options as a dict (values read as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EchoxError(f"{flag} expects FIELD=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def options(args: argparse.Namespace) -> Any:
    """The command's validated options model (ConfigError naming each bad field)."""
    data = given(args)
    if isinstance(data.get("preset_overrides"), list):
        data["preset_overrides"] = field_pairs(data["preset_overrides"], "--set")
    return build(args.options_model, data, args.command)


def lost_prefect_api(error: BaseException | None) -> BaseException | None:
    """The failed connection to the Prefect API (an httpx transport error) in `error`'s chain, if any."""
    import httpx  # Prefect's HTTP client; imported here, once something failed

    while error is not None:
        if isinstance(error, httpx.TransportError):
            return error
        error = error.__cause__ or error.__context__
    return None


class _NoUserErrorTraceback(logging.Filter):
    """Strip the traceback from Prefect's log of a user mistake or a lost API; main prints one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, without exc_info when it holds an EchoxError or a lost connection."""
        if record.exc_info and (isinstance(record.exc_info[1], EchoxError)
                                or lost_prefect_api(record.exc_info[1]) is not None):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers (idempotent; logger filters survive its log setup)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoUserErrorTraceback) for f in logger.filters):
            logger.addFilter(_NoUserErrorTraceback())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `echox` console script."""
    args = parser().parse_args(argv)
    runtime.configure()
    quiet_user_errors()
    terminal.configure(args.command, verbose=args.verbose)
    failure: BaseException | None = None
    try:
        return _run(args)
    except BaseException as e:  # not a user mistake: its traceback follows, and goes to the run's log too
        failure = e
        raise
    finally:
        terminal.end(failure)


def _run(args: argparse.Namespace) -> int:
    """Run the command; a user mistake, an interrupt or a lost server is one line on stderr."""
    try:
        return args.handler(options(args))  # each handler validates its inputs before it starts Prefect
    except EchoxError as e:
        terminal.error(f"echox {args.command}: error: {e}")
        return 2
    except KeyboardInterrupt:
        terminal.error(f"echox {args.command}: interrupted")
        return 130
    except Exception as e:
        lost = lost_prefect_api(e)
        if lost is None:
            raise
        # The server went away mid-run (Prefect gave up after its retries): finished work is on disk.
        api = os.environ.get("PREFECT_API_URL", "the Prefect API")
        reason = f"{type(lost).__name__}: " + " ".join(str(lost).split())  # one line, whatever it said
        terminal.error(f"echox {args.command}: error: lost the Prefect server at {api} ({reason}); finished "
                       "work is kept: start a server (or unset PREFECT_API_URL) and rerun the same command")
        return 2


if __name__ == "__main__":
    sys.exit(main())
