"""Encoder pretraining: the stage-I speech encoder and adapter learn to hear, by CTC over the LLM's tokens
or (preset `ctc_target: chars`) over characters.

No pretrained speech encoder ships offline, so a small preset's encoder must learn from synthetic speech.
This stage trains exactly the modules stage I uses — the Whisper encoder and the adapter's projection,
time layer and CTC head (models/speech.py) — on transcribed speech, with the loss stage I already has
(CTC of the transcript over the LLM vocabulary, blank = the audio placeholder; or over characters through
the character adapter), but without running the LLM, so each step is cheap. Stage I then starts from
these weights (`build_s2t(encoder_init=...)`).

Every corpus row gives two examples: its question audio with `question_text` and its answer audio with
`answer_text` (the spoken forms the TTS read).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import CheckpointError
from models.build_info import BuildInfo
from models.llm import ChatFormat, load_tokenizer
from models.presets import ModelPreset
from models.speech import (
    AdapterOutput,
    build_adapter,
    build_encoder,
    build_feature_extractor,
    ctc_decode,
    ctc_loss,
    ctc_target_ids,
    encoder_frames,
    log_mel,
    run_encoder,
    window_samples,
)

SIDES = ("question", "answer")
PRETRAINED_PREFIXES = ("encoder.", "adapter.")
"""The S2T modules an encoder checkpoint initialises."""


class EncoderCTC(nn.Module):
    """Speech encoder + adapter trained by CTC of the transcript (the LLM's tokens, or characters)."""

    def __init__(self, encoder: nn.Module, adapter: nn.Module, chat: ChatFormat, feature_extractor: Any,
                 *, trim_audio_window: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.chat = chat
        self.feature_extractor = feature_extractor
        self.trim_audio_window = trim_audio_window
        # CTC reads the adapter up to its CTC head; the shrink attention and output norm (and the ctc_embed
        # gate) only run in stage I: frozen here, so DDP sees no parameter without a gradient.
        for unused in ("attn", "out_norm", "gate"):
            part = getattr(adapter, unused, None)
            if part is not None:
                part.requires_grad_(False)
        self.max_frames = int(encoder.config.max_source_positions)
        self.max_samples = window_samples(encoder)
        self.build_info: BuildInfo | None = None

    def ctc_log_probs(self, input_features: Tensor, audio_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T', V) CTC log-probabilities (25 Hz tokens or 50 Hz characters) and valid lengths (B,)."""
        enc = run_encoder(self.encoder, input_features, audio_lengths, trim=self.trim_audio_window)
        _, logits, lengths, _ = self.adapter.ctc_frames(enc, audio_lengths)  # (B, T', V), (B,)
        return torch.log_softmax(logits.float(), dim=-1), lengths

    def forward(self, input_features: Tensor, audio_lengths: Tensor, ctc_targets: Tensor,
                ctc_lengths: Tensor) -> dict[str, Tensor]:
        """CTC loss of one batch (the adapter's shrink and attention are not needed to hear)."""
        log_probs, lengths = self.ctc_log_probs(input_features, audio_lengths)
        out = AdapterOutput(log_probs.new_zeros(0), log_probs.new_zeros(0, dtype=torch.bool), log_probs,
                            lengths)
        loss = ctc_loss(out, ctc_targets, ctc_lengths, self.adapter.blank_id)
        return {"loss": loss, "num_tokens": ctc_lengths.sum().detach()}

    @torch.no_grad()
    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        """Greedy CTC transcripts (argmax, runs collapsed, blanks dropped, as text) of 16 kHz clips."""
        was_training = self.training
        self.eval()
        try:
            feats, lengths = self.features(audios)
            log_probs, valid = self.ctc_log_probs(feats, lengths)
            best = log_probs.argmax(-1)  # (B, T')
        finally:
            self.train(was_training)
        return [ctc_decode(self.adapter, self.chat, best[i, : int(valid[i])].tolist())
                for i in range(len(audios))]

    def features(self, audios: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Log-mel (B, mels, 2·P) and valid encoder frames (B,) of clips, on the model's device."""
        dev = next(self.parameters()).device
        feats = log_mel(self.feature_extractor, audios).to(dev)
        n = torch.tensor([min(len(a), self.max_samples) for a in audios], device=dev)
        return feats, encoder_frames(n, self.max_frames)


def collate_encoder(rows: list[dict[str, Any]], model: EncoderCTC) -> dict[str, Tensor]:
    """Both utterances of each row → log-mel, valid frames, CTC targets (the transcript's tokens or
    characters) and lengths."""
    from models.collate import _column, _pad

    audios = [np.asarray(_column(r, f"{side}_audio")) for r in rows for side in SIDES]
    texts = [str(_column(r, f"{side}_text")) for r in rows for side in SIDES]
    feats, lengths = model.features(audios)
    targets, target_lengths = _pad([ctc_target_ids(model.adapter, model.chat, t) for t in texts], 0)
    return {"input_features": feats.cpu(), "audio_lengths": lengths.cpu(), "ctc_targets": targets,
            "ctc_lengths": target_lengths}


def encoder_length(row: dict[str, Any]) -> int:
    """≈ 25 Hz frames of a row's two utterances (for length bucketing)."""
    return (len(row["question_audio"]) + len(row["answer_audio"])) // 640


def _llm_shape(llm_dir: Path) -> tuple[int, int]:
    """(hidden size, embedding rows) of the base LLM, from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(llm_dir))
    return int(config.hidden_size), int(config.vocab_size)


def build_encoder_ctc(preset: ModelPreset, llm_dir: Path, *, load_weights: bool = True,
                      seed: int = 0) -> EncoderCTC:
    """The pretraining model with stage I's encoder and adapter shapes (the LLM's weights are not read)."""
    chat = ChatFormat(load_tokenizer(llm_dir), preset.audio_token)  # its tokenizer only: no prompt runs
    hidden, vocab = _llm_shape(llm_dir)
    encoder = build_encoder(preset, load_weights=load_weights, seed=seed)
    adapter = build_adapter(preset, encoder.config.d_model, hidden, vocab, chat, seed=seed + 1)
    model = EncoderCTC(encoder, adapter, chat, build_feature_extractor(encoder),
                       trim_audio_window=preset.trim_audio_window)
    model.build_info = BuildInfo("encoder", preset, str(llm_dir),
                                 extra={"tokenizer": tokenizer_digest(chat.tokenizer)})
    return model


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary (token → id): CTC targets mean the same only under the same one."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()


def load_pretrained_speech(pretrained: EncoderCTC, encoder: nn.Module, adapter: nn.Module,
                           tokenizer: Any) -> None:
    """Copy a loaded encoder checkpoint's encoder and adapter weights into stage I's modules; CheckpointError
    when it was trained over another tokenizer or its shapes (encoder sizes, LLM width) differ."""
    info = pretrained.build_info
    where = info.llm_dir if info is not None else "the encoder checkpoint"
    if info is None or info.extra.get("tokenizer") != tokenizer_digest(tokenizer):
        raise CheckpointError(f"{where}: the encoder was pretrained over another tokenizer than this base "
                              "LLM's; pretrain it with the same preset and base LLM")
    for name, target in (("encoder", encoder), ("adapter", adapter)):
        source = getattr(pretrained, name).state_dict()
        mine = target.state_dict()
        wrong = [k for k, v in source.items() if k in mine and mine[k].shape != v.shape]
        if wrong or set(source) - set(mine):
            raise CheckpointError(
                f"{where}: its {name} does not fit this preset's (shapes differ at {wrong[:3]}): pretrain "
                "the encoder with the same preset and base LLM")
        target.load_state_dict(source, strict=False)  # ctc_embed's gate stays as initialised
