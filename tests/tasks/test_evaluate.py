"""Spoken-QA scoring: answer matching, eval-set parsing, unit metrics, question audio cache, reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.errors import CheckpointError, ConfigError, InputError, IntegrityError
from data_specs.eval_results import validate_report
from tasks import evaluate as ev
from tests.conftest import write_jsonl

torch.set_num_threads(1)
K = 40


# ----------------------------------------------------------------------------- matching


@pytest.mark.parametrize(("response", "gold", "expected"), [
    ("There are sixteen of them.", ["six"], None),  # whole words only
    ("Six, I think.", ["six"], "six"),
    ("A dog has 4 legs.", ["four"], "four"),  # digits in the response, words in the gold
    ("It has four legs", ["4"], "4"),
    ("About one thousand.", ["1,000"], "1,000"),
    ("It is THE Pacific Ocean!", ["The Pacific Ocean"], "The Pacific Ocean"),  # case, articles, punctuation
    ("the pacific, ocean", ["Pacific Ocean"], "Pacific Ocean"),
    ("It is in México.", ["Mexico"], "Mexico"),  # accents
    ("New and York", ["New York"], None),  # a gold of several words must be contiguous
    ("William Shakespeare wrote it", ["Marlowe", "Shakespeare"], "Shakespeare"),  # aliases
    ("anything at all", ["The"], None),  # a gold that normalises to nothing never matches
    ("", ["Paris"], None),
])
def test_match_answer(response: str, gold: list[str], expected: str | None) -> None:
    assert ev.match_answer(response, gold) == expected


# ----------------------------------------------------------------------------- eval-set parsing


def test_parse_both_formats() -> None:
    sample = {"id": "gk-1", "question": "Capital of Egypt?", "answer": "Cairo is the capital.",
              "aliases": ["Cairo"], "category": "general"}
    item = ev.parse_eval_record(sample, 3)
    assert (item.line, item.id, item.gold, item.reference, item.category) == (
        3, "gk-1", ("Cairo",), "Cairo is the capital.", "general")
    bench = ev.parse_eval_record({"id": 7, "question": "Who?", "answers": ["Ada Lovelace", "Lovelace"]}, 1)
    assert (bench.id, bench.gold, bench.reference, bench.category) == (
        "7", ("Ada Lovelace", "Lovelace"), "Ada Lovelace", None)
    plain = ev.parse_eval_record({"id": "x", "question": "Q?", "answer": "Paris"}, 1)
    assert plain.gold == ("Paris",) and plain.reference == "Paris"
    # `answers` wins over answer/aliases; gold that normalises to nothing is dropped.
    both = ev.parse_eval_record({"id": "y", "question": "Q?", "answer": "It is Rome.", "aliases": ["x"],
                                 "answers": ["Rome", "the"]}, 1)
    assert both.gold == ("Rome",) and both.reference == "It is Rome."


def test_read_eval_set_rejects_bad_lines(tmp_path: Path) -> None:
    rows: list = [
        {"id": "ok1", "question": "Capital of Peru?", "answers": ["Lima"]},
        '{"id": "broken", "question": ',
        {"id": "noq", "answers": ["x"]},
        {"id": "noa", "question": "Why?"},
        {"id": "strans", "question": "Why?", "answers": "Lima"},
        {"id": "empty", "question": "Why?", "answers": []},
        {"id": "article", "question": "Why?", "answers": ["The", "a"]},
        {"id": "ok1", "question": "Again?", "answers": ["y"]},
        {"id": "cat", "question": "Why?", "answers": ["y"], "category": 3},
        {"id": "blank", "question": "  ", "answers": ["y"]},
        b'{"id": "latin", "question": "caf\xe9?", "answers": ["y"]}',
        "[1, 2]",
        {"id": "ok2", "question": "Capital of Chile?", "answer": "Santiago.", "aliases": ["Santiago"]},
    ]
    items, rejects = ev.read_eval_set(write_jsonl(tmp_path / "eval.jsonl", rows))
    assert [i.id for i in items] == ["ok1", "ok2"]
    reasons = {r.line: r.reason for r in rejects}
    assert len(rejects) == 11 and all(r.stage == "source" for r in rejects)
    assert "malformed JSON" in reasons[2]
    assert "missing field 'question'" in reasons[3]
    assert "'answers'" in reasons[4] and "missing" in reasons[4]
    assert "list of strings" in reasons[5]
    assert "no gold answer" in reasons[6] and "no gold answer" in reasons[7]
    assert "duplicate id 'ok1'" in reasons[8]
    assert "'category'" in reasons[9]
    assert "'question'" in reasons[10]
    assert "UTF-8" in reasons[11]
    assert "JSON object" in reasons[12]
    assert {r.id for r in rejects if r.line == 8} == {"ok1"}


def test_bundled_sample_parses() -> None:
    items, rejects = ev.read_eval_set(Path(__file__).resolve().parents[2] / "data/sample/qa_eval.jsonl")
    assert len(items) == 59 and not rejects
    counts = {c: sum(i.category == c for i in items) for c in ("general", "arithmetic", "definition")}
    assert counts == {"general": 29, "arithmetic": 15, "definition": 15}
    # The reference answer of every item contains one of its gold answers (a perfect model scores 1.0).
    assert all(ev.match_answer(i.reference, i.gold) for i in items)


# ----------------------------------------------------------------------------- unit metrics


@pytest.mark.parametrize(("a", "b", "dist"), [
    ([], [], 0), ([1, 2, 3], [], 3), ([], [4], 1), ([1, 2, 3], [1, 2, 3], 0),
    ([1, 2, 3, 4], [1, 3, 4, 5], 2),  # delete 2, insert 5
    (list("kitten"), list("sitting"), 3),
    ([5, 5, 5], [6], 3),
])
def test_levenshtein(a: list, b: list, dist: int) -> None:
    assert ev.levenshtein(a, b) == dist and ev.levenshtein(b, a) == dist


def test_unit_edit_distance_is_normalised_by_the_longer_sequence() -> None:
    assert ev.unit_edit_distance([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx(0.5)
    assert ev.unit_edit_distance([1, 2, 3], [1]) == pytest.approx(2 / 3)
    assert ev.unit_edit_distance([], []) == 0.0
    assert ev.unit_edit_distance([7, 8], [1, 2, 3, 4]) == 1.0


def test_summarize_by_hand() -> None:
    rows = [
        {"correct": True, "category": "a", "latency_s": 1.0, "first_token_s": 0.5, "unit_accuracy": 0.5},
        {"correct": False, "category": "a", "latency_s": 2.0, "first_token_s": None, "unit_accuracy": None},
        {"correct": True, "category": "b", "latency_s": 3.0, "first_token_s": 1.5, "unit_accuracy": 1.0},
        {"correct": False, "category": None, "latency_s": 6.0, "first_token_s": 1.0, "unit_accuracy": None},
    ]
    summary, by_cat = ev.summarize(rows)
    assert (summary["items"], summary["correct"], summary["accuracy"]) == (4, 2, 0.5)
    assert summary["mean_latency_s"] == pytest.approx(3.0)
    assert summary["mean_first_token_s"] == pytest.approx(1.0)  # None rows are left out
    assert summary["unit_accuracy"] == pytest.approx(0.75) and summary["mean_first_units_s"] is None
    assert by_cat == {
        "a": {"items": 2, "correct": 1, "accuracy": 0.5, "accuracy_ci95": ev.wilson_interval(1, 2)},
        "b": {"items": 1, "correct": 1, "accuracy": 1.0, "accuracy_ci95": ev.wilson_interval(1, 1)}}


# ----------------------------------------------------------------------------- question audio


def _eval_set(tmp_path: Path, rows: list) -> Path:
    return write_jsonl(tmp_path / "eval.jsonl", rows)


def test_questions_are_synthesized_once_and_cached(tmp_path: Path) -> None:
    from tasks.backends.tts_espeak import DEFAULT_ESPEAK_VOICES
    from tasks.tts import choose_voice

    src = _eval_set(tmp_path, [
        {"id": "a", "question": "What is 2 plus 2?", "answers": ["4"]},
        {"id": "b", "question": "\U0001F600\U0001F600", "answers": ["smile"]},  # nothing to say
        {"id": "c", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
        {"id": "d", "question": "Not reached?", "answers": ["x"]},
    ])
    out = tmp_path / "run" / "report.json"
    first = json.loads(ev.prepare_questions(src, out, tts="espeak", limit=3, seed=1).read_text())
    assert [r["id"] for r in first["items"]] == ["a", "c"] and first["cache_hits"] == 0
    assert first["items"][0]["spoken_question"] == "What is two plus two?"
    assert [(r["id"], r["stage"]) for r in first["rejects"]] == [("b", "tts")]
    for row in first["items"]:
        assert row["voice"] == choose_voice(row["id"], DEFAULT_ESPEAK_VOICES, 1)
        assert Path(row["audio"]).parent == tmp_path / "run" / "tts-cache" and row["question_seconds"] > 0.3
    again = json.loads(ev.prepare_questions(src, out, tts="espeak", limit=3, seed=1).read_text())
    assert again["cache_hits"] == 2 and again["items"] == first["items"]
    other = json.loads(ev.prepare_questions(src, out, tts="espeak", limit=3, seed=2).read_text())
    assert other["cache_hits"] == 0  # the seed changes the voice choice, so the key
    assert len(list((tmp_path / "run" / "tts-cache").glob("*.wav"))) == 4


# ----------------------------------------------------------------------------- scoring a fake model


class _FakeS2T(torch.nn.Module):
    """Answers with scripted sentences, one per call, token by token (one token a word)."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = iter(answers)
        self.words: list[str] = []
        self.chat = SimpleNamespace(decode=lambda ids: " ".join(self.words[i] for i in ids))

    def stream(self, audio: object, max_new_tokens: int) -> Iterator[tuple[int, None]]:
        for word in next(self.answers).split()[:max_new_tokens]:
            self.words.append(word)
            yield len(self.words) - 1, None


def test_answer_questions_scores_a_scripted_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _eval_set(tmp_path, [
        {"id": "q1", "question": "Capital of Egypt?", "answers": ["Cairo"], "category": "geo"},
        {"id": "q2", "question": "How many legs has a spider?", "answers": ["eight", "8"], "category": "num"},
        {"id": "q3", "question": "How many sides has a die?", "answers": ["six"], "category": "num"},
        "not json",
    ])
    fake = _FakeS2T(["It is Cairo.", "A spider has 8 legs.", "It has sixteen sides, not six."])
    monkeypatch.setattr("tasks.inference.load_checkpoint_model", lambda path, stage=None: fake)
    monkeypatch.setattr(ev, "check_checkpoints", lambda model, t2c=None, **kw: "s2t")
    out = tmp_path / "report.json"
    questions = ev.prepare_questions(src, out, tts="espeak")
    report = ev.answer_questions(questions, tmp_path / "model", out, max_new_tokens=4)
    assert json.loads(out.read_text()) == report
    table = validate_report(report)
    assert table.column("correct").to_pylist() == [True, True, False]
    assert [r["matched"] for r in report["items"]] == ["Cairo", "eight", None]  # "8" read as "eight"
    # Cut at max_new_tokens: the "six" of the third answer is never said.
    responses = [r["response"] for r in report["items"]]
    assert responses == ["It is Cairo.", "A spider has 8", "It has sixteen sides,"]
    assert [r["num_tokens"] for r in report["items"]] == [3, 4, 4]
    assert report["summary"]["accuracy"] == pytest.approx(2 / 3) and report["summary"]["rejected"] == 1
    assert report["by_category"] == {
        "geo": {"items": 1, "correct": 1, "accuracy": 1.0, "accuracy_ci95": ev.wilson_interval(1, 1)},
        "num": {"items": 2, "correct": 1, "accuracy": 0.5, "accuracy_ci95": ev.wilson_interval(1, 2)}}
    assert all(0 <= r["first_token_s"] <= r["latency_s"] for r in report["items"])
    assert report["rejects"][0]["line"] == 4
    text = ev.format_report(report)
    assert "accuracy" in text and "0.667 (2/3, 95% CI 0.21-0.94)" in text and "accuracy: num" in text
    bad = {**report, "summary": {**report["summary"], "accuracy": 0.5}}
    with pytest.raises(IntegrityError, match="accuracy"):
        validate_report(bad)
    with pytest.raises(IntegrityError, match="lacks keys"):
        validate_report({k: v for k, v in report.items() if k != "items"})


# ----------------------------------------------------------------------------- echo unit metrics


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(echo, t2c, s2t) tiny checkpoints saved to disk."""
    from models.echo import build_echo
    from models.io import save_model
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from models.t2c import build_t2c
    from tests.models.conftest import TEXTS

    tmp = tmp_path_factory.mktemp("eval-models")
    preset = resolve_preset("tiny")
    base = prepare_base_llm(preset, corpus_texts=TEXTS * 3, cache_dir=tmp / "cache", seed=0)
    torch.manual_seed(0)
    echo = build_echo(build_s2t(preset, base), build_t2c(preset, base, K))
    t2c = build_t2c(preset, base, K, seed=5)  # a different T2C than the one the echo decoder started from
    paths = save_model(echo, tmp / "echo"), save_model(t2c, tmp / "t2c"), save_model(echo.s2t, tmp / "s2t")
    save_model(build_t2c(preset, base, K + 1), tmp / "t2c-other")
    return paths


def test_teacher_forced_accuracy_agrees_with_greedy_generation(tiny_models: tuple[Path, Path, Path]) -> None:
    from tasks.inference import load_checkpoint_model

    echo = load_checkpoint_model(tiny_models[0], "echo")
    audio = (torch.randn(24_000, generator=torch.Generator().manual_seed(0)) * 3000).short().numpy()
    with torch.inference_mode():
        hidden = ev.answer_states(echo, audio, "what is the capital of france", "paris is the capital")
        hyp, truncated = echo.speak_segment(hidden, max_units=12)
        # Fed its own greedy output, the decoder predicts every unit (and EOS when it stopped) again.
        assert ev.teacher_forced_unit_accuracy(echo, hidden, hyp, not truncated) == 1.0
        n = len(hyp) + (not truncated)
        changed = [*hyp[:-1], (hyp[-1] + 1) % K]  # only the last unit differs: causal, so only it is wrong
        acc = ev.teacher_forced_unit_accuracy(echo, hidden, changed, not truncated)
        assert acc in (pytest.approx((n - 1) / n), pytest.approx((n - 2) / n))  # EOS after it may change too
    assert hidden.shape[0] == len(echo.s2t.chat.encode("paris is the capital"))


def test_echo_checkpoint_with_t2c_reports_unit_metrics(tiny_models: tuple[Path, Path, Path],
                                                       tmp_path: Path) -> None:
    echo, t2c, _ = tiny_models
    src = _eval_set(tmp_path, [
        {"id": "q1", "question": "What is the capital of France?", "answer": "The capital is Paris.",
         "aliases": ["Paris"]},
        {"id": "q2", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
    ])
    out = tmp_path / "report.json"
    questions = ev.prepare_questions(src, out, tts="espeak")
    report = ev.answer_questions(questions, echo, out, t2c=t2c, max_new_tokens=6, max_units=10)
    validate_report(report)
    assert report["stage"] == "echo"
    for row in report["items"]:
        assert row["num_tokens"] == 6 and row["num_segments"] >= 1 and row["first_units_s"] is not None
        assert 0 <= row["unit_accuracy"] <= 1 and 0 <= row["unit_edit_distance"] <= 1
        assert 1 <= row["reference_units"] <= 10 and row["first_token_s"] is None
    assert report["summary"]["unit_accuracy"] == pytest.approx(
        sum(r["unit_accuracy"] for r in report["items"]) / 2)


def test_checkpoint_mismatches_are_config_errors(tiny_models: tuple[Path, Path, Path]) -> None:
    echo, t2c, s2t = tiny_models
    with pytest.raises(ConfigError, match="echo checkpoint"):
        ev.Answerer(s2t, t2c_path=t2c)
    with pytest.raises(ConfigError, match="different codebooks"):
        ev.Answerer(echo, t2c_path=t2c.parent / "t2c-other")
    with pytest.raises(ConfigError, match="t2c checkpoint"):
        ev.Answerer(t2c)
    with pytest.raises(ConfigError, match="not a t2c one"):
        ev.check_checkpoints(echo, echo)
    with pytest.raises(CheckpointError, match="does not exist"):
        ev.check_checkpoints(echo.parent / "nowhere")
    assert ev.check_checkpoints(echo, t2c) == "echo" and ev.check_checkpoints(s2t) == "s2t"


def test_an_eval_set_with_nothing_to_ask_is_an_input_error(tmp_path: Path) -> None:
    src = _eval_set(tmp_path, ["{", {"id": "e", "question": "\U0001F600", "answers": ["x"]}])
    with pytest.raises(InputError, match=r"no question can be evaluated \(2 rejected; first: line 1: mal"):
        ev.prepare_questions(src, tmp_path / "r.json", tts="espeak")
    with pytest.raises(InputError, match="not found"):
        ev.prepare_questions(tmp_path / "missing.jsonl", tmp_path / "r.json", tts="espeak")


def test_an_eval_set_over_the_reject_limit_fails(tmp_path: Path) -> None:
    """3 valid items of 10 must not be scored as if they were the whole set."""
    rows: list = [{"id": f"ok{i}", "question": f"What is {i} plus {i}?", "answers": [str(2 * i)]}
                  for i in range(3)]
    rows += ["{"] * 7
    src = _eval_set(tmp_path, rows)
    with pytest.raises(InputError, match=r"7 of 10 eval items rejected \(70% > the allowed 25%; first: li"):
        ev.prepare_questions(src, tmp_path / "r.json", tts="espeak", max_reject_fraction=0.25)
    ok = json.loads(ev.prepare_questions(src, tmp_path / "r.json", tts="espeak").read_text())
    assert len(ok["items"]) == 3 and len(ok["rejects"]) == 7  # the default of the function: no limit
    # --limit: only the rejects among the items in play count (line 4 onwards is past the first two).
    limited = json.loads(ev.prepare_questions(src, tmp_path / "r.json", tts="espeak", limit=2,
                                              max_reject_fraction=0.25).read_text())
    assert [r["id"] for r in limited["items"]] == ["ok0", "ok1"] and limited["rejects"] == []


def test_a_question_longer_than_the_window_is_a_reject_not_a_cut(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    long_question = "Why? " + "Because it is so. " * 12
    src = _eval_set(tmp_path, [{"id": "short", "question": "Capital of Egypt?", "answers": ["Cairo"]},
                               {"id": "long", "question": long_question, "answers": ["x"]}])
    fake = _FakeS2T(["It is Cairo."])
    fake.max_samples = 3 * 16000  # a 3 s window: the long question's speech does not fit
    monkeypatch.setattr("tasks.inference.load_checkpoint_model", lambda path, stage=None: fake)
    monkeypatch.setattr(ev, "check_checkpoints", lambda model, t2c=None, **kw: "s2t")
    out = tmp_path / "report.json"
    report = ev.answer_questions(ev.prepare_questions(src, out, tts="espeak"), tmp_path / "m", out)
    assert [r["id"] for r in report["items"]] == ["short"] and report["summary"]["rejected"] == 1
    assert report["rejects"][0]["id"] == "long"
    assert "longer than the model's 3 s speech window" in report["rejects"][0]["reason"]


# ----------------------------------------------------------------------------- speech to speech


def _tiny_vocoder(path: Path, num_units: int) -> Path:
    """A random-init vocoder over `num_units` units, saved the way training saves it."""
    from models.io import save_model
    from models.presets import resolve_preset
    from models.vocoder import build_vocoder, vocoder_config

    preset = resolve_preset("tiny")
    return save_model(build_vocoder(preset, vocoder_config(preset, {"num_units": num_units}), seed=0), path)


def test_vocoder_adds_speech_to_speech_accuracy_and_the_asr_ceiling(tiny_models: tuple[Path, Path, Path],
                                                                    tmp_path: Path) -> None:
    echo, _, _ = tiny_models
    src = _eval_set(tmp_path, [
        {"id": "q1", "question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris"]},
        {"id": "q/2", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
    ])
    out = tmp_path / "report.json"
    questions = ev.prepare_questions(src, out, tts="espeak")
    vocoder = _tiny_vocoder(tmp_path / "vocoder", K)
    report = ev.answer_questions(questions, echo, out, max_new_tokens=6, max_units=10, vocoder=vocoder)
    validate_report(report)
    assert report["vocoder"] == str(vocoder) and report["asr"] == "pocketsphinx"
    s = report["summary"]
    assert s["s2s_items"] == s["asr_ceiling_items"] == 2
    assert s["s2s_correct"] == sum(r["s2s_correct"] for r in report["items"])
    assert s["asr_ceiling_correct"] == sum(r["ceiling_correct"] for r in report["items"])
    for row in report["items"]:
        assert isinstance(row["s2s_response"], str) and isinstance(row["ceiling_response"], str)
        wav = out.with_name("report.answers") / f"{row['id'].replace('/', '_')}.wav"
        if row["num_units"]:  # the WAV is the vocoded units: 16 kHz, as long as s2s_seconds says
            import soundfile

            audio, rate = soundfile.read(wav, dtype="int16")
            assert rate == 16_000 and len(audio) > 0
            assert len(audio) / rate == pytest.approx(row["s2s_seconds"], abs=1e-3)
        else:
            assert row["s2s_seconds"] == 0 and not wav.exists()
    table = ev.format_report(report)
    assert "s2s_accuracy (answer speech → ASR)" in table and "asr_ceiling (reference speech → ASR)" in table
    assert "listen:" in ev.answer_wav_line(out, report) or report["summary"]["mean_first_units_s"] is None


def test_reference_speech_is_cached_so_every_evaluation_shares_one_ceiling(
        tiny_models: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Piper's noise is unseeded: the reference answers are spoken once into the audio cache and read back
    by every later evaluation (the baseline's, a rerun's), which then never builds a TTS engine."""
    from tasks.backends import TTS_ENGINES

    echo, _, _ = tiny_models
    src = _eval_set(tmp_path, [
        {"id": "q1", "question": "What is the capital of France?", "answer": "Paris"},
        {"id": "q2", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
    ])
    cache, vocoder = tmp_path / "cache", _tiny_vocoder(tmp_path / "vocoder", K)
    first = tmp_path / "a" / "report.json"
    kw = {"max_new_tokens": 4, "max_units": 6, "vocoder": vocoder, "audio_cache": cache}
    questions = ev.prepare_questions(src, first, tts="espeak", cache_dir=cache)
    one = ev.answer_questions(questions, echo, first, **kw)
    assert len(list(cache.glob("reference-*.wav"))) == 2

    def no_engine(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reference speech was synthesized again")

    monkeypatch.setattr(TTS_ENGINES, "create", no_engine)
    # another model's answers (here: a reference's speech as every answer) do not move the ceiling
    import soundfile

    from tasks.eval_speech import SpeechScorer

    speech = soundfile.read(sorted(cache.glob("reference-*.wav"))[0], dtype="int16")[0]
    monkeypatch.setattr(SpeechScorer, "answer_audio", lambda self, segments: speech)
    second = tmp_path / "b" / "report.json"
    two = ev.answer_questions(ev.prepare_questions(src, second, tts="espeak", cache_dir=cache), echo, second,
                              **kw)
    assert [r["ceiling_response"] for r in two["items"]] == [r["ceiling_response"] for r in one["items"]]


def test_vocoder_of_another_codebook_or_a_text_checkpoint_is_refused(tiny_models: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    from core.errors import InputError as UserInputError

    echo, t2c, s2t = tiny_models
    other = _tiny_vocoder(tmp_path / "other", K + 3)
    with pytest.raises(UserInputError, match=f"K={K + 3}"):
        ev.check_vocoder_pair(echo, other)
    with pytest.raises(ConfigError, match="--vocoder speaks an echo checkpoint"):
        ev.check_checkpoints(s2t, vocoder=True)
    with pytest.raises(UserInputError, match="not a vocoder"):
        ev.check_vocoder_pair(echo, t2c)
