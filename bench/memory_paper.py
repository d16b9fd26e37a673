"""The paper presets' training memory, computed: no weights here, so parameter counts come from the real
modules built on the meta device at the public shapes below, and activations from per-token bytes measured
on ONE real-size LLM layer (with the preset's LoRA) and one real-size speech adapter under CPU bf16
autocast, times layers, batch and the assumed lengths, plus the vocabulary-sized tensors by formula (the
float32 log-softmax of the CTC head over every adapter frame and of the LM head over the answer tokens,
which the tiny measurement matches exactly). The frozen Whisper encoder runs without grad: it keeps nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.memory_measure import Ledger, fsdp_groups, param_bytes, saved_bytes

# Sequence lengths assumed for the paper presets (no corpus here): a 10 s spoken question gives 250 adapter
# frames at 25 Hz, all kept by the shrink (its upper bound); ~40 chat-template tokens; 64 answer tokens.
QUESTION_S, PROMPT_TOKENS, ANSWER_TOKENS = 10, 40, 64
# The public shapes of the paper's models (their HF config.json), for the meta-device builds.
LLAMA = {
    "llama-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                 "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
                 "tie_word_embeddings": True},  # Llama-3.2-3B-Instruct
    "llama-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                 "tie_word_embeddings": False},  # Llama-3.1-8B-Instruct
}
WHISPER_LARGE_V3 = {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                    "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500,
                    "decoder_layers": 1, "decoder_attention_heads": 20, "decoder_ffn_dim": 5120}



def paper_params(name: str) -> dict[str, int]:
    """Parameter counts of the preset's S2T at the paper shapes, from the real modules on the meta device:
    frozen (base LLM + Whisper encoder), trained (LoRA + adapter), LoRA, and what FSDP keeps whole during a
    step (the root group: embeddings, heads, adapter, encoder stem; the largest LLM block)."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from models.llm import apply_lora
    from models.presets import resolve_preset
    from models.speech import SpeechAdapter

    preset, shape = resolve_preset(name), LLAMA[name]
    with torch.device("meta"):
        llm = apply_lora(LlamaForCausalLM(LlamaConfig(**shape)), preset)
        encoder = WhisperEncoder(WhisperConfig(**WHISPER_LARGE_V3)).requires_grad_(False)
        adapter = SpeechAdapter(WHISPER_LARGE_V3["d_model"], shape["hidden_size"], shape["vocab_size"], 0,
                                num_heads=preset.adapter_heads, lookback=preset.adapter_lookback)
    model = nn.ModuleDict({"llm": llm, "encoder": encoder, "adapter": adapter})
    return {**param_bytes(model), **fsdp_groups(model)}


def _bf16_step_bytes(module: nn.Module, run: Any, regions: dict[str, list[nn.Module]], vocab: int) -> Ledger:
    """The ledger of one forward of `run()` under CPU bf16 autocast (what CUDA's keeps, near enough)."""
    with saved_bytes(module, vocab, regions) as ledger, torch.autocast("cpu", dtype=torch.bfloat16):
        run()
    return ledger


def _per_item(ledger_of: Any, lengths: tuple[int, int, int] = (32, 96, 160)) -> dict[str, float]:
    """Bytes per item (token, frame) of each region: the linear term of a quadratic through three lengths.
    Left out: what does not grow with the length (bf16 autocast copies of the trained weights), and the
    length² terms of CPU attention (probabilities, dropout masks), which CUDA's fused attention keeps none of.
    """
    n1, n2, n3 = lengths
    ledgers = [ledger_of(n).bytes for n in lengths]
    out = {}
    for region in set().union(*ledgers):
        b1, b2, b3 = (ledger.get(region, 0) for ledger in ledgers)
        s12, s23 = (b2 - b1) / (n2 - n1), (b3 - b2) / (n3 - n2)
        quadratic = (s23 - s12) / (n3 - n1)
        out[region] = s12 - quadratic * (n1 + n2)
    return out


def layer_bytes_per_token(name: str) -> dict[str, float]:
    """Bytes saved per token by ONE real-size LLM layer with the preset's LoRA (frozen weights bf16), without
    and with gradient checkpointing (then: what the checkpoint keeps), and by the LLM's final norm."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.llm import apply_lora
    from models.presets import resolve_preset
    from tasks.train_utils import cast_for_training, enable_gradient_checkpointing

    shape = {**LLAMA[name], "num_hidden_layers": 1, "vocab_size": 256, "tie_word_embeddings": False}
    out = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        llm = cast_for_training(apply_lora(LlamaForCausalLM(LlamaConfig(**shape)), resolve_preset(name)),
                                "bfloat16").train()
        if checkpointing:
            enable_gradient_checkpointing(llm)
        body = llm.get_base_model().model

        def ledger_of(tokens: int, body: nn.Module = body, llm: nn.Module = llm) -> Ledger:
            x = torch.randn(1, tokens, shape["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
            return _bf16_step_bytes(llm, lambda: body(inputs_embeds=x).last_hidden_state.sum(),
                                    {"llm": list(body.layers)}, vocab=256)

        slope = _per_item(ledger_of)
        inside, outside = sum(v for k, v in slope.items() if k.startswith("llm/")), slope.get("other/rest", 0)
        if checkpointing:  # the checkpoint keeps the block's inputs outside the block's own hooks
            out["layer_gc"] = inside + outside - out["outside"]
        else:
            out["layer"], out["outside"] = inside, outside
        del llm, body
    return out


def adapter_bytes_per_frame(name: str) -> float:
    """Bytes saved per 25 Hz frame by the real-size speech adapter, vocabulary-sized tensors left out (they
    are computed by formula): its Transformer layer, shrink and look-back attention."""
    from models.presets import resolve_preset
    from models.speech import SpeechAdapter
    from tasks.train_utils import cast_for_training

    preset, shape = resolve_preset(name), LLAMA[name]
    torch.manual_seed(0)
    adapter = SpeechAdapter(WHISPER_LARGE_V3["d_model"], shape["hidden_size"], 256, 0,
                            num_heads=preset.adapter_heads, lookback=preset.adapter_lookback)
    adapter = cast_for_training(adapter, "bfloat16").train()

    def ledger_of(frames: int) -> Ledger:
        enc = torch.randn(1, 2 * frames, WHISPER_LARGE_V3["d_model"], dtype=torch.bfloat16)  # frozen encoder
        lengths = torch.tensor([2 * frames])
        return _bf16_step_bytes(adapter, lambda: adapter(enc, lengths).frames.sum(), {}, vocab=256)

    return _per_item(ledger_of).get("other/rest", 0.0)


def paper_estimate(name: str, batch: int) -> dict[str, Any]:
    """Bytes per worker of the paper preset's S2T step at `batch` rows of the assumed lengths."""
    params = paper_params(name)
    per_token = layer_bytes_per_token(name)
    frame = adapter_bytes_per_frame(name)
    layers, vocab = LLAMA[name]["num_hidden_layers"], LLAMA[name]["vocab_size"]
    frames = QUESTION_S * 25
    seq, answer = PROMPT_TOKENS + frames + ANSWER_TOKENS, batch * (ANSWER_TOKENS + 1)  # + end of turn
    common = (batch * seq * per_token["outside"] + batch * frames * frame
              + 4 * vocab * (batch * frames + answer))
    block = batch * seq * per_token["layer"]
    return {"params": params, "per_token": per_token, "adapter_frame": frame,
            "shapes": {"batch": batch, "seq": seq, "adapter_frames": frames,
                       "answer_tokens": ANSWER_TOKENS + 1,
                       "vocab": vocab, "layers": layers, "hidden": LLAMA[name]["hidden_size"]},
            "activations": layers * block + common,
            # with checkpointing the blocks keep their inputs, and backward recomputes one block at a time
            "activations_gc": layers * batch * seq * per_token["layer_gc"] + block + common}


