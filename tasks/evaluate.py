"""Spoken-QA evaluation (Llama Questions / Web Questions / TriviaQA style) of S2T and echo checkpoints.

Two steps, each a function over files: `prepare_questions` (tasks/eval_questions.py, re-exported here)
reads an eval set and synthesizes every question (spoken form → TTS, cached by content hash), writing a
questions manifest; `answer_questions`
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

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, InputError, RecordRejected
from data_specs.eval_results import REPORT_TAG, SCHEMA_VERSION, validate_report
from data_specs.rejects import Reject
from tasks.asr import word_error_rate
from tasks.audio import SAMPLE_RATE
from tasks.eval_questions import (  # noqa: F401 - re-exported: the flow and tests know them here
    EvalItem,
    QuestionSynth,
    audio_key,
    check_eval_rejects,
    default_audio_cache,
    parse_eval_record,
    prepare_questions,
    questions_path,
    read_eval_set,
)
from tasks.eval_speech import SPEECH_FIELDS, speech_summary, wav_stem
from tasks.eval_stats import levenshtein, wilson_interval
from tasks.shards import atomic_write
from tasks.text_norm import match_answer, normalize_answer, spoken_form

# ----------------------------------------------------------------------------- scoring


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
        return {"items": len(rows), "correct": k, "accuracy": k / len(rows) if rows else None,
                "accuracy_ci95": wilson_interval(k, len(rows))}

    means = {f"mean_{k}": mean(k) for k in ("latency_s", "first_token_s", "first_units_s")}
    summary = {**stats(items), **means, "unit_accuracy": mean("unit_accuracy"),
               "unit_edit_distance": mean("unit_edit_distance"), "question_wer": mean("heard_wer")}
    if any(r.get("s2s_correct") is not None for r in items):
        summary |= speech_summary(items)
    cats = sorted({r["category"] for r in items if r.get("category") is not None})
    return summary, {c: stats([r for r in items if r.get("category") == c]) for c in cats}


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


def check_checkpoints(model: Path, t2c: Path | None = None, *, vocoder: bool = False) -> str:
    """The stage of `model` after checking, from the configs alone, that the pair can be evaluated."""
    from models.io import read_config

    config = read_config(_model_dir(model))
    stage = config["stage"]
    if stage not in ("s2t", "echo"):
        raise ConfigError(f"--model {model} is a {stage} checkpoint; give an s2t or echo one")
    if vocoder and stage != "echo":
        raise ConfigError("--vocoder speaks an echo checkpoint's units: --model must be an echo checkpoint, "
                          f"not {stage}")
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


def check_vocoder_pair(model: Path, vocoder: Path) -> None:
    """InputError unless `vocoder` is a vocoder checkpoint of the echo checkpoint's codebook (K, sha256)."""
    from models.io import read_config
    from tasks.vocode import check_codebook, load_vocoder

    extra = read_config(_model_dir(model))["extra"]
    codebook = {**(extra.get("codebook") or {}), "num_units": extra.get("num_units")}
    check_codebook(load_vocoder(vocoder), codebook, f"--model {model}")


class Answerer:
    """Holds a checkpoint (and optional T2C) loaded once; answers spoken questions and times them."""

    def __init__(self, model_path: Path, *, t2c_path: Path | None = None, device: str = "cpu",
                 max_new_tokens: int = 64, max_units: int = 1000,
                 speech: dict[str, Any] | None = None) -> None:
        """`speech`: SpeechScorer arguments (vocoder_path, asr, tts, wav_dir) for s2s accuracy, or None."""
        from tasks.inference import load_checkpoint_model

        self.stage = check_checkpoints(model_path, t2c_path, vocoder=speech is not None)
        self.model = load_checkpoint_model(model_path, self.stage).to(device)
        self.t2c = None if t2c_path is None else load_checkpoint_model(t2c_path, "t2c").to(device)
        self.max_new_tokens, self.max_units = max_new_tokens, max_units
        self.speech = None
        if speech is not None:
            from tasks.eval_speech import SpeechScorer

            self.speech = SpeechScorer(unit_model=self.model, **speech)

    def heard(self, audio: np.ndarray) -> str | None:
        """The S2T's greedy CTC transcript of the question (None for a model without a CTC head)."""
        s2t = getattr(self.model, "s2t", self.model)
        return s2t.transcribe(audio) if hasattr(s2t, "transcribe") else None

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
        segments: list[list[int]] = []
        for seg in stream:
            first = time.perf_counter() - start if first is None else first
            ids, units, n = ids + seg.token_ids, units + len(seg.units), n + 1
            segments.append(list(seg.units))
        return {"response": self.model.s2t.chat.decode(ids), "num_tokens": len(ids), "first_units_s": first,
                "num_units": units, "num_segments": n, "latency_s": time.perf_counter() - start,
                "segments": segments}

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
            heard = self.heard(audio)
            out = self._echo(audio) if self.stage == "echo" else self._s2t(audio)
            if self.t2c is not None:
                out |= echo_unit_scores(self.model, self.t2c, audio, row, self.max_units)
        segments = out.pop("segments", [])
        if self.speech is not None:  # vocoded answer → ASR, and the reference's ceiling
            out |= self.speech.score(row["id"], segments, row["gold"], row["reference"], row["voice"])
        matched = match_answer(out["response"], row["gold"])
        keep = ("id", "line", "question", "spoken_question", "category", "gold", "reference", "voice",
                "question_seconds")
        empty = dict.fromkeys(("first_token_s", "first_units_s", "num_units", "num_segments", "unit_accuracy",
                               "unit_edit_distance", "reference_units", *SPEECH_FIELDS))
        return {**{k: row[k] for k in keep}, **empty, **out, "correct": matched is not None,
                "matched": matched, "heard": heard,
                "heard_wer": None if heard is None else word_error_rate(row["spoken_question"], heard)}


def answer_questions(questions: Path, model: Path, out: Path, *, t2c: Path | None = None, device: str = "cpu",
                     max_new_tokens: int = 64, max_units: int = 1000, vocoder: Path | None = None,
                     asr: str = "pocketsphinx", tts: Any = None, extra: dict[str, Any] | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     audio_cache: Path | None = None) -> dict[str, Any]:
    """Answer every question of a manifest with the checkpoint; write the JSON report to `out`, return it.

    With a `vocoder` (echo checkpoints): the spoken answers are vocoded, written as WAVs to a folder beside
    the report (`<report>.answers/`) and recognised by `asr`; `tts` (the question's engine choice) speaks
    the reference answers for the ASR ceiling, cached in `audio_cache` (default: the questions' default
    cache beside the report). `extra`: more report fields (the flow's train_overlap)."""
    start = time.perf_counter()
    manifest = json.loads(Path(questions).read_text())
    speech = None if vocoder is None else {
        "vocoder_path": Path(vocoder), "asr": asr, "tts": tts if tts is not None else manifest["tts"],
        "wav_dir": Path(out).with_name(Path(out).stem + ".answers"),
        "audio_cache": Path(audio_cache) if audio_cache else default_audio_cache(out)}
    answerer = Answerer(Path(model), t2c_path=t2c, device=device, max_new_tokens=max_new_tokens,
                        max_units=max_units, speech=speech)
    items, rejects = [], list(manifest["rejects"])
    for i, row in enumerate(manifest["items"], start=1):
        try:
            items.append(answerer.answer(row))
        except RecordRejected as e:
            rejects.append(Reject(line=row["line"], id=row["id"], reason=e.reason, stage="answer").to_dict())
        if progress is not None:
            progress(i, len(manifest["items"]))
    report = {"model": str(model), "stage": answerer.stage, "mode": "speech",
              "t2c": None if t2c is None else str(t2c), "eval_set": manifest["eval_set"],
              "tts": manifest["tts"], "voices": manifest["voices"], "seed": manifest["seed"],
              "limit": manifest["limit"], "max_new_tokens": max_new_tokens, "device": device,
              "vocoder": None if vocoder is None else str(vocoder), "asr": None if vocoder is None else asr,
              **(extra or {})}
    return write_report(out, report, items, rejects, time.perf_counter() - start)


def train_overlap(eval_set: Path, source: Path) -> int:
    """How many eval questions also occur (normalised) in the training source: knowledge is measured on
    held-out questions, so a non-zero count is reported and warned about."""
    from tasks.source import read_source

    records, _ = read_source(Path(source))
    seen = {normalize_answer(r.question) for r in records}
    items, _ = read_eval_set(Path(eval_set))
    return sum(normalize_answer(i.question) in seen for i in items)


def write_report(out: Path, params: dict[str, Any], items: list[dict[str, Any]],
                 rejects: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Summarise scored items, validate the whole report and write it atomically to `out`; return it."""
    summary, by_category = summarize(items)
    report = {"schema": REPORT_TAG, "version": SCHEMA_VERSION, **params,
              "summary": {**summary, "rejected": len(rejects), "answer_wall_s": wall_s},
              "by_category": by_category, "items": items, "rejects": rejects}
    validate_report(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda p: p.write_text(json.dumps(report, indent=1, ensure_ascii=False)))
    return report


def answer_text_questions(eval_set: Path, llm_dir: Path, out: Path, *, system_prompt: str | None,
                          max_new_tokens: int = 64, limit: int | None = None, device: str = "cpu",
                          max_reject_fraction: float = 1.0, model_name: str | None = None,
                          batch_size: int = 1, extra: dict[str, Any] | None = None,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Text mode: the LLM in `llm_dir` answers the written questions; write the JSON report, return it."""
    from tasks.eval_text import TEXT_STAGE, answer_written

    start = time.perf_counter()
    items, rejects = answer_written(Path(eval_set), Path(llm_dir), system_prompt=system_prompt,
                                    max_new_tokens=max_new_tokens, limit=limit, device=device,
                                    max_reject_fraction=max_reject_fraction, batch_size=batch_size,
                                    progress=progress)
    params = {"model": model_name or str(llm_dir), "llm_dir": str(llm_dir), "stage": TEXT_STAGE,
              "mode": "text", "t2c": None, "eval_set": str(eval_set), "tts": None, "voices": None,
              "seed": None, "limit": limit, "max_new_tokens": max_new_tokens, "device": device,
              "system_prompt": system_prompt, "batch_size": batch_size, **(extra or {})}
    return write_report(out, params, items, rejects, time.perf_counter() - start)


# ----------------------------------------------------------------------------- presentation


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell ("-" for missing)."""
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def accuracy_text(stats: dict[str, Any]) -> str:
    """"0.407 (24/59, 95% CI 0.29-0.54)": accuracy, counts and the Wilson interval when there is one."""
    ci = stats.get("accuracy_ci95")
    interval = "" if not ci else f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}"
    return f"{_fmt(stats['accuracy'])} ({stats['correct']}/{stats['items']}{interval})"


def summary_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """(metric, value) rows: accuracy overall and per category, latencies, unit metrics, rejects."""
    s = report["summary"]
    rows = [{"metric": "accuracy", "value": accuracy_text(s)}]
    rows += [{"metric": f"accuracy: {c}", "value": accuracy_text(v)}
             for c, v in report["by_category"].items()]
    if report.get("train_overlap") is not None:
        rows.append({"metric": "eval questions also in the training source",
                     "value": str(report["train_overlap"])})
    for name, label in (("s2s", "s2s_accuracy (answer speech → ASR)"),
                        ("asr_ceiling", "asr_ceiling (reference speech → ASR)")):
        if s.get(f"{name}_items"):
            stats = {k: s[f"{name}_{k}"] for k in ("accuracy", "correct", "items", "accuracy_ci95")}
            rows.append({"metric": label, "value": accuracy_text(stats)})
    for key in ("question_wer", "mean_latency_s", "mean_first_token_s", "mean_first_units_s", "unit_accuracy",
                "unit_edit_distance", "rejected"):
        if s.get(key) is not None:
            rows.append({"metric": key, "value": _fmt(s[key])})
    return rows


def item_rows(report: dict[str, Any], limit: int = 50) -> list[dict[str, Any]]:
    """The first `limit` items, trimmed for a UI table."""
    return [{"id": r["id"], "category": r["category"] or "", "correct": r["correct"],
             "heard": (r.get("heard") or "")[:80], "response": r["response"][:80],
             "gold": " | ".join(r["gold"])[:60],
             "latency_s": round(r["latency_s"], 3)} for r in report["items"][:limit]]


def summary_markdown(report: dict[str, Any]) -> str:
    """A markdown summary of the report for the Prefect UI."""
    kind = "Written-QA" if report.get("mode") == "text" else "Spoken-QA"
    lines = [f"# {kind} evaluation of `{report['model']}` ({report['stage']})", "",
             f"Eval set `{report['eval_set']}`, " + (f"TTS {report['tts']}." if report.get("mode") != "text"
                                                     else "written questions (text mode)."),
             "", "| metric | value |", "|---|---|"]
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


def answer_wav_line(report_path: Path, report: dict[str, Any]) -> str:
    """Where to listen: one spoken answer (a correct one if any) of a report scored with a vocoder."""
    folder = Path(report_path).with_name(Path(report_path).stem + ".answers")
    if not report.get("vocoder") or not folder.is_dir():
        return "no vocoder in this evaluation: no spoken answers written"
    wavs = {p.stem: p for p in folder.glob("*.wav")}
    rows = sorted(report["items"], key=lambda r: not r.get("s2s_correct"))
    row = next((r for r in rows if wav_stem(r["id"]) in wavs), None)
    if row is None:
        return f"spoken answers: none written to {folder}"
    return (f"spoken answers: {len(wavs)} WAVs in {folder}\n  listen: {wavs[wav_stem(row['id'])]}\n"
            f"  question: {row['question']}\n  answer (text): {row['response'][:100]}\n"
            f"  answer (heard by the ASR): {row.get('s2s_response') or ''}")


def format_report(report: dict[str, Any]) -> str:
    """The report's summary as a plain-text table for the terminal (what `echox evaluate` prints)."""
    kind = "written-QA" if report.get("mode") == "text" else "spoken-QA"
    head = f"{kind} evaluation of {report['model']} ({report['stage']}) on {report['eval_set']}"
    return head + "\n" + format_table(summary_rows(report))
