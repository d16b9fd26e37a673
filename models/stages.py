"""Training stages by name: what each one builds, how it batches and measures examples, which losses it
logs and which inputs it needs. Every stage dispatcher (the model factory, models/io.py, the collators,
the training loop, the train flow, the config's `stage` choices) reads this registry.

Adding a stage is a model file and one `StageSpec` here (or `register_stage` from a plugin or a test).
This module imports no torch: the specs hold the small functions below, which import their model module
only when called, so the config and the CLI can list the stages cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from models.holdout import holdout_ids

if TYPE_CHECKING:
    from torch import nn

    from models.presets import ModelPreset

NEEDS = {
    "base_llm": "the preset's base LLM directory, built or reused by the driver",
    "num_units": "K and identity (sha256, features, frame rate) of the corpus codebook, from its manifest",
    "echo_labels": "an echo pseudo-label directory (--echo-labels)",
    "s2t": "a stage-I checkpoint (--s2t), loaded and handed to the builder",
    "t2c": "a stage-II checkpoint (--t2c), loaded and handed to the builder",
}
"""Inputs a stage may require; the driver checks and prepares each one the stage lists."""

OPTIONS = {
    "unit_vocab_size": "--unit-vocab-size N: a BPE unit language of N unit-words trained on the corpus",
    "encoder_init": "--encoder-init DIR: start the speech encoder and adapter from an encoder checkpoint",
}
"""Optional inputs a stage may accept; any other stage refuses them."""


@dataclass(frozen=True)
class StageInputs:
    """What the driver hands a stage's builder besides the preset and the base LLM directory."""

    num_units: int | None = None
    """K of the corpus codebook (stages that need "num_units")."""
    unit_language: str | None = None
    """Tokenizer JSON of a unit language (stages with the "unit_vocab_size" option), or None."""
    s2t: Any = None
    """The loaded stage-I model (stages that need "s2t")."""
    t2c: Any = None
    """The loaded stage-II model (stages that need "t2c")."""
    seed: int = 0
    """Seed of the fresh weights."""
    codebook: dict[str, Any] | None = None
    """Identity of the corpus codebook (num_units, sha256, features, frame_rate), beside num_units."""
    encoder_init: Any = None
    """The loaded encoder-pretraining model (stages with the "encoder_init" option), or None."""
    dtype: str = "float32"
    """dtype the builder loads pretrained weights in ("float32" or "bfloat16"; the trainer then casts every
    frozen weight to it and every trained one to float32)."""


@dataclass(frozen=True)
class StageSpec:
    """One training stage: a name and the functions every dispatcher calls for it."""

    name: str
    """What `--stage`, checkpoints' config.json and the summary call it."""
    description: str
    """One line for help texts and docs."""
    build: Callable[[ModelPreset, Path, StageInputs], nn.Module]
    """A fresh trainable model from (preset, base LLM directory, inputs); stamps `model.build_info`."""
    rebuild: Callable[[ModelPreset, Path, dict[str, Any], bool], nn.Module]
    """The skeleton a checkpoint loads into: (preset, LLM directory, BuildInfo.extra, load_weights)."""
    collate: Callable[[list[dict[str, Any]], Any], dict[str, Any]]
    """(rows, model) → the batch: keyword arguments of `model.forward`."""
    example_length: Callable[[dict[str, Any]], int]
    """≈ tokens of a row, for length bucketing."""
    loss_keys: tuple[str, ...] = ("loss",)
    """Metrics the train flow plots: the loss and the parts `model.forward` returns."""
    needs: frozenset[str] = frozenset()
    """Required inputs, from NEEDS."""
    options: frozenset[str] = frozenset()
    """Optional inputs it accepts, from OPTIONS."""
    save: Callable[[nn.Module, Path], Any] | None = None
    """Saver of the final model; None: models.io.save_model (which load_model reads back)."""
    holdout: Callable[[Iterable[str]], frozenset[str]] | None = None
    """Corpus row ids → the ids kept out of training (checked after it); None: train on every row."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"stage name must be letters, digits, '-' or '_', got {self.name!r}")
        for what, given, known in (("needs", self.needs, NEEDS), ("options", self.options, OPTIONS)):
            if not set(given) <= set(known):
                raise ConfigError(f"stage {self.name}: unknown {what} {sorted(set(given) - set(known))}; "
                                  f"known: {sorted(known)}")
        if "loss" not in self.loss_keys:
            raise ConfigError(f"stage {self.name}: loss_keys must include 'loss', got {self.loss_keys}")


# ---- the EchoX stages: small functions that import their model module when called ----------------------

def _build_s2t(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """Stage I from the base LLM."""
    from models.s2t import build_s2t

    return build_s2t(preset, llm_dir, seed=inputs.seed, encoder_init=inputs.encoder_init, dtype=inputs.dtype)


def _rebuild_s2t(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any], load_weights: bool) -> nn.Module:
    """Stage-I skeleton of a checkpoint."""
    from models.s2t import build_s2t

    return build_s2t(preset, llm_dir, load_weights=load_weights)


def _build_t2c(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """Stage II over the corpus's K units (or a unit language's unit-words)."""
    from models.t2c import build_t2c

    if not inputs.num_units:
        raise ConfigError("stage t2c needs num_units (from the corpus manifest)")
    model = build_t2c(preset, llm_dir, inputs.num_units, unit_language=inputs.unit_language, seed=inputs.seed)
    if inputs.codebook:  # recorded (and inherited by echo) so a vocoder of another codebook is refused
        info = model.build_info
        model.build_info = dataclasses.replace(info, extra={**info.extra, "codebook": inputs.codebook})
    return model


def _rebuild_t2c(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any], load_weights: bool) -> nn.Module:
    """Stage-II skeleton of a checkpoint (K and the unit language ride in its extra)."""
    from models.t2c import build_t2c

    return build_t2c(preset, llm_dir, int(extra["num_units"]), unit_language=extra.get("unit_language"),
                     load_weights=load_weights)


def _build_echo(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """Stage III from the loaded stage-I and stage-II models (the preset is theirs, but for this stage's
    echo_train_hearing)."""
    from models.echo import build_echo

    return build_echo(inputs.s2t, inputs.t2c, seed=inputs.seed, train_hearing=preset.echo_train_hearing)


def _rebuild_echo(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any], load_weights: bool) -> nn.Module:
    """Stage-III skeleton of a checkpoint: stage-I and stage-II skeletons joined."""
    from models.echo import build_echo

    t2c = _rebuild_t2c(preset, llm_dir, extra, load_weights)  # T2C first: the order io.py always used
    return build_echo(_rebuild_s2t(preset, llm_dir, extra, load_weights), t2c)  # type: ignore[arg-type]


def _build_echo_online(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """Stage III with online targets: the echo model plus a frozen copy of stage II as the teacher."""
    from models.echo import build_echo

    return build_echo(inputs.s2t, inputs.t2c, seed=inputs.seed, online=True,
                      train_hearing=preset.echo_train_hearing)


def _build_vocoder(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """The unit vocoder over the corpus codebook (K, frame rate and identity from its manifest)."""
    from models.vocoder import build_vocoder, vocoder_config

    codebook = dict(inputs.codebook or {})
    codebook.setdefault("num_units", inputs.num_units)
    return build_vocoder(preset, vocoder_config(preset, codebook), seed=inputs.seed)


def _rebuild_vocoder(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any],
                     load_weights: bool) -> nn.Module:
    """Vocoder skeleton of a checkpoint (its whole config rides in extra)."""
    from models.vocoder import build_vocoder, config_from_dict

    return build_vocoder(preset, config_from_dict(extra))


def _collate_vocoder(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """models.vocoder.collate_vocoder."""
    from models.vocoder import collate_vocoder

    return collate_vocoder(rows, model)


def _length_vocoder(row: dict[str, Any]) -> int:
    """models.vocoder.vocoder_length."""
    from models.vocoder import vocoder_length

    return vocoder_length(row)


def _build_encoder(preset: ModelPreset, llm_dir: Path, inputs: StageInputs) -> nn.Module:
    """Encoder pretraining: stage I's encoder and adapter, CTC over the base LLM's tokens or characters."""
    from models.encoder_ctc import build_encoder_ctc

    return build_encoder_ctc(preset, llm_dir, seed=inputs.seed)


def _rebuild_encoder(preset: ModelPreset, llm_dir: Path, extra: dict[str, Any],
                     load_weights: bool) -> nn.Module:
    """Encoder-pretraining skeleton of a checkpoint (the LLM's tokenizer and config only)."""
    from models.encoder_ctc import build_encoder_ctc

    return build_encoder_ctc(preset, llm_dir, load_weights=load_weights)


def _collate_encoder(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """models.encoder_ctc.collate_encoder."""
    from models.encoder_ctc import collate_encoder

    return collate_encoder(rows, model)


def _length_encoder(row: dict[str, Any]) -> int:
    """models.encoder_ctc.encoder_length."""
    from models.encoder_ctc import encoder_length

    return encoder_length(row)


def _collate_s2t(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """models.collate.collate_s2t."""
    from models.collate import collate_s2t

    return collate_s2t(rows, model)


def _collate_t2c(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """models.collate.collate_t2c."""
    from models.collate import collate_t2c

    return collate_t2c(rows, model)


def _collate_echo(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """models.collate.collate_echo."""
    from models.collate import collate_echo

    return collate_echo(rows, model)


def _collate_echo_online(rows: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """The stage-I batch of the echo model's S2T: online targets come from the step itself."""
    from models.collate import collate_s2t

    return collate_s2t(rows, model.s2t)


def _length_s2t(row: dict[str, Any]) -> int:
    """models.collate.s2t_length."""
    from models.collate import s2t_length

    return s2t_length(row)


def _length_t2c(row: dict[str, Any]) -> int:
    """models.collate.t2c_length."""
    from models.collate import t2c_length

    return t2c_length(row)


def _length_echo(row: dict[str, Any]) -> int:
    """models.collate.echo_length."""
    from models.collate import echo_length

    return echo_length(row)


S2T = StageSpec(
    name="s2t", description="stage I: speech → text (adapter + LoRA; CE on the answer + 0.3 · CTC)",
    build=_build_s2t, rebuild=_rebuild_s2t, collate=_collate_s2t, example_length=_length_s2t,
    loss_keys=("loss", "ce", "ctc"), needs=frozenset({"base_llm"}), options=frozenset({"encoder_init"}))
T2C = StageSpec(
    name="t2c", description="stage II: text → units (T2C decoder; CE on unit positions)",
    build=_build_t2c, rebuild=_rebuild_t2c, collate=_collate_t2c, example_length=_length_t2c,
    loss_keys=("loss",), needs=frozenset({"base_llm", "num_units"}), options=frozenset({"unit_vocab_size"}))
ECHO = StageSpec(
    name="echo", description="stage III: echo training (Echo decoder from T2C reads the S2T's states)",
    build=_build_echo, rebuild=_rebuild_echo, collate=_collate_echo, example_length=_length_echo,
    loss_keys=("loss", "s2t", "echo", "denoise"), needs=frozenset({"echo_labels", "s2t", "t2c"}))
# The same stage III as the paper trains it: its units are made in each step from the current S2T's Y′ by
# a frozen stage-II teacher, so they always describe the text the denoising target does. It trains on the
# corpus (no echo labels) and saves an ordinary "echo" checkpoint (the teacher is not part of it).
ECHO_ONLINE = StageSpec(
    name="echo-online", description="stage III with online echo targets (a frozen T2C makes each step's "
    "units from the current Y′)",
    build=_build_echo_online, rebuild=_rebuild_echo, collate=_collate_echo_online, example_length=_length_s2t,
    loss_keys=("loss", "s2t", "echo", "denoise"), needs=frozenset({"s2t", "t2c"}))

VOCODER = StageSpec(
    name="vocoder", description="unit vocoder: units → durations → log-mel (L1) → waveform (Griffin-Lim)",
    build=_build_vocoder, rebuild=_rebuild_vocoder, collate=_collate_vocoder, example_length=_length_vocoder,
    loss_keys=("loss", "mel", "duration"), needs=frozenset({"num_units"}), holdout=holdout_ids)

ENCODER = StageSpec(
    name="encoder",
    description="encoder pretraining: speech encoder + adapter, CTC over the LLM's tokens or characters",
    build=_build_encoder, rebuild=_rebuild_encoder, collate=_collate_encoder, example_length=_length_encoder,
    loss_keys=("loss",), needs=frozenset({"base_llm"}), holdout=holdout_ids)

_STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (S2T, T2C, ECHO, ECHO_ONLINE, VOCODER, ENCODER)}


# ---- the registry ---------------------------------------------------------------------------------------

def register_stage(spec: StageSpec) -> StageSpec:
    """Add a stage (registering the same spec again is a no-op); returns it."""
    known = _STAGES.get(spec.name)
    if known is not None and known != spec:
        raise ConfigError(f"stage {spec.name!r} is already registered")
    _STAGES[spec.name] = spec
    return spec


def get_stage(name: str) -> StageSpec:
    """The stage called `name`; ConfigError naming the known stages."""
    spec = _STAGES.get(name)
    if spec is None:
        raise ConfigError(f"unknown stage {name!r}; expected one of: {', '.join(stage_names())}")
    return spec


def stage_names() -> tuple[str, ...]:
    """Names of the registered stages, in registration order."""
    return tuple(_STAGES)


def stages_with(need_or_option: str) -> tuple[str, ...]:
    """Names of the stages that need or accept `need_or_option` (for error messages)."""
    return tuple(s.name for s in _STAGES.values() if need_or_option in s.needs | s.options)
