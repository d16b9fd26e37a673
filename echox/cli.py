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


def parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    ap = argparse.ArgumentParser(prog="echox", description="EchoX echo-training data pipeline and trainer")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_build_corpus, _add_demo):
        add(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `echox` console script."""
    args = parser().parse_args(argv)
    runtime.configure()
    try:
        return args.handler(args)
    except EchoxError as e:
        print(f"echox {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echox {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
