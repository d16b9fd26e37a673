"""The `echox` command line: one subcommand per job; user mistakes print a message, not a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from echox import runtime
from echox.cli_echo import add_echo_eval, add_echo_labels, add_speak
from echox.cli_eval import add_evaluate
from echox.errors import EchoxError

Handler = Callable[[argparse.Namespace], int]


def _add_build_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-corpus", help="QA text → speech → units → Arrow corpus shards")
    p.add_argument("--source", required=True, help="QA JSONL, Parquet file or datasets directory")
    p.add_argument("--out", required=True, help="output corpus directory")
    p.add_argument("--tts", choices=["piper", "espeak"], default="piper")
    p.add_argument("--voices", nargs="+", default=None, help="voices to choose from per record")
    p.add_argument("--units", choices=["mfcc", "wav2vec2"], default="mfcc")
    p.add_argument("--feature-checkpoint", default=None, help="local wav2vec2/HuBERT checkpoint")
    p.add_argument("--feature-layer", type=int, default=11)
    p.add_argument("--num-units", type=int, default=100, help="k-means K (paper: 1000)")
    p.add_argument("--codebook", default=None, help="reuse an existing codebook.npz")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-reject-fraction", type=float, default=0.25)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress")
    p.set_defaults(handler=_run_build_corpus)


def _run_build_corpus(args: argparse.Namespace) -> int:
    from echox.config import BuildCorpusConfig, from_cli

    cfg = from_cli(BuildCorpusConfig, vars(args), "build-corpus")
    from flows.build_corpus import build_corpus

    out = build_corpus(config=cfg)
    print(f"corpus written to {out} (manifest: {Path(out) / 'manifest.json'})")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train stage I (s2t), II (t2c) or III (echo) under DDP")
    p.add_argument("--stage", required=True, choices=["s2t", "t2c", "echo"])
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", help="tiny, smollm2-135m, llama-3b, llama-8b")
    p.add_argument("--set", dest="preset_overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set llm_path=/models/llama (repeatable)")
    p.add_argument("--echo-labels", default=None)
    p.add_argument("--s2t", default=None, help="stage-I checkpoint (echo stage)")
    p.add_argument("--t2c", default=None, help="stage-II checkpoint (echo stage)")
    p.add_argument("--init-checkpoint", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--launcher", choices=["ray", "local"], default="ray")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--unit-vocab-size", type=int, default=0, metavar="N",
                   help="stage t2c: predict the unit-words of a BPE unit language of N > K words trained "
                        "on the corpus (0: raw units)")
    p.set_defaults(handler=_run_train)


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EchoxError(f"--set expects FIELD=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run_train(args: argparse.Namespace) -> int:
    from echox.config import TrainFlowConfig, from_cli

    cfg = from_cli(TrainFlowConfig, vars(args), "train", preset_overrides=_overrides(args.preset_overrides))
    from flows.train import train  # after validation: a bad option fails without importing Prefect

    print(f"model written to {train(cfg=cfg)}")
    return 0


def _add_ask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer a spoken question with a stage-I (or echo) checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--audio", required=True, help="a WAV file (any rate; resampled to 16 kHz)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run_ask)


def _run_ask(args: argparse.Namespace) -> int:
    from tasks.inference import answer, load_audio, load_s2t

    model = load_s2t(args.model)
    text = answer(model, load_audio(args.audio), max_new_tokens=args.max_new_tokens, sample=args.sample,
                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(text)
    return 0


def _add_t2c(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("t2c", help="units for a text with a stage-II checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--max-units", type=int, default=1000)
    p.set_defaults(handler=_run_t2c)


def _run_t2c(args: argparse.Namespace) -> int:
    from tasks.inference import load_checkpoint_model, text_to_units

    units, truncated = text_to_units(load_checkpoint_model(args.model, "t2c"), args.text, args.max_units)
    print(" ".join(map(str, units)))
    if truncated:
        print(f"(stopped at the --max-units guard of {args.max_units})", file=sys.stderr)
    return 0


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the whole DAG from a YAML config")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", default=None, help="override the config's output directory")
    p.set_defaults(handler=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from flows.pipeline import load_pipeline_config, pipeline

    cfg = load_pipeline_config(args.config, out=args.out)
    paths = pipeline(config=cfg)
    _print_outputs(paths)
    return 0


def _print_outputs(paths: dict) -> None:
    import json

    print("\noutputs:")
    for name, path in paths.items():
        print(f"  {name:12s} {path}")
    if "report" in paths:
        from tasks.evaluate import format_report

        print("\n" + format_report(json.loads(Path(paths["report"]).read_text())))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole DAG on the bundled sample (configs/demo.yaml), with the UI")
    p.add_argument("--config", default=Path("configs/demo.yaml"), type=Path)
    p.add_argument("--no-server", action="store_true", help="do not leave a Prefect UI running")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import os

    from echox import server

    # Before prefect is imported: its settings are read once, at import.
    if args.no_server or runtime.use_local_server():
        runtime.ensure_prefect_api()
    else:  # leave a UI running after the demo, so its runs and artifacts can be browsed
        os.environ["PREFECT_API_URL"] = server.ensure_background(runtime.state_dir())
    from flows.pipeline import load_pipeline_config, pipeline

    cfg = load_pipeline_config(args.config)
    ui = os.environ.get("PREFECT_API_URL", "")
    print(f"echox demo: the whole DAG on {cfg.source} → {cfg.out}\nPrefect UI: {ui.removesuffix('/api')}",
          flush=True)
    paths = pipeline(config=cfg)
    _print_outputs(paths)
    print(f"\nPrefect UI (runs, logs, artifacts): {ui.removesuffix('/api')}  — stop it: echox server --stop")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the deployments of prefect.yaml (schedules, UI-triggered runs)")
    p.add_argument("--file", default=Path("prefect.yaml"), type=Path)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from prefect import serve

    from flows.deployments import to_deployments

    deployments = to_deployments(args.file)
    print(f"serving {len(deployments)} deployments: " + ", ".join(d.name for d in deployments), flush=True)
    serve(*deployments)
    return 0


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="start a local Prefect server (UI + API) on 127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--stop", action="store_true", help="stop the server that `echox demo` left running")
    p.set_defaults(handler=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from echox import server

    state = runtime.state_dir()
    if args.stop:
        print(server.stop_background(state))
        return 0
    url = server.api_url(port=args.port)
    if server.is_healthy(url):
        print(f"a Prefect server already answers at {url}; UI: {url[:-4]}")
        return 0
    log = state / "prefect-server.log"
    proc = server.start(state, args.port, log=log)
    try:
        server.wait_healthy(url, proc)
        print(f"Prefect UI:  {url[:-4]}\nPrefect API: {url}\nlog: {log}\n"
              f"echox commands on this machine report to it automatically "
              f"(elsewhere: export PREFECT_API_URL={url}). Ctrl-C stops it.", flush=True)
        return proc.wait()
    except (KeyboardInterrupt, RuntimeError) as e:
        proc.terminate()
        proc.wait(timeout=30)
        if isinstance(e, RuntimeError):
            raise EchoxError(f"{e}; see {log}") from e
        return 0


def parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    ap = argparse.ArgumentParser(prog="echox", description="EchoX echo-training data pipeline and trainer")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_build_corpus, _add_train, _add_ask, _add_t2c, _add_pipeline, _add_demo, _add_server,
                _add_serve, add_evaluate, add_echo_labels, add_speak, add_echo_eval):
        add(sub)
    return ap


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
    try:
        if args.command not in ("server", "ask", "t2c", "demo", "speak", "echo-eval"):
            runtime.ensure_prefect_api()
        return args.handler(args)
    except EchoxError as e:
        print(f"echox {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echox {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        lost = lost_prefect_api(e)
        if lost is None:
            raise
        # The server went away mid-run (Prefect gave up after its retries): finished work is on disk.
        api = os.environ.get("PREFECT_API_URL", "the Prefect API")
        reason = f"{type(lost).__name__}: " + " ".join(str(lost).split())  # one line, whatever it said
        print(f"echox {args.command}: error: lost the Prefect server at {api} ({reason}); finished work is "
              "kept: start a server (or unset PREFECT_API_URL) and rerun the same command", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
