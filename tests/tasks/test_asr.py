"""The recogniser (pocketsphinx on Piper speech), WER, alias matching of recognised text, the ASR gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from core.config import build
from core.errors import ConfigError, IntegrityError
from tasks.asr import (
    check_row,
    gate_reason,
    make_asr,
    recognised_answer_match,
    tally,
    wer_by_voice,
    word_error_rate,
)
from tasks.configs import BuildCorpusConfig
from tests.conftest import CHECK_CORPUS, write_jsonl


@pytest.fixture(scope="module")
def asr():
    return make_asr("pocketsphinx")


@pytest.fixture(scope="module")
def piper():
    from tasks.tts import make_tts

    return make_tts("piper", threads=1)


# ----------------------------------------------------------------------------- the recogniser
def test_pocketsphinx_recognises_a_piper_sentence(asr, piper) -> None:
    text = "what is the capital of france"
    audio = piper.synthesize(text, piper.voices()[0])
    heard = asr.transcribe(audio)
    assert word_error_rate(text, heard) < 0.5, heard
    assert asr.transcribe(audio.astype(np.float32) / 32768.0) == heard  # float32 [-1, 1] is the same audio
    assert asr.config()["name"] == "pocketsphinx" and asr.config()["version"] == "5.1.0"


def test_the_registry_declares_pocketsphinx_without_loading_it(tmp_path: Path) -> None:
    from tasks.backends import RECOGNISERS

    assert RECOGNISERS.names()[0] == "pocketsphinx"
    backend = RECOGNISERS.get("pocketsphinx")
    backend.check(backend.options())
    assert backend.identity(backend.options()) == {"name": "pocketsphinx"}
    with pytest.raises(ConfigError, match=r"lm .* does not exist"):
        backend.check(backend.options(lm=str(tmp_path / "missing.lm.bin")))
    with pytest.raises(ConfigError, match="unknown recogniser 'whisper'"):
        RECOGNISERS.get("whisper")


# ----------------------------------------------------------------------------- word error rate
@pytest.mark.parametrize(("reference", "hypothesis", "expected"), [
    ("what is the capital of france", "what is the capital of france", 0.0),
    ("The capital of France is Paris.", "the capital of france is parents", 1 / 6),  # substitution
    ("a spider has eight legs", "a spider has legs", 1 / 5),  # deletion
    ("the sky is blue", "the sky is so blue", 1 / 4),  # insertion
    ("Hello, World!", "hello world", 0.0),  # case and punctuation
    ("A spider has 8 legs.", "a spider has eight legs", 0.0),  # written vs spoken numbers
    ("It costs $5.", "it costs five dollars", 0.0),
    ("twelve times twelve is 144", "twelve times twelve is one hundred forty four", 0.0),
    ("Café", "cafe", 0.0),  # accents
    ("one two", "three four five six", 2.0),  # insertions can take it past 1
    ("hello world", "", 1.0),  # nothing heard
    ("", "", 0.0),  # empty reference, nothing heard
    ("", "hello", 1.0),  # empty reference, something heard: all wrong
    ("?!", "", 0.0),  # a reference with no words is empty
])
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


@pytest.mark.parametrize(("recognised", "aliases", "expected"), [
    ("the capital of france is paris", ["Paris", "Paris, France"], "Paris"),
    ("a spider has eight legs", ["8"], "8"),  # the eval's number normalisation
    ("the answer is sixteen", ["six"], None),  # whole words only
    ("the capital of france is parents", ["Paris"], None),
    ("", ["Paris"], None),
])
def test_recognised_answer_match_is_the_evaluation_match(recognised: str, aliases: list[str],
                                                         expected: str | None) -> None:
    from tasks.evaluate import match_answer

    assert recognised_answer_match(recognised, aliases) == expected
    assert match_answer(recognised, aliases) == expected


# ----------------------------------------------------------------------------- the gate
def _row(question_audio: np.ndarray, answer_audio: np.ndarray) -> dict:
    return {"question_text": "what is the capital of france", "answer_text": "the capital of france is paris",
            "question_audio": question_audio, "answer_audio": answer_audio, "voice": "v"}


@pytest.mark.parametrize("clip", ["silence", "white noise"])
def test_the_gate_rejects_silence_and_noise_with_a_reason(asr, piper, clip: str) -> None:
    rng = np.random.default_rng(0)
    bad = (np.zeros(16000, np.int16) if clip == "silence"
           else rng.normal(0, 4000, 16000).clip(-32768, 32767).astype(np.int16))
    good = piper.synthesize("the capital of france is paris", piper.voices()[0])
    cols, reason = check_row(asr, _row(bad, good), max_wer=0.5)
    assert cols["question_asr_wer"] > 0.5 and reason is not None
    assert reason.startswith(f"ASR word error rate {cols['question_asr_wer']:.2f} is above --max-asr-wer 0.5")
    heard = cols["question_asr_text"].replace("'", "’")  # quotes inside a reason are typographic
    assert f"the question was heard as '{heard}'" in reason
    cols, reason = check_row(asr, _row(bad, bad), max_wer=None)  # no threshold: columns, no gate
    assert reason is None and set(cols) == {"question_asr_text", "answer_asr_text", "question_asr_wer",
                                            "answer_asr_wer"}


def test_gate_reason_uses_the_worse_wer_and_keeps_quotes_groupable() -> None:
    from tasks.corpus_finalize import reason_key

    cols = {"question_asr_text": "it's fine", "answer_asr_text": "", "question_asr_wer": 0.2,
            "answer_asr_wer": 0.25}
    assert gate_reason(cols, 0.25) is None  # at the threshold passes
    reason = gate_reason(cols, 0.2)
    assert reason is not None and "0.25" in reason and "'it’s fine'" in reason
    assert reason_key(reason) == reason_key(gate_reason({**cols, "question_asr_text": "x"}, 0.1) or "")


def test_wer_by_voice_averages_over_shards() -> None:
    rows = [{"voice": "a", "question_asr_wer": 0.0, "answer_asr_wer": 0.5},
            {"voice": "b", "question_asr_wer": 1.0, "answer_asr_wer": 1.0}]
    parts = [tally(rows), tally([{"voice": "a", "question_asr_wer": 1.0, "answer_asr_wer": 0.5}])]
    assert wer_by_voice(parts) == {"a": {"rows": 2, "question_wer": 0.5, "answer_wer": 0.5},
                                   "b": {"rows": 1, "question_wer": 1.0, "answer_wer": 1.0}}


# ----------------------------------------------------------------------------- schema and config
def test_corpus_schema_takes_all_asr_columns_or_none() -> None:
    from data_specs import corpus as spec

    empty = spec.SCHEMA.empty_table()
    spec.validate(empty)
    spec.validate(spec.SCHEMA_WITH_ASR.empty_table())
    assert spec.schema(False) is spec.SCHEMA and spec.SCHEMA_WITH_ASR.metadata == spec.SCHEMA.metadata
    with pytest.raises(IntegrityError, match="missing column 'answer_asr_wer'"):
        spec.validate(spec.SCHEMA_WITH_ASR.empty_table().drop_columns(["answer_asr_wer"]))
    with pytest.raises(IntegrityError, match="question_asr_wer' has type double"):
        spec.validate(spec.SCHEMA_WITH_ASR.empty_table().set_column(
            19, "question_asr_wer", pa.chunked_array([], pa.float64())))


def test_asr_options_need_the_check_and_enter_the_hash_only_when_on() -> None:
    from tasks.corpus_paths import config_hash

    base = {"source": "qa.jsonl", "out": "o"}
    with pytest.raises(ConfigError, match=r"max_asr_wer \(--max-asr-wer\) needs asr_check \(--asr-check\)"):
        build(BuildCorpusConfig, {**base, "max_asr_wer": 0.3}, "build-corpus")
    off = BuildCorpusConfig(**base)
    assert not {"asr_check", "asr", "max_asr_wer"} & set(off.content_hash_fields())  # hash as before
    assert off.asr_choice() is None
    gates = ({}, {"asr_check": True}, {"asr_check": True, "max_asr_wer": 0.5},
             {"asr_check": True, "max_asr_wer": 0.0})
    hashes = {config_hash(BuildCorpusConfig(**base, **kw), "src") for kw in gates}
    assert len(hashes) == 4  # every gate setting is its own build
    assert BuildCorpusConfig.model_json_schema()["properties"]["asr"]["enum"] == ["pocketsphinx"]


def test_cli_refuses_max_asr_wer_without_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from core import runtime
    from echox.cli import main

    monkeypatch.setattr(runtime, "configure", lambda **_: None)
    monkeypatch.setattr(runtime, "ensure_prefect_api", lambda: "")
    assert main(["build-corpus", "--source", str(tmp_path / "qa.jsonl"), "--out", str(tmp_path / "o"),
                 "--max-asr-wer", "0.3"]) == 2
    assert "max_asr_wer (--max-asr-wer) needs asr_check (--asr-check)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a build with the gate
QA = [("What is two plus two?", "Two plus two is four.", ["4"]),
      ("What color is the sky?", "The sky is blue.", ["blue"]),
      ("How many legs does a spider have?", "A spider has 8 legs.", ["8"]),
      ("What is the capital of France?", "The capital of France is Paris.", ["Paris"])]


def test_a_piper_build_with_the_asr_gate(tmp_path: Path) -> None:
    from tasks import build_corpus as stages
    from tasks.data import load_corpus

    src = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": q, "answer": a, "aliases": al}
                                              for i, (q, a, al) in enumerate(QA, start=1)])
    cfg = BuildCorpusConfig(source=str(src), out=str(tmp_path / "out"), tts="piper", num_units=8,
                            shard_size=2, workers=1, threads_per_worker=1, progress=False,
                            asr_check=True, max_asr_wer=0.0, max_reject_fraction=1.0)
    manifest = stages.build_in_process(cfg)

    res = subprocess.run([sys.executable, str(CHECK_CORPUS), cfg.out, "--source", str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = list(load_corpus(Path(cfg.out)))
    rejects = [json.loads(x) for x in (Path(cfg.out) / "rejects.jsonl").read_text().splitlines()]
    assert len(rows) + len(rejects) == len(QA) and rows and rejects
    assert all(r["stage"] == "asr" and "ASR word error rate" in r["reason"] and "heard as" in r["reason"]
               for r in rejects)
    for r in rows:  # kept at --max-asr-wer 0: heard exactly
        assert r["question_asr_wer"] == 0.0 and r["answer_asr_wer"] == 0.0 and r["answer_asr_text"]
    asr = manifest["asr"]
    assert asr["rejected"] == len(rejects) and asr["max_wer"] == 0.0
    assert asr["recogniser"] == {"name": "pocketsphinx"}
    (voice,) = asr["wer_by_voice"]
    assert asr["wer_by_voice"][voice]["rows"] == len(QA)  # every record heard, kept or rejected
    assert "question_asr_wer" in json.loads((Path(cfg.out) / "dataset_info.json").read_text())["features"]


def test_the_counts_artifact_reports_the_gate() -> None:
    from flows.build_corpus import _counts_table

    manifest = {"totals": {"source_records": 4, "rows": 3, "rejected": 1, "audio_hours": 0.01},
                "shards": [{}], "rejects_by_reason": {"ASR word error rate …": 1}}
    assert not any("WER" in r["what"] or "ASR gate" in r["what"] for r in _counts_table(manifest))
    asr = {"rejected": 1, "wer_by_voice": {"joe": {"rows": 4, "question_wer": 0.1, "answer_wer": 0.2}}}
    rows = {r["what"]: r["count"] for r in _counts_table({**manifest, "asr": asr})}
    assert rows["rejected by the ASR gate"] == 1
    assert rows["mean question WER (joe)"] == 0.1 and rows["mean answer WER (joe)"] == 0.2
