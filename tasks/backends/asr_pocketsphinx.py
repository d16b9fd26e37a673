"""PocketSphinx speech recognition with the US-English model, LM and dictionary bundled in its wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from core.errors import ConfigError
from tasks.audio import SAMPLE_RATE
from tasks.backends.registry import BackendOptions

_PATHS = {"hmm": "hmm", "lm": "lm", "dictionary": "dict"}  # option → the Decoder's own keyword


class PocketsphinxOptions(BackendOptions):
    """Options of the PocketSphinx recogniser (default: the models bundled in the package)."""

    hmm: str | None = Field(None, description="Acoustic model directory; default: the bundled en-US model.")
    lm: str | None = Field(None, description="N-gram language model (.lm.bin / .arpa); default: bundled.")
    dictionary: str | None = Field(None, description="Pronunciation dictionary; default: bundled CMUdict.")

    def given(self) -> dict[str, str]:
        """The model paths set, as the Decoder's keyword arguments."""
        return {kw: v for opt, kw in _PATHS.items() if (v := getattr(self, opt)) is not None}


class PocketsphinxASR:
    """A loaded PocketSphinx decoder: 16 kHz mono audio in, lower-case words out."""

    name = "pocketsphinx"

    def __init__(self, options: PocketsphinxOptions | None = None) -> None:
        from pocketsphinx import Decoder

        self.options = options or PocketsphinxOptions()
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="ERROR", **self.options.given())

    def __reduce__(self) -> tuple[Any, tuple[PocketsphinxOptions]]:
        """Pickle as its options; the decoder is rebuilt where it is unpickled (a Ray worker)."""
        return PocketsphinxASR, (self.options,)

    def transcribe(self, audio: np.ndarray) -> str:
        """The words heard in one utterance ("" when none): int16 or float32 [-1, 1] samples at 16 kHz."""
        pcm = _as_int16(audio)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return " ".join(hyp.hypstr.split()) if hyp is not None else ""

    def config(self) -> dict[str, Any]:
        """What decides the transcripts: the backend, its version and any model paths given."""
        return {"name": self.name, "version": importlib.metadata.version("pocketsphinx"),
                **self.options.given()}


def _as_int16(audio: np.ndarray) -> np.ndarray:
    """1-D int16 samples from int16 or float [-1, 1] audio (ValueError for anything else)."""
    wav = np.asarray(audio)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {wav.shape}")
    if wav.dtype == np.int16:
        return np.ascontiguousarray(wav)
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected int16 or float samples, got dtype {wav.dtype}")
    return np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)


class Pocketsphinx:
    """The PocketSphinx backend: declaration for the recogniser registry."""

    name = "pocketsphinx"
    options = PocketsphinxOptions
    flat_fields: ClassVar[dict[str, str]] = {}

    def check(self, options: PocketsphinxOptions) -> None:
        """The package is installed and every model path given exists (loading is left to create)."""
        if importlib.util.find_spec("pocketsphinx") is None:
            raise ConfigError("the pocketsphinx recogniser is not installed: pip install pocketsphinx==5.1.0")
        for what, path in options.given().items():
            if not Path(path).exists():
                raise ConfigError(f"pocketsphinx {what} {path} does not exist")

    def create(self, options: PocketsphinxOptions, threads: int | None) -> PocketsphinxASR:
        """A loaded decoder (single-threaded by design; `threads` is not used)."""
        return PocketsphinxASR(options)

    def identity(self, options: PocketsphinxOptions) -> dict[str, Any]:
        """{"name": "pocketsphinx"} plus the model paths that differ from the bundled ones."""
        return {"name": self.name, **options.given()}


BACKEND = Pocketsphinx()
