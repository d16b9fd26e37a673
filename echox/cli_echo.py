"""The echo subcommands of `echox`: echo-labels, baseline-labels, speak (streaming), echo-eval (unit
accuracy)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from core import runtime
from core.errors import InputError
from echox import terminal
from echox.cli_options import Command, Flag
from echox.commands import EchoEvalOptions, SpeakOptions, VocodeOptions
from tasks.configs import BaselineLabelsConfig, EchoLabelsConfig

if TYPE_CHECKING:
    from tasks.speak import SpeechOut


def _run_echo_labels(cfg: EchoLabelsConfig) -> int:
    from tasks.echo_labels import check_inputs

    check_inputs(cfg.corpus, cfg.s2t, cfg.t2c, cfg.out)
    terminal.begin(cfg.out)
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.echo_labels import echo_labels

    out = echo_labels(config=cfg)
    terminal.say(f"echo labels written to {out} (manifest: {out}/manifest.json, rejects: "
                 f"{out}/rejects.jsonl)")
    return 0


def _run_baseline_labels(cfg: BaselineLabelsConfig) -> int:
    from tasks.echo_labels import check_inputs

    check_inputs(cfg.corpus, cfg.s2t, cfg.t2c, cfg.out)
    terminal.begin(cfg.out)
    runtime.ensure_prefect_api()  # after validation, before prefect is imported (it reads settings then)
    from flows.baseline_labels import baseline_labels

    out = baseline_labels(config=cfg)
    terminal.say(f"baseline labels written to {out} (manifest: {out}/manifest.json, rejects: "
                 f"{out}/rejects.jsonl)")
    return 0


def _run_speak(args: SpeakOptions) -> int:
    from tasks.inference import check_window, load_audio, load_checkpoint_model
    from tasks.speak import SpeechOut, check_vocoder_fits, format_segment, load_speak_vocoder, speak

    vocoder = load_speak_vocoder(args.vocoder, args.out_wav)
    audio = load_audio(args.audio)
    model = load_checkpoint_model(args.model, "echo")
    check_window(model, audio, args.audio)
    if vocoder is not None:
        check_vocoder_fits(vocoder, model)
    count = iter(range(1, 1 << 30))
    out = SpeechOut(vocoder) if vocoder is not None else None

    def on_segment(seg: object, t: float) -> None:
        print(format_segment(next(count), seg, t), flush=True)
        if out is not None:
            out(seg)

    result = speak(model, audio, max_new_tokens=args.max_new_tokens, max_units=args.max_units,
                   on_segment=on_segment, lookahead=args.lookahead, min_len_peak=args.min_len_peak,
                   min_len_thresh=args.min_len_thresh, thresh=args.thresh)
    first = "none (no answer tokens)" if result.first_segment_s is None else f"{result.first_segment_s:.3f} s"
    print(f"answer: {result.text.strip()!r}")
    print(f"time to first segment: {first}; {len(result.segments)} segments, {result.num_units} units "
          f"in {result.total_s:.3f} s")
    if out is None:
        print("no --vocoder given: no waveform written (the units above are the output)")
        return 0
    _write_answer(out, str(args.out_wav))
    return 0


def _write_answer(out: SpeechOut, path: str) -> None:
    """Write the vocoded answer and report the time to first audio."""
    from tasks.vocode import write_wav_atomic

    audio = out.audio()
    write_wav_atomic(path, audio)
    first = out.first_audio_s
    shown = "none (no units)" if first is None else f"{first:.3f} s"
    print(f"time to first audio: {shown}; {len(audio) / 16000:.2f} s of speech written to {path}")


def run_vocode(args: VocodeOptions) -> int:
    import time

    import torch

    from tasks.vocode import (
        check_codebook,
        check_out_wav,
        corpus_units,
        load_vocoder,
        parse_units,
        vocode_with_durations,
        write_wav_atomic,
    )

    if (args.units is None) == (args.corpus is None) or (args.corpus is None) != (args.id is None):
        raise InputError("give --units, or --corpus with --id (one of the two)")
    check_out_wav(args.out_wav)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_vocoder(args.model)
    if args.units is not None:
        units = parse_units(args.units)
    else:
        units, codebook = corpus_units(str(args.corpus), str(args.id), args.side)
        check_codebook(model, codebook, f"corpus {args.corpus}")
    start = time.perf_counter()
    audio, durations = vocode_with_durations(model, units, args.duration_scale)
    took = time.perf_counter() - start
    write_wav_atomic(args.out_wav, audio)
    seconds = len(audio) / 16000
    print(f"{len(units)} units, {int(durations.sum())} frames → {seconds:.2f} s of speech in {took:.2f} s "
          f"(real-time factor {took / max(seconds, 1e-9):.3f}), written to {args.out_wav}")
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
            flags={"progress": Flag(negate="--quiet", help="no per-shard progress")}, verbose=True),
    Command("baseline-labels", BaselineLabelsConfig, _run_baseline_labels,  # type: ignore[arg-type]
            help="the no-echo baseline's labels: the corpus's own answer units, in the echo-label format",
            description="Labels for the no-echo baseline: each corpus row's gold answer tokens and its own "
                        "answer units (from the TTS audio) as one segment, in the format echo-labels writes, "
                        "so `echox train --stage echo --echo-labels DIR` trains the same Echo decoder on "
                        "them. No model runs: the S2T checkpoint gives the tokenizer, the T2C's config the "
                        "length guard.",
            flags={"progress": Flag(negate="--quiet", help="no summary line")}, verbose=True),
    Command("speak", SpeakOptions, _run_speak,  # type: ignore[arg-type]
            help="stream a spoken answer: text and units segment by segment (--vocoder: a WAV too)"),
    Command("echo-eval", EchoEvalOptions, _run_echo_eval,  # type: ignore[arg-type]
            help="Echo decoder unit accuracy against the pseudo-labels"),
]
