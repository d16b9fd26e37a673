"""Presets are data: overrides, validation, and a lossless dict round trip."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from models.presets import PRESETS, preset_from_dict, preset_to_dict, resolve_preset


def test_named_presets_exist_with_paper_sizes() -> None:
    assert {"tiny", "smollm2-135m", "llama-3b", "llama-8b"} <= set(PRESETS)
    big = PRESETS["llama-3b"]
    assert (big.t2c_layers, big.t2c_dim, big.t2c_heads, big.t2c_ffn, big.t2c_max_positions) == (
        8,
        768,
        12,
        2048,
        2048,
    )
    assert (
        big.llm_path is None and big.encoder_source == "path" and not big.train_encoder and big.lora_rank > 0
    )
    tiny = PRESETS["tiny"]
    assert tiny.train_encoder and tiny.lora_rank == 0 and tiny.llm == "random"


def test_overrides_apply_and_coerce_lists() -> None:
    p = resolve_preset("llama-3b", llm_path="/models/llama", lora_rank=8, lora_targets=["q_proj", "v_proj"])
    assert p.llm_path == "/models/llama" and p.lora_rank == 8
    assert p.lora_targets == ("q_proj", "v_proj")
    assert PRESETS["llama-3b"].lora_rank == 16  # the registry is untouched


@pytest.mark.parametrize(
    ("name", "overrides", "needle"),
    [
        ("nope", {}, "nope"),
        ("tiny", {"llm_wdith": 3}, "llm_wdith"),
        ("tiny", {"llm_dim": 0}, "llm_dim"),
        ("tiny", {"t2c_heads": 5}, "divisible"),
        ("tiny", {"lora_rank": -1}, "lora_rank"),
        ("tiny", {"llm": "gpt5"}, "llm"),
    ],
)
def test_bad_names_and_fields_raise_config_error(name: str, overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_preset(name, **overrides)


def test_dict_round_trip() -> None:
    for preset in PRESETS.values():
        assert preset_from_dict(preset_to_dict(preset)) == preset
    with pytest.raises(ConfigError):
        preset_from_dict({"name": "x", "bogus": 1})
