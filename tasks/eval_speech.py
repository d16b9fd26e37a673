"""Speech-to-speech accuracy: the echo model's spoken answer, vocoded and recognised, scored like its text.

`echox evaluate --vocoder VOC` (echo checkpoints) turns each streamed segment's units into audio with the
unit vocoder, concatenates the segments, recognises the answer speech with an ASR (tasks/asr.py) and scores
the transcript with the same whole-word alias match as the text response (`s2s_correct`).

Recognisers make mistakes of their own, so every item also gets the **ASR ceiling**: the reference answer
spoken by the same TTS engine and voice as the question, recognised and matched the same way
(`ceiling_correct`). The share of ceiling hits bounds what any spoken answer can score through this ASR;
the gap between text accuracy and s2s accuracy that the ceiling does not explain is the model's.

Piper's VITS noise is not seeded, so the reference speech is cached like the questions (content-keyed
WAVs in the evaluation's audio cache), and heard by a recogniser of their own (PocketSphinx carries state
from one utterance to the next): every evaluation that shares the cache — the echo model, the no-echo
baseline, a rerun — scores its answers against the same ceiling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RecordRejected
from tasks.text_norm import match_answer, spoken_form

SPEECH_FIELDS = ("s2s_response", "s2s_correct", "s2s_seconds", "ceiling_response", "ceiling_correct")
"""Report item fields of the speech-to-speech scoring (None when the evaluation has no vocoder)."""


class SpeechScorer:
    """A vocoder, a recogniser and a TTS engine, loaded once; scores spoken answers and their ceiling."""

    def __init__(self, vocoder_path: Path, unit_model: Any, *, asr: str = "pocketsphinx", tts: Any = None,
                 wav_dir: Path | None = None, audio_cache: Path | None = None) -> None:
        from tasks.asr import make_asr
        from tasks.backends import TTS_ENGINES, Choice
        from tasks.vocode import check_codebook, codebook_of, load_vocoder

        self.vocoder = load_vocoder(vocoder_path)
        check_codebook(self.vocoder, codebook_of(unit_model), "the echo checkpoint")
        # Two recognisers: PocketSphinx carries state from one utterance to the next, so the references are
        # heard by their own, in item order, and the ceiling does not depend on the answers heard before.
        self.asr, self.reference_asr = make_asr(asr), make_asr(asr)
        self.tts_choice = Choice(tts, TTS_ENGINES.options(tts)) if isinstance(tts, str) else tts
        self._tts = None
        self.wav_dir = wav_dir
        self.audio_cache = audio_cache

    def answer_audio(self, segments: list[list[int]]) -> np.ndarray:
        """int16 16 kHz speech of an answer: each non-empty segment's units vocoded, in order."""
        from tasks.vocode import vocode

        parts = [vocode(self.vocoder, units) for units in segments if units]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def _speak_reference(self, text: str, voice: str) -> np.ndarray:
        """The reference answer spoken by the evaluation's TTS engine and the question's voice (from the
        audio cache when it holds it; synthesized and cached otherwise)."""
        from tasks.backends import TTS_ENGINES
        from tasks.eval_questions import audio_key

        wav = None
        if self.audio_cache is not None:
            key = audio_key(TTS_ENGINES.identity(self.tts_choice), [voice], 0, "reference", text)
            wav = Path(self.audio_cache) / f"reference-{key}.wav"
            if wav.is_file():
                import soundfile

                return soundfile.read(str(wav), dtype="int16")[0]
        if self._tts is None:
            self._tts = TTS_ENGINES.create(self.tts_choice)
        audio = np.asarray(self._tts.synthesize(text, voice))
        if wav is not None:
            from tasks.shards import atomic_write
            from tasks.tts import write_wav

            wav.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(wav, lambda p: write_wav(p, audio))
        return audio

    def score(self, item_id: str, segments: list[list[int]], gold: list[str], reference: str,
              voice: str) -> dict[str, Any]:
        """The SPEECH_FIELDS of one item: what the ASR hears in the spoken answer and in the reference."""
        audio = self.answer_audio(segments)
        heard = self.asr.transcribe(audio) if len(audio) else ""
        if self.wav_dir is not None and len(audio):
            from tasks.vocode import write_wav_atomic

            self.wav_dir.mkdir(parents=True, exist_ok=True)
            write_wav_atomic(self.wav_dir / f"{wav_stem(item_id)}.wav", audio)
        try:
            ceiling: str | None = self.reference_asr.transcribe(
                self._speak_reference(spoken_form(reference), voice))
        except RecordRejected:  # a reference with nothing to say has no ceiling
            ceiling = None
        return {"s2s_response": heard, "s2s_correct": match_answer(heard, gold) is not None,
                "s2s_seconds": len(audio) / 16_000, "ceiling_response": ceiling,
                "ceiling_correct": None if ceiling is None else match_answer(ceiling, gold) is not None}


def wav_stem(name: str) -> str:
    """An item id as a file name (letters, digits, '-', '_', '.'; anything else as '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "item"


def speech_summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """s2s accuracy and the ASR ceiling over the items that were scored, each with its Wilson interval."""
    from tasks.eval_stats import wilson_interval

    out: dict[str, Any] = {}
    for name, key in (("s2s", "s2s_correct"), ("asr_ceiling", "ceiling_correct")):
        scored = [bool(r[key]) for r in items if r.get(key) is not None]
        k, n = sum(scored), len(scored)
        out |= {f"{name}_items": n, f"{name}_correct": k, f"{name}_accuracy": k / n if n else None,
                f"{name}_accuracy_ci95": wilson_interval(k, n)}
    return out
