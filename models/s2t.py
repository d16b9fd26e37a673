"""Stage I: speech → text. Whisper encoder + speech adapter whose frames replace the one audio placeholder
token of the chat prompt, fed to an HF causal LM (LoRA or fully trained).

Loss = CE(answer tokens) + ctc_weight · CTC(question transcript over the adapter's 25 Hz frames, or over
characters at 50 Hz with the character adapter).

Hidden-state convention (used by echo labels, echo training and streaming alike): `hidden[:, t]` is the
last-layer (final-norm) state at the position *before* answer token t, i.e. the state that PREDICTS
token t; `lm_head(hidden).argmax(-1)` is the model's echo Y′ of the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.build_info import BuildInfo
from models.llm import ChatFormat, apply_lora, decoder_and_head, load_llm, load_tokenizer
from models.presets import ModelPreset
from models.speech import (
    AdapterOutput,
    CharAdapter,
    build_adapter,
    build_encoder,
    build_feature_extractor,
    ctc_decode,
    ctc_loss,
    encoder_frames,
    log_mel,
    run_encoder,
    window_samples,
)

IGNORE = -100


def splice(
    text: Tensor, attention_mask: Tensor, audio_pos: Tensor, speech: Tensor, speech_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Replace the placeholder at `audio_pos` of each right-padded row by its speech frames.

    text (B, L, H), attention_mask (B, L), audio_pos (B,), speech (B, S, H), speech_mask (B, S)
    → embeddings (B, L', H) and mask (B, L'), right-padded, L' = max(len - 1 + frames).
    """
    B, L, H = text.shape
    S = speech.shape[1]
    dev = text.device
    n = speech_mask.sum(1)  # (B,)
    new_len = attention_mask.sum(1) - 1 + n  # (B,)
    j = torch.arange(L, device=dev)[None, :]  # (1, L)
    pos = audio_pos[:, None]  # (B, 1)
    dst_text = torch.where(j < pos, j, j - 1 + n[:, None])  # (B, L) tokens after the placeholder shift
    ok_text = attention_mask.bool() & (j != pos)  # (B, L)
    dst_speech = pos + torch.arange(S, device=dev)[None, :]  # (B, S)
    rows_t = torch.arange(B, device=dev)[:, None].expand(B, L)  # (B, L)
    rows_s = torch.arange(B, device=dev)[:, None].expand(B, S)  # (B, S)
    out = text.new_zeros(B, int(new_len.max()), H)  # (B, L', H)
    out = out.index_put((rows_t[ok_text], dst_text[ok_text]), text[ok_text])  # (B, L', H)
    out = out.index_put((rows_s[speech_mask], dst_speech[speech_mask]), speech[speech_mask].to(out.dtype))
    mask = torch.arange(out.shape[1], device=dev)[None, :] < new_len[:, None]  # (B, L')
    return out, mask


class S2TModel(nn.Module):
    """Speech encoder + adapter + causal LM; `forward(**batch)` gives the stage-I losses."""

    def __init__(
        self,
        encoder: nn.Module,
        adapter: nn.Module,
        llm: nn.Module,
        chat: ChatFormat,
        feature_extractor: Any,
        *,
        ctc_weight: float = 0.3,
        train_encoder: bool = False,
        trim_audio_window: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.chat = chat
        self.feature_extractor = feature_extractor
        self.ctc_weight = ctc_weight
        self.train_encoder = train_encoder
        self.trim_audio_window = trim_audio_window
        self.max_frames = int(encoder.config.max_source_positions)
        self.max_samples = window_samples(encoder)
        self.build_info: BuildInfo | None = None

    def train(self, mode: bool = True) -> S2TModel:
        """Switch train/eval mode; a frozen encoder (and a frozen character adapter) always stays in eval
        mode (no dropout)."""
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()
            if isinstance(self.adapter, CharAdapter) and not any(p.requires_grad for p in
                                                                 self.adapter.parameters()):
                self.adapter.eval()
        return self

    def freeze_hearing(self) -> None:
        """Keep what the model hears as it is: the encoder, and a character adapter (BiLSTM + CTC head,
        which only hears), frozen and in eval mode. The token adapter maps speech into the LLM's space
        and stays trainable."""
        self.train_encoder = False
        self.encoder.requires_grad_(False)
        if isinstance(self.adapter, CharAdapter):
            self.adapter.requires_grad_(False)
        self.train(self.training)

    # ------------------------------------------------------------------ pieces

    def encode_speech(self, input_features: Tensor, audio_lengths: Tensor) -> AdapterOutput:
        """Log-mel (B, mels, 2·P) + valid encoder frames (B,) → adapter output."""
        dtype = next(self.encoder.parameters()).dtype
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            enc = run_encoder(self.encoder, input_features.to(dtype), audio_lengths,
                              trim=self.trim_audio_window)  # (B, T, C)
        embed = self.llm.get_input_embeddings().weight if self.adapter.ctc_embed else None
        return self.adapter(enc, audio_lengths, embed)

    def _hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, AdapterOutput]:
        """Teacher-forced last-layer states of the spliced sequence, speech frame counts, adapter output."""
        decoder, _ = decoder_and_head(self.llm)
        speech = self.encode_speech(batch["input_features"], batch["audio_lengths"])
        text = self.llm.get_input_embeddings()(batch["input_ids"])  # (B, L, H)
        x, mask = splice(text, batch["attention_mask"], batch["audio_pos"], speech.frames, speech.mask)
        out = decoder(inputs_embeds=x, attention_mask=mask.long(), use_cache=False)
        h = out.last_hidden_state  # (B, L', H)
        return h, speech.mask.sum(1), speech

    def _targets(self, batch: dict[str, Tensor], h: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """States predicting each label token (B, A, H), the tokens (B, A) and their mask (B, A)."""
        labelled = batch["labels"] != IGNORE  # (B, L) one contiguous block at the end of the text
        count = labelled.sum(1)  # (B,)
        start = labelled.float().argmax(1)  # (B,) first label position in input_ids
        t = torch.arange(int(count.max()), device=h.device)[None, :]  # (1, A)
        valid = t < count[:, None]  # (B, A)
        text_idx = torch.where(valid, start[:, None] + t, 0)  # (B, A) index into input_ids
        # Token at text index j > audio_pos sits at j - 1 + n after the splice; its predictor one before.
        pos = torch.where(valid, text_idx + n[:, None] - 2, 0)  # (B, A)
        hidden = h.gather(1, pos[:, :, None].expand(-1, -1, h.shape[-1]))  # (B, A, H)
        tokens = batch["labels"].gather(1, text_idx)  # (B, A)
        return hidden, tokens, valid

    def losses(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Stage-I loss dict, plus answer-text hidden states (B, A', H) and their mask (B, A')."""
        h, n, speech = self._hidden(batch)
        hidden, tokens, valid = self._targets(batch, h, n)
        _, head = decoder_and_head(self.llm)
        logits = head(hidden[valid])  # (N, V) only at label positions
        ce = F.cross_entropy(logits.float(), tokens[valid])
        ctc = ctc_loss(speech, batch["ctc_targets"], batch["ctc_lengths"], self.adapter.blank_id)
        out = {"loss": ce + self.ctc_weight * ctc, "ce": ce.detach(), "ctc": ctc.detach(),
               "num_tokens": valid.sum().detach()}
        a = int(batch["answer_lengths"].max())
        amask = torch.arange(a, device=h.device)[None, :] < batch["answer_lengths"][:, None]  # (B, A')
        return out, hidden[:, :a], amask

    def forward(self, **batch: Tensor) -> dict[str, Tensor]:
        """Losses of one collated stage-I batch: loss, ce, ctc, num_tokens (answer + end-of-turn tokens)."""
        return self.losses(batch)[0]

    def answer_hidden_states(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced states (B, A, H) predicting each answer-text token (no end-of-turn), mask (B, A)."""
        h, n, _ = self._hidden(batch)
        hidden, _, _ = self._targets(batch, h, n)
        a = int(batch["answer_lengths"].max())
        mask = torch.arange(a, device=h.device)[None, :] < batch["answer_lengths"][:, None]  # (B, A)
        return hidden[:, :a], mask

    def lm_head(self) -> nn.Module:
        """The LLM's output projection (H → vocab)."""
        return decoder_and_head(self.llm)[1]

    # ------------------------------------------------------------------ inference

    def audio_features(self, audio: np.ndarray) -> tuple[Tensor, Tensor]:
        """Log-mel (1, mels, 2·P) and valid encoder frames (1,) of one 16 kHz clip, on the model's device."""
        dev = next(self.parameters()).device
        feats = log_mel(self.feature_extractor, [audio]).to(dev)
        n = torch.tensor([min(len(audio), self.max_samples)], device=dev)
        return feats, encoder_frames(n, self.max_frames)

    @torch.no_grad()
    def transcribe(self, audio: np.ndarray) -> str:
        """What the adapter's CTC head hears in one clip: the transcript the LLM reads (character adapter:
        greedy or the lexicon decoder's, as the preset says), else greedy (argmax, repeats merged, blanks
        dropped) over the LLM's tokens."""
        feats, lengths = self.audio_features(audio)
        out = self.encode_speech(feats, lengths)
        if isinstance(self.adapter, CharAdapter):
            return self.adapter.transcripts(out.ctc_log_probs, out.ctc_lengths)[0]
        best = out.ctc_log_probs[0, : int(out.ctc_lengths[0])].argmax(-1)  # (T',)
        return ctc_decode(self.adapter, self.chat, best.tolist())

    def prompt_embeddings(self, audio: np.ndarray) -> Tensor:
        """(1, P', H) embeddings of the chat prompt with the speech frames spliced in."""
        feats, lengths = self.audio_features(audio)
        speech = self.encode_speech(feats, lengths)
        ids = torch.tensor([self.chat.prompt_ids], device=feats.device)  # (1, P)
        text = self.llm.get_input_embeddings()(ids)  # (1, P, H)
        pos = torch.tensor([self.chat.audio_pos], device=feats.device)
        x, _ = splice(text, torch.ones_like(ids), pos, speech.frames, speech.mask)  # (1, P', H)
        return x

    @torch.no_grad()
    def stream(
        self,
        audio: np.ndarray,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[tuple[int, Tensor]]:
        """Yield (token id, last-layer state (H,) that predicted it) step by step, with a KV cache."""
        decoder, head = decoder_and_head(self.llm)
        embed = self.llm.get_input_embeddings()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out = decoder(inputs_embeds=self.prompt_embeddings(audio), use_cache=True)
        for _ in range(max_new_tokens):
            h = out.last_hidden_state[0, -1]  # (H,)
            token = _pick(head(h).float(), do_sample, temperature, top_p, gen)
            if token in self.chat.stop_ids:
                return
            yield token, h
            step = embed(torch.tensor([[token]], device=h.device))  # (1, 1, H)
            out = decoder(inputs_embeds=step, past_key_values=out.past_key_values, use_cache=True)

    def generate(
        self,
        audio: np.ndarray,
        max_new_tokens: int = 256,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """Answer text for one 16 kHz clip (greedy unless do_sample=True)."""
        was_training = self.training
        self.eval()
        sampling = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p, "seed": seed}
        try:
            ids = [tok for tok, _ in self.stream(audio, max_new_tokens=max_new_tokens, **sampling)]
        finally:
            self.train(was_training)
        return self.chat.decode(ids)


def _pick(
    logits: Tensor, do_sample: bool, temperature: float, top_p: float, gen: torch.Generator | None
) -> int:
    """Greedy or temperature/top-p sampled token from logits (V,)."""
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits.cpu() / max(temperature, 1e-5), dim=-1)  # (V,)
    sorted_p, order = probs.sort(descending=True)  # (V,)
    keep = sorted_p.cumsum(0) - sorted_p < top_p  # (V,) smallest set reaching top_p (first always kept)
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
    return int(order[choice])


def external_keys(model: nn.Module, preset: ModelPreset, encoder_loaded: bool) -> frozenset[str]:
    """State-dict keys of frozen weights that a checkpoint references by path instead of saving."""
    if preset.self_contained_checkpoints:
        return frozenset()
    keys = model.state_dict().keys()
    out = set()
    if preset.lora_rank > 0:
        out |= {k for k in keys if k.startswith("llm.") and "lora_" not in k}
    if encoder_loaded and not preset.train_encoder:
        out |= {k for k in keys if k.startswith("encoder.")}
    return frozenset(out)


def build_s2t(preset: ModelPreset, llm_dir: Path, *, load_weights: bool = True, seed: int = 0,
              encoder_init: nn.Module | None = None, dtype: str = "float32") -> S2TModel:
    """Stage-I model from the base LLM directory (load_weights=False: a random skeleton to load into);
    `encoder_init`: a loaded encoder-pretraining model whose encoder and adapter weights it starts from;
    `dtype`: what the LLM's weights are loaded in (LoRA and a fully trained LLM are made float32 later, by
    the trainer)."""
    tokenizer = load_tokenizer(llm_dir)
    chat = ChatFormat(tokenizer, preset.audio_token, preset.system_prompt)
    llm = load_llm(llm_dir, load_weights=load_weights, dtype=dtype)
    encoder = build_encoder(preset, load_weights=load_weights, seed=seed)
    adapter = build_adapter(preset, encoder.config.d_model, llm.config.hidden_size,
                            llm.get_input_embeddings().num_embeddings, chat, seed=seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        llm = apply_lora(llm, preset)
    if encoder_init is not None:
        from models.encoder_ctc import load_pretrained_speech

        load_pretrained_speech(encoder_init, encoder, adapter, tokenizer)
    model = S2TModel(
        encoder, adapter, llm, chat, build_feature_extractor(encoder),
        ctc_weight=preset.ctc_weight, train_encoder=preset.train_encoder,
        trim_audio_window=preset.trim_audio_window,
    )
    encoder_loaded = bool(preset.encoder_path) and load_weights
    model.build_info = BuildInfo("s2t", preset, str(llm_dir), external_keys(model, preset, encoder_loaded))
    return model
