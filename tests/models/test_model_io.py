"""Save → load round trips for every stage, referenced base weights, and checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from core.errors import CheckpointError
from models.echo import build_echo
from models.io import load_model, save_model
from models.presets import resolve_preset
from models.s2t import build_s2t
from models.t2c import build_t2c
from tasks.collate import make_collator
from tests.models.conftest import syllable_rows, syllable_units

K = 40


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, batch: dict) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        out_a, out_b = a(**batch), b(**batch)
    for key in ("loss", "ce", "ctc", "echo", "denoise"):
        if key in out_a:
            assert torch.equal(out_a[key], out_b[key]), key


def _train_a_step(model: torch.nn.Module, batch: dict) -> None:
    """Move weights away from their initialisation so a round trip cannot pass by re-initialising."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch)["loss"].backward()
    opt.step()


def _keys(path: Path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("stage", ["s2t", "t2c", "echo"])
def test_round_trip_self_contained(tiny_base: Path, rows: list[dict], tmp_path: Path, stage: str) -> None:
    torch.manual_seed(0)
    preset = resolve_preset("tiny")
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    if stage == "s2t":
        model = build_s2t(preset, base)
    elif stage == "t2c":
        model = build_t2c(preset, base, K)
    else:
        model = build_echo(build_s2t(preset, base), build_t2c(preset, base, K))
    batch = make_collator(stage, model)(rows)
    _train_a_step(model, batch)
    save_model(model, tmp_path / "ckpt")
    shutil.rmtree(base)  # self-contained: the base directory is not needed any more
    loaded = load_model(tmp_path / "ckpt", expect_stage=stage)
    assert type(loaded) is type(model)
    assert set(model.state_dict()) == set(loaded.state_dict())
    _same_outputs(model, loaded, batch)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["stage"] == stage and config["preset"]["name"] == "tiny" and config["external"] == []


def test_lora_checkpoint_references_the_base(tiny_base: Path, rows: list[dict], tmp_path: Path) -> None:
    torch.manual_seed(0)
    preset = resolve_preset("tiny", lora_rank=4, self_contained_checkpoints=False)
    model = build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K))
    batch = make_collator("echo", model)(rows)
    _train_a_step(model, batch)
    save_model(model, tmp_path / "echo")
    keys = _keys(tmp_path / "echo")
    assert any("lora_" in k for k in keys) and any(k.startswith("adapter.") for k in keys)
    assert not any(k.startswith("s2t.llm.") and "lora_" not in k for k in keys)  # base LLM referenced
    assert "echo_decoder.text_embed.weight" not in keys
    assert "s2t.encoder.conv1.weight" in keys  # the tiny encoder is trained, so it is saved
    _same_outputs(model, load_model(tmp_path / "echo"), batch)
    # The base moved: the recorded path fails clearly, an explicit one works.
    moved = tmp_path / "base-moved"
    shutil.copytree(tiny_base, moved)
    config = json.loads((tmp_path / "echo" / "config.json").read_text())
    config["base_llm_dir"] = str(tmp_path / "gone")
    (tmp_path / "echo" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="base_llm_dir"):
        load_model(tmp_path / "echo")
    _same_outputs(model, load_model(tmp_path / "echo", base_llm_dir=moved), batch)


def test_bad_checkpoints_raise(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an echox model"):
        load_model(tmp_path / "empty")
    model = build_t2c(resolve_preset("tiny"), tiny_base, K)
    save_model(model, tmp_path / "t2c")
    with pytest.raises(CheckpointError, match="expected s2t"):
        load_model(tmp_path / "t2c", expect_stage="s2t")
    (tmp_path / "t2c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(tmp_path / "t2c")
    (tmp_path / "t2c" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not an echox model"):
        load_model(tmp_path / "t2c")
    with pytest.raises(CheckpointError, match="not made by an echox builder"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x")


def test_frozen_local_encoder_is_referenced(tiny_base: Path, rows: list[dict], tmp_path: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=400,
    )
    torch.manual_seed(1)
    WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path / "whisper")
    preset = resolve_preset(
        "tiny", encoder_path=str(tmp_path / "whisper"), train_encoder=False, self_contained_checkpoints=False
    )
    model = build_s2t(preset, tiny_base)
    batch = make_collator("s2t", model)(rows)
    _train_a_step(model, batch)
    save_model(model, tmp_path / "s2t")
    keys = _keys(tmp_path / "s2t")
    assert not any(k.startswith("encoder.") for k in keys) and any(k.startswith("llm.") for k in keys)
    _same_outputs(model, load_model(tmp_path / "s2t"), batch)
    shutil.move(tmp_path / "whisper", tmp_path / "whisper2")
    with pytest.raises(CheckpointError, match="encoder_path"):
        load_model(tmp_path / "s2t")
    _same_outputs(model, load_model(tmp_path / "s2t", encoder_path=str(tmp_path / "whisper2")), batch)


def test_echo_starts_from_stage_checkpoints(tiny_base: Path, rows: list[dict], tmp_path: Path) -> None:
    torch.manual_seed(0)
    preset = resolve_preset("tiny")
    s2t, t2c = build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K)
    _train_a_step(t2c, make_collator("t2c", t2c)(rows))
    save_model(s2t, tmp_path / "s2t")
    save_model(t2c, tmp_path / "t2c")
    echo = build_echo(load_model(tmp_path / "s2t", expect_stage="s2t"), load_model(tmp_path / "t2c"))
    assert torch.equal(echo.echo_decoder.head.weight, t2c.decoder.head.weight)  # initialised from stage II
    batch = make_collator("echo", echo)(rows)
    save_model(echo, tmp_path / "echo")
    _same_outputs(echo, load_model(tmp_path / "echo", expect_stage="echo"), batch)


def test_unit_language_round_trip(tiny_base: Path, unit_language: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    preset = resolve_preset("tiny")
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    s2t, t2c = build_s2t(preset, base), build_t2c(preset, base, K, unit_language=unit_language)
    rows = syllable_rows(4)
    batch = make_collator("t2c", t2c)(rows)
    _train_a_step(t2c, batch)
    save_model(t2c, tmp_path / "t2c")
    assert sorted(p.name for p in (tmp_path / "t2c").iterdir()) == ["config.json", "llm", "model.safetensors"]
    config = json.loads((tmp_path / "t2c" / "config.json").read_text())
    assert config["extra"] == {"num_units": K, "unit_language": unit_language}
    loaded = load_model(tmp_path / "t2c", expect_stage="t2c")
    assert loaded.num_units == K and loaded.target_vocab_size == t2c.target_vocab_size > K
    assert loaded.unit_language is not None and loaded.unit_language.to_str() == t2c.unit_language.to_str()
    for units in syllable_units(5, seed=7):
        words = t2c.unit_targets(units)
        assert loaded.unit_targets(units) == words and loaded.units_from_targets(words) == units
    _same_outputs(t2c, loaded, batch)
    texts = [t2c.encode(r["answer_text"]) for r in rows]
    assert t2c.generate_units(texts, max_units=8) == loaded.generate_units(texts, max_units=8)

    # The Echo decoder inherits the unit language: word targets in, raw units out, kept by its checkpoint.
    echo = build_echo(s2t, loaded)
    assert echo.num_units == K and echo.unit_language is loaded.unit_language
    batch = make_collator("echo", echo)(rows)
    seg = batch["segment_units"]  # (B, U) word ids, PAD = N + 2
    for i, row in enumerate(rows):
        n = int(batch["segment_unit_lengths"][i])
        raw = row["segment_units"]
        assert seg[i, :n].tolist() == echo.unit_targets(raw) and n < len(raw)
    assert torch.isfinite(echo(**batch)["loss"])
    save_model(echo, tmp_path / "echo")
    echo2 = load_model(tmp_path / "echo", expect_stage="echo")
    _same_outputs(echo, echo2, batch)
    echo2.eval()
    units, _ = echo2.speak_segment(torch.randn(3, echo2.s2t.llm.config.hidden_size), max_units=6)
    assert units and all(0 <= u < K for u in units)
