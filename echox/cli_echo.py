"""The echo subcommands of `echox`: echo-labels, speak (streaming), echo-eval (unit accuracy)."""

from __future__ import annotations

import argparse
import sys

from echox.errors import InputError


def add_echo_labels(sub: argparse._SubParsersAction) -> None:
    """Register `echox echo-labels`."""
    p = sub.add_parser("echo-labels", help="echo pseudo-labels: Y′ of the S2T states, T2C units per segment")
    p.add_argument("--corpus", required=True, help="corpus directory built by build-corpus")
    p.add_argument("--s2t", required=True, help="stage-I checkpoint (model or run directory)")
    p.add_argument("--t2c", required=True, help="stage-II checkpoint (model or run directory)")
    p.add_argument("--out", required=True, help="output directory (opens with datasets.load_from_disk)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, each holding both models")
    p.add_argument("--batch-size", type=int, default=8, help="corpus rows per S2T forward")
    p.add_argument("--max-units", type=int, default=1000, help="T2C length guard per segment (else reject)")
    p.add_argument("--cpus-per-actor", type=int, default=1)
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an output holding a different run")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress")
    p.set_defaults(handler=_run_echo_labels)


def _run_echo_labels(args: argparse.Namespace) -> int:
    from echox import runtime
    from echox.config import EchoLabelsConfig, from_cli

    cfg = from_cli(EchoLabelsConfig, vars(args), "echo-labels")
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.echo_labels import echo_labels

    out = echo_labels(config=cfg)
    print(f"echo labels written to {out} (manifest: {out}/manifest.json, rejects: {out}/rejects.jsonl)")
    return 0


def add_speak(sub: argparse._SubParsersAction) -> None:
    """Register `echox speak`."""
    p = sub.add_parser("speak", help="stream a spoken answer: text and units segment by segment")
    p.add_argument("--model", required=True, help="echo checkpoint (model or run directory)")
    p.add_argument("--audio", required=True, help="a WAV file (any rate; resampled to 16 kHz)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-units", type=int, default=1000, help="unit guard per segment")
    p.add_argument("--vocoder", default=None, help="unit vocoder checkpoint (not supported yet)")
    p.add_argument("--out-wav", default=None, help="waveform output (needs --vocoder)")
    p.add_argument("--lookahead", type=int, default=5, help="segment trigger: local-maximum window")
    p.add_argument("--min-len-peak", type=int, default=50, help="segment trigger: tokens for a peak cut")
    p.add_argument("--min-len-thresh", type=int, default=20, help="segment trigger: tokens for a cut above "
                   "--thresh")
    p.add_argument("--thresh", type=float, default=0.1, help="segment trigger: cosine similarity to '.'")
    p.set_defaults(handler=_run_speak)


def _run_speak(args: argparse.Namespace) -> int:
    from tasks.inference import check_window, load_audio, load_checkpoint_model
    from tasks.speak import check_vocoder, format_segment, speak

    if args.out_wav and not args.vocoder:
        raise InputError("--out-wav needs --vocoder (a unit vocoder turns units into a waveform)")
    check_vocoder(args.vocoder)
    audio = load_audio(args.audio)
    model = load_checkpoint_model(args.model, "echo")
    check_window(model, audio, args.audio)
    count = iter(range(1, 1 << 30))
    result = speak(model, audio, max_new_tokens=args.max_new_tokens, max_units=args.max_units,
                   on_segment=lambda seg, t: print(format_segment(next(count), seg, t), flush=True),
                   lookahead=args.lookahead, min_len_peak=args.min_len_peak,
                   min_len_thresh=args.min_len_thresh, thresh=args.thresh)
    first = "none (no answer tokens)" if result.first_segment_s is None else f"{result.first_segment_s:.3f} s"
    print(f"answer: {result.text.strip()!r}")
    print(f"time to first segment: {first}; {len(result.segments)} segments, {result.num_units} units "
          f"in {result.total_s:.3f} s")
    print("no --vocoder given: no waveform written (the units above are the output)")
    return 0


def add_echo_eval(sub: argparse._SubParsersAction) -> None:
    """Register `echox echo-eval`."""
    p = sub.add_parser("echo-eval", help="Echo decoder unit accuracy against the pseudo-labels")
    p.add_argument("--corpus", required=True)
    p.add_argument("--echo-labels", required=True)
    p.add_argument("--model", default=None, help="trained echo checkpoint (model or run directory)")
    p.add_argument("--s2t", default=None, help="with --t2c: also score the step-0 echo model (baseline)")
    p.add_argument("--t2c", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the step-0 adapter (the training seed)")
    p.add_argument("--max-examples", type=int, default=None, help="score this many (row, segment) examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--first", type=int, default=5, help="also score each example's first N targets")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(handler=_run_echo_eval)


def _run_echo_eval(args: argparse.Namespace) -> int:
    import torch

    from tasks.inference import load_checkpoint_model
    from tasks.speak import accuracy_report, initial_echo

    if bool(args.s2t) != bool(args.t2c) or not (args.model or args.s2t):
        raise InputError("give --model, or --s2t with --t2c (the step-0 baseline), or all three")
    if args.threads:
        torch.set_num_threads(args.threads)
    todo = []
    if args.model:
        todo.append((f"echo model {args.model}", load_checkpoint_model(args.model, "echo"), "adapter"))
    if args.s2t:
        base = initial_echo(args.s2t, args.t2c, seed=args.seed)
        todo += [("step-0 echo model (untrained adapter)", base, "adapter"),
                 ("T2C on the raw S2T states (identity adapter)", base, "identity"),
                 ("T2C on Y′ text embeddings (reference)", base, "text")]
    scores = accuracy_report(todo, args.corpus, args.echo_labels, first=args.first,
                             batch_size=args.batch_size, max_examples=args.max_examples)
    print("Echo decoder unit accuracy against the pseudo-labels (teacher-forced, units + EOS):")
    print(f"  {'':<52} {'all':>8} {f'first {args.first}':>8}")
    for label, acc, head in scores:
        print(f"  {label:<52} {acc:>8.4f} {head:>8.4f}")
    sys.stdout.flush()
    return 0
