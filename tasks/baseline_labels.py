"""The no-echo baseline's labels: the echo-label format (data_specs/echo_labels.py) filled from the corpus.

Stage III trains the Echo decoder on what the S2T model echoes (Y′, cut into sentences) and the units the
frozen T2C generates for it (tasks/echo_labels.py). The knowledge experiment's no-echo baseline trains the
same decoder, for the same steps, on the corpus's own answer instead: the "echo" is the gold answer's
tokens (token accuracy 1) and its one segment's units are the corpus's `answer_units` (the deduplicated
units of the answer's TTS audio, as the corpus stores them). The answer audio is one utterance with no
alignment to cut it at sentence ends, so the whole answer is one segment. A row whose units would not
fit the Echo decoder is rejected with a reason: the length guard of echo labelling (`max_units`, and the
T2C's positions after the answer's tokens; counted in the decoder's targets, unit-words under a unit
language); rows + rejects = corpus rows.

No model runs: the S2T checkpoint gives its tokenizer (`llm/`, the token ids the echo collator computes
again) and the T2C checkpoint its config (positions, K, unit language), so a corpus is labelled in
seconds, in one process. The output directory is what echo-labels writes (shards, rejects.jsonl, the
datasets layout, manifest.json last, with `"labels": "corpus"`), read by `echox train --stage echo
--echo-labels DIR` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tasks.echo_labels import (
    LabelResult,
    checkpoint_path,
    finalize_run,
    length_guard,
    plan_run,
    write_label_shard,
)
from tasks.shards import load_manifest

FORMAT_VERSION = 1
"""How the baseline labels are made from a corpus (bump when that changes: the pipeline redoes them)."""
LABELS = "corpus"
"""The manifest's `labels` (and the run hash's): the corpus's own answers, not echo pseudo-labels."""
SEGMENTING = "one segment per answer: the gold answer's tokens and the corpus's answer units of its TTS audio"


class CorpusLabeler:
    """Labels corpus rows with their gold answer tokens and own answer units (a `ShardLabeler`)."""

    columns = ("id", "answer_text", "answer_units")
    """The corpus columns `label` reads."""
    stage = "baseline"
    """The `stage` of its rejects."""

    def __init__(self, s2t_path: str, t2c_path: str, *, max_units: int = 1000) -> None:
        from models.io import LLM_SUBDIR, read_config
        from models.llm import ChatFormat, load_tokenizer
        from models.presets import preset_from_dict
        from models.t2c import read_unit_language

        s2t = checkpoint_path(s2t_path)
        preset = preset_from_dict(read_config(s2t)["preset"])
        self.chat = ChatFormat(load_tokenizer(s2t / LLM_SUBDIR), preset.audio_token, preset.system_prompt)
        t2c = read_config(checkpoint_path(t2c_path))
        self.max_positions = int(t2c["preset"]["t2c_max_positions"])  # the Echo decoder is the T2C's
        extra = t2c.get("extra", {})
        language = extra.get("unit_language")
        self.language = read_unit_language(language, int(extra["num_units"])) if language else None
        self.max_units = max_units

    def label(self, rows: Sequence[dict]) -> LabelResult:
        """Labels of rows (one segment each); reject indices refer to `rows`."""
        result = LabelResult()
        for i, row in enumerate(rows):
            reason = self._add(result, row)
            if reason:
                result.rejects.append((i, reason))
        result.stats.rejected = len(result.rejects)
        return result

    def _add(self, result: LabelResult, row: dict) -> str | None:
        """Add one row's record and counters to `result`; the reason when it is rejected instead."""
        from models.t2c import units_to_targets

        gold = self.chat.encode(str(row["answer_text"]))
        units = [int(u) for u in row["answer_units"]]
        if not gold:
            return "the answer text has no tokens"
        if not units:
            return "the answer has no units"
        targets = len(units_to_targets(self.language, units))
        guard = length_guard(self, len(gold), self.max_units)
        if targets > guard:
            return f"the answer's {targets} unit targets exceed the length guard of {guard} units"
        text = self.chat.decode(gold)
        result.records.append({
            "id": str(row["id"]), "answer_token_ids": gold, "echo_token_ids": gold, "echo_text": text,
            "token_accuracy": 1.0, "segment_start": [0], "segment_end": [len(gold)],
            "segment_text": [text], "segment_units": [units],
        })
        stats = result.stats
        stats.rows, stats.segments = stats.rows + 1, stats.segments + 1
        stats.tokens, stats.correct_tokens = stats.tokens + len(gold), stats.correct_tokens + len(gold)
        stats.units += len(units)
        return None


def plan_labels(corpus: str, s2t: str, t2c: str, out: str, *, max_units: int = 1000,
                overwrite: bool = False) -> dict:
    """Check the inputs and prepare `out` (tasks/echo_labels.py: plan_run, under this run's own hash)."""
    return plan_run(corpus, s2t, t2c, out, max_units=max_units, overwrite=overwrite, labels=LABELS)


def write_labels(plan: dict, s2t: str, t2c: str, out: str) -> dict:
    """Label every shard of a planned run (a shard whose verified output exists is skipped) and finish
    it; returns the manifest (a run that was already done is kept as it is)."""
    if plan["done"]:
        return load_manifest(Path(out)) or {}
    labeler = CorpusLabeler(s2t, t2c, max_units=plan["max_units"])
    entries = []
    for job in plan["jobs"]:
        kwargs = {k: job[k] for k in ("sha256", "first_row", "run_hash")}
        entries.append({**write_label_shard(labeler, job["corpus_shard"], job["out_path"], **kwargs),
                        "shard": job["shard"]})
    return finalize_run(out, plan, entries, segmenting=SEGMENTING)


def label_corpus(corpus: str, s2t: str, t2c: str, out: str, *, max_units: int = 1000,
                 overwrite: bool = False) -> dict:
    """The baseline labels of a corpus into `out`, in this process; returns the manifest."""
    plan = plan_labels(corpus, s2t, t2c, out, max_units=max_units, overwrite=overwrite)
    return write_labels(plan, s2t, t2c, out)
