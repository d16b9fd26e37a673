"""Speaking with an echo checkpoint: streamed segments with units, and the Echo decoder's unit accuracy.

Streaming (`speak`): the S2T model generates the answer token by token; the "." similarity trigger
(models/echo.BoundaryTracker, DESIGN step 5) closes segments, and each closed segment's hidden states go
through the denoising adapter and the Echo decoder to units, which are handed to a callback at once. With
a unit vocoder (`SpeechOut`), that callback vocodes each segment as soon as it closes (tasks/vocode.py).

Evaluation (`unit_accuracy`): teacher-forced on the pseudo-label units of each (row, segment) example,
the fraction of the decoder's targets (every unit and the closing EOS) whose argmax prediction is right.
The prefix it reads is the training one (`adapter`: denoising adapter over the S2T states), or for
baselines the raw states (`identity`) or the frozen embeddings of Y′ (`text`: what the T2C read when it
generated the labels, an upper reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from core.errors import InputError

Prefix = Literal["adapter", "identity", "text"]
PREFIXES: tuple[Prefix, ...] = ("adapter", "identity", "text")


# ----------------------------------------------------------------------------- streaming


@dataclass
class SpeakResult:
    """A streamed answer: its segments, their text joined, and timings (seconds from the start)."""

    segments: list[Any] = field(default_factory=list)
    first_segment_s: float | None = None
    total_s: float = 0.0

    @property
    def text(self) -> str:
        """The answer text (segments' decoded text, concatenated)."""
        return "".join(s.text for s in self.segments)

    @property
    def num_units(self) -> int:
        """Units over all segments."""
        return sum(len(s.units) for s in self.segments)


def load_speak_vocoder(path: str | None, out_wav: str | None) -> Any:
    """The unit vocoder of `echox speak` (None without --vocoder), its output path checked first."""
    from tasks.vocode import check_out_wav, load_vocoder

    if out_wav and not path:
        raise InputError("--out-wav needs --vocoder (a unit vocoder turns units into a waveform)")
    if path is None:
        return None
    if not out_wav:
        raise InputError("--vocoder needs --out-wav (where the spoken answer is written)")
    check_out_wav(out_wav)
    return load_vocoder(path)


def check_vocoder_fits(vocoder: Any, model: Any) -> None:
    """InputError unless the vocoder speaks the echo model's units (same K, same codebook when recorded)."""
    from tasks.vocode import check_codebook, codebook_of

    check_codebook(vocoder, codebook_of(model), "the echo model")


@dataclass
class SpeechOut:
    """Vocodes each closed segment's units as it arrives; keeps the audio and the time to first audio."""

    vocoder: Any
    start: float = field(default_factory=time.perf_counter)
    chunks: list[np.ndarray] = field(default_factory=list)
    first_audio_s: float | None = None

    def __call__(self, segment: Any) -> None:
        """Vocode one segment's (raw) units now; a segment without units adds no audio."""
        from tasks.vocode import vocode

        if not segment.units:
            return
        self.chunks.append(vocode(self.vocoder, segment.units))
        if self.first_audio_s is None:
            self.first_audio_s = time.perf_counter() - self.start

    def audio(self) -> np.ndarray:
        """The concatenated int16 waveform."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def speak(model: Any, audio: np.ndarray, *, max_new_tokens: int = 256, max_units: int = 1000,
          on_segment: Callable[[Any, float], None] | None = None, **segmenting: float) -> SpeakResult:
    """Stream one spoken answer; `on_segment(segment, seconds since start)` runs as each one is ready."""
    result = SpeakResult()
    start = time.perf_counter()
    with torch.inference_mode():
        for seg in model.stream_speech(audio, max_new_tokens=max_new_tokens, max_units=max_units,
                                       **segmenting):
            now = time.perf_counter() - start
            if result.first_segment_s is None:
                result.first_segment_s = now
            result.segments.append(seg)
            if on_segment is not None:
                on_segment(seg, now)
    result.total_s = time.perf_counter() - start
    return result


def format_segment(index: int, seg: Any, seconds: float) -> str:
    """Two lines for one streamed segment: its span, time and text; then its units."""
    head = f"segment {index} [{seg.start}, {seg.end}) at {seconds:.3f} s: {seg.text.strip()!r}"
    guard = " (stopped at the --max-units guard)" if seg.truncated else ""
    return f"{head}\n  units ({len(seg.units)}){guard}: {' '.join(map(str, seg.units))}"


# ----------------------------------------------------------------------------- unit accuracy


def echo_prefix(model: Any, batch: dict[str, Tensor], prefix: Prefix) -> tuple[Tensor, Tensor]:
    """The Echo decoder's prefix (B, S, H) for each example's segment, and its lengths (B,)."""
    from models.echo import gather_segments

    hidden, _ = model.s2t.answer_hidden_states(batch)  # (B, A, H)
    seg, mask = gather_segments(hidden, batch["segment_start"], batch["segment_end"])  # (B, S, H), (B, S)
    if prefix == "adapter":
        out = model.adapter(seg)
    elif prefix == "identity":
        out = seg
    elif prefix == "text":
        out = model.echo_decoder.embed_text(model.s2t.lm_head()(seg).argmax(-1))  # E(y′)
    else:
        raise InputError(f"unknown prefix {prefix!r}; expected one of {PREFIXES}")
    return out * mask[:, :, None].to(out.dtype), mask.sum(1)


def unit_hits(model: Any, batch: dict[str, Tensor], prefix: Prefix = "adapter",
              first: int | None = None) -> tuple[int, int]:
    """(right argmax predictions, targets) of the teacher-forced Echo decoder over one echo batch;
    `first` counts only each example's first targets (where the prefix, not the unit history, decides)."""
    dec = model.echo_decoder
    pre, lengths = echo_prefix(model, batch, prefix)
    # _joint is the decoder's own teacher-forcing layout (the one its training loss uses).
    x, mask, targets = dec._joint(pre, lengths, batch["segment_units"], batch["segment_unit_lengths"],
                                  batch["segment_unit_eos"])
    h = dec.decoder(inputs_embeds=x, attention_mask=mask.long(), use_cache=False).last_hidden_state
    keep = targets != -100  # (B, L) unit and EOS targets
    if first is not None:
        keep &= keep.long().cumsum(1) <= first
    pred = dec.head(h[keep]).argmax(-1)  # (N,)
    return int((pred == targets[keep]).sum()), int(keep.sum())


def spread(n: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(n) (all of them when limit is None or ≥ n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit)})


def unit_accuracy(model: Any, corpus_dir: str | Path, labels_dir: str | Path, *, batch_size: int = 8,
                  max_examples: int | None = None, prefix: Prefix = "adapter",
                  first: int | None = None) -> float:
    """The Echo decoder's teacher-forced unit accuracy against the pseudo-labels (eval mode, no grad)."""
    from tasks.collate import make_collator
    from tasks.data import echo_examples

    examples = echo_examples(corpus_dir, labels_dir)
    collate = make_collator("echo", model)
    device = next(model.parameters()).device
    picked = spread(len(examples), max_examples)
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(picked), batch_size):
                rows = [examples[i] for i in picked[start:start + batch_size]]
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                r, t = unit_hits(model, batch, prefix, first)
                right, total = right + r, total + t
    finally:
        model.train(was_training)
    if not total:
        raise InputError(f"{labels_dir}: no unit targets to score")
    return right / total


def initial_echo(s2t_path: str | Path, t2c_path: str | Path, seed: int = 0) -> Any:
    """The echo model as training starts it (step 0): T2C decoder + untrained adapter of this seed."""
    from models.echo import build_echo
    from models.io import load_model
    from tasks.echo_labels import checkpoint_path

    s2t = load_model(checkpoint_path(s2t_path), expect_stage="s2t")
    t2c = load_model(checkpoint_path(t2c_path), expect_stage="t2c")
    return build_echo(s2t, t2c, seed=seed)  # what models.factory.build_for_stage("echo", ...) builds


def accuracy_report(models: Sequence[tuple[str, Any, Prefix]], corpus_dir: str | Path, labels_dir: str | Path,
                    *, first: int = 5, **kwargs: Any) -> list[tuple[str, float, float]]:
    """(label, unit accuracy over all targets, over each example's first `first` targets) per model."""
    return [(label, unit_accuracy(m, corpus_dir, labels_dir, prefix=p, **kwargs),
             unit_accuracy(m, corpus_dir, labels_dir, prefix=p, first=first, **kwargs))
            for label, m, p in models]
