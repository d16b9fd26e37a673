"""Vocoder intelligibility: an ASR round trip on the rows the vocoder stage held out of training.

For each held-out row (`models/holdout.py`, the `vocoder` StageSpec's `holdout`) and each side
(answer, question): the ORIGINAL TTS audio of the corpus → ASR → WER against the spoken text, and the
row's gold units → vocoder → ASR → WER, once with the vocoder's PREDICTED durations (what `echox speak`
does) and once with the corpus's GOLD durations (the duration predictor taken out), and the original
audio's own log-mel through the generator (RESYNTHESIZED: units and model taken out, the generator's
ceiling). The summary is the mean of each WER over the utterances, `ratio` = wer_vocoded /
wer_original (the goal: ≤ 1.5) and the real-time factor of vocoding (seconds of vocoding per second of
audio, predicted durations, 1 thread).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from tasks.asr import Recogniser, make_asr, word_error_rate

log = logging.getLogger(__name__)

SIDES = ("answer", "question")
DEFAULT_LIMIT = 32
"""Held-out rows checked at most (two utterances each)."""


def heldout_rows(corpus_dir: str | Path, limit: int = DEFAULT_LIMIT, stage: str = "vocoder") -> list[dict]:
    """The corpus rows `stage` holds out of training, in id order, at most `limit` of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from models.stages import get_stage
    from tasks.data import load_table

    holdout = get_stage(stage).holdout
    if holdout is None:
        raise InputError(f"the {stage} stage holds out no rows")
    table = load_table(corpus_dir, verify=False)
    ids = sorted(holdout(table.column("id").to_pylist()))[:limit]
    hit = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.string())))
    return sorted(hit.to_pylist(), key=lambda r: r["id"])


def vocode_gold_durations(model: Any, units: Sequence[int], durations: Sequence[int]) -> np.ndarray:
    """The int16 waveform of deduplicated units with the corpus's gold durations (unit frames)."""
    import torch

    from tasks.vocode import check_units

    arr = torch.from_numpy(check_units(units, model.num_units)).reshape(1, -1)  # (1, U)
    durs = torch.as_tensor(np.asarray(durations, dtype=np.int64)).clamp_min(1).reshape(1, -1)  # (1, U)
    with torch.inference_mode():
        x, _, _ = model.encode(arr, torch.tensor([arr.shape[1]]))
        mel, _ = model.decode(x, durs)  # (1, F, n_mels)
        wav = model.generate(mel[0])
    return np.clip(np.round(wav.numpy() * 32767.0), -32768, 32767).astype(np.int16)


def score_side(model: Any, asr: Recogniser, row: dict, side: str, gold: bool) -> dict[str, Any]:
    """WERs of one utterance: original TTS audio, vocoded (predicted durations), vocoded (gold durations)."""
    from tasks.vocode import vocode

    text, original = row[f"{side}_text"], np.asarray(row[f"{side}_audio"], dtype=np.int16)
    units, durs = row[f"{side}_units"], row[f"{side}_durations"]
    t0 = time.perf_counter()
    audio = vocode(model, units)
    seconds = time.perf_counter() - t0
    out = {"id": row["id"], "side": side, "text": text,
           "wer_original": word_error_rate(text, asr.transcribe(original)),
           "wer_vocoded": word_error_rate(text, asr.transcribe(audio)),
           "audio_s": round(len(audio) / 16_000, 3), "vocode_s": round(seconds, 4)}
    if gold:
        out["wer_vocoded_gold_durations"] = word_error_rate(
            text, asr.transcribe(vocode_gold_durations(model, units, durs)))
        out["wer_resynthesized"] = word_error_rate(text, asr.transcribe(resynthesize(model, original)))
    return out


def resynthesize(model: Any, audio: np.ndarray) -> np.ndarray:
    """The original audio through the vocoder's own log-mel and generator (no units, no model): what the
    mel → waveform step alone loses, the ceiling any mel prediction can reach."""
    from models.vocoder import log_mel

    wav = model.generate(log_mel(audio, model.cfg))
    return np.clip(np.round(wav.numpy() * 32767.0), -32768, 32767).astype(np.int16)


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean WERs over the utterances, the ratio vocoded / original and the vocoding real-time factor."""
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else None

    original, vocoded = mean("wer_original"), mean("wer_vocoded")
    audio_s = sum(r["audio_s"] for r in rows)
    ratio = vocoded / original if original else (math.inf if vocoded else 1.0)
    return {"utterances": len(rows), "rows": len({r["id"] for r in rows}),
            "wer_original": original, "wer_vocoded": vocoded,
            "wer_vocoded_gold_durations": mean("wer_vocoded_gold_durations"),
            "wer_resynthesized": mean("wer_resynthesized"),
            "ratio": ratio if vocoded is not None and original is not None else None,
            "rtf": sum(r["vocode_s"] for r in rows) / audio_s if audio_s else None}


def intelligibility(vocoder_dir: str | Path, corpus_dir: str | Path, *,
                    asr: str | Recogniser = "pocketsphinx", limit: int = DEFAULT_LIMIT,
                    sides: Sequence[str] = SIDES, gold_durations: bool = True) -> dict[str, Any]:
    """The ASR round trip on the vocoder's held-out rows: {"summary": means and ratio, "rows": per
    utterance}; `asr` is a recogniser name or object; vocoding runs on 1 torch thread."""
    import torch

    from tasks.train_stage import corpus_codebook
    from tasks.vocode import check_codebook, load_vocoder

    model = load_vocoder(vocoder_dir)
    check_codebook(model, corpus_codebook(Path(corpus_dir)), f"corpus {corpus_dir}")
    recogniser = make_asr(asr, threads=1) if isinstance(asr, str) else asr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads thrash on small CPUs; the RTF is per thread
    try:
        rows = [score_side(model, recogniser, row, side, gold_durations)
                for row in heldout_rows(corpus_dir, limit) for side in sides]
    finally:
        torch.set_num_threads(threads)
    summary = summarise(rows)
    summary["asr"] = recogniser.config()
    return {"summary": summary, "rows": rows}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-utterance rows and a final "mean" row, rounded, for a table artifact."""
    keys = ("wer_original", "wer_resynthesized", "wer_vocoded", "wer_vocoded_gold_durations")
    out = [{"id": r["id"], "side": r["side"], **{k: round(r[k], 3) for k in keys if k in r}}
           for r in result["rows"]]
    s = result["summary"]
    out.append({"id": "mean", "side": f"ratio {s['ratio']:.2f}, rtf {s['rtf']:.3f}"
                if s["ratio"] is not None and s["rtf"] is not None else "",
                **{k: round(s[k], 3) for k in keys if s.get(k) is not None}})
    return out


def write_intelligibility(run_dir: str | Path, corpus_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run the check for a vocoder run folder: intelligibility.json there, its means in summary.json."""
    from tasks.shards import record_check

    result = intelligibility(Path(run_dir) / "model", corpus_dir, **kwargs)
    record_check(Path(run_dir), "intelligibility", result)
    return result
