"""Stage III: echo training and streaming speech output.

The Echo decoder (a T2C decoder initialised from stage II) reads the S2T model's last-layer states h_t of
one answer segment through a denoising adapter instead of text embeddings, and learns the segment's
pseudo-label units. h_t is the state that PREDICTS answer token t (see models/s2t.py), and
y′_t = argmax lm_head(h_t) is the model's echo of that token; the denoising target is E(y′_t), the Echo
decoder's frozen text embedding. Loss = L_S2T + L_echo + w·L_denoise, and once L_S2T < 1,
0.2·L_S2T + 2.0·(L_echo + w·L_denoise).

The segments' unit targets come either from a batch (offline: echo-labels made them once, from the
stage-I model) or, with a frozen T2C teacher, from the current step itself (online, as the paper trains):
Y′ of the current S2T states is cut with `sentence_segments` and the teacher generates each segment's
units, batched and without gradient; a row whose segment hits the teacher's length guard gives no echo
targets that step (its S2T loss still counts) and is counted in `guard_masked`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import CheckpointError
from models.build_info import BuildInfo
from models.collate import fit_units, units_batch
from models.llm import llm_ffn_width
from models.s2t import S2TModel
from models.t2c import T2CDecoder, T2CModel, targets_to_units, units_to_targets

if TYPE_CHECKING:
    from models.unit_language import UnitLanguage


class DenoisingAdapter(nn.Module):
    """MLP H → I → H (ReLU, dropout) mapping LLM states towards text embeddings."""

    def __init__(self, dim: int, inner: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        """(B, L, H) → (B, L, H)."""
        return self.fc2(self.dropout(F.relu(self.fc1(h))))


def denoise_loss(adapted: Tensor, target_emb: Tensor, mask: Tensor) -> Tensor:
    """Σ_t (1 − cos(adapted_t, target_t)) over each example's valid positions, then mean over the batch."""
    cos = F.cosine_similarity(adapted.float(), target_emb.float(), dim=-1)  # (B, L)
    per_example = ((1.0 - cos) * mask.float()).sum(1)  # (B,)
    return per_example.mean()


def echo_loss_weight(l_echo: float | Tensor, l_denoise: float | Tensor) -> float:
    """w = 0.2·L_echo / L_denoise when L_denoise > 0.2·L_echo, else 1 (a plain number: no gradient)."""
    echo = float(l_echo.detach()) if isinstance(l_echo, Tensor) else float(l_echo)
    den = float(l_denoise.detach()) if isinstance(l_denoise, Tensor) else float(l_denoise)
    return 0.2 * echo / den if den > 0.2 * echo else 1.0


def echo_total_loss(
    l_s2t: Tensor,
    l_echo: Tensor,
    l_denoise: Tensor,
    w: float,
    *,
    low_s2t: float | None = 1.0,
    s2t_weight_low: float = 0.2,
    echo_weight_low: float = 2.0,
) -> Tensor:
    """L_S2T + (L_echo + w·L_denoise); once L_S2T < low_s2t, 0.2·L_S2T + 2.0·(L_echo + w·L_denoise).

    The low-L_S2T weight scales the whole echo term, denoising included, as the authors' training code
    does; low_s2t=None never switches."""
    echo = l_echo + w * l_denoise
    if low_s2t is not None and float(l_s2t.detach()) < low_s2t:
        return s2t_weight_low * l_s2t + echo_weight_low * echo
    return l_s2t + echo


def gather_segments(hidden: Tensor, start: Tensor, end: Tensor) -> tuple[Tensor, Tensor]:
    """Rows hidden[b, start_b:end_b] of (B, A, H), left-aligned and padded → (B, S, H) and mask (B, S)."""
    lengths = end - start  # (B,)
    S = max(1, int(lengths.max()))
    t = torch.arange(S, device=hidden.device)[None, :]  # (1, S)
    mask = t < lengths[:, None]  # (B, S)
    idx = torch.where(mask, start[:, None] + t, 0)  # (B, S)
    seg = hidden.gather(1, idx[:, :, None].expand(-1, -1, hidden.shape[-1]))  # (B, S, H)
    return seg * mask[:, :, None].to(seg.dtype), mask


SENTENCE_ENDS = (".", "?", "!")


def sentence_segments(token_texts: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) spans of a token sequence cut at sentence ends.

    A token whose decoded text, trailing whitespace stripped, ends with ".", "?" or "!" closes a segment
    (so "3.5" or "Dr." also cut: the rule is per token and knows no abbreviations); whatever follows the
    last closing token is the final segment. The spans tile 0..len(token_texts).
    """
    spans, start = [], 0
    for t, text in enumerate(token_texts):
        if text.rstrip().endswith(SENTENCE_ENDS):
            spans.append((start, t + 1))
            start = t + 1
    if start < len(token_texts):
        spans.append((start, len(token_texts)))
    return spans


@dataclass(frozen=True)
class EchoTargets:
    """One batch's echo segments: the batch row and answer-token span of each, and its unit targets."""

    rows: Tensor | None
    """(P,) batch row of each segment; None: one segment per batch row, in order (offline batches)."""
    start: Tensor
    """(P,) first answer token of each segment."""
    end: Tensor
    """(P,) exclusive end."""
    units: Tensor
    """(P, U) the Echo decoder's target ids, padded."""
    unit_lengths: Tensor
    """(P,)."""
    unit_eos: Tensor
    """(P,) bool: the targets end with EOS (not cut at the decoder's positions)."""
    masked_rows: int = 0
    """Rows left without echo targets: a segment hit the teacher's length guard."""


class EchoModel(nn.Module):
    """S2T model + Echo decoder + denoising adapter; `forward(**batch)` gives the stage-III losses."""

    def __init__(
        self,
        s2t: S2TModel,
        echo_decoder: T2CDecoder,
        adapter: DenoisingAdapter,
        *,
        reweight: bool = True,
        low_s2t: float = 1.0,
        s2t_weight_low: float = 0.2,
        echo_weight_low: float = 2.0,
        num_units: int | None = None,
        unit_language: UnitLanguage | None = None,
        teacher: T2CModel | None = None,
        max_units: int = 1000,
    ) -> None:
        super().__init__()
        self.s2t = s2t
        self.echo_decoder = echo_decoder
        self.adapter = adapter
        # As in T2CModel: K raw units outside, the decoder's targets (units or unit-words) inside.
        self.num_units = echo_decoder.num_units if num_units is None else num_units
        self.unit_language = unit_language
        self.reweight = reweight
        self.low_s2t, self.s2t_weight_low, self.echo_weight_low = low_s2t, s2t_weight_low, echo_weight_low
        self.build_info: BuildInfo | None = None
        # The frozen T2C of online targets sits outside the module tree (object.__setattr__): it is not a
        # parameter, not in the state dict or the checkpoint, and DDP/FSDP leave it alone.
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval() if teacher else None)
        self.max_units = max_units

    def forward(self, **batch: Tensor) -> dict[str, Tensor]:
        """Losses of one echo batch: the S2T keys plus either one segment and its units per row
        (segment_start/end, segment_units/_lengths/_eos: offline labels) or nothing more (online: the
        teacher makes every segment's units from this step's states)."""
        s2t_out, hidden, _ = self.s2t.losses(batch)  # hidden (B, A, H)
        online = "segment_start" not in batch
        if online:
            targets = self.online_targets(hidden, batch["answer_lengths"])
        else:
            targets = EchoTargets(None, batch["segment_start"], batch["segment_end"], batch["segment_units"],
                                  batch["segment_unit_lengths"], batch["segment_unit_eos"])
        l_echo, l_denoise, echo_tokens = self._echo_losses(hidden, targets)
        l_s2t = s2t_out["loss"]
        w = echo_loss_weight(l_echo, l_denoise)
        loss = echo_total_loss(l_s2t, l_echo, l_denoise, w, low_s2t=self.low_s2t if self.reweight else None,
                               s2t_weight_low=self.s2t_weight_low, echo_weight_low=self.echo_weight_low)
        out = {
            "loss": loss, "s2t": l_s2t.detach(), "echo": l_echo.detach(), "denoise": l_denoise.detach(),
            "w": torch.tensor(w), "ce": s2t_out["ce"], "ctc": s2t_out["ctc"],
            "num_tokens": s2t_out["num_tokens"] + echo_tokens,
        }
        if online:
            out["guard_masked"] = torch.tensor(targets.masked_rows / hidden.shape[0])
        return out

    def _echo_losses(self, hidden: Tensor, targets: EchoTargets) -> tuple[Tensor, Tensor, Tensor]:
        """L_echo, L_denoise and the echo target count of the segments (zero losses, still reaching every
        trained echo parameter so DDP's gradient hooks fire, when there are none)."""
        if targets.rows is not None and targets.rows.numel() == 0:
            trained = [p for m in (self.adapter, self.echo_decoder) for p in m.parameters()]
            zero = torch.stack([p.sum() for p in trained if p.requires_grad]).sum() * 0.0
            return zero, zero, torch.zeros((), dtype=torch.long, device=hidden.device)
        source = hidden if targets.rows is None else hidden[targets.rows]  # (P, A, H)
        seg, mask = gather_segments(source, targets.start, targets.end)  # (P, S, H), (P, S)
        with torch.no_grad():
            echo_ids = self.s2t.lm_head()(seg).argmax(-1)  # (P, S) y′ of the segment
            target = self.echo_decoder.embed_text(echo_ids)  # (P, S, H) frozen E(y′)
        adapted = self.adapter(seg)  # (P, S, H)
        l_denoise = denoise_loss(adapted, target, mask)
        echo = self.echo_decoder(adapted, mask.sum(1), targets.units, targets.unit_lengths, targets.unit_eos)
        return echo["loss"], l_denoise, echo["num_tokens"]

    @torch.no_grad()
    def online_targets(self, hidden: Tensor, answer_lengths: Tensor) -> EchoTargets:
        """This step's echo segments: Y′ = argmax lm_head(h) of each row's answer states, cut at sentence
        ends, each segment's units generated by the frozen teacher (one batched greedy call). A row with a
        segment that hit the length guard keeps no segment; the Echo decoder's targets are cut to its
        positions as the offline collator cuts them."""
        if self.teacher is None:
            raise CheckpointError("online echo targets need a T2C teacher (build_echo(..., online=True)); "
                                  "offline batches carry segment_start/segment_units")
        teacher = self._teacher_on(hidden.device)
        ids = self.s2t.lm_head()(hidden).argmax(-1).tolist()  # (B, A)
        pieces = []  # (row, start, end, Y′ of the segment)
        for b, n in enumerate(answer_lengths.tolist()):
            y = ids[b][:n]
            spans = sentence_segments([self.s2t.chat.decode([t]) for t in y])
            pieces += [(b, a, e, y[a:e]) for a, e in spans]
        generated = teacher.generate_units([p[3] for p in pieces], max_units=self.max_units) if pieces else []
        guarded = {p[0] for p, g in zip(pieces, generated, strict=True) if g.truncated}
        kept = [(p, g) for p, g in zip(pieces, generated, strict=True) if p[0] not in guarded]
        dev = hidden.device
        if not kept:
            none = torch.zeros(0, dtype=torch.long, device=dev)
            return EchoTargets(none, none, none, none[:, None], none, none.bool(), masked_rows=len(guarded))
        fitted = [fit_units([0] * (e - a), self.unit_targets(g.units), self.echo_decoder.max_positions)
                  for (_, a, e, _), g in kept]
        batch = {k: v.to(dev) for k, v in units_batch(fitted, self.echo_decoder, "segment_").items()}
        start = torch.tensor([p[1] for p, _ in kept], dtype=torch.long, device=dev)
        end = start + torch.tensor([len(f[0]) for f in fitted], dtype=torch.long, device=dev)
        rows = torch.tensor([p[0] for p, _ in kept], dtype=torch.long, device=dev)
        return EchoTargets(rows, start, end, batch["segment_units"], batch["segment_unit_lengths"],
                           batch["segment_unit_eos"], masked_rows=len(guarded))

    def _teacher_on(self, device: torch.device) -> T2CModel:
        """The teacher, moved to `device` the first time a batch arrives there (it is outside .to())."""
        teacher = self.teacher
        assert teacher is not None
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        return teacher

    def unit_targets(self, units: Sequence[int]) -> list[int]:
        """Raw units → the Echo decoder's target ids (identity without a unit language)."""
        return units_to_targets(self.unit_language, units)

    def units_from_targets(self, ids: Sequence[int]) -> list[int]:
        """The Echo decoder's target ids → raw units."""
        return targets_to_units(self.unit_language, ids)

    @torch.no_grad()
    def speak_segment(self, hidden: Tensor, max_units: int = 1000) -> tuple[list[int], bool]:
        """Raw units for one segment of states (L, H): denoising adapter → Echo decoder, greedy."""
        adapted = self.adapter(hidden[None])  # (1, L, H)
        lengths = torch.tensor([hidden.shape[0]], device=hidden.device)
        out = self.echo_decoder.generate(adapted, lengths, max_units=max_units)[0]
        return self.units_from_targets(out.units), out.truncated

    @torch.no_grad()
    def stream_speech(
        self, audio: np.ndarray, *, max_new_tokens: int = 256, max_units: int = 1000, **segmenting: float
    ) -> Iterator[SpokenSegment]:
        """Answer one clip as a stream of segments (text + units), cut by the streaming trigger."""
        was_training = self.training
        self.eval()
        try:
            period = period_row(self.s2t)
            tracker = BoundaryTracker(**segmenting)  # type: ignore[arg-type]
            tokens: list[int] = []
            states: list[Tensor] = []
            for token, h in self.s2t.stream(audio, max_new_tokens=max_new_tokens):
                tokens.append(token)
                states.append(h)
                for end in tracker.push(float(F.cosine_similarity(h.float(), period, dim=0))):
                    yield self._segment(tokens, states, tracker, end, max_units)
            end = len(tokens)
            if end > tracker.last:
                yield self._segment(tokens, states, tracker, end, max_units)
        finally:
            self.train(was_training)

    def _segment(
        self, tokens: list[int], states: list[Tensor], tracker: BoundaryTracker, end: int, max_units: int
    ) -> SpokenSegment:
        """The segment between the previous boundary and `end`, spoken."""
        start = tracker.emitted_start(end)
        units, truncated = self.speak_segment(torch.stack(states[start:end]), max_units)
        ids = tokens[start:end]
        return SpokenSegment(start, end, ids, self.s2t.chat.decode(ids), units, truncated)


@dataclass(frozen=True)
class SpokenSegment:
    """One streamed answer segment: token span [start, end), its text and its units."""

    start: int
    end: int
    token_ids: list[int]
    text: str
    units: list[int]
    truncated: bool


def period_row(s2t: S2TModel) -> Tensor:
    """The LM-head row of "." (H,), which the streaming trigger compares hidden states with."""
    ids = s2t.chat.encode(".")
    if len(ids) != 1:
        raise CheckpointError("'.' is not a single token of this model's tokenizer")
    return s2t.lm_head().weight[ids[0]].float()


# ----------------------------------------------------------------------------- streaming trigger


class BoundaryTracker:
    """Incremental segment boundaries over a similarity stream (DESIGN step 5), as the released EchoX
    streaming inference decides them.

    Position t (0-based) of a segment that starts at s is decided once sims[t + lookahead] is known: it
    closes the segment [s, t] only if sims[t] is the maximum of sims[t-lookahead .. t+lookahead] (clipped
    at 0, ties count as a maximum) AND either t - s >= min_len_peak, or t - s >= min_len_thresh and
    sims[t] > thresh. Both rules need the local peak; t - s counts the segment's tokens before t, so a
    cut segment holds at least min_len + 1 tokens. The last `lookahead` positions of a stream are never
    decided: what follows the last cut is the final segment. A boundary is reported as the exclusive end
    t + 1."""

    def __init__(
        self, lookahead: int = 5, min_len_peak: int = 50, min_len_thresh: int = 20, thresh: float = 0.1
    ) -> None:
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.lookahead, self.min_len_peak = lookahead, min_len_peak
        self.min_len_thresh, self.thresh = min_len_thresh, thresh
        self.sims: list[float] = []
        self.last = 0  # exclusive end of the last emitted segment = start of the open one
        self._starts: dict[int, int] = {}
        self._next = 0  # next position to decide

    def push(self, sim: float) -> list[int]:
        """Add one similarity; return the segment ends that became decidable (at most one)."""
        self.sims.append(sim)
        out = []
        while self._next + self.lookahead < len(self.sims):  # the window right of _next is known
            t = self._next
            if self._cuts(t):
                out.append(self._emit(t))
            self._next += 1
        return out

    def _cuts(self, t: int) -> bool:
        """Position t closes the open segment: a local peak, long enough for its rule."""
        if not self._is_peak(t):
            return False
        before = t - self.last  # tokens of the open segment before t
        return before >= self.min_len_peak or (before >= self.min_len_thresh and self.sims[t] > self.thresh)

    def _is_peak(self, t: int) -> bool:
        """sims[t] is the maximum of its ±lookahead window (clipped at the stream's start)."""
        window = self.sims[max(0, t - self.lookahead): t + self.lookahead + 1]
        return self.sims[t] >= max(window)

    def _emit(self, t: int) -> int:
        """Close the segment at t; return its exclusive end."""
        self._starts[t + 1] = self.last
        self.last = t + 1
        return t + 1

    def emitted_start(self, end: int) -> int:
        """Start of the segment that ends at `end` (the last boundary for the final, open segment)."""
        return self._starts.get(end, self.last)


def find_boundaries(
    sims: Sequence[float],
    lookahead: int = 5,
    min_len_peak: int = 50,
    min_len_thresh: int = 20,
    thresh: float = 0.1,
) -> list[int]:
    """Exclusive segment ends over a whole similarity sequence (the tail after the last end is the final
    segment); identical to what BoundaryTracker emits token by token."""
    tracker = BoundaryTracker(lookahead, min_len_peak, min_len_thresh, thresh)
    ends: list[int] = []
    for s in sims:
        ends.extend(tracker.push(float(s)))
    return ends


def segments_from_boundaries(ends: Sequence[int], length: int) -> list[tuple[int, int]]:
    """[start, end) spans covering 0..length given exclusive segment ends."""
    cuts = [0, *[e for e in ends if 0 < e < length], length]
    return [(a, b) for a, b in pairwise(cuts) if b > a]


# ----------------------------------------------------------------------------- build


def build_echo(s2t: S2TModel, t2c: T2CModel, *, seed: int = 0, online: bool = False,
               train_hearing: bool = True) -> EchoModel:
    """Stage-III model from a stage-I model and a stage-II model (its decoder becomes the Echo decoder);
    `online` keeps a frozen copy of the stage-II model as the teacher of online echo targets;
    `train_hearing` False freezes what stage I hears (S2TModel.freeze_hearing)."""
    if s2t.build_info is None or t2c.build_info is None:
        raise ValueError("build_echo needs models made by build_s2t / build_t2c or load_model")
    preset = s2t.build_info.preset
    if not train_hearing:
        s2t.freeze_hearing()
    hidden = s2t.llm.get_input_embeddings().embedding_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        adapter = DenoisingAdapter(hidden, llm_ffn_width(s2t.llm))
    teacher = copy.deepcopy(t2c) if online else None  # before its decoder becomes the (trained) Echo decoder
    model = EchoModel(s2t, t2c.decoder, adapter, reweight=preset.echo_reweight, num_units=t2c.num_units,
                      unit_language=t2c.unit_language, teacher=teacher, max_units=preset.online_max_units)
    external = {f"s2t.{k}" for k in s2t.build_info.external}
    external |= {f"echo_decoder.{k.removeprefix('decoder.')}" for k in t2c.build_info.external}
    extra = dict(t2c.build_info.extra)
    model.build_info = BuildInfo("echo", preset, s2t.build_info.llm_dir, frozenset(external), extra)
    return model
