"""Encoder pretraining (models/encoder_ctc.py), the trimmed encoder window and the CTC-embedding adapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import CheckpointError, ConfigError
from models.encoder_ctc import build_encoder_ctc, collate_encoder
from models.presets import resolve_preset
from models.speech import (
    CHAR_BLANK,
    CharAdapter,
    SpeechAdapter,
    build_encoder,
    char_ids,
    char_text,
    collapse,
    run_encoder,
    shrink_indices,
)
from tests.models.conftest import make_rows


def _preset(base: Path, **kw: object):  # the tiny sizes over a fixed (path) tokenizer, as stage encoder needs
    return resolve_preset("tiny", llm="path", llm_path=str(base), trim_audio_window=True, **kw)


def _rows(n: int = 4) -> list[dict]:
    rows = make_rows(n)
    for r in rows:
        r["answer_audio"] = r["question_audio"][::-1].copy()
    return rows


def test_collapse_merges_repeats_then_drops_blanks() -> None:
    assert collapse([0, 5, 5, 0, 5, 7, 7, 0], blank=0) == [5, 5, 7]
    assert collapse([0, 0], blank=0) == []


def test_trimmed_encoder_equals_the_window_forward_on_a_full_window() -> None:
    enc = build_encoder(resolve_preset("tiny", max_audio_seconds=1), seed=0).eval()
    feats = torch.randn(2, 80, 100)  # exactly the 1 s window: trimming drops nothing
    lengths = torch.tensor([50, 50])
    full = run_encoder(enc, feats, lengths, trim=False)
    trimmed = run_encoder(enc, feats, lengths, trim=True)
    assert trimmed.shape == full.shape == (2, 50, enc.config.d_model)
    torch.testing.assert_close(trimmed, full)
    short = run_encoder(enc, feats, torch.tensor([20, 10]), trim=True)
    assert short.shape[1] == 20  # the batch's longest clip only


def test_ctc_embed_adapter_feeds_expected_token_embeddings_without_blanks() -> None:
    torch.manual_seed(0)
    vocab, dim, blank = 7, 16, 0
    adapter = SpeechAdapter(8, dim, vocab, blank, num_heads=2, ctc_embed=True).eval()
    embed = torch.randn(vocab, dim)
    out = adapter(torch.randn(1, 12, 8), torch.tensor([12]), embed)
    ids = out.ctc_log_probs.argmax(-1)[0]  # (T',)
    kept = [i for i, t in enumerate(ids.tolist()) if t != blank and (i == 0 or t != ids[i - 1])]
    assert int(out.mask.sum()) == max(1, len(kept))
    # the gate starts at 0: each frame is exactly the posterior-weighted embedding of its frame
    if kept:
        probs = out.ctc_log_probs[0, kept].exp()
        torch.testing.assert_close(out.frames[0, : len(kept)], probs @ embed, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="embedding table"):
        adapter(torch.randn(1, 12, 8), torch.tensor([12]))


def test_shrink_drops_blank_runs_and_keeps_one_frame_of_an_all_blank_row() -> None:
    ids = torch.tensor([[0, 3, 3, 0, 4], [0, 0, 0, 0, 0]])
    idx, mask = shrink_indices(ids, torch.ones_like(ids, dtype=torch.bool), blank_id=0)
    assert idx[0][mask[0]].tolist() == [1, 4] and idx[1][mask[1]].tolist() == [0]


def _assert_learns(model: torch.nn.Module, batch: dict) -> None:
    """12 AdamW steps on one batch cut its CTC loss by at least 30 %."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_encoder_stage_learns_saves_loads_and_initialises_stage_one(tiny_base: Path, tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    preset = _preset(tiny_base, adapter_ctc_embed=True)
    model = build_encoder_ctc(preset, tiny_base, seed=0)
    batch = collate_encoder(_rows(), model)
    assert batch["input_features"].shape[0] == 8  # question and answer of 4 rows
    _assert_learns(model, batch)
    # DDP needs a gradient for every trainable parameter: what CTC does not read is frozen
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    texts = model.transcribe([np.asarray(r["question_audio"]) for r in _rows(2)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    saved = save_model(model, tmp_path / "enc")
    loaded = load_model(saved, expect_stage="encoder")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

    s2t = build_s2t(preset, tiny_base, seed=5, encoder_init=load_model(saved, expect_stage="encoder"))
    for name in ("encoder", "adapter"):
        mine = getattr(s2t, name).state_dict()
        for key, value in getattr(model, name).state_dict().items():
            torch.testing.assert_close(mine[key], value)
    assert s2t.forward(**_s2t_batch(s2t))["loss"].isfinite()


def _s2t_batch(s2t):
    from models.collate import collate_s2t

    return collate_s2t(make_rows(2), s2t)


def test_stage_one_refuses_an_encoder_of_another_tokenizer(tiny_base: Path, tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.llm import prepare_base_llm
    from models.s2t import build_s2t

    other = prepare_base_llm(resolve_preset("tiny"), corpus_texts=["the cat sat on the mat"] * 20 + [
        "a dog ran to the park and back again"] * 20, cache_dir=tmp_path / "other", seed=0)
    saved = save_model(build_encoder_ctc(_preset(other), other), tmp_path / "enc")
    with pytest.raises(CheckpointError, match="another tokenizer"):
        build_s2t(_preset(tiny_base), tiny_base, encoder_init=load_model(saved, expect_stage="encoder"))


def test_stage_one_refuses_an_encoder_of_other_sizes(tiny_base: Path, tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    saved = save_model(build_encoder_ctc(_preset(tiny_base, encoder_dim=32), tiny_base), tmp_path / "enc")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_s2t(_preset(tiny_base), tiny_base, encoder_init=load_model(saved, expect_stage="encoder"))


# ----------------------------------------------------------------------------- character CTC


def test_char_targets_normalise_case_accents_and_unknown_characters() -> None:
    assert char_text(char_ids("  Café,\tit's 4 O'Clock!  ")) == "cafe, it's 4 o'clock!"
    assert char_text(char_ids("naïve — über")) == "naive uber"  # the dash is outside the alphabet
    assert CHAR_BLANK not in char_ids("a b")


def test_char_preset_needs_ctc_embed_and_a_ctc_loss() -> None:
    with pytest.raises(ConfigError, match="adapter_ctc_embed"):
        resolve_preset("tiny", ctc_target="chars")
    with pytest.raises(ConfigError, match="ctc_weight"):
        resolve_preset("tiny", ctc_target="chars", adapter_ctc_embed=True, ctc_weight=0.0)
    with pytest.raises(ConfigError, match="tokens or chars"):
        resolve_preset("tiny", ctc_target="phones")


def test_char_adapter_feeds_the_embeddings_of_the_heard_transcript() -> None:
    torch.manual_seed(0)
    words = {"ab": [3, 4], "c": [5]}
    adapter = CharAdapter(8, lambda text: [i for w in text.split() for i in words.get(w, [6])]).eval()
    embed = torch.randn(10, 16)
    enc, lengths = torch.randn(2, 30, 8), torch.tensor([30, 17])
    out = adapter(enc, lengths, embed)
    assert out.ctc_log_probs.shape == (2, 30, 1 + len(char_ids("abcdefghijklmnopqrstuvwxyz")) + 17)
    assert out.ctc_lengths.tolist() == [30, 17]  # 50 Hz: characters need more frames than tokens
    _, logits, _, _ = adapter.ctc_frames(enc, lengths)
    for row, text in enumerate(adapter.transcripts(logits, lengths)):
        ids = adapter.tokenize(text) or adapter.tokenize(".")
        n = int(out.mask[row].sum())
        assert n == len(ids)
        torch.testing.assert_close(out.frames[row, :n], embed[ids])
        assert not out.frames[row, n:].any()
    # padding never enters the LSTM: the short row reads the same alone as beside a longer one
    alone, _, _, _ = adapter.ctc_frames(enc[1:, :17], lengths[1:])
    batched, _, _, _ = adapter.ctc_frames(enc, lengths)
    torch.testing.assert_close(batched[1, :17], alone[0])
    with pytest.raises(ValueError, match="embedding table"):
        adapter(enc, lengths)


def test_char_encoder_stage_learns_and_stage_one_hears_through_it(tiny_base: Path, tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    preset = _preset(tiny_base, ctc_target="chars", adapter_ctc_embed=True)
    model = build_encoder_ctc(preset, tiny_base, seed=0)
    assert isinstance(model.adapter, CharAdapter)
    batch = collate_encoder(_rows(), model)
    first = batch["ctc_targets"][0, : int(batch["ctc_lengths"][0])].tolist()
    assert first == char_ids(_rows()[0]["question_text"])
    _assert_learns(model, batch)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    heard = model.transcribe([np.asarray(r["question_audio"]) for r in _rows(2)])
    assert all(set(t) <= set(char_text(list(range(1, 60)))) for t in heard)

    saved = save_model(model, tmp_path / "enc")
    s2t = build_s2t(preset, tiny_base, seed=5, encoder_init=load_model(saved, expect_stage="encoder"))
    for name in ("encoder", "adapter"):
        mine = getattr(s2t, name).state_dict()
        for key, value in getattr(model, name).state_dict().items():
            torch.testing.assert_close(mine[key], value)
    s2t_batch = _s2t_batch(s2t)
    out = s2t(**s2t_batch)
    assert out["loss"].isfinite() and out["ctc"] > 0
    # the transcript is not differentiable: the answer CE trains the LLM, the CTC alone trains the encoder
    s2t.ctc_weight = 0.0
    s2t(**s2t_batch)["loss"].backward()
    assert not s2t.encoder.conv1.weight.grad.any() and not s2t.adapter.ctc_head.weight.grad.any()
    assert s2t.llm.get_input_embeddings().weight.grad.abs().sum() > 0
    s2t.ctc_weight = 0.3
    s2t.zero_grad()
    s2t(**s2t_batch)["loss"].backward()
    assert s2t.encoder.conv1.weight.grad.abs().sum() > 0
    audio = np.asarray(_rows(1)[0]["question_audio"])
    assert s2t.transcribe(audio) == model.transcribe([audio])[0]  # the same modules hear the same


def test_stage_one_refuses_a_token_encoder_for_a_char_preset(tiny_base: Path, tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    saved = save_model(build_encoder_ctc(_preset(tiny_base), tiny_base), tmp_path / "enc")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_s2t(_preset(tiny_base, ctc_target="chars", adapter_ctc_embed=True), tiny_base,
                  encoder_init=load_model(saved, expect_stage="encoder"))


def test_lexicon_decoding_is_a_preset_choice_a_saved_model_keeps(tiny_base: Path, tmp_path: Path) -> None:
    from models.ctc_lexicon import LexiconDecoder, whole_words
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    with pytest.raises(ConfigError, match="set ctc_target chars"):
        _preset(tiny_base, ctc_decoder="lexicon")
    with pytest.raises(ConfigError, match="greedy or lexicon"):
        _preset(tiny_base, ctc_target="chars", adapter_ctc_embed=True, ctc_decoder="beam")
    preset = _preset(tiny_base, ctc_target="chars", adapter_ctc_embed=True, ctc_decoder="lexicon",
                     lexicon_oov_penalty=100.0)
    s2t = build_s2t(preset, tiny_base, seed=3).eval()
    assert isinstance(s2t.adapter.decoder, LexiconDecoder)
    assert s2t(**_s2t_batch(s2t))["loss"].isfinite()  # stage I trains on what the lexicon decoder hears
    loaded = load_model(save_model(s2t, tmp_path / "s2t"), expect_stage="s2t").eval()
    assert loaded.build_info.preset.ctc_decoder == "lexicon"
    assert isinstance(loaded.adapter.decoder, LexiconDecoder)
    audio = np.asarray(_rows(1)[0]["question_audio"])
    heard = loaded.transcribe(audio)
    assert heard == s2t.transcribe(audio)
    known = {w.lower() for w in whole_words(loaded.chat.tokenizer)}
    # an unknown word costs more than any spelling of known ones can gain here: every word is known
    words = [w.strip(".,?!").lower() for w in heard.replace("-", " ").split() if w.strip(".,?!")]
    assert all(w in known or w.isdigit() for w in words), heard
    assert heard[:1] == heard[:1].upper()  # written as a sentence: its first letter capital
    greedy = build_s2t(dataclasses.replace(preset, ctc_decoder="greedy"), tiny_base, seed=3).eval()
    assert greedy.adapter.decoder is None


def test_the_speech_models_system_prompt_is_a_preset_field_a_saved_model_keeps(tiny_base: Path,
                                                                               tmp_path: Path) -> None:
    from models.io import load_model, save_model
    from models.s2t import build_s2t

    with pytest.raises(ConfigError, match="system_prompt must be a non-empty string"):
        _preset(tiny_base, system_prompt="  ")
    s2t = build_s2t(_preset(tiny_base, system_prompt="Answer in one sentence."), tiny_base, seed=3).eval()
    prompt = s2t.chat.tokenizer.decode(s2t.chat.prompt_ids)
    assert prompt.index("Answer in one sentence.") < prompt.index("<audio>")
    assert s2t(**_s2t_batch(s2t))["loss"].isfinite()  # stage I trains under that prompt
    loaded = load_model(save_model(s2t, tmp_path / "s2t"), expect_stage="s2t").eval()
    assert loaded.build_info.preset.system_prompt == "Answer in one sentence."
    assert loaded.chat.prompt_ids == s2t.chat.prompt_ids
    audio = np.asarray(_rows(1)[0]["question_audio"])
    assert loaded.generate(audio, max_new_tokens=3) == s2t.generate(audio, max_new_tokens=3)
    default = build_s2t(_preset(tiny_base), tiny_base, seed=3)
    assert "Answer in one sentence." not in default.chat.tokenizer.decode(default.chat.prompt_ids)
