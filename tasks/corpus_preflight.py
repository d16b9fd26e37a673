"""Driver-side checks of a corpus build: what the workers will need, verified before Ray starts."""

from __future__ import annotations

from pathlib import Path

from echox.config import BuildCorpusConfig
from echox.errors import CheckpointError, ConfigError, InputError, RecordRejected
from tasks.shards import file_sha256


def preflight(cfg: BuildCorpusConfig) -> None:
    """Check in the driver what the workers will need, so a user mistake fails before Ray starts."""
    check_tts(cfg)
    check_features(cfg)
    if cfg.codebook:
        check_codebook(cfg)
    elif cfg.num_units > cfg.kmeans_max_frames:
        raise ConfigError(f"num_units (K={cfg.num_units}) exceeds kmeans_max_frames "
                          f"({cfg.kmeans_max_frames}): k-means cannot fit more clusters than frames")


def check_tts(cfg: BuildCorpusConfig) -> None:
    """The TTS engine loads and speaks every voice in --voices (ConfigError naming the bad one)."""
    from tasks.tts import make_tts

    tts = make_tts(cfg.tts, threads=1) if cfg.tts == "piper" else make_tts(cfg.tts)
    for voice in cfg.voices or []:
        try:
            tts.synthesize("test", voice)
        except RecordRejected as e:
            raise ConfigError(f"--voices {voice!r}: {e.reason}") from None


def check_features(cfg: BuildCorpusConfig) -> None:
    """A wav2vec2/HuBERT build has an existing checkpoint file and a layer its architecture has."""
    if cfg.units != "wav2vec2":
        return
    if not cfg.feature_checkpoint:
        raise ConfigError("--units wav2vec2 needs a checkpoint path (--feature-checkpoint)")
    if not Path(cfg.feature_checkpoint).is_file():
        raise CheckpointError(f"feature checkpoint not found: {cfg.feature_checkpoint}")
    from tasks.features import wav2vec2_config

    layers = wav2vec2_config(cfg.feature_arch).encoder_config.num_encoder_layers
    if not 1 <= cfg.feature_layer <= layers:
        raise ConfigError(f"--feature-layer must be in 1..{layers} for the {cfg.feature_arch} "
                          f"architecture, got {cfg.feature_layer}")


def expected_features(cfg: BuildCorpusConfig) -> dict:
    """The parts of the feature config a codebook must match, computed without loading a model."""
    if cfg.units == "mfcc":
        from tasks.features import MFCCFeatures

        return MFCCFeatures().config()
    from tasks.features import wav2vec2_config

    return {"name": "wav2vec2", "layer": cfg.feature_layer,
            "dim": int(wav2vec2_config(cfg.feature_arch).encoder_config.model_dim),
            "checkpoint_sha256": file_sha256(Path(str(cfg.feature_checkpoint)))}


def check_codebook(cfg: BuildCorpusConfig) -> None:
    """--codebook loads, has --num-units centroids and was fitted on this build's features."""
    from tasks.units import Codebook

    book = Codebook.load(Path(str(cfg.codebook)))
    want = expected_features(cfg)
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
