"""Echo pseudo-labelling as pure functions over a batch of corpus rows (no files, no Ray).

Y′_t = argmax lm_head(hidden[:, t]) of the S2T's teacher-forced states, cut into sentence segments;
the frozen T2C generates units for each segment (batched, KV-cached, with a length guard). The worker
and the driver around these are in tasks/echo_labels.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa
import torch

from core.errors import InputError
from data_specs import echo_labels as spec
from models.echo import sentence_segments  # the segmenting rule, shared with online echo targets

# ----------------------------------------------------------------------------- pure labelling


@dataclass
class LabelStats:
    """Counters of one labelling run (summed over batches and shards)."""

    rows: int = 0
    rejected: int = 0
    tokens: int = 0
    correct_tokens: int = 0
    segments: int = 0
    units: int = 0
    """Units of the kept rows' segments."""
    units_generated: int = 0
    """Every unit the T2C generated, rejected rows' included (for the throughput)."""
    gen_seconds: float = 0.0

    def add(self, other: LabelStats) -> None:
        """Add another run's counters to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_dict(cls, data: dict) -> LabelStats:
        """Counters from their dict form (a done marker)."""
        return cls(**{f.name: data.get(f.name, 0) for f in fields(cls)})


@dataclass
class LabelResult:
    """Output records (the echo-label schema), rejects as (row index, reason), and counters."""

    records: list[dict] = field(default_factory=list)
    rejects: list[tuple[int, str]] = field(default_factory=list)
    stats: LabelStats = field(default_factory=LabelStats)


@torch.inference_mode()
def echo_token_ids(s2t: Any, rows: Sequence[dict]) -> list[list[int]]:
    """Y′ of each row: argmax of the LM head at every state predicting a gold answer token."""
    from tasks.collate import collate_s2t

    device = next(s2t.parameters()).device
    batch = {k: v.to(device) for k, v in collate_s2t(list(rows), s2t).items()}
    hidden, mask = s2t.answer_hidden_states(batch)  # (B, A, H), (B, A)
    ids = s2t.lm_head()(hidden).argmax(-1)  # (B, A)
    return [ids[b, : int(n)].tolist() for b, n in enumerate(mask.sum(1).tolist())]


def length_guard(t2c: Any, prefix_len: int, max_units: int) -> int:
    """Most units the T2C may generate after a prefix of `prefix_len` tokens (max_units or its positions)."""
    return max(0, min(max_units, t2c.max_positions - prefix_len - 1))


def label_rows(s2t: Any, t2c: Any, rows: Sequence[dict], *, max_units: int) -> LabelResult:
    """Echo labels of a batch of corpus rows (one S2T batch, one batched T2C generation)."""
    result = LabelResult()
    gold = [s2t.chat.encode(str(r["answer_text"])) for r in rows]
    live = [i for i, g in enumerate(gold) if g]
    result.rejects += [(i, "the answer text has no tokens") for i, g in enumerate(gold) if not g]
    if not live:
        return result
    echoes = echo_token_ids(s2t, [rows[i] for i in live])
    pairs = list(zip(live, echoes, strict=True))
    spans = {i: sentence_segments([s2t.chat.decode([t]) for t in y]) for i, y in pairs}
    pieces = [(i, k, y[a:b]) for i, y in pairs for k, (a, b) in enumerate(spans[i])]
    t0 = time.perf_counter()
    generated = t2c.generate_units([p[2] for p in pieces], max_units=max_units)
    result.stats.gen_seconds += time.perf_counter() - t0
    by_row: dict[int, list] = {i: [] for i in live}
    for (i, k, ids), out in zip(pieces, generated, strict=True):
        by_row[i].append((k, ids, out))
    for i, y in pairs:
        _finish_row(result, i, rows[i], gold[i], y, spans[i], by_row[i], t2c, max_units, s2t.chat)
    return result


def _finish_row(result: LabelResult, i: int, row: dict, gold: list[int], echo: list[int],
                spans: list[tuple[int, int]], segs: list, t2c: Any, max_units: int, chat: Any) -> None:
    """Add one row's record (or its reject) and counters to `result`."""
    stats = result.stats
    stats.units_generated += sum(len(out.units) for _, _, out in segs)
    for k, ids, out in segs:
        if out.truncated:
            guard = length_guard(t2c, len(ids), max_units)
            result.rejects.append((i, f"T2C hit the length guard of {guard} units on segment {k}"))
            return
    correct = sum(int(a == b) for a, b in zip(echo, gold, strict=True))
    stats.rows += 1
    stats.tokens += len(gold)
    stats.correct_tokens += correct
    stats.segments += len(spans)
    stats.units += sum(len(out.units) for _, _, out in segs)
    result.records.append({
        "id": str(row["id"]), "answer_token_ids": gold, "echo_token_ids": echo,
        "echo_text": chat.decode(echo), "token_accuracy": correct / len(gold),
        "segment_start": [a for a, _ in spans], "segment_end": [b for _, b in spans],
        "segment_text": [chat.decode(ids) for _, ids, _ in segs],
        "segment_units": [list(out.units) for _, _, out in segs],
    })


def label_batch(s2t: Any, t2c: Any, rows: Sequence[dict], *, max_units: int) -> LabelResult:
    """label_rows, falling back to one row at a time when a row cannot be collated (it is rejected)."""
    try:
        return label_rows(s2t, t2c, rows, max_units=max_units)
    except InputError as e:
        if len(rows) == 1:
            return LabelResult(rejects=[(0, str(e))])
    result = LabelResult()
    for i, row in enumerate(rows):
        one = label_batch(s2t, t2c, [row], max_units=max_units)
        result.records += one.records
        result.rejects += [(i, reason) for _, reason in one.rejects]
        result.stats.add(one.stats)
    return result


def labels_table(records: list[dict]) -> pa.Table:
    """Records as a validated table of the echo-label schema."""
    table = pa.Table.from_pylist(records, schema=spec.SCHEMA)
    spec.validate(table)
    return table
