"""Inference helpers used by later stages and by people: load checkpoints, answer, text → units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from core.errors import CheckpointError, InputError


def load_audio(path: str | Path) -> np.ndarray:
    """A WAV/FLAC file as 1-D int16 at 16 kHz (channels averaged, resampled)."""
    import soundfile as sf

    from tasks.tts import to_16k_int16

    p = Path(path)
    if not p.exists():
        raise InputError(f"audio file not found: {p}")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own types for unreadable files
        raise InputError(f"cannot read audio {p}: {e}") from e
    if not len(data):
        raise InputError(f"audio file {p} is empty")
    return to_16k_int16(data.mean(axis=1), int(rate))


def check_window(model: nn.Module, audio: np.ndarray, path: str | Path) -> None:
    """Refuse a question longer than the speech encoder's window (it would be cut without a word)."""
    s2t = getattr(model, "s2t", model)
    limit = getattr(s2t, "max_samples", None)
    if limit is not None and len(audio) > limit:
        raise InputError(f"{path} lasts {len(audio) / 16000:.1f} s, longer than the model's "
                         f"{limit / 16000:.0f} s speech window; trim or split the question")


def load_checkpoint_model(path: str | Path, stage: str | None = None) -> nn.Module:
    """A saved model (a run directory's model/ is found too), in eval mode."""
    from models.io import load_model

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        p = p / "model"
    model = load_model(p, expect_stage=stage)
    return model.eval()


def load_s2t(path: str | Path) -> nn.Module:
    """The S2T part of a stage-I or echo checkpoint."""
    model = load_checkpoint_model(path)
    return getattr(model, "s2t", model)


def answer(model: nn.Module, audio: np.ndarray, *, max_new_tokens: int = 64, sample: bool = False,
           temperature: float = 0.8, top_p: float = 0.95, seed: int = 0) -> str:
    """The S2T model's text answer to one spoken question (KV-cached decoding)."""
    import torch

    with torch.inference_mode():
        return model.generate(audio, max_new_tokens=max_new_tokens, do_sample=sample,
                              temperature=temperature, top_p=top_p, seed=seed if sample else None)


def text_to_units(model: nn.Module, text: str, max_units: int = 1000) -> tuple[list[int], bool]:
    """Units a T2C model generates for `text`, and whether the length guard stopped it."""
    import torch

    ids = model.encode(text)
    if not ids:
        raise InputError("text has no tokens")
    with torch.inference_mode():
        out = model.generate_units([ids], max_units=max_units)[0]
    return list(out.units), bool(out.truncated)
