"""Text to speech: what a TTS engine is, voice choice, and building an engine by name.

The engines themselves live one per file in tasks/backends/ (tts_piper.py, tts_espeak.py) and are
found through the TTS_ENGINES registry. An engine is built once per worker (Piper loads a 63 MB ONNX
model) and then called per record. Per-record failures (odd text the engine chokes on, an unknown
voice in a record) raise RecordRejected; a missing engine or voice file raises ConfigError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from core.errors import ConfigError, RecordRejected
from tasks.audio import SAMPLE_RATE, to_16k_int16, write_wav  # noqa: F401 - re-exported (long-standing home)


class TTSEngine(Protocol):
    """A speech synthesizer: text and a voice name in, 16 kHz mono int16 samples out."""

    name: str

    def voices(self) -> list[str]:
        """Voice names this engine offers for `synthesize`."""
        ...

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with `voice`; a 1-D int16 array at SAMPLE_RATE."""
        ...


def choose_voice(record_id: str, configured: Sequence[str], seed: int) -> str:
    """Pick a voice for a record, the same on every run and machine (not Python's salted hash())."""
    if not configured:
        raise ConfigError("no voices configured to choose from")
    digest = hashlib.blake2b(f"{seed}\x1f{record_id}".encode(), digest_size=8).digest()
    return configured[int.from_bytes(digest, "big") % len(configured)]


def check_voices(engine: TTSEngine, voices: Sequence[str] | None) -> None:
    """The engine speaks every voice in `voices` (ConfigError naming the first bad one, as --voices)."""
    for voice in voices or []:
        try:
            engine.synthesize("test", voice)
        except RecordRejected as e:
            raise ConfigError(f"--voices {voice!r}: {e.reason}") from None


def make_tts(name: str, *, threads: int | None = None, **options: Any) -> TTSEngine:
    """Build a registered TTS engine by name; `options` are its options model's fields."""
    from tasks.backends import TTS_ENGINES

    return TTS_ENGINES.get(name).create(TTS_ENGINES.options(name, **options), threads)
