"""Driver-side preparation of a training stage: preset, base LLM, unit count, unit language, model factory."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import ConfigError, InputError


def corpus_texts(corpus_dir: Path) -> list[str]:
    """Spoken question and answer texts of a corpus (what the tiny preset's tokenizer is trained on)."""
    from tasks.data import load_table

    table = load_table(corpus_dir, verify=False).select(["question_text", "answer_text"])
    return [t for col in table.columns for t in col.to_pylist()]


def corpus_num_units(corpus_dir: Path) -> int:
    """K of the corpus's codebook, from its manifest."""
    from tasks.shards import finished_manifest

    if not Path(corpus_dir).is_dir():
        raise InputError(f"{corpus_dir} is not a built corpus (no such directory); run echox build-corpus")
    return int(finished_manifest(Path(corpus_dir))["codebook"]["num_units"])


def corpus_codebook(corpus_dir: Path) -> dict[str, Any]:
    """Identity of the corpus's codebook: num_units, sha256, features and their frame_rate (from the
    manifest, and the frame rate from the codebook file's feature config)."""
    from tasks.shards import finished_manifest
    from tasks.units import Codebook

    record = finished_manifest(Path(corpus_dir))["codebook"]
    identity = {k: record[k] for k in ("num_units", "sha256", "features") if k in record}
    path = Path(corpus_dir) / str(record.get("path", "codebook.npz"))
    if path.is_file():
        identity["frame_rate"] = float(Codebook.load(path).feature_config.get("frame_rate", 100.0))
    return identity


def check_unit_vocab_size(stage: str, unit_vocab_size: int, num_units: int | None,
                          init_checkpoint: str | None = None) -> None:
    """ConfigError unless a unit vocabulary (0 = none) fits: a stage that accepts one, a fresh model, more
    than K words."""
    from models.stages import get_stage, stages_with

    if not unit_vocab_size:
        return
    if "unit_vocab_size" not in get_stage(stage).options or num_units is None:
        raise ConfigError(f"unit_vocab_size (--unit-vocab-size) applies to stage "
                          f"{' or '.join(stages_with('unit_vocab_size'))} only, not {stage}")
    if init_checkpoint:
        raise ConfigError("unit_vocab_size trains a new unit language; a T2C started from --init-checkpoint "
                          "keeps the one it was trained with")
    if unit_vocab_size <= num_units:
        raise ConfigError(f"unit_vocab_size must exceed the corpus's K={num_units} units (the unit language "
                          f"holds the K units plus merged unit-words), got {unit_vocab_size}; 0 = raw units")


def corpus_unit_language(corpus_dir: Path, vocab_size: int, num_units: int) -> str:
    """Tokenizer JSON of a BPE unit language of `vocab_size` words over the corpus's answer units."""
    from tasks.data import load_table
    from tasks.units import train_unit_bpe

    units = load_table(corpus_dir, verify=False).column("answer_units").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unit_language.json"
        train_unit_bpe(units, vocab_size, path, num_units=num_units)
        return path.read_text()


def checkpoint_arg(path: str | None) -> str | None:
    """An absolute checkpoint path (Ray Train workers run in another directory); a run dir's model/ too."""
    if not path:
        return None
    p = Path(path).resolve()
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        p = p / "model"
    return str(p)


def prepare_stage(stage: str, preset_name: str, overrides: dict[str, Any], corpus_dir: Path,
                  cache_dir: Path, *, seed: int = 0, s2t: str | None = None, t2c: str | None = None,
                  init_checkpoint: str | None = None, unit_vocab_size: int = 0,
                  encoder_init: str | None = None, load_dtype: str = "float32") -> Callable[[], nn.Module]:
    """A picklable factory of the stage's model; builds (or reuses) the base LLM directory first
    (`load_dtype`: what the base LLM's weights are loaded in, "float32" or "bfloat16").

    Stage t2c with `unit_vocab_size` > K trains a unit language on the corpus here, once, so every rank
    (and a resumed run: the training is deterministic) builds the same unit-word vocabulary."""
    from models.factory import build_for_stage
    from models.llm import prepare_base_llm
    from models.presets import preset_to_dict, resolve_preset
    from models.stages import get_stage

    for name, path in (("--s2t", s2t), ("--t2c", t2c), ("checkpoint", init_checkpoint),
                       ("--encoder-init", encoder_init)):
        if path and not Path(path).exists():
            raise InputError(f"{name} checkpoint not found: {path}")
    needs = get_stage(stage).needs
    units = corpus_num_units(corpus_dir) if "num_units" in needs else None
    codebook = corpus_codebook(corpus_dir) if units else None
    check_unit_vocab_size(stage, unit_vocab_size, units, init_checkpoint)
    preset = resolve_preset(preset_name, **overrides)
    check_encoder_preset(stage, preset)
    texts = corpus_texts(corpus_dir) if preset.llm == "random" and "base_llm" in needs else None
    llm_dir = "" if "base_llm" not in needs else str(
        prepare_base_llm(preset, corpus_texts=texts, cache_dir=cache_dir, seed=seed))
    language = corpus_unit_language(corpus_dir, unit_vocab_size, units) if unit_vocab_size and units else None
    return functools.partial(build_for_stage, stage, preset_to_dict(preset), llm_dir, num_units=units,
                             s2t_checkpoint=checkpoint_arg(s2t), t2c_checkpoint=checkpoint_arg(t2c),
                             init_checkpoint=checkpoint_arg(init_checkpoint), unit_language=language,
                             codebook=codebook, encoder_init=checkpoint_arg(encoder_init), seed=seed,
                             dtype=load_dtype)


def check_encoder_preset(stage: str, preset: Any) -> None:
    """ConfigError for encoder pretraining with a random-init LLM: its tokenizer is trained on the corpus
    at hand, so the pretraining corpus would give the encoder another vocabulary than stage I's."""
    if stage == "encoder" and preset.llm == "random":
        raise ConfigError(f"stage encoder needs a fixed LLM tokenizer (CTC over its tokens); preset "
                          f"{preset.name!r} trains one from the corpus: use llm smollm2 or path")


def check_train_inputs(cfg: Any) -> None:
    """What a `TrainFlowConfig`'s inputs alone show wrong, in the driver before Prefect or Ray start."""
    from models.presets import resolve_preset
    from models.stages import get_stage

    check_encoder_preset(cfg.stage, resolve_preset(cfg.preset, **cfg.preset_overrides))
    needs = get_stage(cfg.stage).needs
    units = corpus_num_units(Path(cfg.corpus))  # a finished corpus build, not a failed one
    check_stage_needs(cfg.stage, needs, cfg)
    for name, path in (("--echo-labels", cfg.echo_labels), ("--s2t", cfg.s2t), ("--t2c", cfg.t2c),
                       ("--init-checkpoint", cfg.init_checkpoint), ("--encoder-init", cfg.encoder_init)):
        if path and not Path(path).exists():
            raise InputError(f"{name} not found: {path}")
    check_unit_vocab_size(cfg.stage, cfg.unit_vocab_size, units if "num_units" in needs else None,
                          cfg.init_checkpoint)


def check_stage_needs(stage: str, needs: frozenset[str], cfg: Any) -> None:
    """ConfigError when the flow config lacks a path the stage needs (echo labels, stage checkpoints)."""
    if "echo_labels" in needs and not cfg.echo_labels:
        raise ConfigError(f"stage {stage} needs --echo-labels (run echox echo-labels first)")
    wanted = [name for name in ("s2t", "t2c") if name in needs]
    if not all(getattr(cfg, name) for name in wanted):
        raise ConfigError(f"stage {stage} needs {' and '.join('--' + n for n in wanted)} "
                          "(the stage I and II checkpoints)")
