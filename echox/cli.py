"""The `echox` command line: one subcommand per job; user mistakes print a message, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from echox import runtime
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
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-reject-fraction", type=float, default=0.25)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress")
    p.set_defaults(handler=_run_build_corpus)


def _run_build_corpus(args: argparse.Namespace) -> int:
    from echox.config import BuildCorpusConfig, build

    fields = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "quiet")}
    cfg = build(BuildCorpusConfig, {**fields, "progress": not args.quiet}, "build-corpus")
    from flows.build_corpus import build_corpus

    out = build_corpus(config=cfg)
    print(f"corpus written to {out} (manifest: {Path(out) / 'manifest.json'})")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled sample (embedded defaults)")
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from echox.config import BuildCorpusConfig
    from flows.build_corpus import build_corpus

    cfg = BuildCorpusConfig(source="data/sample/qa_train.jsonl", out=f"{args.out}/corpus")
    build_corpus(config=cfg)
    return 0


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="start a local Prefect server (UI + API) on 127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(handler=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from echox import server

    state = runtime.state_dir()
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
    for add in (_add_build_corpus, _add_demo, _add_server):
        add(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `echox` console script."""
    args = parser().parse_args(argv)
    runtime.configure()
    try:
        if args.command not in ("server",):
            runtime.ensure_prefect_api()
        return args.handler(args)
    except EchoxError as e:
        print(f"echox {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echox {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
