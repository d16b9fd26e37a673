"""The questions of a spoken-QA evaluation: read and check the eval set, then speak every question.

Synthesis goes through the TTS_ENGINES registry, with a WAV cache keyed by a content hash of the
engine's identity, the voices, the seed, the item and its spoken text (so a rerun speaks nothing twice).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError, RecordRejected
from data_specs.rejects import Reject
from tasks.audio import SAMPLE_RATE
from tasks.backends import TTS_ENGINES, Choice
from tasks.shards import atomic_write
from tasks.text_norm import normalize_answer, spoken_form

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


# ----------------------------------------------------------------------------- question audio


def audio_key(identity: Any, voices: list[str] | None, seed: int, item_id: str, text: str) -> str:
    """Content hash of one synthesized question (every input of the voice choice and the synthesis)."""
    blob = json.dumps([identity, voices, seed, item_id, text], ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


class QuestionSynth:
    """Spoken form + TTS with a content-addressed WAV cache; the engine is built on the first miss."""

    def __init__(self, tts: str | Choice, voices: list[str] | None, seed: int, cache_dir: Path) -> None:
        self.choice = tts if isinstance(tts, Choice) else Choice(tts, TTS_ENGINES.options(tts))
        self.voices, self.seed = voices, seed
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.identity = TTS_ENGINES.identity(self.choice)  # the cache key's engine part
        self._engine: Any = None
        self.hits = 0

    def _backend(self) -> Any:
        """The TTS engine, built once (loading Piper takes seconds), its --voices checked."""
        from tasks.tts import check_voices

        if self._engine is None:
            self._engine = TTS_ENGINES.create(self.choice)
            check_voices(self._engine, self.voices)
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


def default_audio_cache(out: Path) -> Path:
    """Where an evaluation whose report is `out` caches its spoken questions and references by default."""
    return Path(out).parent / "tts-cache"


def questions_path(out: Path) -> Path:
    """Where the questions manifest of report `out` goes (beside it)."""
    return Path(out).with_name(Path(out).stem + ".questions.json")


def prepare_questions(eval_set: Path, out: Path, *, tts: str | Choice = "piper",
                      voices: list[str] | None = None, seed: int = 0, limit: int | None = None,
                      cache_dir: Path | None = None, max_reject_fraction: float = 1.0) -> Path:
    """Read the eval set and synthesize its questions; write and return the questions manifest.

    More rejected items than `max_reject_fraction` of the set fails the evaluation: a score over the
    few items left would read as the score of the whole set.
    """
    items, rejects = read_eval_set(Path(eval_set))
    if limit is not None and len(items) > limit:  # the part of the set in play: up to the last item asked
        items = items[:limit]
        rejects = [r for r in rejects if r.line < items[-1].line]
    synth = QuestionSynth(tts, voices, seed, cache_dir or default_audio_cache(out))
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
    manifest = {"eval_set": str(eval_set), "tts": synth.choice.name, "voices": voices, "seed": seed,
                "limit": limit, "cache_hits": synth.hits, "items": rows,
                "rejects": [r.to_dict() for r in rejects]}
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


