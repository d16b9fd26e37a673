"""Collators turning corpus rows into model batches, and example lengths for bucketing, per stage.

Rows are dicts of corpus columns (audio as int16 numpy arrays or lists). Batches are dicts of tensors
whose keys are exactly the keyword arguments of the stage's `model.forward`:

- s2t: input_features (B, mels, 2·P) float, audio_lengths (B,) valid 50 Hz encoder frames,
  input_ids / attention_mask / labels (B, L) — chat prompt + answer text + end-of-turn, right-padded,
  labels -100 except on answer + end-of-turn tokens —, audio_pos (B,) index of the placeholder,
  answer_lengths (B,) answer-text tokens (end-of-turn excluded), ctc_targets (B, Q) / ctc_lengths (B,)
  question-transcript tokens.
- t2c: text_ids (B, T) / text_lengths (B,) answer-text tokens, units (B, U) / unit_lengths (B,),
  unit_eos (B,) bool (False when units were cut to fit max_positions: no EOS target then). `units` are
  the decoder's targets: the raw corpus units, or their unit-words when the model has a unit language
  (`model.unit_targets`); raw ids are checked against K first.
- echo: the s2t keys + segment_start / segment_end (B,) answer-token span [start, end),
  segment_units (B, U) / segment_unit_lengths (B,) / segment_unit_eos (B,).

models/stages.py names them per stage; tasks/collate.py's make_collator / example_length look them up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InputError

Batch = dict[str, Tensor]
SAMPLE_RATE = 16_000


def _pad(seqs: list[list[int]], value: int) -> tuple[Tensor, Tensor]:
    """Right-padded (B, L) long tensor and (B,) lengths of int lists (L ≥ 1)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, *map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def _column(row: dict[str, Any], name: str) -> Any:
    """row[name], or InputError naming the missing column."""
    if name not in row:
        raise InputError(f"row {row.get('id', '?')!r} lacks column {name!r}")
    return row[name]


# ----------------------------------------------------------------------------- s2t


def _s2t_text(row: dict[str, Any], model: Any) -> tuple[list[int], list[int], int, list[int]]:
    """(input ids, labels, answer-text length, CTC targets) of one row."""
    from models.speech import ctc_target_ids

    chat = model.chat
    answer = chat.encode(str(_column(row, "answer_text")))
    ids = [*chat.prompt_ids, *answer, *chat.suffix_ids]
    labels = [-100] * len(chat.prompt_ids) + answer + list(chat.suffix_ids)
    ctc = ctc_target_ids(model.adapter, chat, str(_column(row, "question_text")))
    return ids, labels, len(answer), ctc


def collate_s2t(rows: list[dict[str, Any]], model: Any) -> Batch:
    """Stage-I batch (see module docstring)."""
    from models.speech import encoder_frames, log_mel

    chat = model.chat
    audios = [np.asarray(_column(r, "question_audio")) for r in rows]
    for r, a in zip(rows, audios, strict=True):
        if a.size == 0 or int(r.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise InputError(f"row {r.get('id', '?')!r}: question_audio must be non-empty 16 kHz audio")
    parts = [_s2t_text(r, model) for r in rows]
    input_ids, lengths = _pad([p[0] for p in parts], chat.pad_id)
    labels, _ = _pad([p[1] for p in parts], -100)
    ctc_targets, ctc_lengths = _pad([p[3] for p in parts], 0)
    samples = torch.tensor([min(a.size, model.max_samples) for a in audios])
    return {
        "input_features": log_mel(model.feature_extractor, audios),
        "audio_lengths": encoder_frames(samples, model.max_frames),
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
        "labels": labels,
        "audio_pos": torch.full((len(rows),), chat.audio_pos, dtype=torch.long),
        "answer_lengths": torch.tensor([p[2] for p in parts], dtype=torch.long),
        "ctc_targets": ctc_targets,
        "ctc_lengths": ctc_lengths,
    }


# ----------------------------------------------------------------------------- t2c


def _units(row: dict[str, Any], column: str, num_units: int) -> list[int]:
    """Unit ids of a row, checked against the unit vocabulary."""
    units = [int(u) for u in np.asarray(_column(row, column)).tolist()]
    if any(u < 0 or u >= num_units for u in units):
        raise InputError(f"row {row.get('id', '?')!r}: {column} has ids outside [0, {num_units})")
    return units


def fit_units(text: list[int], units: list[int], max_positions: int) -> tuple[list[int], list[int], bool]:
    """Cut text/units so text + SEP + units + EOS fits max_positions; the bool says whether EOS is kept."""
    text = text[: max(1, max_positions // 2)] if len(text) + 2 > max_positions else text
    room = max_positions - len(text) - 1  # positions left after text + SEP
    if len(units) + 1 <= room:
        return text, units, True
    return text, units[: max(0, room)], False


def units_batch(fitted: list[tuple[list[int], list[int], bool]], decoder: Any, prefix: str) -> Batch:
    """Padded text / target tensors of fitted rows under names `<prefix>...`."""
    # decoder.num_units is its target vocabulary N (units or unit-words): PAD = N + 2.
    unit_ids, unit_lengths = _pad([f[1] for f in fitted], decoder.num_units + 2)
    out = {f"{prefix}units": unit_ids, f"{prefix}unit_lengths": unit_lengths,
           f"{prefix}unit_eos": torch.tensor([f[2] for f in fitted], dtype=torch.bool)}
    if prefix == "":
        text_ids, text_lengths = _pad([f[0] for f in fitted], 0)
        out |= {"text_ids": text_ids, "text_lengths": text_lengths}
    return out


def collate_t2c(rows: list[dict[str, Any]], model: Any) -> Batch:
    """Stage-II batch (see module docstring)."""
    texts = [model.encode(str(_column(r, "answer_text"))) for r in rows]
    units = [model.unit_targets(_units(r, "answer_units", model.num_units)) for r in rows]
    fitted = [fit_units(t, u, model.max_positions) for t, u in zip(texts, units, strict=True)]
    return units_batch(fitted, model.decoder, "")


# ----------------------------------------------------------------------------- echo


def collate_echo(rows: list[dict[str, Any]], model: Any) -> Batch:
    """Stage-III batch: the S2T batch plus one answer segment and its pseudo-label units per row."""
    batch = collate_s2t(rows, model.s2t)
    starts = torch.tensor([int(_column(r, "segment_start")) for r in rows], dtype=torch.long)
    ends = torch.tensor([int(_column(r, "segment_end")) for r in rows], dtype=torch.long)
    bad = (starts < 0) | (ends <= starts) | (ends > batch["answer_lengths"])
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InputError(
            f"row {rows[i].get('id', '?')!r}: segment [{int(starts[i])}, {int(ends[i])}) is outside its "
            f"{int(batch['answer_lengths'][i])} answer tokens (labels made with another tokenizer?)"
        )
    dec = model.echo_decoder
    units = [model.unit_targets(_units(r, "segment_units", model.num_units)) for r in rows]
    spans = [[0] * n for n in (ends - starts).tolist()]
    fitted = [fit_units(t, u, dec.max_positions) for t, u in zip(spans, units, strict=True)]
    ends = starts + torch.tensor([len(f[0]) for f in fitted], dtype=torch.long)  # a cut prefix cuts the span
    batch |= units_batch(fitted, dec, "segment_")
    return batch | {"segment_start": starts, "segment_end": ends}


# ----------------------------------------------------------------------------- lengths
# Approximate tokens of a row (≈4 characters a token), for length bucketing.


def _text_tokens(row: dict[str, Any], column: str) -> int:
    """≈ tokens of a text column."""
    return len(str(row.get(column, ""))) // 4


def s2t_length(row: dict[str, Any]) -> int:
    """Stage-I length: question + answer + chat-template tokens."""
    return _text_tokens(row, "question_text") + _text_tokens(row, "answer_text") + 1 + 16


def t2c_length(row: dict[str, Any]) -> int:
    """Stage-II length: answer text + raw units (a bound on the unit-words a unit language predicts)."""
    return _text_tokens(row, "answer_text") + 1 + len(row.get("answer_units", ()))


def echo_length(row: dict[str, Any]) -> int:
    """Stage-III length: the stage-I length + the segment's pseudo-label units."""
    return s2t_length(row) + len(row.get("segment_units", ()))
