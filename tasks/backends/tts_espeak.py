"""espeak-ng through its command line: fast, many languages and voice variants ("en-gb+f3")."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from core.errors import ConfigError, RecordRejected
from tasks.audio import to_16k_int16
from tasks.backends.registry import BackendOptions

# English accents and voice variants, so a corpus has some speaker diversity by default.
DEFAULT_ESPEAK_VOICES = (
    "en-us", "en-us+f3", "en-gb", "en-gb+f2", "en-gb-scotland", "en-gb-x-rp+m3", "en-029+f4", "en-us+m7",
)


def _espeak_listing(binary: str, *args: str) -> list[list[str]]:
    """Rows of `espeak-ng --voices...`: priority, language, age/gender, name, file and other languages."""
    out = subprocess.run([binary, *args], capture_output=True, text=True, check=True, timeout=60).stdout
    return [row for line in out.splitlines()[1:] if len(row := line.split(maxsplit=4)) == 5]


@lru_cache(maxsize=4)
def _espeak_voices(binary: str) -> tuple[dict[str, str], frozenset[str]]:
    """(language or voice-file name → voice file, variant names) of this espeak-ng; MBROLA excluded."""
    files: dict[str, str] = {}
    for _, language, _, _, rest in _espeak_listing(binary, "--voices"):
        file = rest.split()[0]
        if not file.startswith("mb/"):  # MBROLA voices need a separate install
            for key in (file, file.rsplit("/", 1)[-1], language):
                files.setdefault(key.lower(), file)
    variants = {rest.strip().removeprefix("!v/") for *_, rest in _espeak_listing(binary, "--voices=variant")}
    return files, frozenset(variants)


def _parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """Samples and rate from espeak-ng's --stdout WAV, whose chunk sizes are streaming placeholders."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RecordRejected("espeak-ng wrote no WAV audio")
    pos, sample_rate = 12, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":
            fmt, channels, sample_rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            if (fmt, channels, bits) != (1, 1, 16):
                raise RecordRejected(f"espeak-ng wrote unexpected WAV format {fmt}/{channels} ch/{bits} bit")
        elif chunk == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.int16), sample_rate
        pos += 8 + size + (size & 1)
    raise RecordRejected("espeak-ng wrote a WAV without audio data")


def _check_rate(rate: int | None) -> None:
    if rate is not None and not 80 <= rate <= 450:
        raise ConfigError(f"rate must be between 80 and 450 words per minute, got {rate}")


class EspeakTTS:
    """espeak-ng through its command line: fast, many languages and voice variants ("en-gb+f3")."""

    name = "espeak"

    def __init__(self, *, rate: int | None = None, voices: Sequence[str] | None = None,
                 binary: str = "espeak-ng", timeout_s: float = 60.0) -> None:
        found = shutil.which(binary)
        if found is None:
            raise ConfigError(f"{binary} was not found on PATH; install the espeak-ng package")
        _check_rate(rate)
        self.binary, self.rate, self.timeout_s = found, rate, timeout_s
        self._voices = list(voices) if voices is not None else list(DEFAULT_ESPEAK_VOICES)
        if not self._voices:
            raise ConfigError("voices must name at least one espeak-ng voice")
        for voice in self._voices:
            if not self.has_voice(voice):
                raise ConfigError(f"voice {voice!r} is not available in espeak-ng")

    def has_voice(self, voice: str) -> bool:
        """Whether espeak-ng knows the language/voice and the optional "+variant"."""
        return self._voice_file(voice) is not None

    def _voice_file(self, voice: str) -> str | None:
        """The -v argument for `voice`, by voice file: espeak-ng drops a variant given after a
        language alias ("en-gb+f2" speaks plain "en-gb"), but keeps it after a file ("gmw/en+f2")."""
        files, variants = _espeak_voices(self.binary)
        base, plus, variant = voice.partition("+")
        file = files.get(base.lower())
        if file is None or (plus and variant not in variants):
            return None
        return f"{file}+{variant}" if plus else file

    def voices(self) -> list[str]:
        """The configured voices (English accents and variants by default)."""
        return list(self._voices)

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with an espeak-ng voice such as "en-us" or "en-gb-scotland+f2"."""
        file = self._voice_file(voice)
        if file is None:
            raise RecordRejected(f"voice {voice!r} is not available in espeak-ng")
        if not text.strip():
            raise RecordRejected("text is empty")
        # Text goes through stdin so that a leading "-" is never read as an option.
        cmd = [self.binary, "-v", file, "-b", "1", "--stdin", "--stdout"]
        cmd += ["-s", str(self.rate)] if self.rate is not None else []
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise RecordRejected(f"espeak-ng took longer than {self.timeout_s} s") from e
        message = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or message.startswith("Error"):
            raise RecordRejected(f"espeak-ng failed: {message or f'exit status {proc.returncode}'}")
        audio, sample_rate = _parse_wav_stream(proc.stdout)
        if audio.size == 0:
            raise RecordRejected("espeak-ng produced no audio for the text")
        return to_16k_int16(audio, sample_rate)


class EspeakOptions(BackendOptions):
    """Options of the espeak-ng engine."""

    rate: int | None = Field(None, description="Speaking rate in words per minute (80-450); "
                             "default: espeak-ng's own.")


class Espeak:
    """The espeak-ng backend: declaration for the TTS registry."""

    name = "espeak"
    options = EspeakOptions
    flat_fields: ClassVar[dict[str, str]] = {}

    def check(self, options: EspeakOptions) -> None:
        """espeak-ng is on PATH and the rate is in range."""
        if shutil.which("espeak-ng") is None:
            raise ConfigError("espeak-ng was not found on PATH; install the espeak-ng package")
        _check_rate(options.rate)

    def create(self, options: EspeakOptions, threads: int | None) -> EspeakTTS:
        """An espeak-ng engine (one process per utterance, so `threads` has nothing to pin)."""
        return EspeakTTS(rate=options.rate)

    def identity(self, options: EspeakOptions) -> str:
        """"espeak", plus the rate when one is set."""
        return "espeak" if options.rate is None else f"espeak:rate={options.rate}"


BACKEND = Espeak()
