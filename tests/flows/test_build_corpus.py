"""The corpus build flow on real Ray + Prefect + espeak-ng, checked against the corpus contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import EchoxError, InputError
from tasks.configs import BuildCorpusConfig
from tests.conftest import CHECK_CORPUS, qa, write_jsonl

pytestmark = pytest.mark.integration


def _source(tmp_path: Path) -> Path:
    rows: list = [qa(i) for i in range(1, 8)]
    rows += [
        '{"id": "bad-json", "question": ',  # malformed JSON
        {"id": "no-answer", "question": "Where?"},  # missing field
        qa(3),  # duplicate id
        {"id": "blank", "question": "   ", "answer": "Yes."},  # whitespace text
        {"id": "num", "question": 5, "answer": "five"},  # wrong type
        b'{"id": "latin", "question": "caf\xe9?", "answer": "yes"}',  # not UTF-8
        {"id": "emoji", "question": "\U0001F600\U0001F600", "answer": "Smile."},  # normalises to nothing
        {"id": "voice", "question": "Hello there?", "answer": "Hi.", "voice": "no-such-voice"},
    ]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def _cfg(src: Path, out: Path, **kw: object) -> BuildCorpusConfig:
    base = {"source": str(src), "out": str(out), "tts": "espeak", "num_units": 8, "shard_size": 3,
            "workers": 2, "progress": False, "max_reject_fraction": 0.7}
    return BuildCorpusConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, ray_session: None, prefect_server: None) -> tuple:
    from flows.build_corpus import build_corpus

    tmp = tmp_path_factory.mktemp("corpus")
    src = _source(tmp)
    cfg = _cfg(src, tmp / "out")
    build_corpus(config=cfg)
    return src, cfg


def test_corpus_meets_contract(built: tuple) -> None:
    src, cfg = built
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), cfg.out, "--source", str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rows_and_rejects_account_for_every_record(built: tuple) -> None:
    import datasets

    _, cfg = built
    ds = datasets.load_from_disk(cfg.out)
    assert sorted(ds["id"]) == [f"q{i}" for i in range(1, 8)]
    rejects = [json.loads(x) for x in (Path(cfg.out) / "rejects.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["reason"] for r in rejects}
    assert "malformed JSON" in next(r["reason"] for r in rejects if r["line"] == 8)
    assert "missing field 'answer'" in by_id["no-answer"]
    assert "duplicate id 'q3'" in by_id["q3"]
    assert "empty" in by_id["blank"]
    assert "must be a string" in by_id["num"]
    assert "UTF-8" in by_id["latin"]
    assert "empty" in by_id["emoji"]
    assert "no-such-voice" in by_id["voice"]
    assert len(ds) + len(rejects) == 15


def test_manifest_and_codebook(built: tuple) -> None:
    from tasks.shards import file_sha256

    _, cfg = built
    out = Path(cfg.out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["rows"] == 7 and m["totals"]["rejected"] == 8
    assert m["codebook"]["sha256"] == file_sha256(out / "codebook.npz")
    assert len(m["shards"]) == 3  # 7 valid-looking records → 3 shards of ≤3 (some rows rejected by TTS)
    assert m["totals"]["audio_hours"] > 0


def test_rerun_skips_finished_shards(built: tuple) -> None:
    from flows.build_corpus import build_corpus

    _, cfg = built
    out = Path(cfg.out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.arrow")}
    build_corpus(config=cfg)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.arrow")}
    assert before == after


def test_refuses_a_different_build_without_overwrite(built: tuple) -> None:
    from flows.build_corpus import build_corpus

    src, cfg = built
    with pytest.raises(InputError, match="--overwrite"):
        build_corpus(config=_cfg(src, Path(cfg.out), num_units=9))


def test_too_many_rejects_fail_loudly(built: tuple, tmp_path: Path) -> None:
    from flows.build_corpus import build_corpus

    src, _ = built
    with pytest.raises(EchoxError, match="records rejected"):
        build_corpus(config=_cfg(src, tmp_path / "strict", max_reject_fraction=0.1))
    strict = tmp_path / "strict"
    assert not (strict / "manifest.json").exists()  # a failed build never looks finished
    assert json.loads((strict / "failure.json").read_text())["status"] == "failed"
    assert len((strict / "rejects.jsonl").read_text().splitlines()) == 8  # the rejects stay inspectable
