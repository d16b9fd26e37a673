"""S2T: splicing speech into the prompt, losses and gradients, hidden-state alignment, generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.presets import resolve_preset
from models.s2t import build_s2t, splice
from tasks.collate import make_collator


def test_splice_puts_speech_where_the_placeholder_was() -> None:
    text = torch.arange(1, 13, dtype=torch.float).reshape(2, 6, 1)  # (B, L, H=1): token values 1..12
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    speech = torch.tensor([[[100.0], [101.0], [102.0]], [[200.0], [0.0], [0.0]]])
    smask = torch.tensor([[True, True, True], [True, False, False]])
    out, omask = splice(text, mask, torch.tensor([1, 3]), speech, smask)
    assert out[0, :, 0].tolist() == [1, 100, 101, 102, 3, 4, 5]  # token 2 (the placeholder) replaced
    assert out[1, :6, 0].tolist() == [7, 8, 9, 200, 11, 12]
    assert omask.tolist() == [[True] * 7, [True] * 6 + [False]] and out[1, 6, 0] == 0


def test_forward_losses_and_gradients_tiny(tiny_base: Path, rows: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_s2t(resolve_preset("tiny"), tiny_base)
    batch = make_collator("s2t", model)(rows)
    out = model(**batch)
    assert set(out) == {"loss", "ce", "ctc", "num_tokens"}
    assert torch.isclose(out["loss"], out["ce"] + 0.3 * out["ctc"])
    assert out["num_tokens"] == (batch["labels"] != -100).sum()
    out["loss"].backward()
    for part in (model.adapter, model.llm, model.encoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads[:4])
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_lora_trains_adapter_and_lora_only(tiny_base: Path, rows: list[dict]) -> None:
    preset = resolve_preset("tiny", lora_rank=4, train_encoder=False)
    model = build_s2t(preset, tiny_base)
    model.train()
    assert not model.encoder.training  # a frozen encoder stays in eval mode
    batch = make_collator("s2t", model)(rows[:2])
    model(**batch)["loss"].backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_" in n for n in trained) and any(n.startswith("adapter.") for n in trained)
    assert all(n.startswith("adapter.") or "lora_" in n for n in trained), sorted(trained)[:5]
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_hidden_states_predict_answer_tokens_and_match_streaming(tiny_base: Path, rows: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_s2t(resolve_preset("tiny"), tiny_base).eval()
    steps = list(model.stream(rows[0]["question_audio"], max_new_tokens=6))
    assert len(steps) == 6  # an untrained model is unlikely to stop at once (checked: it does not)
    tokens = [t for t, _ in steps]
    # Teacher-force exactly the generated tokens as the "answer".
    batch = make_collator("s2t", model)(rows[:1])
    chat = model.chat
    ids = [*chat.prompt_ids, *tokens, *chat.suffix_ids]
    batch["input_ids"] = torch.tensor([ids])
    batch["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
    batch["labels"] = torch.tensor([[-100] * len(chat.prompt_ids) + tokens + chat.suffix_ids])
    batch["answer_lengths"] = torch.tensor([len(tokens)])
    with torch.no_grad():
        hidden, mask = model.answer_hidden_states(batch)
    assert hidden.shape == (1, 6, 128) and mask.all()
    assert model.lm_head()(hidden).argmax(-1)[0].tolist() == tokens  # h_t predicts token t
    streamed = torch.stack([h for _, h in steps])
    assert torch.allclose(hidden[0], streamed, atol=1e-4)
    text = model.generate(rows[0]["question_audio"], max_new_tokens=6)
    assert text == chat.decode(tokens)


def test_sampling_is_seeded(tiny_base: Path, rows: list[dict]) -> None:
    model = build_s2t(resolve_preset("tiny"), tiny_base).eval()
    kw = {"max_new_tokens": 5, "do_sample": True, "temperature": 1.5, "top_p": 0.9}
    a = model.generate(rows[1]["question_audio"], seed=7, **kw)
    assert a == model.generate(rows[1]["question_audio"], seed=7, **kw)


# LoRA over a *random* base LLM can only move slowly; full training of the tiny LLM overfits fast.
@pytest.mark.parametrize(("lora_rank", "lr", "steps", "ratio"), [(0, 3e-3, 16, 0.5), (4, 1e-2, 12, 0.95)])
def test_a_few_steps_overfit_four_examples(
    tiny_base: Path, rows: list[dict], lora_rank: int, lr: float, steps: int, ratio: float
) -> None:
    torch.manual_seed(0)
    model = build_s2t(resolve_preset("tiny", lora_rank=lora_rank), tiny_base)
    batch = make_collator("s2t", model)(rows)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append((float(out["ce"]), float(out["ctc"])))
    assert losses[-1][0] < ratio * losses[0][0], losses
    assert losses[-1][1] < losses[0][1], losses
