"""The stage registry: a stage registered from outside the project trains, saves and loads like the real
ones, and the registry's names are what TrainFlowConfig accepts."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import models.stages as stages
from core.config import build
from core.errors import ConfigError, InputError
from models.build_info import BuildInfo
from models.presets import ModelPreset, preset_to_dict, resolve_preset
from models.stages import StageInputs, StageSpec, get_stage, register_stage, stage_names
from tasks.configs import TrainFlowConfig
from tests.helpers import dummy_model as dm

NAME = "counter-test"


def _stamp(model: nn.Module, preset: ModelPreset, llm_dir: Path) -> nn.Module:
    """What every builder does: record how the model was made, so models.io can save and rebuild it."""
    model.build_info = BuildInfo(NAME, preset, str(llm_dir), extra={"vocab": dm.VOCAB})  # type: ignore[assignment]
    return model


def _build(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    torch.manual_seed(inputs.seed)
    return _stamp(dm.TinyLM(dm.VOCAB), preset, llm_dir)


def _rebuild(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any], load_weights: bool) -> nn.Module:
    return _stamp(dm.TinyLM(int(extra["vocab"])), preset, llm_dir)


def _collate(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    return dm.Collator()(rows)


def _length(row: dict[str, Any]) -> int:
    return len(row["answer_units"])


SPEC = StageSpec(name=NAME, description="test-only: next-unit prediction on counting sequences",
                 build=_build, rebuild=_rebuild, collate=_collate, example_length=_length,
                 loss_keys=("loss", "ce", "reg"))


@pytest.fixture
def counter_stage(monkeypatch: pytest.MonkeyPatch) -> StageSpec:
    """SPEC registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(stages, "_STAGES", dict(stages._STAGES))
    return register_stage(SPEC)


def test_registered_stage_trains_saves_and_loads(counter_stage: StageSpec, tmp_path: Path) -> None:
    from models.factory import build_for_stage
    from models.io import load_model, read_config
    from tasks.collate import example_length, make_collator
    from tasks.train import TrainConfig, run_local

    corpus = dm.write_corpus(tmp_path / "corpus", dm.corpus_table(32, seed=1))
    llm_dir = tmp_path / "llm"  # the skeleton save_model copies: config and tokenizer files, no weights
    llm_dir.mkdir()
    (llm_dir / "config.json").write_text(json.dumps({"kind": "counter"}))
    factory = functools.partial(build_for_stage, NAME, preset_to_dict(resolve_preset("tiny")), str(llm_dir))
    cfg = TrainConfig(stage=NAME, corpus_dir=str(corpus), out_dir=str(tmp_path / "run"), max_steps=12,
                      batch_size=4, lr=3e-2, warmup_steps=2, log_every=2, ckpt_every=6, bucket_size=16,
                      num_threads=1)
    summary = run_local(cfg, factory)  # no hooks: collate, length and save come from the registry

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stage"] == NAME and summary["steps"] == 12
    assert set(counter_stage.loss_keys) <= set(rows[-1]) and rows[-1]["loss"] < rows[0]["loss"]
    model_dir = tmp_path / "run" / "model"
    assert read_config(model_dir)["stage"] == NAME
    loaded = load_model(model_dir, expect_stage=NAME)
    trained = load_model(Path(summary["model_dir"]))
    for (k, a), (_, b) in zip(loaded.state_dict().items(), trained.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    fresh = _build(resolve_preset("tiny"), llm_dir, StageInputs())
    assert not torch.equal(loaded.head.weight, fresh.head.weight)  # what was saved is the trained model
    row = {"answer_units": [1, 2, 3, 4]}
    batch = make_collator(NAME, loaded)([row])
    assert set(batch) == {"input_ids", "labels"} and example_length(row, NAME) == 4


def test_registry_names_drive_train_flow_config(counter_stage: StageSpec) -> None:
    paths = {"corpus": "c", "out": "o"}
    assert build(TrainFlowConfig, {"stage": NAME, **paths}, "train").stage == NAME  # type: ignore[attr-defined]
    assert NAME in TrainFlowConfig.model_json_schema()["properties"]["stage"]["enum"]
    known = (r"stage: Input should be 's2t', 't2c', 'echo', 'echo-online', 'vocoder', 'encoder' or "
             r"'counter-test'")
    with pytest.raises(ConfigError, match=known):
        build(TrainFlowConfig, {"stage": "nope", **paths}, "train")
    with pytest.raises(ConfigError, match=r"unit_vocab_size .* is a stage t2c option, not counter-test"):
        build(TrainFlowConfig, {"stage": NAME, "unit_vocab_size": 200, **paths}, "train")


def test_unknown_stage_names_the_known_ones() -> None:
    assert stage_names()[:5] == ("s2t", "t2c", "echo", "echo-online", "vocoder")
    known = "stage: Input should be 's2t', 't2c', 'echo', 'echo-online', 'vocoder' or 'encoder'"
    with pytest.raises(ConfigError, match=known):
        build(TrainFlowConfig, {"stage": "s3t", "corpus": "c", "out": "o"}, "train")
    assert TrainFlowConfig.model_json_schema()["properties"]["stage"]["enum"] == list(stage_names())
    with pytest.raises(ConfigError, match="unknown stage 's3t'; expected one of: s2t, t2c, echo, "
                                          "echo-online, vocoder, "):
        get_stage("s3t")
    from tasks.collate import make_collator

    with pytest.raises(InputError, match="unknown stage"):
        make_collator("s3t", nn.Linear(1, 1))


def test_specs_are_checked(counter_stage: StageSpec) -> None:
    assert register_stage(SPEC) is SPEC  # registering the same spec again is harmless
    with pytest.raises(ConfigError, match="already registered"):
        register_stage(StageSpec(NAME, "another", _build, _rebuild, _collate, _length))
    with pytest.raises(ConfigError, match="unknown needs"):
        StageSpec("x", "x", _build, _rebuild, _collate, _length, needs=frozenset({"gpu"}))
    with pytest.raises(ConfigError, match="'loss'"):
        StageSpec("x", "x", _build, _rebuild, _collate, _length, loss_keys=("ce",))
    assert get_stage("t2c").needs == {"base_llm", "num_units"} and get_stage("echo").loss_keys[0] == "loss"
