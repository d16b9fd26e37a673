"""The echo subcommands of `echox`: echo-labels, speak (streaming), echo-eval (unit accuracy)."""

from __future__ import annotations

import sys

from core import runtime
from core.errors import InputError
from echox.cli_options import Command, Flag
from echox.commands import EchoEvalOptions, SpeakOptions
from tasks.configs import EchoLabelsConfig


def _run_echo_labels(cfg: EchoLabelsConfig) -> int:
    from tasks.echo_labels import check_inputs

    check_inputs(cfg.corpus, cfg.s2t, cfg.t2c, cfg.out)
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.echo_labels import echo_labels

    out = echo_labels(config=cfg)
    print(f"echo labels written to {out} (manifest: {out}/manifest.json, rejects: {out}/rejects.jsonl)")
    return 0


def _run_speak(args: SpeakOptions) -> int:
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


def _run_echo_eval(args: EchoEvalOptions) -> int:
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


ECHO_COMMANDS = [
    Command("echo-labels", EchoLabelsConfig, _run_echo_labels,  # type: ignore[arg-type]
            help="echo pseudo-labels: Y′ of the S2T states, T2C units per segment",
            description="Echo pseudo-labels of a corpus: Y′ from the stage-I hidden states, segmented into "
                        "sentences, T2C units per segment; model-holding Ray actors, one task a shard.",
            flags={"progress": Flag(negate="--quiet", help="no per-shard progress")}),
    Command("speak", SpeakOptions, _run_speak,  # type: ignore[arg-type]
            help="stream a spoken answer: text and units segment by segment"),
    Command("echo-eval", EchoEvalOptions, _run_echo_eval,  # type: ignore[arg-type]
            help="Echo decoder unit accuracy against the pseudo-labels"),
]
