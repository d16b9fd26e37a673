"""Stage II: text → units. A small Llama-style decoder over [prefix][SEP][units...][EOS].

The prefix is H-space embeddings projected H→d by one Linear: gold text tokens embedded by a FROZEN copy
of the base LLM's input embedding (T2C), or the denoising adapter's output (Echo decoder) — the same
projection either way. Unit embeddings are trained; the head predicts units + EOS; CE on unit positions.

Unit-side ids: 0..N-1 targets, N = EOS (also the head's EOS class), N+1 = SEP (unit start), N+2 = PAD.
The targets are the K raw units (N = K), or with an optional unit language (a BPE over unit strings,
models/unit_language.py) its N unit-words, about half as many per utterance; T2CModel maps raw units to
targets and back exactly, so everything outside the decoder sees raw units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import InputError
from models.build_info import BuildInfo
from models.llm import load_tokenizer
from models.presets import ModelPreset
from models.speech import read_weights

if TYPE_CHECKING:
    from models.unit_language import UnitLanguage

IGNORE = -100


@dataclass(frozen=True)
class GeneratedUnits:
    """Greedy units for one prefix; `truncated` when the length guard stopped it before EOS."""

    units: list[int]
    truncated: bool


class T2CDecoder(nn.Module):
    """Llama decoder over projected H-space prefixes and unit embeddings.

    `num_units` is its target vocabulary N (raw units, or unit-words under a unit language)."""

    def __init__(
        self,
        text_vocab_size: int,
        text_dim: int,
        num_units: int,
        *,
        dim: int,
        layers: int,
        heads: int,
        ffn: int,
        max_positions: int,
    ) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.num_units = num_units
        self.eos_id, self.sep_id, self.pad_id = num_units, num_units + 1, num_units + 2
        self.max_positions = max_positions
        self.text_embed = nn.Embedding(text_vocab_size, text_dim)
        self.text_embed.weight.requires_grad_(False)  # a frozen copy of the base LLM's input embedding
        self.text_proj = nn.Linear(text_dim, dim)
        self.unit_embed = nn.Embedding(num_units + 3, dim)
        config = LlamaConfig(
            vocab_size=1,  # unused: the decoder is always fed inputs_embeds
            hidden_size=dim,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.decoder = LlamaModel(config)
        # Its token embedding is never used (inputs_embeds only); frozen so DDP does not wait for its grads.
        self.decoder.embed_tokens.requires_grad_(False)
        self.head = nn.Linear(dim, num_units + 1)

    def embed_text(self, text_ids: Tensor) -> Tensor:
        """(B, T) text token ids → (B, T, H) frozen LLM input embeddings."""
        return self.text_embed(text_ids)

    def _joint(
        self, prefix: Tensor, prefix_lengths: Tensor, units: Tensor, unit_lengths: Tensor, unit_eos: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded joint inputs (B, L, d), mask (B, L) and targets (B, L) (-100 off unit positions)."""
        B, T, _ = prefix.shape
        U = units.shape[1]
        dev = prefix.device
        pmask = torch.arange(T, device=dev)[None, :] < prefix_lengths[:, None]  # (B, T)
        proj = self.text_proj(prefix) * pmask[:, :, None].to(prefix.dtype)  # (B, T, d)
        total = prefix_lengths + 1 + unit_lengths  # (B,) prefix + SEP + units
        L = int(total.max())
        x = proj.new_zeros(B, L, proj.shape[-1])  # (B, L, d)
        x[:, :T] = proj[:, : min(T, L)]
        k = torch.arange(U + 1, device=dev)[None, :]  # (1, U+1)
        sep = torch.full((B, 1), self.sep_id, device=dev, dtype=units.dtype)
        unit_in = torch.cat([sep, units], 1)  # (B, U+1) SEP u1 .. uN
        ok = k <= unit_lengths[:, None]  # (B, U+1)
        unit_in = torch.where(ok, unit_in, self.pad_id)  # (B, U+1)
        tgt = torch.cat([units, torch.full_like(sep, IGNORE)], 1)  # (B, U+1) u1 .. uN, then EOS below
        tgt = torch.where(k < unit_lengths[:, None], tgt, IGNORE)  # (B, U+1)
        eos_at = k == unit_lengths[:, None]  # (B, U+1)
        tgt = torch.where(eos_at & unit_eos[:, None], self.eos_id, tgt)  # (B, U+1)
        dst = prefix_lengths[:, None] + k  # (B, U+1) positions after the prefix
        rows = torch.arange(B, device=dev)[:, None].expand_as(dst)  # (B, U+1)
        x = x.index_put((rows[ok], dst[ok]), self.unit_embed(unit_in)[ok].to(x.dtype))  # (B, L, d)
        targets = torch.full((B, L), IGNORE, device=dev, dtype=torch.long)  # (B, L)
        targets[rows[ok], dst[ok]] = tgt[ok].long()
        mask = torch.arange(L, device=dev)[None, :] < total[:, None]  # (B, L)
        return x, mask, targets

    def forward(
        self,
        prefix_embeds: Tensor,
        prefix_lengths: Tensor,
        units: Tensor,
        unit_lengths: Tensor,
        unit_eos: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Teacher-forced CE over unit positions (+EOS): {loss, num_tokens}."""
        if unit_eos is None:
            unit_eos = torch.ones_like(unit_lengths, dtype=torch.bool)
        x, mask, targets = self._joint(prefix_embeds, prefix_lengths, units, unit_lengths, unit_eos.bool())
        if x.shape[1] > self.max_positions:
            raise InputError(f"T2C sequence of {x.shape[1]} exceeds max_positions {self.max_positions}")
        h = self.decoder(inputs_embeds=x, attention_mask=mask.long(), use_cache=False).last_hidden_state
        keep = targets != IGNORE  # (B, L)
        logits = self.head(h[keep])  # (M, N+1) only at the M unit positions
        loss = F.cross_entropy(logits.float(), targets[keep])
        return {"loss": loss, "num_tokens": keep.sum().detach()}

    @torch.no_grad()
    def generate(
        self, prefix_embeds: Tensor, prefix_lengths: Tensor, max_units: int = 1000
    ) -> list[GeneratedUnits]:
        """Greedy units for a batch of H-space prefixes (B, T, H), left-padded, with a KV cache.

        Stops each row at EOS; `max_units` and the decoder's max_positions bound the length (flagged)."""
        B, T, _ = prefix_embeds.shape
        dev = prefix_embeds.device
        P = int(prefix_lengths.max()) + 1  # prefix + SEP
        steps = max(0, min(max_units, self.max_positions - P))
        pad = P - 1 - prefix_lengths  # (B,) left padding
        j = torch.arange(P, device=dev)[None, :]  # (1, P)
        src = (j - pad[:, None]).clamp(0, T - 1)  # (B, P) source index of each left-padded slot
        proj = self.text_proj(prefix_embeds)  # (B, T, d)
        x = proj.gather(1, src[:, :, None].expand(-1, -1, proj.shape[-1]))  # (B, P, d)
        x[:, -1] = self.unit_embed.weight[self.sep_id]  # (B, d) SEP last
        mask = (j >= pad[:, None]).long()  # (B, P)
        x = x * mask[:, :, None].to(x.dtype)  # (B, P, d)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, P)
        out = self.decoder(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=True)
        units: list[list[int]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        next_pos = positions[:, -1:] + 1  # (B, 1)
        for _ in range(steps):
            nxt = self.head(out.last_hidden_state[:, -1]).argmax(-1)  # (B,)
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
            for b in (~done).nonzero().flatten().tolist():
                units[b].append(int(nxt[b]))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)  # (B, P+s)
            step = self.unit_embed(torch.where(done, self.eos_id, nxt))[:, None]  # (B, 1, d)
            out = self.decoder(
                inputs_embeds=step, attention_mask=mask, position_ids=next_pos,
                past_key_values=out.past_key_values, use_cache=True,
            )
            next_pos = next_pos + 1
        else:
            if steps and not bool(done.all()):
                # The loop ran out before every row emitted EOS: check the final step too.
                done |= self.head(out.last_hidden_state[:, -1]).argmax(-1) == self.eos_id
        return [GeneratedUnits(u, truncated=not bool(d)) for u, d in zip(units, done.tolist(), strict=True)]


def units_to_targets(language: UnitLanguage | None, units: Sequence[int]) -> list[int]:
    """Raw units → decoder target ids: unit-words under a unit language, else the units themselves."""
    return [int(u) for u in units] if language is None else language.encode(units)


def targets_to_units(language: UnitLanguage | None, ids: Sequence[int]) -> list[int]:
    """Decoder target ids → raw units (the exact inverse of `units_to_targets`)."""
    return [int(i) for i in ids] if language is None else language.decode(ids)


class T2CModel(nn.Module):
    """The T2C decoder plus the base LLM tokenizer; `forward(**batch)` gives the stage-II loss.

    `num_units` is K, the corpus codebook's raw units; `target_vocab_size` is what the decoder predicts
    (K, or the unit language's unit-words)."""

    def __init__(
        self, decoder: T2CDecoder, tokenizer: Any, *, num_units: int | None = None,
        unit_language: UnitLanguage | None = None,
    ) -> None:
        super().__init__()
        if unit_language is not None and (num_units is None or unit_language.vocab_size != decoder.num_units):
            raise InputError("a unit language needs num_units (K) and a decoder over its unit-words")
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.unit_language = unit_language
        self.num_units = decoder.num_units if num_units is None else num_units
        self.target_vocab_size = decoder.num_units
        self.max_positions = decoder.max_positions
        self.build_info: BuildInfo | None = None

    def unit_targets(self, units: Sequence[int]) -> list[int]:
        """Raw units → the decoder's target ids (identity without a unit language)."""
        return units_to_targets(self.unit_language, units)

    def units_from_targets(self, ids: Sequence[int]) -> list[int]:
        """The decoder's target ids → raw units."""
        return targets_to_units(self.unit_language, ids)

    def forward(
        self, text_ids: Tensor, text_lengths: Tensor, units: Tensor, unit_lengths: Tensor, unit_eos: Tensor
    ) -> dict[str, Tensor]:
        """Stage-II loss of gold answer text → answer units: {loss, num_tokens}."""
        prefix = self.decoder.embed_text(text_ids)  # (B, T, H)
        return self.decoder(prefix, text_lengths, units, unit_lengths, unit_eos)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, as the collator and echo labels feed them."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def generate_units(self, texts: list[list[int]], max_units: int = 1000) -> list[GeneratedUnits]:
        """Greedy raw units for a batch of text token-id lists; `max_units` bounds the decoder's steps
        (unit-words under a unit language, so the raw units may be longer)."""
        dev = self.decoder.text_embed.weight.device
        lengths = torch.tensor([len(t) for t in texts], device=dev)
        ids = torch.zeros(len(texts), max(1, int(lengths.max())), dtype=torch.long, device=dev)
        for b, t in enumerate(texts):
            ids[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        out = self.decoder.generate(self.decoder.embed_text(ids), lengths, max_units=max_units)
        return [GeneratedUnits(self.units_from_targets(g.units), g.truncated) for g in out]


def input_embedding(llm_dir: Path) -> Tensor:
    """The base LLM's input embedding matrix (V, H), read straight from its safetensors."""
    from core.errors import CheckpointError

    found = read_weights(Path(llm_dir), ("model.embed_tokens.", "embed_tokens."))
    if "weight" not in found:
        raise CheckpointError(f"{llm_dir}: no embed_tokens.weight in the LLM weights")
    return found["weight"]


def read_unit_language(text: str, num_units: int) -> UnitLanguage:
    """A unit language from its tokenizer JSON, checked to spell every one of the K raw units."""
    from models.unit_language import UnitLanguage

    language = UnitLanguage.from_str(text)
    language.encode(range(num_units))  # InputError naming the units it lacks
    return language


def build_t2c(
    preset: ModelPreset, llm_dir: Path, num_units: int, *, unit_language: str | None = None,
    load_weights: bool = True, seed: int = 0,
) -> T2CModel:
    """Stage-II model over K = num_units raw units, predicting the unit-words of `unit_language` (its
    tokenizer JSON) when given; the frozen text embedding is copied from the base LLM (load_weights)."""
    from transformers import AutoConfig

    if num_units < 1:
        raise InputError(f"num_units must be positive, got {num_units}")
    language = read_unit_language(unit_language, num_units) if unit_language else None
    targets = language.vocab_size if language else num_units
    config = AutoConfig.from_pretrained(str(llm_dir))
    vocab = config.vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        decoder = T2CDecoder(
            vocab, config.hidden_size, targets, dim=preset.t2c_dim, layers=preset.t2c_layers,
            heads=preset.t2c_heads, ffn=preset.t2c_ffn, max_positions=preset.t2c_max_positions,
        )
    if load_weights:
        emb = input_embedding(llm_dir)
        decoder.text_embed = nn.Embedding.from_pretrained(emb.float(), freeze=True)
    model = T2CModel(decoder, load_tokenizer(llm_dir), num_units=num_units, unit_language=language)
    external = frozenset() if preset.self_contained_checkpoints else frozenset({"decoder.text_embed.weight"})
    extra: dict[str, Any] = {"num_units": num_units}
    if unit_language:  # the tokenizer JSON rides in config.json: the checkpoint stays self-contained
        extra["unit_language"] = unit_language
    model.build_info = BuildInfo("t2c", preset, str(llm_dir), external, extra)
    return model
