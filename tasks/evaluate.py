"""Spoken-QA evaluation (Llama Questions / Web Questions / TriviaQA style) of S2T and echo checkpoints.

Two steps, each a function over files: `prepare_questions` reads an eval set and synthesizes every
question (spoken form → TTS, cached by content hash), writing a questions manifest; `answer_questions`
loads the checkpoint once, answers each question from its audio and writes the JSON report
(data_specs/eval_results.py).

Correctness: a response is correct when some gold answer, normalised by `normalize_answer` (numbers as
words, no case, accents, punctuation or articles), occurs as a run of WHOLE words in the normalised
response ("six" does not match "sixteen"; "4" matches "four legs").

Unit metrics (echo checkpoint + a T2C checkpoint), per item, all against the reference units
R = T2C(spoken form of the reference answer), greedy:
- the S2T model is run teacher-forced on (question audio, reference answer), exactly as stage III labels
  and trains, and its states H that predict each answer token form ONE segment;
- `unit_accuracy`: the Echo decoder reads adapter(H) and, teacher-forced on R, predicts each of
  R's units and the final EOS; the fraction of those len(R) + 1 argmax predictions that are right;
- `unit_edit_distance`: the Echo decoder generates units greedily from adapter(H) (max_units guard);
  Levenshtein(generated, R) / max(len(generated), len(R)), in [0, 1] (0 when both are empty).
The streamed units of the model's own spoken answer are counted (num_units) but not scored: they speak
the model's response, which need not be the reference.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.eval_results import REPORT_TAG, SCHEMA_VERSION, validate_report
from data_specs.rejects import Reject
from echox.errors import ConfigError, InputError, RecordRejected
from tasks.shards import atomic_write
from tasks.text_norm import normalize_answer, spoken_form

SAMPLE_RATE = 16_000


# ----------------------------------------------------------------------------- eval set


@dataclass(frozen=True)
class EvalItem:
    """One valid eval question with its accepted answers."""

    line: int
    id: str
    question: str
    gold: tuple[str, ...]
    reference: str
    category: str | None = None


def _string_list(value: Any, name: str) -> tuple[str, ...]:
    """A list of strings, or RecordRejected naming the field."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordRejected(f"field {name!r} must be a list of strings")
    return tuple(value)


def _gold(rec: dict) -> tuple[tuple[str, ...], str]:
    """(accepted answers, reference answer): `answers`, else `aliases`, else `answer`."""
    answer = rec.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RecordRejected(f"field 'answer' must be a string, got {type(answer).__name__}")
    if rec.get("answers") is not None:
        gold = _string_list(rec["answers"], "answers")
    elif answer is None:
        raise RecordRejected("missing field 'answers' (or 'answer')")
    else:
        gold = _string_list(rec["aliases"], "aliases") if rec.get("aliases") else (answer,)
    # An answer that normalises to nothing ("The", "?") would match every response.
    usable = tuple(g for g in gold if normalize_answer(g))
    if not usable:
        raise RecordRejected("no gold answer is left after normalisation")
    return usable, answer if answer and answer.strip() else usable[0]


def parse_eval_record(rec: Any, line: int) -> EvalItem:
    """Validate one decoded eval record; raise RecordRejected with the reason."""
    if not isinstance(rec, dict):
        raise RecordRejected(f"record must be a JSON object, got {type(rec).__name__}")
    missing = [f for f in ("id", "question") if rec.get(f) is None]
    if missing:
        raise RecordRejected("missing field " + ", ".join(repr(m) for m in missing))
    rid, question, category = rec["id"], rec["question"], rec.get("category")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip():
        raise RecordRejected("field 'id' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise RecordRejected("field 'question' must be a non-empty string")
    if category is not None and not isinstance(category, str):
        raise RecordRejected(f"field 'category' must be a string, got {type(category).__name__}")
    gold, reference = _gold(rec)
    return EvalItem(line, str(rid), question, gold, reference, category)


def read_eval_set(path: Path) -> tuple[list[EvalItem], list[Reject]]:
    """Every valid record of a JSONL/Parquet/datasets eval set, and a reject per bad line or duplicate id."""
    from tasks.source import read_records

    return read_records(Path(path), parse_eval_record)


# ----------------------------------------------------------------------------- scoring


def match_answer(response: str, gold: tuple[str, ...] | list[str]) -> str | None:
    """The first gold answer found as whole words in the normalised response, or None."""
    words = f" {normalize_answer(response)} "
    for g in gold:
        norm = normalize_answer(g)
        if norm and f" {norm} " in words:
            return g
    return None


def levenshtein(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def unit_edit_distance(hyp: list[int], ref: list[int]) -> float:
    """Levenshtein(hyp, ref) / max(len(hyp), len(ref)): 0 identical, 1 nothing in common (0 if both empty)."""
    longest = max(len(hyp), len(ref))
    return levenshtein(hyp, ref) / longest if longest else 0.0


def summarize(items: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(summary, by_category) of scored rows: counts, accuracy, mean latencies and unit metrics."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in items if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        k = sum(bool(r["correct"]) for r in rows)
        return {"items": len(rows), "correct": k, "accuracy": k / len(rows) if rows else None}

    means = {f"mean_{k}": mean(k) for k in ("latency_s", "first_token_s", "first_units_s")}
    summary = {**stats(items), **means, "unit_accuracy": mean("unit_accuracy"),
               "unit_edit_distance": mean("unit_edit_distance")}
    cats = sorted({r["category"] for r in items if r.get("category") is not None})
    return summary, {c: stats([r for r in items if r.get("category") == c]) for c in cats}


# ----------------------------------------------------------------------------- question audio


def tts_identity(tts: str) -> str:
    """What decides a TTS engine's output besides text and voice (the Piper voice file), for cache keys."""
    if tts == "piper":
        from tasks.tts import bundled_piper_voice

        voice = bundled_piper_voice()
        return f"piper:{voice.name}:{voice.stat().st_size}"
    return tts


def audio_key(identity: str, voices: list[str] | None, seed: int, item_id: str, text: str) -> str:
    """Content hash of one synthesized question (every input of the voice choice and the synthesis)."""
    blob = json.dumps([identity, voices, seed, item_id, text], ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


class QuestionSynth:
    """Spoken form + TTS with a content-addressed WAV cache; the engine is built on the first miss."""

    def __init__(self, tts: str, voices: list[str] | None, seed: int, cache_dir: Path) -> None:
        if tts not in ("piper", "espeak"):
            raise ConfigError(f"unknown TTS backend {tts!r}; choose piper or espeak")
        self.tts, self.voices, self.seed = tts, voices, seed
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.identity = tts_identity(tts)
        self._engine: Any = None
        self.hits = 0

    def _backend(self) -> Any:
        """The TTS engine, built once (loading Piper takes seconds)."""
        from tasks.tts import make_tts

        if self._engine is None:
            self._engine = make_tts(self.tts, **({"voices": self.voices} if self.tts == "espeak" and
                                                  self.voices else {}))
        return self._engine

    def synthesize(self, item: EvalItem) -> dict[str, Any]:
        """Spoken text, voice, audio path and duration of one question (RecordRejected on TTS failure)."""
        import soundfile

        from tasks.tts import choose_voice, write_wav

        text = spoken_form(item.question)
        key = audio_key(self.identity, self.voices, self.seed, item.id, text)
        wav, meta = self.cache_dir / f"{key}.wav", self.cache_dir / f"{key}.json"
        if wav.is_file() and meta.is_file():
            self.hits += 1
            voice = json.loads(meta.read_text())["voice"]
        else:
            engine = self._backend()
            voice = choose_voice(item.id, self.voices or engine.voices(), self.seed)
            audio = engine.synthesize(text, voice)
            meta.write_text(json.dumps({"voice": voice, "text": text, "tts": self.identity}))
            atomic_write(wav, lambda p: write_wav(p, audio))  # WAV last: the marker
        frames = soundfile.info(str(wav)).frames
        return {"spoken_question": text, "voice": voice, "audio": str(wav.resolve()),
                "question_seconds": frames / SAMPLE_RATE}


def questions_path(out: Path) -> Path:
    """Where the questions manifest of report `out` goes (beside it)."""
    return Path(out).with_name(Path(out).stem + ".questions.json")


def prepare_questions(eval_set: Path, out: Path, *, tts: str = "piper", voices: list[str] | None = None,
                      seed: int = 0, limit: int | None = None, cache_dir: Path | None = None,
                      max_reject_fraction: float = 1.0) -> Path:
    """Read the eval set and synthesize its questions; write and return the questions manifest.

    More rejected items than `max_reject_fraction` of the set fails the evaluation: a score over the
    few items left would read as the score of the whole set.
    """
    items, rejects = read_eval_set(Path(eval_set))
    if limit is not None and len(items) > limit:  # the part of the set in play: up to the last item asked
        items = items[:limit]
        rejects = [r for r in rejects if r.line < items[-1].line]
    synth = QuestionSynth(tts, voices, seed, cache_dir or Path(out).parent / "tts-cache")
    rows = []
    for item in items:
        try:
            rows.append({**asdict(item), "gold": list(item.gold), **synth.synthesize(item)})
        except RecordRejected as e:
            rejects.append(Reject(line=item.line, id=item.id, reason=e.reason, stage="tts"))
    if not rows:
        first = f"; first: line {rejects[0].line}: {rejects[0].reason}" if rejects else ""
        raise InputError(f"{eval_set}: no question can be evaluated ({len(rejects)} rejected{first})")
    check_eval_rejects(eval_set, len(rows), rejects, max_reject_fraction)
    manifest = {"eval_set": str(eval_set), "tts": tts, "voices": voices, "seed": seed, "limit": limit,
                "cache_hits": synth.hits, "items": rows, "rejects": [r.to_dict() for r in rejects]}
    path = questions_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(manifest, indent=1, ensure_ascii=False)))
    return path


def check_eval_rejects(eval_set: Path, kept: int, rejects: list[Reject], max_fraction: float) -> None:
    """InputError when more than `max_fraction` of the eval items were rejected."""
    total = kept + len(rejects)
    if len(rejects) / total <= max_fraction:
        return
    first = f"line {rejects[0].line}: {rejects[0].reason}"
    raise InputError(f"{eval_set}: {len(rejects)} of {total} eval items rejected "
                     f"({len(rejects) / total:.0%} > the allowed {max_fraction:.0%}; first: {first}); "
                     f"fix the eval set or raise --max-reject-fraction")


# ----------------------------------------------------------------------------- answering


def answer_states(model: Any, audio: np.ndarray, question_text: str, answer_text: str) -> Any:
    """Teacher-forced S2T states (A, H) predicting each token of `answer_text`, as stage III reads them."""
    from tasks.collate import collate_s2t

    dev = next(model.parameters()).device
    batch = collate_s2t([{"id": "eval", "question_audio": audio, "question_text": question_text,
                          "answer_text": answer_text, "sample_rate": SAMPLE_RATE}], model.s2t)
    hidden, mask = model.s2t.answer_hidden_states({k: v.to(dev) for k, v in batch.items()})  # (1, A, H)
    return hidden[0, : int(mask.sum())]  # (A, H)


def teacher_forced_unit_accuracy(model: Any, hidden: Any, ref: list[int], with_eos: bool) -> float | None:
    """Fraction of the Echo decoder's argmax predictions of `ref` (+ EOS) that are right, fed ref as
    context after adapter(hidden) (A, H) and SEP; None when nothing fits the decoder's positions."""
    import torch

    dec = model.echo_decoder
    ref = model.unit_targets(ref)  # raw units → the decoder's targets (unit-words under a unit language)
    prefix = dec.text_proj(model.adapter(hidden[None]))  # (1, A, d)
    room = dec.max_positions - prefix.shape[1] - 1  # positions left after the prefix and SEP
    with_eos = with_eos and len(ref) <= room  # EOS is predicted at the last unit's position
    ref = ref[: max(0, room)]
    if not ref and not with_eos:
        return None
    units = torch.tensor([[dec.sep_id, *ref]], device=prefix.device)  # (1, N+1)
    x = torch.cat([prefix, dec.unit_embed(units)], 1)  # (1, A+N+1, d)
    h = dec.decoder(inputs_embeds=x, use_cache=False).last_hidden_state  # (1, A+N+1, d)
    target = torch.tensor([*ref, dec.eos_id] if with_eos else ref, device=prefix.device)  # (N[+1],)
    pred = dec.head(h[0, prefix.shape[1]: prefix.shape[1] + len(target)]).argmax(-1)  # predictions of them
    return float((pred == target).float().mean())


def echo_unit_scores(model: Any, t2c: Any, audio: np.ndarray, row: dict[str, Any],
                     max_units: int) -> dict[str, Any]:
    """unit_accuracy, unit_edit_distance and reference_units of one item (see the module docstring)."""
    try:
        answer = spoken_form(row["reference"])
    except RecordRejected:
        return {}  # a reference with nothing to say has no units to compare
    hidden = answer_states(model, audio, row["spoken_question"], answer)  # (A, H)
    ref = t2c.generate_units([t2c.encode(answer)], max_units=max_units)[0]
    hyp, _ = model.speak_segment(hidden, max_units)
    return {"unit_accuracy": teacher_forced_unit_accuracy(model, hidden, ref.units, not ref.truncated),
            "unit_edit_distance": unit_edit_distance(hyp, ref.units), "reference_units": len(ref.units)}


def _model_dir(path: Path) -> Path:
    """A checkpoint directory, or the model/ folder of a run directory."""
    p = Path(path)
    return p / "model" if not (p / "config.json").exists() and (p / "model" / "config.json").exists() else p


def check_checkpoints(model: Path, t2c: Path | None = None) -> str:
    """The stage of `model` after checking, from the configs alone, that the pair can be evaluated."""
    from models.io import read_config

    config = read_config(_model_dir(model))
    stage = config["stage"]
    if stage not in ("s2t", "echo"):
        raise ConfigError(f"--model {model} is a {stage} checkpoint; give an s2t or echo one")
    if t2c is None:
        return stage
    if stage != "echo":
        raise ConfigError("--t2c scores the Echo decoder's units: it needs an echo checkpoint")
    t2c_config = read_config(_model_dir(t2c))
    if t2c_config["stage"] != "t2c":
        raise ConfigError(f"--t2c {t2c} is a {t2c_config['stage']} checkpoint, not a t2c one")
    ours, theirs = config["extra"].get("num_units"), t2c_config["extra"].get("num_units")
    if ours != theirs:
        raise ConfigError(f"the T2C checkpoint has {theirs} units, the echo checkpoint {ours}: "
                          "they come from different codebooks")
    return stage


class Answerer:
    """Holds a checkpoint (and optional T2C) loaded once; answers spoken questions and times them."""

    def __init__(self, model_path: Path, *, t2c_path: Path | None = None, device: str = "cpu",
                 max_new_tokens: int = 64, max_units: int = 1000) -> None:
        from tasks.inference import load_checkpoint_model

        self.stage = check_checkpoints(model_path, t2c_path)
        self.model = load_checkpoint_model(model_path, self.stage).to(device)
        self.t2c = None if t2c_path is None else load_checkpoint_model(t2c_path, "t2c").to(device)
        self.max_new_tokens, self.max_units = max_new_tokens, max_units

    def _s2t(self, audio: np.ndarray) -> dict[str, Any]:
        """Greedy text answer with time to first token."""
        s2t, start, first, ids = self.model, time.perf_counter(), None, []
        for token, _ in s2t.stream(audio, max_new_tokens=self.max_new_tokens):
            first = time.perf_counter() - start if first is None else first
            ids.append(token)
        return {"response": s2t.chat.decode(ids), "num_tokens": len(ids), "first_token_s": first,
                "latency_s": time.perf_counter() - start}

    def _echo(self, audio: np.ndarray) -> dict[str, Any]:
        """Streamed text + units with time to the first segment's units."""
        start, first, ids, units, n = time.perf_counter(), None, [], 0, 0
        stream = self.model.stream_speech(audio, max_new_tokens=self.max_new_tokens, max_units=self.max_units)
        for seg in stream:
            first = time.perf_counter() - start if first is None else first
            ids, units, n = ids + seg.token_ids, units + len(seg.units), n + 1
        return {"response": self.model.s2t.chat.decode(ids), "num_tokens": len(ids), "first_units_s": first,
                "num_units": units, "num_segments": n, "latency_s": time.perf_counter() - start}

    def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        """One questions-manifest row answered and scored: the report's item row."""
        import soundfile
        import torch

        audio, rate = soundfile.read(row["audio"], dtype="int16")
        if rate != SAMPLE_RATE or audio.ndim != 1:
            raise InputError(f"{row['audio']}: expected mono 16 kHz audio")
        window = getattr(getattr(self.model, "s2t", self.model), "max_samples", None)
        if window is not None and len(audio) > window:  # the encoder would cut it without a word
            raise RecordRejected(f"question speech lasts {len(audio) / SAMPLE_RATE:.1f} s, longer than the "
                                 f"model's {window / SAMPLE_RATE:.0f} s speech window")
        with torch.inference_mode():
            out = self._echo(audio) if self.stage == "echo" else self._s2t(audio)
            if self.t2c is not None:
                out |= echo_unit_scores(self.model, self.t2c, audio, row, self.max_units)
        matched = match_answer(out["response"], row["gold"])
        keep = ("id", "line", "question", "spoken_question", "category", "gold", "reference", "voice",
                "question_seconds")
        empty = dict.fromkeys(("first_token_s", "first_units_s", "num_units", "num_segments", "unit_accuracy",
                               "unit_edit_distance", "reference_units"))
        return {**{k: row[k] for k in keep}, **empty, **out, "correct": matched is not None,
                "matched": matched}


def answer_questions(questions: Path, model: Path, out: Path, *, t2c: Path | None = None, device: str = "cpu",
                     max_new_tokens: int = 64, max_units: int = 1000,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Answer every question of a manifest with the checkpoint; write the JSON report to `out`, return it."""
    start = time.perf_counter()
    manifest = json.loads(Path(questions).read_text())
    answerer = Answerer(Path(model), t2c_path=t2c, device=device, max_new_tokens=max_new_tokens,
                        max_units=max_units)
    items, rejects = [], list(manifest["rejects"])
    for i, row in enumerate(manifest["items"], start=1):
        try:
            items.append(answerer.answer(row))
        except RecordRejected as e:
            rejects.append(Reject(line=row["line"], id=row["id"], reason=e.reason, stage="answer").to_dict())
        if progress is not None:
            progress(i, len(manifest["items"]))
    summary, by_category = summarize(items)
    report = {"schema": REPORT_TAG, "version": SCHEMA_VERSION, "model": str(model), "stage": answerer.stage,
              "t2c": None if t2c is None else str(t2c), "eval_set": manifest["eval_set"],
              "tts": manifest["tts"],
              "voices": manifest["voices"], "seed": manifest["seed"], "limit": manifest["limit"],
              "max_new_tokens": max_new_tokens, "device": device,
              "summary": {**summary, "rejected": len(rejects),
                          "answer_wall_s": time.perf_counter() - start},
              "by_category": by_category, "items": items, "rejects": rejects}
    validate_report(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda p: p.write_text(json.dumps(report, indent=1, ensure_ascii=False)))
    return report


# ----------------------------------------------------------------------------- presentation


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell ("-" for missing)."""
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """(metric, value) rows: accuracy overall and per category, latencies, unit metrics, rejects."""
    s = report["summary"]
    rows = [{"metric": "accuracy", "value": f"{_fmt(s['accuracy'])} ({s['correct']}/{s['items']})"}]
    rows += [{"metric": f"accuracy: {c}", "value": f"{_fmt(v['accuracy'])} ({v['correct']}/{v['items']})"}
             for c, v in report["by_category"].items()]
    for key in ("mean_latency_s", "mean_first_token_s", "mean_first_units_s", "unit_accuracy",
                "unit_edit_distance", "rejected"):
        if s.get(key) is not None:
            rows.append({"metric": key, "value": _fmt(s[key])})
    return rows


def item_rows(report: dict[str, Any], limit: int = 50) -> list[dict[str, Any]]:
    """The first `limit` items, trimmed for a UI table."""
    return [{"id": r["id"], "category": r["category"] or "", "correct": r["correct"],
             "response": r["response"][:80], "gold": " | ".join(r["gold"])[:60],
             "latency_s": round(r["latency_s"], 3)} for r in report["items"][:limit]]


def summary_markdown(report: dict[str, Any]) -> str:
    """A markdown summary of the report for the Prefect UI."""
    lines = [f"# Spoken-QA evaluation of `{report['model']}` ({report['stage']})", "",
             f"Eval set `{report['eval_set']}`, TTS {report['tts']}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {r['metric']} | {r['value']} |" for r in summary_rows(report)]
    wrong = [r for r in report["items"] if not r["correct"]][:5]
    if wrong:
        lines += ["", "Some misses:", ""]
        lines += [f"- `{r['id']}` {r['question']} → “{r['response'][:80]}” (gold: {', '.join(r['gold'])})"
                  for r in wrong]
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict[str, str]]) -> str:
    """Rows of (metric, value) as an aligned plain-text table for the terminal."""
    width = max(len(r["metric"]) for r in rows)
    return "\n".join(f"{r['metric']:<{width}}  {r['value']}" for r in rows)


def format_report(report: dict[str, Any]) -> str:
    """The report's summary as a plain-text table for the terminal (what `echox evaluate` prints)."""
    head = f"spoken-QA evaluation of {report['model']} ({report['stage']}) on {report['eval_set']}"
    return head + "\n" + format_table(summary_rows(report))
