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
    echo_total_loss,
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


# Each row: L_S2T, L_echo, L_denoise, expected w, expected loss (by hand), regime. w = 0.2·L_echo/L_denoise
# when L_denoise > 0.2·L_echo, else 1; below L_S2T = 1 the loss is 0.2·L_S2T + 2.0·(L_echo + w·L_denoise).
LOSS_CASES = [
    (2.0, 3.0, 5.0, 0.12, 2.0 + 3.0 + 0.12 * 5.0, "L_S2T ≥ 1, denoise rescaled: 2 + 3 + 0.6 = 5.6"),
    (1.5, 10.0, 1.0, 1.0, 1.5 + 10.0 + 1.0, "L_S2T ≥ 1, w = 1: 12.5"),
    (1.0, 3.0, 5.0, 0.12, 1.0 + 3.0 + 0.6, "L_S2T = 1 exactly is not below 1: 4.6"),
    (0.5, 3.0, 5.0, 0.12, 0.1 + 2.0 * (3.0 + 0.6), "L_S2T < 1, denoise rescaled: 0.1 + 2·3.6 = 7.3"),
    (0.9, 10.0, 1.0, 1.0, 0.18 + 2.0 * (10.0 + 1.0), "L_S2T < 1, w = 1: 0.18 + 2·11 = 22.18"),
]


@pytest.mark.parametrize(("s2t", "echo", "den", "w", "expected", "why"), LOSS_CASES,
                         ids=[row[5][:30] for row in LOSS_CASES])
def test_echo_total_loss_by_hand(s2t: float, echo: float, den: float, w: float, expected: float,
                                 why: str) -> None:
    l_s2t, l_echo, l_den = (torch.tensor(v, requires_grad=True) for v in (s2t, echo, den))
    assert echo_loss_weight(l_echo, l_den) == pytest.approx(w), why
    loss = echo_total_loss(l_s2t, l_echo, l_den, w)
    assert loss.item() == pytest.approx(expected, rel=1e-6), why
    loss.backward()
    scale = 2.0 if s2t < 1.0 else 1.0  # the 2.0 reaches the denoising term too
    assert l_den.grad.item() == pytest.approx(scale * w) and l_echo.grad.item() == pytest.approx(scale)
    assert l_s2t.grad.item() == pytest.approx(0.2 if s2t < 1.0 else 1.0)


def test_echo_total_loss_without_reweighting() -> None:
    args = (torch.tensor(0.5), torch.tensor(3.0), torch.tensor(5.0), 0.12)
    assert echo_total_loss(*args, low_s2t=None).item() == pytest.approx(0.5 + 3.0 + 0.6)


def test_denoising_adapter_shape_and_width() -> None:
    a = DenoisingAdapter(16, 48)
    assert a(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    assert a.fc1.out_features == 48 and a.fc2.in_features == 48


def test_gather_segments() -> None:
    h = torch.arange(2 * 6, dtype=torch.float).reshape(2, 6, 1)
    seg, mask = gather_segments(h, torch.tensor([1, 4]), torch.tensor([4, 6]))
    assert seg[..., 0].tolist() == [[1, 2, 3], [10, 11, 0]] and mask.sum(1).tolist() == [3, 2]


def _stream(n: int, background: float | str = 0.0, **at: float) -> list[float]:
    """n similarities: a flat `background`, or "falling" (-0.001·i: only position 0 is a local peak of
    its own), with the values `at` (p24=0.5 sets position 24) on top."""
    sims = [-0.001 * i if background == "falling" else float(background) for i in range(n)]
    for key, value in at.items():
        sims[int(key[1:])] = value
    return sims


# Each row: stream, trigger options (defaults: lookahead 5, min_len_peak 50, min_len_thresh 20, thresh
# 0.1), expected exclusive ends, why. Rule (DESIGN step 5, the released EchoX streaming inference): t cuts
# the segment that started at s iff sims[t] is the max of sims[t-5 .. t+5] and (t - s >= 50, or t - s >= 20
# and sims[t] > 0.1); t is decided when sims[t+5] arrives; the end reported is t + 1.
TRIGGER_CASES = [
    (_stream(40, "falling", **{f"p{i}": 0.2 + 0.001 * i for i in range(40)}), {}, [],
     "above 0.1 from the start and rising: never a local peak, so never a cut"),
    (_stream(40, p24=0.5), {}, [25], "a peak above 0.1 with 24 tokens before it: cut after 24"),
    (_stream(40, p20=0.3, p22=0.5), {}, [23],
     "20 crosses 0.1 with 20 tokens before it but 22 is higher within ±5: the cut waits for the peak"),
    (_stream(40, p20=0.5, p25=0.6), {}, [26], "25 is exactly 5 away: inside 20's window, so 25 cuts"),
    (_stream(40, p20=0.5, p26=0.6), {}, [21],
     "26 is 6 away: 20 is its window's max and cuts; 26 then has only 5 tokens before it"),
    (_stream(40, p20=0.5, p23=0.5), {}, [21], "a tie is a maximum (==): 20 cuts, 23 is too close after"),
    (_stream(40, p19=0.5), {}, [], "off by one: 19 tokens before the peak is < 20"),
    (_stream(40, p20=0.5), {}, [21], "off by one: 20 tokens before the peak is enough"),
    (_stream(70, "falling", p30=0.05), {}, [], "a peak at or below 0.1 needs 50 tokens before it"),
    (_stream(70, "falling", p49=0.05), {}, [], "off by one: 49 tokens before a low peak is < 50"),
    (_stream(70, "falling", p50=0.05), {}, [51], "off by one: 50 tokens before a low peak cuts"),
    (_stream(70, "falling", p50=0.0), {}, [51], "the 50 rule holds for any peak value, even a low one"),
    (_stream(60), {}, [51], "a flat stream: every position ties as a peak, so the 50 rule cuts at 50"),
    (_stream(31, p26=0.5), {}, [], "end of stream: 26 needs sims[31], which never comes; the tail is "
     "the final segment"),
    (_stream(32, p26=0.5), {}, [27], "end of stream, off by one: sims[31] arrives, so 26 is decided"),
    (_stream(60, p20=0.5, p40=0.5, p41=0.6), {}, [21, 42],
     "a second segment counts from the last cut: 40 (19 before) is not the peak, 41 (20 before) cuts"),
    (_stream(15, p3=0.9, p6=0.5), {"min_len_thresh": 2}, [4],
     "the window looks back across the last cut: 3 (0.9) is within 6's ±5, so 6 is no peak"),
    ([0.5] * 10, {"lookahead": 0, "min_len_thresh": 3}, [4, 8],
     "lookahead 0: every position is its own peak; a cut every 3 + 1 tokens, the rest is the tail"),
]


@pytest.mark.parametrize(("sims", "options", "ends", "why"), TRIGGER_CASES,
                         ids=[row[3][:40] for row in TRIGGER_CASES])
def test_trigger_table(sims: list[float], options: dict, ends: list[int], why: str) -> None:
    assert find_boundaries(sims, **options) == ends, why
    lookahead = options.get("lookahead", 5)
    tracker = BoundaryTracker(**options)
    emitted = [(i, end) for i, s in enumerate(sims) for end in tracker.push(s)]
    # Each cut is reported exactly when its right window is complete: on the push of sims[end-1+lookahead].
    assert emitted == [(end - 1 + lookahead, end) for end in ends], why
    assert [tracker.emitted_start(e) for e in ends] == [0, *ends][: len(ends)]


def _reference_rule(sims: list[float], lookahead: int, peak: int, low: int, thresh: float) -> list[int]:
    """The trigger written plainly, as a second opinion: each t once sims[t+lookahead] exists."""
    ends, start = [], 0
    for t in range(len(sims) - lookahead):
        window = sims[max(0, t - lookahead): t + lookahead + 1]
        if sims[t] == max(window) and (t - start >= peak or (t - start >= low and sims[t] > thresh)):
            ends.append(t + 1)
            start = t + 1
    return ends


@pytest.mark.parametrize("seed", range(5))
def test_trigger_matches_the_plain_rule_on_random_streams(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sims = (torch.rand(400, generator=g) * 0.3 - 0.1).tolist()
    for options in ((5, 50, 20, 0.1), (3, 30, 10, 0.11), (0, 8, 4, 0.05), (1, 1, 1, 0.0)):
        assert find_boundaries(sims, *options) == _reference_rule(sims, *options), options


def test_tracker_streams_like_the_batch_function() -> None:
    g = torch.Generator().manual_seed(0)
    sims = (torch.rand(300, generator=g) * 0.12).tolist()
    tracker = BoundaryTracker(lookahead=3, min_len_peak=30, min_len_thresh=10, thresh=0.11)
    streamed = []
    for i, s in enumerate(sims):
        got = tracker.push(s)
        assert all(e - 1 + 3 == i for e in got)  # decided once the 3 states after the cut are known
        streamed += got
    assert streamed == find_boundaries(sims, 3, 30, 10, 0.11) and streamed
    spans = segments_from_boundaries(streamed, len(sims))
    assert (
        spans[0][0] == 0
        and spans[-1][1] == 300
        and all(a[1] == b[0] for a, b in pairwise(spans))
    )


CHARS = {"ctc_target": "chars", "adapter_ctc_embed": True}
"""The character CTC front end (models/speech.py CharAdapter) in place of the token adapter."""


def _echo(tiny_base: Path, **overrides: object):
    torch.manual_seed(0)
    preset = resolve_preset("tiny", **overrides)
    return build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K))


@pytest.mark.parametrize("front", [{}, CHARS], ids=["tokens", "chars"])
def test_echo_forward_losses_and_gradients(tiny_base: Path, rows: list[dict], front: dict) -> None:
    model = _echo(tiny_base, **front)
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


@pytest.mark.parametrize("front", [{}, CHARS], ids=["tokens", "chars"])
def test_stage_three_can_keep_what_stage_one_hears(tiny_base: Path, rows: list[dict], front: dict) -> None:
    """train_hearing=False (the preset's echo_train_hearing): the encoder, and a character adapter, are
    frozen and stay in eval mode; the token adapter, the LLM and the echo parts still train."""
    torch.manual_seed(0)
    preset = resolve_preset("tiny", **front)
    assert preset.train_encoder and preset.echo_train_hearing  # tiny trains its encoder in every stage
    model = build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K), train_hearing=False)
    model.train()
    s2t = model.s2t
    assert not s2t.train_encoder and not s2t.encoder.training
    assert not any(p.requires_grad for p in s2t.encoder.parameters())
    hearing_adapter = "ctc_target" in front
    assert s2t.adapter.training is not hearing_adapter
    assert all(p.requires_grad is not hearing_adapter for p in s2t.adapter.parameters())
    before = {k: v.clone() for k, v in s2t.encoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**make_collator("echo", model)(rows))["loss"].backward()
    opt.step()
    assert all(torch.equal(v, s2t.encoder.state_dict()[k]) for k, v in before.items())
    assert model.adapter.fc1.weight.grad is not None
    trained = build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K))
    assert trained.s2t.train_encoder and trained.s2t.encoder.conv1.weight.requires_grad


def test_reweighting_once_s2t_is_low(tiny_base: Path, rows: list[dict]) -> None:
    model = _echo(tiny_base).eval()
    model.low_s2t = 1e9  # pretend L_S2T is already below the threshold
    out = model(**make_collator("echo", model)(rows))
    expected = 0.2 * out["s2t"] + 2.0 * (out["echo"] + out["w"] * out["denoise"])
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


@pytest.mark.parametrize("front", [{}, CHARS], ids=["tokens", "chars"])
def test_stream_speech_covers_all_tokens(tiny_base: Path, rows: list[dict], front: dict) -> None:
    model = _echo(tiny_base, **front)
    segments = list(
        model.stream_speech(
            rows[0]["question_audio"],
            max_new_tokens=12,
            max_units=4,
            min_len_thresh=3,
            min_len_peak=5,
            lookahead=0,  # every state is its own peak: a cut every 4 tokens, whatever the similarities
            thresh=-1.0,
        )
    )
    assert segments[0].start == 0 and segments[-1].end == 12
    assert all(a.end == b.start for a, b in pairwise(segments))
    assert all(len(s.units) <= 4 for s in segments) and len(segments) >= 3
    assert model.training  # mode restored


# ----------------------------------------------------------------------------- online echo targets


def _online(tiny_base: Path):
    torch.manual_seed(0)
    preset = resolve_preset("tiny")
    return build_echo(build_s2t(preset, tiny_base), build_t2c(preset, tiny_base, K), online=True)


def test_online_teacher_is_a_frozen_copy_outside_the_model(tiny_base: Path) -> None:
    online, offline = _online(tiny_base), _echo(tiny_base)
    assert online.state_dict().keys() == offline.state_dict().keys()  # the checkpoint holds no teacher
    assert sum(p.numel() for p in online.parameters()) == sum(p.numel() for p in offline.parameters())
    teacher = online.teacher
    assert teacher is not None and offline.teacher is None
    assert teacher.decoder is not online.echo_decoder and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    pairs = zip(teacher.decoder.named_parameters(), online.echo_decoder.parameters(), strict=True)
    for (name, p), q in pairs:
        assert torch.equal(p, q), name  # stage II's weights, as the Echo decoder starts from them
    online.train()
    assert not teacher.training  # train() does not reach it


def _fake_teacher_generation(model, guard: bool = True) -> None:
    """The teacher's generation replaced by a rule (units from the segment's token ids; with `guard`, a
    segment whose ids sum to an odd number hits the guard), so the test controls what a random T2C cannot:
    where it ends."""
    from models.t2c import GeneratedUnits

    def generate(texts: list[list[int]], max_units: int = 1000) -> list[GeneratedUnits]:
        return [GeneratedUnits([t % K for t in ids] * 2, guard and sum(ids) % 2 == 1) for ids in texts]

    model.teacher.generate_units = generate


@pytest.mark.parametrize("fake", [True, False], ids=["rule-teacher", "random-t2c"])
def test_online_targets_at_step_0_are_the_offline_labels(tiny_base: Path, rows: list[dict],
                                                         fake: bool) -> None:
    """Before any update, the targets made in the step equal what echo-labels writes from the same
    stage-I and stage-II models: the same Y′, the same sentence segments, the same teacher units, the same
    rows lost to the length guard."""
    from tasks.echo_labelling import label_rows

    model = _online(tiny_base).eval()
    model.max_units = 24
    if fake:
        _fake_teacher_generation(model)
    batch = make_collator("echo-online", model)(rows)
    assert "segment_start" not in batch
    with torch.no_grad():
        _, hidden, _ = model.s2t.losses(batch)
        got = model.online_targets(hidden, batch["answer_lengths"])
    offline = label_rows(model.s2t, model.teacher, rows, max_units=24)
    kept = {rows[int(i)]["id"] for i in set(got.rows.tolist())}
    assert kept == {r["id"] for r in offline.records}
    assert got.masked_rows == len(offline.rejects) == len(rows) - len(kept)
    want = [(r["id"], a, b, u) for r in offline.records
            for a, b, u in zip(r["segment_start"], r["segment_end"], r["segment_units"], strict=True)]
    have = [(rows[int(b)]["id"], int(s), int(e), got.units[p, : int(got.unit_lengths[p])].tolist())
            for p, (b, s, e) in enumerate(zip(got.rows, got.start, got.end, strict=True))]
    assert have == want  # raw units = targets without a unit language
    if fake:  # the rule keeps short segments and guards long ones: both cases are exercised
        assert want and 0 < got.masked_rows < len(rows), (len(want), got.masked_rows)


def test_online_forward_trains_the_echo_parts_not_the_teacher(tiny_base: Path, rows: list[dict]) -> None:
    model = _online(tiny_base)
    _fake_teacher_generation(model, guard=False)
    out = model(**make_collator("echo-online", model)(rows))
    assert {"loss", "s2t", "echo", "denoise", "w", "guard_masked", "num_tokens"} <= set(out)
    assert float(out["guard_masked"]) == 0.0 and float(out["echo"]) > 0 and float(out["denoise"]) > 0
    expected = out["s2t"] + out["echo"] + out["w"] * out["denoise"]
    assert torch.isclose(out["loss"], expected, rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.echo_decoder.text_embed.weight.grad is None
    dec = model.echo_decoder
    for part in (model.adapter, dec.unit_embed, dec.text_proj, model.s2t.adapter):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_online_rows_that_hit_the_guard_are_masked_and_counted(tiny_base: Path, rows: list[dict]) -> None:
    """A guard no segment can meet: no echo targets, the loss is the S2T loss alone, and the echo
    parameters still get (zero) gradients, so DDP's reducer sees every parameter."""
    model = _online(tiny_base)
    model.max_units = 0
    out = model(**make_collator("echo-online", model)(rows))
    assert float(out["guard_masked"]) == 1.0 and float(out["echo"]) == 0.0 and float(out["denoise"]) == 0.0
    assert torch.isclose(out["loss"], out["s2t"]) and int(out["num_tokens"]) > 0
    out["loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.adapter.parameters())


def test_offline_batch_needs_no_teacher_and_online_needs_one(tiny_base: Path, rows: list[dict]) -> None:
    from core.errors import CheckpointError

    model = _echo(tiny_base)
    batch = make_collator("echo-online", model)(rows)  # no segments: it would need online targets
    with pytest.raises(CheckpointError, match="online echo targets need a T2C teacher"):
        model(**batch)
