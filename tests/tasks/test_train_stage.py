"""Stage preparation: the optional unit language of stage t2c (validation, training, the built model)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from core.errors import ConfigError
from tasks.shards import write_arrow, write_json
from tasks.train_stage import check_unit_vocab_size, corpus_unit_language, prepare_stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
K = 20
SYLLABLES = [[1, 5, 9], [2, 14], [7, 3, 18, 6], [11, 0]]
TEXTS = ["what is one plus one", "one plus one is two.", "who wrote hamlet", "shakespeare wrote it."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-shard corpus of 24 rows whose answer units repeat a few syllables, with a K=20 manifest."""
    out = tmp_path_factory.mktemp("corpus")
    units = [[u for k in range(6) for u in SYLLABLES[(i + k * (i % 3 + 1)) % 4]] for i in range(24)]
    table = pa.table({"id": [f"r{i}" for i in range(24)],
                      "question_text": [TEXTS[2 * (i % 2)] for i in range(24)],
                      "answer_text": [TEXTS[2 * (i % 2) + 1] for i in range(24)],
                      "answer_units": pa.array(units, pa.list_(pa.int32()))})
    shard = write_arrow(out / "data-00000-of-00001.arrow", table)
    write_json(out / "manifest.json", {"shards": [shard], "codebook": {"num_units": K}})
    return out


def test_unit_vocab_size_validation() -> None:
    check_unit_vocab_size("t2c", 0, K)
    check_unit_vocab_size("s2t", 0, None)
    check_unit_vocab_size("t2c", K + 1, K)
    for stage, size, k, init, match in [("t2c", K, K, None, f"exceed the corpus's K={K}"),
                                        ("t2c", 5, K, None, "got 5"),
                                        ("s2t", 200, None, None, "stage t2c only, not s2t"),
                                        ("t2c", 200, K, "/ckpt", "keeps the one it was trained with")]:
        with pytest.raises(ConfigError, match=match):
            check_unit_vocab_size(stage, size, k, init)


def test_prepare_stage_rejects_a_vocab_not_above_k_before_any_work(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"K={K}"):
        prepare_stage("t2c", "tiny", {}, corpus, tmp_path / "cache", unit_vocab_size=K)
    with pytest.raises(ConfigError, match="stage t2c only"):
        prepare_stage("s2t", "tiny", {}, corpus, tmp_path / "cache", unit_vocab_size=K + 10)
    assert not (tmp_path / "cache").exists()  # failed before the base LLM was built


def test_prepare_stage_builds_a_t2c_over_unit_words(corpus: Path, tmp_path: Path) -> None:
    from tasks.units import UnitLanguage

    text = corpus_unit_language(corpus, 40, K)
    assert corpus_unit_language(corpus, 40, K) == text  # deterministic: every rank and a resume agree
    lang = UnitLanguage.from_str(text)
    assert K < lang.vocab_size <= 40
    units = [1, 5, 9, 2, 14, 7, 3, 18, 6]
    assert len(lang.encode(units)) < len(units) and lang.decode(lang.encode(units)) == units
    build = prepare_stage("t2c", "tiny", {}, corpus, tmp_path / "cache", unit_vocab_size=40)
    model = build()
    assert model.num_units == K and model.target_vocab_size == lang.vocab_size
    assert model.unit_language.to_str() == lang.to_str()
    extra = dict(model.build_info.extra)
    assert extra.pop("codebook")["num_units"] == K  # the corpus codebook's identity, for vocoder checks
    assert extra == {"num_units": K, "unit_language": text}
    plain = prepare_stage("t2c", "tiny", {}, corpus, tmp_path / "cache")()
    assert plain.unit_language is None and plain.target_vocab_size == K


def test_config_and_cli_reject_unit_vocab_size_outside_t2c(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from core import runtime
    from core.config import build
    from echox.cli import main
    from flows.pipeline_config import PipelineConfig
    from tasks.configs import TrainFlowConfig

    paths = {"corpus": "c", "out": "o"}
    cfg = build(TrainFlowConfig, {"stage": "t2c", "unit_vocab_size": 200, **paths}, "train")
    assert cfg.unit_vocab_size == 200
    with pytest.raises(ConfigError, match="stage t2c option, not echo"):
        build(TrainFlowConfig, {"stage": "echo", "unit_vocab_size": 200, **paths}, "train")
    pipe = build(PipelineConfig, {"source": "s", "out": "o", "t2c": {"unit_vocab_size": 200}}, "pipeline")
    assert pipe.t2c.model_dump()["unit_vocab_size"] == 200  # flows/pipeline passes step.model_dump() on
    # The CLI reports it as a user error (exit 2) before starting Prefect or reading the corpus.
    monkeypatch.setattr(runtime, "configure", lambda **_: None)
    monkeypatch.setattr(runtime, "ensure_prefect_api", lambda: "")
    argv = ["train", "--stage", "s2t", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"),
            "--unit-vocab-size", "200"]
    assert main(argv) == 2
    assert "unit_vocab_size (--unit-vocab-size) is a stage t2c option, not s2t" in capsys.readouterr().err
