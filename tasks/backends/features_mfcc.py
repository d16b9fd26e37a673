"""MFCC frame features (+ deltas) at 100 Hz: HuBERT's first-iteration k-means targets; no weights."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from core.errors import ConfigError, InputError
from tasks.audio import SAMPLE_RATE, as_float_waveform
from tasks.backends.registry import BackendOptions


class MFCCFeatures:
    """MFCC (+ deltas and delta-deltas) at 100 Hz: HuBERT's first-iteration k-means targets."""

    name = "mfcc"

    def __init__(
        self, n_mfcc: int = 13, deltas: bool = True, frame_rate: float = 100, cmvn: bool = False
    ) -> None:
        import torchaudio  # deferred: keeps importing this module cheap for Ray workers

        if n_mfcc < 1:
            raise ConfigError(f"n_mfcc must be >= 1, got {n_mfcc}")
        hop = SAMPLE_RATE / frame_rate if frame_rate > 0 else 0.5
        if hop != int(hop):
            raise ConfigError(f"frame_rate must divide {SAMPLE_RATE} Hz into whole samples, got {frame_rate}")
        self.n_mfcc, self.deltas, self.cmvn = n_mfcc, deltas, cmvn
        self.frame_rate = float(frame_rate)
        self.dim = n_mfcc * (3 if deltas else 1)
        self._win = 400  # 25 ms
        self._hop = int(hop)
        # center=False frames like Kaldi's snip_edges: one frame per full window, as HuBERT's dump_mfcc.
        melkwargs = {"n_fft": self._win, "win_length": self._win, "hop_length": self._hop, "n_mels": 40}
        self._mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc, melkwargs={**melkwargs, "center": False}
        )
        self._deltas = torchaudio.functional.compute_deltas

    def extract(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz audio -> (T, dim) float32, T = 1 + (len - 400) // hop (short audio padded to one window)."""
        import torch

        wav = as_float_waveform(audio)
        if wav.size == 0:
            raise InputError("audio is empty")
        if wav.size < self._win:
            wav = np.pad(wav, (0, self._win - wav.size))
        with torch.inference_mode():
            feats = self._mfcc(torch.from_numpy(wav))  # (n_mfcc, T)
            if self.deltas:
                d1 = self._deltas(feats)
                feats = torch.cat([feats, d1, self._deltas(d1)], dim=0)  # (3 * n_mfcc, T)
            feats = feats.T.contiguous()  # (T, dim)
            if self.cmvn:
                feats = (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-5)
        return feats.numpy().astype(np.float32, copy=False)

    def config(self) -> dict[str, Any]:
        """JSON-able description of these features."""
        return {
            "name": self.name,
            "n_mfcc": self.n_mfcc,
            "deltas": self.deltas,
            "frame_rate": self.frame_rate,
            "cmvn": self.cmvn,
            "dim": self.dim,
            "sample_rate": SAMPLE_RATE,
        }


class MFCCOptions(BackendOptions):
    """Options of the MFCC extractor."""

    n_mfcc: int = Field(13, description="Cepstral coefficients per frame.")
    deltas: bool = Field(True, description="Append deltas and delta-deltas (dim = 3 × n_mfcc).")
    frame_rate: float = Field(100, description="Frames per second (must divide 16000 Hz).")
    cmvn: bool = Field(False, description="Per-utterance mean and variance normalisation.")


class MFCC:
    """The MFCC backend: declaration for the feature registry."""

    name = "mfcc"
    options = MFCCOptions
    flat_fields: ClassVar[dict[str, str]] = {}

    def check(self, options: MFCCOptions) -> None:
        """Nothing to load; the constructor checks the values."""

    def create(self, options: MFCCOptions, threads: int | None) -> MFCCFeatures:
        """An MFCC extractor (torch threads are pinned by the worker)."""
        return MFCCFeatures(**options.model_dump())

    def identity(self, options: MFCCOptions) -> dict[str, Any]:
        """{"name": "mfcc"} plus any option off its default (the manifest's codebook.features)."""
        return {"name": self.name, **options.model_dump(exclude_defaults=True)}

    def codebook_key(self, options: MFCCOptions) -> dict[str, Any]:
        """The feature config a codebook fitted on these features records."""
        return MFCCFeatures(**options.model_dump()).config()


BACKEND = MFCC()
