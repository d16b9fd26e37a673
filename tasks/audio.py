"""Audio conversions shared by the TTS engines and the feature extractors: 16 kHz mono in, out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError

SAMPLE_RATE = 16_000


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
    import soundfile

    if audio.ndim != 1 or audio.dtype != np.int16:
        raise ValueError(f"expected 1-D int16 audio, got {audio.dtype} with shape {audio.shape}")
    soundfile.write(str(path), audio, sr, subtype="PCM_16", format="WAV")  # any file name, temp names too


def wav_bytes(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """1-D int16 audio as the bytes of a 16-bit PCM mono WAV file (a 44-byte header, then the samples)."""
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise ValueError(f"expected 1-D int16 audio, got {audio.dtype} with shape {audio.shape}")
    data = audio.astype("<i2", copy=False).tobytes()
    header = b"".join([b"RIFF", (36 + len(data)).to_bytes(4, "little"), b"WAVEfmt ",
                       (16).to_bytes(4, "little"), (1).to_bytes(2, "little"), (1).to_bytes(2, "little"),
                       sr.to_bytes(4, "little"), (2 * sr).to_bytes(4, "little"), (2).to_bytes(2, "little"),
                       (16).to_bytes(2, "little"), b"data", len(data).to_bytes(4, "little")])
    return header + data


def as_float_waveform(audio: np.ndarray) -> np.ndarray:
    """1-D int16 or float audio -> float32 in [-1, 1]; anything else is an InputError."""
    wav = np.asarray(audio)
    if wav.ndim != 1:
        raise InputError(f"audio must be 1-D mono samples, got shape {wav.shape}")
    if wav.dtype == np.int16:
        return wav.astype(np.float32) / 32768.0
    if not np.issubdtype(wav.dtype, np.floating):
        raise InputError(f"audio must be int16 or float samples, got dtype {wav.dtype}")
    return wav.astype(np.float32, copy=False)
