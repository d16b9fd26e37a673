"""Driver-side checks of a corpus build: what the workers will need, verified before Ray starts.

Backend-specific checks live in each backend's `check` (tasks/backends/); this module only runs them.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError, InputError
from tasks.backends import FEATURE_EXTRACTORS, RECOGNISERS, TTS_ENGINES, Choice
from tasks.configs import BuildCorpusConfig


def preflight(cfg: BuildCorpusConfig) -> None:
    """Check in the driver what the workers will need, so a user mistake fails before Ray starts."""
    check_tts(cfg.tts_choice(), cfg.voices)
    check_features(cfg.feature_choice())
    if (asr := cfg.asr_choice()) is not None:
        RECOGNISERS.get(asr.name).check(asr.options)  # the recogniser of --asr-check is installed
    if cfg.codebook:
        check_codebook(cfg)
    elif cfg.num_units > cfg.kmeans_max_frames:
        raise ConfigError(f"num_units (K={cfg.num_units}) exceeds kmeans_max_frames "
                          f"({cfg.kmeans_max_frames}): k-means cannot fit more clusters than frames")


def check_tts(choice: Choice, voices: list[str] | None) -> None:
    """The TTS engine passes its check, loads, and speaks every voice in --voices (ConfigError if not)."""
    from tasks.tts import check_voices

    backend = TTS_ENGINES.get(choice.name)
    backend.check(choice.options)
    check_voices(backend.create(choice.options, 1), voices)


def check_features(choice: Choice) -> None:
    """The feature extractor's own check (a wav2vec2 build: its checkpoint exists, its layer fits)."""
    FEATURE_EXTRACTORS.get(choice.name).check(choice.options)


def expected_features(choice: Choice) -> dict:
    """The parts of the feature config a codebook must match, computed without loading a model."""
    return FEATURE_EXTRACTORS.get(choice.name).codebook_key(choice.options)


def check_codebook(cfg: BuildCorpusConfig) -> None:
    """--codebook loads, has --num-units centroids and was fitted on this build's features."""
    from tasks.units import Codebook

    book = Codebook.load(Path(str(cfg.codebook)))
    want = expected_features(cfg.feature_choice())
    if book.dim != want["dim"]:
        raise InputError(f"codebook {cfg.codebook} has dimension {book.dim}, but this build's "
                         f"{want['name']} features have dimension {want['dim']}")
    got = {k: book.feature_config.get(k) for k in want}
    if got != want:
        raise InputError(f"codebook {cfg.codebook} was fitted on features {book.feature_config}, "
                         f"but this build extracts {want}")
    if book.num_units != cfg.num_units:
        raise ConfigError(f"codebook {cfg.codebook} has K={book.num_units} units but --num-units is "
                          f"{cfg.num_units}; pass --num-units {book.num_units}")
