"""Speech out: a trained unit vocoder turns deduplicated units into 16 kHz int16 audio.

`load_vocoder(path)` loads a vocoder checkpoint (a model directory or its run directory), `vocode(model,
units)` returns the waveform from the predicted durations (exactly sum(durations) · upsample · hop samples:
Griffin-Lim's output is cut or zero-padded to F · hop for F mel frames), `write_wav_atomic` writes it with
a temp name and a rename. The checks refuse, as InputErrors, what a user can get wrong: a checkpoint that
is not a vocoder, units of another codebook or K, units outside [0, K), an empty sequence, an output
folder that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import EchoxError, InputError


def load_vocoder(path: str | Path) -> Any:
    """The vocoder checkpoint at `path` (or `path`/model), in eval mode; InputError for anything else."""
    from models.io import read_config
    from tasks.inference import load_checkpoint_model

    p = Path(path)
    if not p.exists():
        raise InputError(f"vocoder checkpoint not found: {p}")
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        p = p / "model"
    try:
        stage = read_config(p)["stage"]
    except EchoxError as e:
        raise InputError(f"{path} is not a vocoder checkpoint: {e}") from e
    if stage != "vocoder":
        raise InputError(f"{path} holds a {stage} model, not a vocoder (train one with echox train --stage "
                         "vocoder)")
    return load_checkpoint_model(p, "vocoder")


def codebook_of(model: Any) -> dict[str, Any]:
    """The codebook identity a vocoder (or a T2C/echo model) records: num_units, sha256, ..."""
    info = getattr(model, "build_info", None)
    extra = dict(getattr(info, "extra", {}) or {})
    record = dict(extra.get("codebook") or {})
    record.setdefault("num_units", extra.get("num_units"))
    return record


def check_codebook(vocoder: Any, other: dict[str, Any], what: str) -> None:
    """InputError unless `other` (a corpus's or a unit model's codebook record) is the vocoder's codebook:
    the same K, and the same sha256 where both record one."""
    mine = codebook_of(vocoder)
    if other.get("num_units") is not None and int(other["num_units"]) != int(mine["num_units"]):
        raise InputError(f"the vocoder speaks K={mine['num_units']} units, {what} has "
                         f"K={other['num_units']}; use a vocoder trained on the same corpus codebook")
    sha, theirs = mine.get("sha256"), other.get("sha256")
    if sha and theirs and sha != theirs:
        raise InputError(f"the vocoder was trained on codebook {sha[:12]}…, {what} uses codebook "
                         f"{theirs[:12]}…; use a vocoder trained on the same corpus codebook")


def check_units(units: Sequence[int] | np.ndarray, num_units: int) -> np.ndarray:
    """The units as int64; InputError for an empty sequence or a unit outside [0, K)."""
    arr = np.asarray(units, dtype=np.int64).reshape(-1)
    if arr.size == 0:
        raise InputError("no units to vocode (the unit sequence is empty)")
    bad = arr[(arr < 0) | (arr >= num_units)]
    if bad.size:
        raise InputError(f"unit {int(bad[0])} is outside [0, {num_units}) of the vocoder's codebook")
    return arr


def parse_units(text: str) -> list[int]:
    """Units from a string like "12 7 33" (spaces or commas); InputError for anything else."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError as e:
        raise InputError(f"--units must be whole numbers separated by spaces, got {text!r}") from e


def check_out_wav(path: str | Path) -> Path:
    """The output WAV path; InputError when its folder does not exist or it is a directory."""
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"--out-wav folder {p.parent} does not exist")
    if p.is_dir():
        raise InputError(f"--out-wav {p} is a directory; give a file name")
    return p


def vocode_with_durations(model: Any, units: Sequence[int] | np.ndarray,
                          duration_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 16 kHz waveform, predicted durations in unit frames) of a unit sequence; `duration_scale`
    stretches the predicted durations (> 1: slower speech)."""
    import torch

    if not duration_scale > 0:
        raise InputError(f"duration scale must be > 0, got {duration_scale}")
    arr = check_units(units, model.num_units)
    with torch.inference_mode():
        durations, mel = model.predict(torch.from_numpy(arr), duration_scale)
        wav = model.generate(mel)  # (F · hop,)
    pcm = np.clip(np.round(wav.numpy() * 32767.0), -32768, 32767).astype(np.int16)
    return pcm, durations.numpy()


def vocode(model: Any, units: Sequence[int] | np.ndarray, duration_scale: float = 1.0) -> np.ndarray:
    """The 16 kHz int16 waveform of a unit sequence (predicted durations)."""
    return vocode_with_durations(model, units, duration_scale)[0]


def write_wav_atomic(path: str | Path, audio: np.ndarray, sr: int = 16_000) -> Path:
    """Write 1-D int16 audio as a WAV under a temp name, then rename it into place."""
    from tasks.audio import write_wav
    from tasks.shards import atomic_write

    p = Path(path)
    atomic_write(p, lambda tmp: write_wav(tmp, audio, sr))
    return p


def corpus_units(corpus_dir: str | Path, row_id: str,
                 side: str = "answer") -> tuple[list[int], dict[str, Any]]:
    """The `side` units of row `row_id` of a corpus, and the corpus's codebook identity."""
    import pyarrow.compute as pc

    from tasks.data import load_table
    from tasks.train_stage import corpus_codebook

    if not Path(corpus_dir).is_dir():
        raise InputError(f"corpus directory not found: {corpus_dir}")
    codebook = corpus_codebook(Path(corpus_dir))
    table = load_table(corpus_dir, verify=False).select(["id", f"{side}_units"])
    hit = table.filter(pc.equal(table.column("id"), row_id))
    if hit.num_rows == 0:
        raise InputError(f"{corpus_dir} has no row with id {row_id!r}")
    return list(hit.column(f"{side}_units")[0].as_py()), codebook
