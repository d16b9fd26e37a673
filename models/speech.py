"""Speech side: a Whisper encoder (random-init or a local checkpoint), its log-mel front end, and the
Soundwave-style speech adapter that turns encoder frames into LLM-width embeddings.

Encoder frames are 50 Hz; the adapter stacks pairs (25 Hz), runs one Transformer layer over time, predicts
CTC tokens over the LLM vocabulary (blank = the audio placeholder), and *shrinks*: it keeps the frames
whose CTC argmax differs from the previous frame's, and lets the kept frames attend to each other (the
dropped frames are masked as keys, as in the authors' released code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import CheckpointError, ConfigError
from models.ctc_lexicon import DecoderOptions, LexiconDecoder, build_decoder
from models.presets import ModelPreset

SAMPLE_RATE = 16_000
HOP = 160  # log-mel hop: 100 Hz mel frames, 50 Hz after the encoder's stride-2 conv


# ----------------------------------------------------------------------------- encoder


def encoder_config(preset: ModelPreset) -> Any:
    """WhisperConfig of the preset's encoder: the local checkpoint's own, or the random-init sizes."""
    from transformers import WhisperConfig

    path = encoder_dir(preset)
    if path is not None:
        return WhisperConfig.from_pretrained(str(path))
    return WhisperConfig(
        num_mel_bins=preset.num_mel_bins,
        d_model=preset.encoder_dim,
        encoder_layers=preset.encoder_layers,
        encoder_attention_heads=preset.encoder_heads,
        encoder_ffn_dim=preset.encoder_ffn,
        # Whisper requires mel input of exactly 2*max_source_positions frames: this sets the window.
        max_source_positions=preset.max_audio_seconds * SAMPLE_RATE // HOP // 2,
        decoder_layers=1,
        decoder_attention_heads=preset.encoder_heads,
        decoder_ffn_dim=preset.encoder_ffn,
    )


def encoder_dir(preset: ModelPreset) -> Path | None:
    """The local Whisper directory to load, None for random init; CheckpointError if required but unset."""
    if preset.encoder_path:
        path = Path(preset.encoder_path).expanduser()
        if not (path / "config.json").is_file():
            raise CheckpointError(f"encoder_path {path} is not an HF Whisper directory (no config.json)")
        return path
    if preset.encoder_source == "path":
        raise CheckpointError(f"preset {preset.name!r}: set encoder_path to a local whisper-large-v3 dir")
    return None


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF checkpoint directory (single or sharded)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise CheckpointError(f"{path} holds no model.safetensors (convert .bin checkpoints to safetensors)")


def read_weights(path: Path, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Tensors whose names start with one of `prefixes` (prefix stripped), read lazily from safetensors."""
    from safetensors import safe_open

    out: dict[str, Tensor] = {}
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                for prefix in prefixes:
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = f.get_tensor(key)
                        break
    return out


def build_encoder(preset: ModelPreset, *, load_weights: bool = True, seed: int = 0) -> nn.Module:
    """The Whisper encoder: from `encoder_path` (if set and load_weights), else random-init with `seed`."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = encoder_config(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = WhisperEncoder(config)
    path = encoder_dir(preset)
    if path is not None and load_weights:
        state = read_weights(path, ("model.encoder.", "encoder."))
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: encoder weights do not match (missing {missing[:3]}, extra {unexpected[:3]})"
            )
    if not preset.train_encoder:
        encoder.requires_grad_(False).eval()
    return encoder


def build_feature_extractor(encoder: nn.Module) -> Any:
    """WhisperFeatureExtractor matching the encoder (mel bins, window), built from parameters, no hub."""
    from transformers import WhisperFeatureExtractor

    cfg = encoder.config
    seconds = cfg.max_source_positions * 2 * HOP // SAMPLE_RATE
    return WhisperFeatureExtractor(
        feature_size=cfg.num_mel_bins,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP,
        chunk_length=seconds,
        n_fft=400,
    )


def window_samples(encoder: nn.Module) -> int:
    """Audio samples in the encoder's window (longer audio is truncated)."""
    return int(encoder.config.max_source_positions * 2 * HOP)


def run_encoder(encoder: nn.Module, input_features: Tensor, lengths: Tensor, *, trim: bool) -> Tensor:
    """(B, T, C) 50 Hz encoder states for log-mel (B, mels, 2·P) with `lengths` (B,) valid frames.

    trim=False runs the Whisper encoder on its whole window (what a pretrained Whisper expects); trim=True
    runs the same modules on the batch's longest clip only (the padding past it is never computed): the
    cost then follows the audio, not the window, for encoders trained here from scratch."""
    if not trim:
        return encoder(input_features=input_features).last_hidden_state[:, : int(lengths.max())]
    frames = int(lengths.max())
    x = input_features[:, :, : 2 * frames]  # (B, mels, 2T)
    x = F.gelu(encoder.conv1(x))  # (B, C, 2T)
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)  # (B, T, C) stride 2
    x = x + encoder.embed_positions.weight[: x.shape[1]]  # (B, T, C)
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        x = layer(x, None, layer_head_mask=None)[0]  # (B, T, C)
    return encoder.layer_norm(x)  # (B, T, C)


def encoder_frames(num_samples: Tensor, max_frames: int) -> Tensor:
    """Valid 50 Hz encoder frames for audio of `num_samples` (mel frames = samples // hop, conv stride 2)."""
    mel = torch.div(num_samples, HOP, rounding_mode="floor")
    return torch.div(mel + 1, 2, rounding_mode="floor").clamp(1, max_frames)


def log_mel(feature_extractor: Any, audios: list[np.ndarray]) -> Tensor:
    """(B, mels, 2*max_source_positions) float32 log-mel features of 16 kHz int16 or float audio."""
    waves = [_as_float(a) for a in audios]
    feats = feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))


def _as_float(audio: Any) -> np.ndarray:
    """float32 waveform in [-1, 1] from int16 samples (or float samples passed through)."""
    arr = np.asarray(audio)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    return arr.astype(np.int16).astype(np.float32) / 32768.0


# ----------------------------------------------------------------------------- adapter


LOOKBACK = ("kept", "all")
"""What the kept frames attend to: the kept frames (the reference), or every frame (echox before 2026-11)."""


@dataclass
class AdapterOutput:
    """Speech embeddings for the LLM plus what the CTC loss needs."""

    frames: Tensor  # (B, S, H) kept frames after shrink + attention
    mask: Tensor  # (B, S) bool, True on real frames
    ctc_log_probs: Tensor  # (B, T', V) log-softmax over the LLM vocabulary, 25 Hz
    ctc_lengths: Tensor  # (B,) valid 25 Hz frames


def shrink_indices(ids: Tensor, valid: Tensor, blank_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices (B, S) of frames whose argmax differs from the previous frame's (frame 0 always kept), and
    their mask (B, S). Blank runs are kept as one frame each, exactly as the rule says; with `blank_id`,
    blank frames are dropped (each row keeps at least its first frame)."""
    change = torch.ones_like(valid)  # (B, T)
    change[:, 1:] = ids[:, 1:] != ids[:, :-1]  # (B, T)
    keep = change & valid  # (B, T)
    if blank_id is not None:
        keep = keep & (ids != blank_id)  # (B, T)
        keep[:, 0] |= ~keep.any(1)  # a row of blanks keeps frame 0
    counts = keep.sum(1)  # (B,)
    # A stable sort of "not kept" puts the kept indices first, in time order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # (B, T)
    size = int(counts.max().clamp(min=1))
    idx = order[:, :size]  # (B, S)
    mask = torch.arange(size, device=ids.device)[None, :] < counts[:, None]  # (B, S)
    return idx, mask


class SpeechAdapter(nn.Module):
    """Stack 2 frames → Linear → pre-norm Transformer layer over time → LayerNorm → CTC head → shrink →
    look-back attention of the kept frames over the kept frames only (residual + LayerNorm).

    ctc_embed=True adds the CTC posteriors' expected LLM token embedding to each kept frame, drops blank
    frames, and gates the acoustic part (a learned scalar, 0 at init): the LLM first reads its own
    embeddings of the tokens the CTC head hears, so what it knows about written words applies to spoken
    ones from the first step (the acoustic part opens as stage I trains)."""

    def __init__(
        self,
        enc_dim: int,
        llm_dim: int,
        vocab_size: int,
        blank_id: int,
        *,
        num_heads: int = 4,
        dropout: float = 0.1,
        ctc_embed: bool = False,
        lookback: str = "kept",
    ) -> None:
        super().__init__()
        if lookback not in LOOKBACK:
            raise ValueError(f"adapter lookback must be one of {LOOKBACK}, not {lookback!r}")
        self.blank_id = blank_id
        self.ctc_embed = ctc_embed
        self.lookback = lookback
        self.proj = nn.Linear(2 * enc_dim, llm_dim)
        # batch_first: attend over time (the reference code attends across the batch axis by mistake).
        self.layer = nn.TransformerEncoderLayer(
            llm_dim, num_heads, 2 * llm_dim, dropout, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(llm_dim)
        self.ctc_head = nn.Linear(llm_dim, vocab_size)
        self.attn = nn.MultiheadAttention(llm_dim, num_heads, dropout=dropout, batch_first=True)
        self.out_norm = nn.LayerNorm(llm_dim)
        if ctc_embed:
            self.gate = nn.Parameter(torch.zeros(()))

    def ctc_frames(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The adapter up to its CTC head: 25 Hz states (B, T', H), CTC logits (B, T', V), valid lengths
        (B,) and mask (B, T'), from 50 Hz encoder states (B, T, C) with `lengths` (B,) valid frames."""
        B, T, C = enc.shape
        if T % 2:
            enc = F.pad(enc, (0, 0, 0, 1))  # (B, T+1, C)
        x = self.proj(enc.reshape(B, -1, 2 * C))  # (B, T', H) 25 Hz
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # (B,)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T')
        x = self.norm(self.layer(x, src_key_padding_mask=~valid))  # (B, T', H)
        return x, self.ctc_head(x), lengths, valid  # logits (B, T', V)

    def forward(self, enc: Tensor, lengths: Tensor, embed: Tensor | None = None) -> AdapterOutput:
        """enc (B, T, C) 50 Hz encoder states with `lengths` (B,) valid frames → AdapterOutput; `embed`
        (V, H) is the LLM's input embedding table (required with ctc_embed)."""
        x, logits, lengths, valid = self.ctc_frames(enc, lengths)
        blank = self.blank_id if self.ctc_embed else None
        idx, mask = shrink_indices(logits.argmax(-1), valid, blank)  # (B, S), (B, S)
        q = x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))  # (B, S, H)
        # "kept" (the reference): keys are the kept frames, so a dropped frame (a CTC repeat, or padding) is
        # never attended to and reaches the output only through the CTC argmax that decided what to keep.
        # "all": every valid frame (what checkpoints made before the fix were trained with).
        if self.lookback == "kept":
            ctx, _ = self.attn(q, q, q, key_padding_mask=~mask, need_weights=False)  # (B, S, H)
        else:
            ctx, _ = self.attn(q, x, x, key_padding_mask=~valid, need_weights=False)  # (B, S, H)
        frames = self.out_norm(q + ctx)  # (B, S, H)
        if self.ctc_embed:
            if embed is None:
                raise ValueError("a ctc_embed adapter needs the LLM's embedding table")
            kept = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))  # (B, S, V)
            soft = torch.softmax(kept.float(), dim=-1).to(embed.dtype) @ embed  # (B, S, H)
            frames = soft.to(frames.dtype) + self.gate * frames  # (B, S, H)
        frames = frames * mask[:, :, None].to(frames.dtype)  # (B, S, H) zero the padding
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T', V) float32 for CTC
        return AdapterOutput(frames, mask, log_probs, lengths)


# ----------------------------------------------------------------------------- character CTC


CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789'-.,?!"
"""Labels of the character CTC (ids 1..); id 0 is its blank."""
CHAR_BLANK = 0
_CHAR_IDS = {c: i + 1 for i, c in enumerate(CHAR_ALPHABET)}


def char_ids(text: str) -> list[int]:
    """Character CTC targets of a transcript: lower-cased, accents stripped, characters outside the alphabet
    dropped, whitespace runs as one space, trimmed."""
    import unicodedata

    plain = unicodedata.normalize("NFKD", text.lower())
    kept = "".join(c if c in _CHAR_IDS else " " if c.isspace() else "" for c in plain)
    return [_CHAR_IDS[c] for c in " ".join(kept.split())]


def char_text(ids: list[int]) -> str:
    """Text of character ids (blank and unknown ids skipped)."""
    return "".join(CHAR_ALPHABET[i - 1] for i in ids if 0 < i <= len(CHAR_ALPHABET))


def heard_text(text: str, decoder: LexiconDecoder | None = None) -> str:
    """What the LLM reads of `text` spoken and every character heard right: the character CTC's targets as
    text, written back by the lexicon decoder's casing when it has one that writes cased transcripts."""
    heard = char_text(char_ids(text))
    return decoder.lexicon.cased(heard) if decoder is not None and decoder.options.cased else heard


class CharAdapter(nn.Module):
    """Character CTC front end: 50 Hz encoder states → BiLSTM (residual) → CTC head over CHAR_ALPHABET; the
    LLM reads its own input embeddings of the tokens of the greedy transcript (no acoustic frames).

    The transcript is not differentiable: the LLM's loss trains the LLM (or its LoRA) on what the encoder
    hears, and the encoder learns from the CTC loss alone. The same modules are what encoder pretraining
    trains, so stage I starts hearing as well as the pretrained encoder did."""

    ctc_embed = True  # the LLM reads token embeddings of what the CTC head hears

    def __init__(self, enc_dim: int, tokenize: Any, *, rnn_layers: int = 1, dropout: float = 0.1,
                 decoder: LexiconDecoder | None = None) -> None:
        super().__init__()
        if enc_dim % 2:
            raise ValueError(f"the character adapter needs an even encoder width, not {enc_dim}")
        self.blank_id = CHAR_BLANK
        self.tokenize = tokenize  # str → LLM token ids (ChatFormat.encode)
        self.decoder = decoder  # None: greedy transcripts; else a lexicon beam search (no weights)
        half = enc_dim // 2
        # A BiLSTM as two unidirectional stacks: the backward one reads each row reversed within its valid
        # length, so padding never reaches a valid frame in either direction, without packed sequences
        # (which run 4-5x slower on CPU than the fused padded kernel).
        self.forward_rnn = nn.ModuleList(nn.LSTM(enc_dim, half, batch_first=True) for _ in range(rnn_layers))
        self.backward_rnn = nn.ModuleList(nn.LSTM(enc_dim, half, batch_first=True) for _ in range(rnn_layers))
        self.dropout = nn.Dropout(dropout)
        self.ctc_head = nn.Linear(enc_dim, len(CHAR_ALPHABET) + 1)

    def ctc_frames(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """50 Hz states (B, T, C), character CTC logits (B, T, K), valid lengths (B,) and mask (B, T) from
        encoder states (B, T, C) with `lengths` (B,) valid frames (padding never reaches a valid frame)."""
        T = enc.shape[1]
        lengths = lengths.clamp(1, T)
        t = torch.arange(T, device=enc.device)[None, :]  # (1, T)
        valid = t < lengths[:, None]  # (B, T)
        flip = torch.where(valid, lengths[:, None] - 1 - t, t)  # (B, T) reverses the valid part; self-inverse
        x = enc
        for i, (fwd, bwd) in enumerate(zip(self.forward_rnn, self.backward_rnn, strict=True)):
            if i:
                x = self.dropout(x)
            ahead, _ = fwd(x)  # (B, T, C/2)
            behind, _ = bwd(_gather_time(x, flip))  # (B, T, C/2) in reversed time
            x = torch.cat([ahead, _gather_time(behind, flip)], dim=-1)  # (B, T, C)
        x = enc + x  # (B, T, C)
        return x, self.ctc_head(x), lengths, valid

    def transcripts(self, logits: Tensor, lengths: Tensor) -> list[str]:
        """CTC transcripts of logits (B, T, K): the lexicon decoder's when there is one, else greedy (argmax,
        repeats merged, blanks dropped)."""
        if self.decoder is not None:
            log_probs = F.log_softmax(logits.detach().float(), dim=-1).cpu().numpy()  # (B, T, K)
            return [self.decoder.decode(log_probs[row, : int(n)]) for row, n in enumerate(lengths.tolist())]
        best = logits.argmax(-1).tolist()  # (B, T)
        return [char_text(collapse(row[: int(n)], CHAR_BLANK)) for row, n in zip(best, lengths.tolist(),
                                                                                 strict=True)]

    def forward(self, enc: Tensor, lengths: Tensor, embed: Tensor | None = None) -> AdapterOutput:
        """enc (B, T, C) 50 Hz encoder states with `lengths` (B,) valid frames → AdapterOutput whose frames
        are the LLM's embeddings `embed` (V, H) of the heard transcripts' tokens (at least one per row)."""
        if embed is None:
            raise ValueError("the character adapter needs the LLM's embedding table")
        _, logits, lengths, _ = self.ctc_frames(enc, lengths)
        ids = [self.tokenize(text) or self.tokenize(".") for text in self.transcripts(logits, lengths)]
        size = max(len(i) for i in ids)
        idx = torch.zeros(len(ids), size, dtype=torch.long, device=enc.device)  # (B, S)
        for row, seq in enumerate(ids):
            idx[row, : len(seq)] = torch.as_tensor(seq, device=enc.device)
        mask = torch.arange(size, device=enc.device)[None, :] < torch.tensor(
            [len(i) for i in ids], device=enc.device)[:, None]  # (B, S)
        frames = embed[idx] * mask[:, :, None].to(embed.dtype)  # (B, S, H)
        return AdapterOutput(frames, mask, F.log_softmax(logits.float(), dim=-1), lengths)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, C) reordered along time by index (B, T)."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[-1]))


def collapse(ids: list[int], blank: int) -> list[int]:
    """Greedy CTC decoding of frame argmaxes: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def build_adapter(preset: ModelPreset, enc_dim: int, llm_dim: int, vocab_size: int, chat: Any, *,
                  seed: int) -> SpeechAdapter | CharAdapter:
    """The preset's speech adapter (token CTC, or character CTC), initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if preset.ctc_target == "chars":
            return CharAdapter(enc_dim, chat.encode, rnn_layers=preset.char_rnn_layers,
                               decoder=lexicon_decoder(preset, chat.tokenizer))
        return SpeechAdapter(enc_dim, llm_dim, vocab_size, chat.audio_id, num_heads=preset.adapter_heads,
                             ctc_embed=preset.adapter_ctc_embed, lookback=preset.adapter_lookback)


def lexicon_decoder(preset: ModelPreset, tokenizer: Any) -> LexiconDecoder | None:
    """The preset's lexicon beam search over the tokenizer's whole words (None: greedy decoding)."""
    if preset.ctc_decoder != "lexicon":
        return None
    options = DecoderOptions(beam=preset.lexicon_beam, weight=preset.lexicon_weight,
                             word_bonus=preset.lexicon_word_bonus, oov_penalty=preset.lexicon_oov_penalty,
                             cased=preset.lexicon_cased)
    try:
        return build_decoder(tokenizer, CHAR_ALPHABET, blank=CHAR_BLANK, max_words=preset.lexicon_words,
                             options=options)
    except ValueError as err:  # no whole-word tokens: a character-level or unmarked vocabulary
        raise ConfigError(f"model preset {preset.name!r}: ctc_decoder lexicon needs whole-word tokens "
                          f"(Ġ or ▁ marked) in the base tokenizer: {err}; use ctc_decoder greedy") from err


def ctc_target_ids(adapter: nn.Module, chat: Any, text: str) -> list[int]:
    """CTC targets of a transcript for this adapter: characters, or the LLM's tokens."""
    return char_ids(text) if isinstance(adapter, CharAdapter) else chat.encode(text)


def ctc_decode(adapter: nn.Module, chat: Any, ids: list[int]) -> str:
    """Text of greedy CTC frame argmaxes (repeats merged, blanks dropped) for this adapter."""
    if isinstance(adapter, CharAdapter):
        return char_text(collapse(ids, CHAR_BLANK))
    return chat.decode(collapse(ids, chat.audio_id))


def ctc_loss(out: AdapterOutput, targets: Tensor, target_lengths: Tensor, blank_id: int) -> Tensor:
    """Mean CTC loss (per-target-length normalised, as torch's 'mean') of the question transcript."""
    return F.ctc_loss(
        out.ctc_log_probs.transpose(0, 1),  # (T', B, V)
        targets,
        out.ctc_lengths,
        target_lengths,
        blank=blank_id,
        reduction="mean",
        zero_infinity=True,  # a transcript longer than the 25 Hz frames gives inf; skip it, don't NaN
    )
