"""Echo stage: denoising adapter + losses, loss weighting, the streaming trigger, the Echo model."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from models.echo import (
    BoundaryTracker,
    DenoisingAdapter,
    build_echo,
    denoise_loss,
    echo_loss_weight,
    find_boundaries,
    gather_segments,
    segments_from_boundaries,
)
from models.presets import resolve_preset
from models.s2t import build_s2t
from models.t2c import build_t2c
from tasks.collate import make_collator

K = 40


def test_denoise_loss_by_hand() -> None:
    adapted = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[1.0, 1.0], [3.0, 3.0], [1.0, 0.0]]])
    target = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [9.0, 9.0]], [[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # row 0: (1-1) + (1-0) = 1 (third masked); row 1: (1+1) + (1-1/√2) + (1-0) = 4 - 1/√2
    expected = (1.0 + 4.0 - 1 / math.sqrt(2)) / 2
    assert denoise_loss(adapted, target, mask).item() == pytest.approx(expected, rel=1e-6)


def test_echo_loss_weight_by_hand() -> None:
    assert echo_loss_weight(2.0, 1.0) == pytest.approx(0.4)  # 1.0 > 0.4 → 0.2·2/1
    assert echo_loss_weight(10.0, 1.0) == 1.0  # 1.0 ≤ 2.0 → 1
    assert echo_loss_weight(torch.tensor(5.0, requires_grad=True), torch.tensor(4.0)) == pytest.approx(0.25)


def test_denoising_adapter_shape_and_width() -> None:
    a = DenoisingAdapter(16, 48)
    assert a(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    assert a.fc1.out_features == 48 and a.fc2.in_features == 48


def test_gather_segments() -> None:
    h = torch.arange(2 * 6, dtype=torch.float).reshape(2, 6, 1)
    seg, mask = gather_segments(h, torch.tensor([1, 4]), torch.tensor([4, 6]))
    assert seg[..., 0].tolist() == [[1, 2, 3], [10, 11, 0]] and mask.sum(1).tolist() == [3, 2]


def test_find_boundaries_threshold_rule() -> None:
    sims = [0.0] * 30
    sims[10] = 0.5  # too early: segment would be 11 < 20 tokens
    sims[24] = 0.5  # segment 0..24 is 25 tokens ≥ 20 → boundary, end 25
    sims[29] = 0.5  # only 5 tokens after the last boundary
    assert find_boundaries(sims) == [25]
    assert find_boundaries(sims, min_len_thresh=5) == [11, 25, 30]


def test_find_boundaries_peak_rule() -> None:
    sims = [0.01 * (i % 7) for i in range(120)]  # below thresh everywhere; local maxima at i % 7 == 6
    sims[60] = 0.09  # the clear maximum of its window
    ends = find_boundaries(sims)
    # Positions 49.. close a ≥50-token segment; the first that is the max of its ±5 window is 60
    # (55 is not: 60 is in its window). The next segment starts at 61 and may close from 110: 111 (0.06).
    assert ends[:2] == [61, 112]
    assert all(b - a >= 50 for a, b in zip([0, *ends], ends, strict=False))
    assert find_boundaries([0.0] * 40) == []  # too short for any rule


def test_tracker_streams_like_the_batch_function() -> None:
    g = torch.Generator().manual_seed(0)
    sims = (torch.rand(300, generator=g) * 0.12).tolist()
    tracker = BoundaryTracker(lookahead=3, min_len_peak=30, min_len_thresh=10, thresh=0.11)
    streamed = []
    for i, s in enumerate(sims):
        got = tracker.push(s)
        assert all(e <= i + 1 for e in got)  # never emits a boundary in the future
        streamed += got
    assert streamed == find_boundaries(sims, 3, 30, 10, 0.11) and streamed
    spans = segments_from_boundaries(streamed, len(sims))
    assert (
        spans[0][0] == 0
        and spans[-1][1] == 300
        and all(a[1] == b[0] for a, b in pairwise(spans))
    )


def _echo(tiny_base: Path):
    torch.manual_seed(0)
    preset = resolve_preset("tiny")
    return build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K))


def test_echo_forward_losses_and_gradients(tiny_base: Path, rows: list[dict]) -> None:
    model = _echo(tiny_base)
    batch = make_collator("echo", model)(rows)
    out = model(**batch)
    assert {"loss", "s2t", "echo", "denoise", "w", "num_tokens"} <= set(out)
    assert model.adapter.fc1.out_features == 256  # I = the tiny LLM's FFN width
    # s2t ≥ 1 for an untrained model, so no re-weighting yet
    expected = out["s2t"] + out["echo"] + out["w"] * out["denoise"]
    assert torch.isclose(out["loss"], expected, rtol=1e-5)
    out["loss"].backward()
    dec = model.echo_decoder
    assert dec.text_embed.weight.grad is None
    for part in (model.adapter, dec.unit_embed, dec.text_proj, model.s2t.adapter):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_reweighting_once_s2t_is_low(tiny_base: Path, rows: list[dict]) -> None:
    model = _echo(tiny_base).eval()
    model.low_s2t = 1e9  # pretend L_S2T is already below the threshold
    out = model(**make_collator("echo", model)(rows))
    expected = 0.2 * out["s2t"] + 2.0 * out["echo"] + out["w"] * out["denoise"]
    assert torch.isclose(out["loss"], expected, rtol=1e-5)


def test_a_few_steps_overfit_four_examples(tiny_base: Path, rows: list[dict]) -> None:
    model = _echo(tiny_base)
    batch = make_collator("echo", model)(rows)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = last = None
    for _ in range(12):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: out[k].item() for k in ("echo", "denoise", "s2t")}
        last = {k: out[k].item() for k in ("echo", "denoise", "s2t")}
    assert last["echo"] < 0.8 * first["echo"] and last["s2t"] < first["s2t"], (first, last)


def test_stream_speech_covers_all_tokens(tiny_base: Path, rows: list[dict]) -> None:
    model = _echo(tiny_base)
    segments = list(
        model.stream_speech(
            rows[0]["question_audio"],
            max_new_tokens=12,
            max_units=4,
            min_len_thresh=3,
            min_len_peak=5,
            lookahead=2,
            thresh=-1.0,
        )
    )
    assert segments[0].start == 0 and segments[-1].end == 12
    assert all(a.end == b.start for a, b in pairwise(segments))
    assert all(len(s.units) <= 4 for s in segments) and len(segments) >= 3
    assert model.training  # mode restored
