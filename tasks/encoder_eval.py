"""How well the pretrained encoder hears: greedy CTC transcripts of the rows the encoder stage held out.

Each held-out row (`models/holdout.py`, the `encoder` StageSpec's `holdout`) gives two utterances, its
question and its answer audio; the transcript (argmax per CTC frame, repeats merged, blanks dropped, as
text: detokenised, or the characters) is scored against the spoken text the TTS read: word error rate with
the ASR normaliser (tasks/asr.py) and character error rate on the same normalised text. The summary keeps
the question side apart (`question_wer`): stage I hears questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.asr import word_error_rate
from tasks.eval_stats import levenshtein
from tasks.text_norm import normalize_words

DEFAULT_LIMIT = 64
"""Held-out rows transcribed at most (two utterances each)."""
SIDES = ("question", "answer")


def char_error_rate(reference: str, hypothesis: str) -> float:
    """Character edit distance / reference characters, on the normalised texts (may exceed 1)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return levenshtein(ref, hyp) / len(ref)


def utterances(rows: list[dict]) -> list[tuple[str, str, str, np.ndarray]]:
    """(id, side, spoken text, int16 audio) of both utterances of each row, question first."""
    return [(r["id"], side, str(r[f"{side}_text"]), np.asarray(r[f"{side}_audio"], dtype=np.int16))
            for r in rows for side in SIDES]


def score_rows(model: Any, rows: list[dict], batch_size: int = 8) -> list[dict[str, Any]]:
    """One scored item per utterance: id, side, text, transcript, wer, cer."""
    clips = utterances(rows)
    out: list[dict[str, Any]] = []
    for i in range(0, len(clips), batch_size):
        chunk = clips[i: i + batch_size]
        for (rid, side, text, _), heard in zip(chunk, model.transcribe([u[3] for u in chunk]), strict=True):
            out.append({"id": rid, "side": side, "text": text, "transcript": heard,
                        "wer": word_error_rate(text, heard), "cer": char_error_rate(text, heard)})
    return out


def summarise(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean WER/CER over all utterances and over the question side alone."""
    def mean(key: str, side: str | None = None) -> float | None:
        vals = [it[key] for it in items if side is None or it["side"] == side]
        return round(float(np.mean(vals)), 4) if vals else None

    return {"rows": len({it["id"] for it in items}), "utterances": len(items),
            "wer": mean("wer"), "cer": mean("cer"),
            "question_wer": mean("wer", "question"), "question_cer": mean("cer", "question")}


def asr_eval(model_dir: str | Path, corpus_dir: str | Path, *, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """{"summary": means, "items": per utterance} for an encoder checkpoint on its held-out rows."""
    from tasks.inference import load_checkpoint_model
    from tasks.vocoder_eval import heldout_rows

    model = load_checkpoint_model(model_dir, "encoder")
    items = score_rows(model, heldout_rows(corpus_dir, limit, stage="encoder"))
    return {"summary": summarise(items), "items": items}


def write_asr_eval(run_dir: str | Path, corpus_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run the check for an encoder run folder: asr_eval.json there, its means in summary.json."""
    from tasks.shards import record_check

    result = asr_eval(Path(run_dir) / "model", corpus_dir, **kwargs)
    record_check(Path(run_dir), "asr_eval", result)
    return result


def table_rows(result: dict[str, Any], limit: int = 40) -> list[dict[str, Any]]:
    """Per-utterance rows (the first `limit`) and a final "mean" row, for a table artifact."""
    rows = [{"id": it["id"], "side": it["side"], "text": it["text"], "heard": it["transcript"],
             "wer": round(it["wer"], 3), "cer": round(it["cer"], 3)} for it in result["items"][:limit]]
    s = result["summary"]
    rows.append({"id": "mean", "side": f"{s['utterances']} utterances", "text": "",
                 "heard": f"question WER {s['question_wer']}, CER {s['question_cer']}",
                 "wer": s["wer"], "cer": s["cer"]})
    return rows


def heldout_log_probs(model: Any, rows: list[dict], batch_size: int = 8) -> list[tuple[str, str, np.ndarray]]:
    """(side, spoken text, (T, K) CTC log-probabilities) of both utterances of each held-out row."""
    import torch

    clips = utterances(rows)
    out: list[tuple[str, str, np.ndarray]] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            chunk = clips[i: i + batch_size]
            feats, lengths = model.features([u[3] for u in chunk])
            log_probs, valid = model.ctc_log_probs(feats, lengths)
            out += [(side, text, log_probs[j, : int(valid[j])].numpy()) for j, (_, side, text, _) in
                    enumerate(chunk)]
    return out


def lexicon_sweep(model_dir: str | Path, corpus_dir: str | Path, grid: list[dict[str, Any]], *,
                  limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """WER of a character-CTC encoder's held-out rows, greedy and with the lexicon decoder at each point
    of `grid` (preset field → value, models/presets.py DECODE_FIELDS): how its defaults were chosen, on
    rows no model trained on and no eval question. One row per decoder: its settings, wer, question_wer,
    ms per clip."""
    import dataclasses
    import time

    from core.errors import ConfigError
    from models.presets import DECODE_FIELDS, validate_preset
    from models.speech import CharAdapter, ctc_decode, lexicon_decoder
    from tasks.inference import load_checkpoint_model
    from tasks.vocoder_eval import heldout_rows

    settable = DECODE_FIELDS - {"ctc_decoder"}  # the sweep is of the lexicon decoder's settings
    unknown = sorted({k for point in grid for k in point} - settable)
    if unknown:
        raise ConfigError(f"lexicon sweep: {unknown} are not lexicon settings ({sorted(settable)})")
    model = load_checkpoint_model(model_dir, "encoder")
    if not isinstance(model.adapter, CharAdapter):
        raise ValueError(f"{model_dir}: the lexicon decoder reads a character CTC (ctc_target chars)")
    clips = heldout_log_probs(model, heldout_rows(corpus_dir, limit, stage="encoder"))

    def scored(name: dict[str, Any], decode: Any) -> dict[str, Any]:
        start = time.perf_counter()
        heard = [decode(lp) for _, _, lp in clips]
        ms = (time.perf_counter() - start) * 1000 / max(1, len(clips))
        wers = [(side, word_error_rate(text, h)) for (side, text, _), h in zip(clips, heard, strict=True)]
        return {**name, "wer": round(float(np.mean([w for _, w in wers])), 4),
                "question_wer": round(float(np.mean([w for s, w in wers if s == "question"])), 4),
                "ms_per_clip": round(ms, 1)}

    rows = [scored({"ctc_decoder": "greedy"},
                   lambda lp: ctc_decode(model.adapter, model.chat, lp.argmax(-1).tolist()))]
    preset = model.build_info.preset
    for point in grid:
        tried = validate_preset(dataclasses.replace(preset, ctc_decoder="lexicon", **point))
        decoder = lexicon_decoder(tried, model.chat.tokenizer)
        rows.append(scored({"ctc_decoder": "lexicon", **point}, decoder.decode))  # type: ignore[union-attr]
    return rows
