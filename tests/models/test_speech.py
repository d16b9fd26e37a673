"""Whisper encoder loading, log-mel front end, speech adapter shapes, shrink and CTC blank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import CheckpointError
from models.presets import resolve_preset
from models.speech import (
    SpeechAdapter,
    build_encoder,
    build_feature_extractor,
    ctc_loss,
    encoder_frames,
    log_mel,
    shrink_indices,
)


def test_shrink_keeps_exactly_the_argmax_changes() -> None:
    ids = torch.tensor([[5, 5, 0, 0, 7, 7, 7, 5, 9, 9], [3, 3, 3, 4, 4, 8, 8, 8, 8, 8]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 5:] = False  # frames 5.. of row 1 are padding: the change at 5 must not count
    idx, mask = shrink_indices(ids, valid)
    assert idx[0][mask[0]].tolist() == [0, 2, 4, 7, 8]
    assert idx[1][mask[1]].tolist() == [0, 3]
    assert mask.sum(1).tolist() == [5, 2] and idx.shape == (2, 5)


def test_adapter_through_constructed_ctc_logits() -> None:
    torch.manual_seed(0)
    adapter = SpeechAdapter(8, 16, 12, blank_id=11, num_heads=2).eval()
    # Force the CTC head: logits = one-hot of a chosen id per 25 Hz frame, via bias and zero weights.
    plan = [3, 3, 11, 11, 4, 11]  # argmax per stacked frame
    with torch.no_grad():
        adapter.ctc_head.weight.zero_()
        adapter.ctc_head.bias.zero_()
    calls = iter([torch.nn.functional.one_hot(torch.tensor([plan, plan]), 12).float() * 5])
    adapter.ctc_head.register_forward_hook(lambda *_: next(calls))
    enc = torch.randn(2, 12, 8)  # (B, T=12 at 50 Hz, C)
    out = adapter(enc, torch.tensor([12, 7]))  # row 1: 7 frames → 4 stacked frames valid
    assert out.ctc_lengths.tolist() == [6, 4]
    assert out.mask.sum(1).tolist() == [4, 2]  # changes at 0, 2, 4, 5 | 0, 2 (4, 5 are padding)
    assert out.frames.shape == (2, 4, 16) and out.ctc_log_probs.shape == (2, 6, 12)
    assert torch.all(out.frames[1, 2:] == 0) and torch.all(out.frames[0].abs().sum(-1) > 0)
    assert torch.allclose(out.ctc_log_probs.exp().sum(-1), torch.ones(2, 6), atol=1e-5)


def _adapter_frames(ctc_embed: bool, plan: list[int], nudge: dict[int, float]) -> torch.Tensor:
    """Frames (S, H) of a seeded adapter on fixed input whose CTC argmax per 25 Hz frame is `plan`, after
    adding `nudge[t]` · noise to the states at frame t, just after the adapter's LayerNorm (what the
    look-back attention and the kept-frame queries read)."""
    torch.manual_seed(0)
    adapter = SpeechAdapter(8, 16, 12, blank_id=11, num_heads=2, ctc_embed=ctc_embed).eval()
    logits = torch.nn.functional.one_hot(torch.tensor([plan]), 12).float() * 5  # (1, T', V)
    adapter.ctc_head.register_forward_hook(lambda *_: logits)
    delta = torch.zeros(1, len(plan), 16)
    for t, size in nudge.items():
        delta[0, t] = size * torch.randn(16, generator=torch.Generator().manual_seed(t))
    adapter.norm.register_forward_hook(lambda _m, _i, out: out + delta)
    embed = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if ctc_embed:
            adapter.gate.fill_(1.0)  # open the acoustic part, else it hides what attention does
        enc = torch.randn(1, 2 * len(plan), 8, generator=torch.Generator().manual_seed(2))
        out = adapter(enc, torch.tensor([2 * len(plan)]), embed)
    return out.frames[0]


# Each row: ctc_embed, CTC argmax per 25 Hz frame, the kept frames, a dropped frame to change, a kept one.
LOOK_BACK_CASES = [
    (False, [3, 3, 11, 11, 4, 4], [0, 2, 4], 1, 2),  # repeats dropped; a blank run keeps one frame
    (False, [3, 3, 11, 11, 4, 4], [0, 2, 4], 5, 4),
    (True, [3, 3, 11, 11, 4, 4], [0, 4], 2, 4),  # ctc_embed also drops the blank frames
]


@pytest.mark.parametrize(("ctc_embed", "plan", "kept", "dropped", "other"), LOOK_BACK_CASES)
def test_look_back_attends_to_the_kept_frames_only(ctc_embed: bool, plan: list[int], kept: list[int],
                                                   dropped: int, other: int) -> None:
    base = _adapter_frames(ctc_embed, plan, {})
    assert base.shape[0] == len(kept)
    # A dropped frame changes nothing (before this fix every frame was a key, so it moved them all) ...
    assert torch.allclose(_adapter_frames(ctc_embed, plan, {dropped: 3.0}), base, atol=1e-6)
    # ... while changing a kept frame moves the other kept frames through attention.
    moved = _adapter_frames(ctc_embed, plan, {other: 3.0})
    rest = [i for i, t in enumerate(kept) if t != other]
    assert not torch.allclose(moved[rest], base[rest], atol=1e-4)


def test_adapter_gradients_and_ctc_blank() -> None:
    torch.manual_seed(0)
    adapter = SpeechAdapter(8, 16, 12, blank_id=11, num_heads=2)
    enc = torch.randn(3, 20, 8, requires_grad=True)
    out = adapter(enc, torch.tensor([20, 15, 9]))
    loss = out.frames.pow(2).sum() + ctc_loss(
        out, torch.tensor([[1, 2], [3, 0], [4, 5]]), torch.tensor([2, 1, 2]), 11
    )
    loss.backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # CTC with blank = 11: a path "1 blank 2" at near-certain probability costs almost nothing.
    lp = torch.full((1, 3, 12), -30.0)
    for t, k in enumerate([1, 11, 2]):
        lp[0, t, k] = 0.0
    fake = type(out)(out.frames[:1], out.mask[:1], lp.log_softmax(-1), torch.tensor([3]))
    assert ctc_loss(fake, torch.tensor([[1, 2]]), torch.tensor([2]), 11) < 1e-3
    assert ctc_loss(fake, torch.tensor([[1, 2]]), torch.tensor([2]), 0) > 5


def test_encoder_frames_and_log_mel() -> None:
    assert encoder_frames(torch.tensor([16_000, 160, 1, 10**7]), 400).tolist() == [50, 1, 1, 400]
    enc = build_encoder(resolve_preset("tiny"))
    fe = build_feature_extractor(enc)
    audio = (np.sin(np.arange(16_000) / 5) * 8000).astype(np.int16)
    feats = log_mel(fe, [audio, audio[:8000]])
    assert feats.shape == (2, 80, 800) and feats.dtype == torch.float32
    assert enc(input_features=feats).last_hidden_state.shape == (2, 400, 64)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert enc.training and trainable == {n for n, _ in enc.named_parameters()} - {"embed_positions.weight"}


def test_encoder_loads_a_local_whisper_checkpoint_frozen(tmp_path: Path) -> None:
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
        max_source_positions=100,
    )
    torch.manual_seed(1)
    whisper = WhisperForConditionalGeneration(cfg)
    whisper.save_pretrained(tmp_path / "whisper")
    preset = resolve_preset("llama-3b", encoder_path=str(tmp_path / "whisper"))
    enc = build_encoder(preset)
    ref = whisper.model.encoder.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    fe = build_feature_extractor(enc)
    assert fe.n_samples == 2 * 100 * 160 and fe.feature_size == 80
    with pytest.raises(CheckpointError, match="encoder_path"):
        build_encoder(resolve_preset("llama-3b"))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        build_encoder(resolve_preset("tiny", encoder_path=str(tmp_path)))


def test_checkpoints_made_before_the_lookback_fix_keep_attending_to_every_frame() -> None:
    """A preset dict without `adapter_lookback` (a checkpoint saved before it existed) rebuilds the adapter
    it was trained with ("all"); every named preset uses the reference's "kept"."""
    from models.presets import preset_from_dict, preset_to_dict, resolve_preset

    old = preset_to_dict(resolve_preset("smollm2-135m"))
    old.pop("adapter_lookback")
    assert preset_from_dict(old).adapter_lookback == "all"
    assert resolve_preset("tiny").adapter_lookback == resolve_preset("llama-8b").adapter_lookback == "kept"
    torch.manual_seed(0)
    everything = SpeechAdapter(8, 16, 7, 0, num_heads=2, lookback="all").eval()
    reference = SpeechAdapter(8, 16, 7, 0, num_heads=2, lookback="kept").eval()
    reference.load_state_dict(everything.state_dict())  # the same weights: only what is attended differs
    enc = torch.randn(1, 24, 8)
    a, b = everything(enc, torch.tensor([24])), reference(enc, torch.tensor([24]))
    assert torch.equal(a.mask, b.mask) and int(a.mask.sum()) < 12  # some of the 12 frames were dropped
    assert not torch.allclose(a.frames, b.frames)
    with pytest.raises(ValueError, match="lookback"):
        SpeechAdapter(8, 16, 7, 0, lookback="some")
