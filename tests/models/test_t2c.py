"""T2C decoder: joint sequence layout, frozen text embedding, KV-cached greedy decoding, overfitting."""

from __future__ import annotations

from pathlib import Path

import torch

from models.llm import load_llm
from models.presets import resolve_preset
from models.t2c import IGNORE, T2CDecoder, build_t2c
from tasks.collate import make_collator
from tests.models.conftest import syllable_rows

K = 40


def _decoder(max_positions: int = 64) -> T2CDecoder:
    torch.manual_seed(0)
    return T2CDecoder(30, 8, K, dim=16, layers=2, heads=2, ffn=32, max_positions=max_positions).eval()


def test_joint_sequence_layout() -> None:
    dec = _decoder()
    prefix = torch.randn(2, 3, 8)
    units = torch.tensor([[5, 6, 7], [9, dec.pad_id, dec.pad_id]])
    eos = torch.tensor([True, False])
    x, mask, tgt = dec._joint(prefix, torch.tensor([3, 2]), units, torch.tensor([3, 1]), eos)
    # row 0: p p p SEP 5 6 7 → targets at SEP..7: 5 6 7 EOS
    assert tgt[0].tolist() == [IGNORE] * 3 + [5, 6, 7, dec.eos_id]
    # row 1: p p SEP 9 (no EOS target: its units were cut) then padding
    assert tgt[1].tolist() == [IGNORE, IGNORE, 9, IGNORE, IGNORE, IGNORE, IGNORE]
    assert mask.sum(1).tolist() == [7, 4]
    assert torch.equal(x[0, 3], dec.unit_embed.weight[dec.sep_id]) and torch.equal(
        x[1, 3], dec.unit_embed.weight[9]
    )
    assert torch.allclose(x[0, :3], dec.text_proj(prefix[0]), atol=1e-6) and torch.all(x[1, 4:] == 0)


def test_batched_greedy_matches_single_and_teacher_forcing() -> None:
    dec = _decoder()
    prefix = torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 2, 4])
    batched = dec.generate(prefix, lengths, max_units=12)
    for b in range(3):
        single = dec.generate(prefix[b : b + 1, : lengths[b]], lengths[b : b + 1], max_units=12)[0]
        assert single == batched[b]
        units = single.units
        if not units:
            continue
        x, mask, _ = dec._joint(
            prefix[b : b + 1, : lengths[b]],
            lengths[b : b + 1],
            torch.tensor([units]),
            torch.tensor([len(units)]),
            torch.tensor([True]),
        )
        h = dec.decoder(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        greedy = dec.head(h[0, int(lengths[b]) : int(lengths[b]) + len(units)]).argmax(-1).tolist()
        assert greedy == units  # each generated unit is the argmax at its teacher-forced position
    assert any(len(g.units) > 0 for g in batched)


def test_length_guard_is_flagged() -> None:
    dec = _decoder(max_positions=10)
    out = dec.generate(torch.randn(1, 4, 8), torch.tensor([4]), max_units=100)[0]
    # Guard: 10 positions - (4 prefix + SEP) = 5 units at most, flagged unless EOS came first.
    assert len(out.units) <= 5 and (out.truncated or len(out.units) < 5)
    cut = dec.generate(torch.randn(1, 4, 8), torch.tensor([4]), max_units=0)[0]
    assert cut.units == [] and cut.truncated


def test_text_embedding_is_a_frozen_copy(tiny_base: Path, rows: list[dict]) -> None:
    model = build_t2c(resolve_preset("tiny"), tiny_base, K)
    emb = load_llm(tiny_base).get_input_embeddings().weight
    assert torch.equal(model.decoder.text_embed.weight, emb)
    batch = make_collator("t2c", model)(rows)
    out = model(**batch)
    assert out["num_tokens"] == int((batch["unit_lengths"] + 1).sum())
    out["loss"].backward()
    dec = model.decoder
    assert dec.text_embed.weight.grad is None and not dec.text_embed.weight.requires_grad
    for part in (dec.text_proj, dec.unit_embed, dec.head, dec.decoder.layers[0]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_generate_units_from_text(tiny_base: Path) -> None:
    model = build_t2c(resolve_preset("tiny"), tiny_base, K).eval()
    texts = [model.encode("the capital of france is paris."), model.encode("a dog")]
    out = model.generate_units(texts, max_units=7)
    assert len(out) == 2 and all(len(o.units) <= 7 and all(0 <= u < K for u in o.units) for o in out)


def test_a_few_steps_overfit_four_examples(tiny_base: Path, rows: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_t2c(resolve_preset("tiny"), tiny_base, K)
    batch = make_collator("t2c", model)(rows)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_without_a_unit_language_targets_are_the_units(tiny_base: Path) -> None:
    model = build_t2c(resolve_preset("tiny"), tiny_base, K)
    assert model.unit_language is None and model.num_units == model.target_vocab_size == K
    assert model.unit_targets([3, 1, 39]) == [3, 1, 39] == model.units_from_targets([3, 1, 39])
    assert model.build_info is not None and model.build_info.extra == {"num_units": K}


def test_unit_language_vocabulary_loss_and_raw_generation(tiny_base: Path, unit_language: str) -> None:
    from tasks.units import UnitLanguage

    lang = UnitLanguage.from_str(unit_language)
    torch.manual_seed(0)
    model = build_t2c(resolve_preset("tiny"), tiny_base, K, unit_language=unit_language)
    n = lang.vocab_size
    assert n > K and model.num_units == K and model.target_vocab_size == model.decoder.num_units == n
    assert model.decoder.head.out_features == n + 1 and model.decoder.unit_embed.num_embeddings == n + 3
    rows = syllable_rows(4)
    raw = [list(r["answer_units"]) for r in rows]
    assert [model.units_from_targets(model.unit_targets(u)) for u in raw] == raw
    batch = make_collator("t2c", model)(rows)
    assert (batch["unit_lengths"] < torch.tensor([len(u) for u in raw])).all()  # merges applied
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and out["num_tokens"] == int((batch["unit_lengths"] + 1).sum())
    model.eval()
    texts = [model.encode(r["answer_text"]) for r in rows[:2]]
    gen = model.generate_units(texts, max_units=6)
    words = model.decoder.generate(model.decoder.embed_text(torch.tensor([texts[0]])), torch.tensor(
        [len(texts[0])]), max_units=6)[0].units
    assert gen[0].units == lang.decode(words) and len(words) <= 6
    assert all(0 <= u < K for g in gen for u in g.units) and any(g.units for g in gen)
