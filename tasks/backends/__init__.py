"""The backend registries and the explicit list of built-in backends (one file per backend).

Adding a backend: write tasks/backends/<kind>_<name>.py with its working class, an options model and
a declaration `BACKEND` (name, options, flat_fields, check, create, identity), then add it to the
tuple below. Importing this package imports no torch, onnxruntime or fairseq2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import CheckpointError
from tasks.backends import asr_pocketsphinx, features_mfcc, features_wav2vec2, tts_espeak, tts_piper
from tasks.backends.registry import Backend, BackendOptions, Choice, Registry

if TYPE_CHECKING:
    from tasks.features import FeatureExtractor

__all__ = ["FEATURE_EXTRACTORS", "RECOGNISERS", "TTS_ENGINES", "Backend", "BackendOptions", "Choice",
           "FeatureBackend", "Registry", "features_from_config", "make_features"]


class FeatureBackend(Backend, Protocol):
    """A feature extractor's declaration: a Backend that also says what a matching codebook records."""

    def codebook_key(self, options: Any) -> dict[str, Any]:
        """The parts of the extractor's config() a reused codebook must match, without loading a model."""
        ...


TTS_ENGINES: Registry[Backend] = Registry("TTS backend")
FEATURE_EXTRACTORS: Registry[FeatureBackend] = Registry("feature backend")
RECOGNISERS: Registry[Backend] = Registry("recogniser")

for _tts in (tts_piper.BACKEND, tts_espeak.BACKEND):  # the order is the UI's and the CLI's
    TTS_ENGINES.register(_tts)
for _features in (features_mfcc.BACKEND, features_wav2vec2.BACKEND):
    FEATURE_EXTRACTORS.register(_features)
for _asr in (asr_pocketsphinx.BACKEND,):  # the first is the default (--asr)
    RECOGNISERS.register(_asr)


def make_features(name: str, **options: Any) -> FeatureExtractor:
    """Build a registered feature extractor by name (what `--units` selects); `options` are its options."""
    return FEATURE_EXTRACTORS.get(name).create(FEATURE_EXTRACTORS.options(name, **options), None)


def features_from_config(config: Mapping[str, Any], device: str = "cpu") -> FeatureExtractor:
    """Rebuild the extractor a codebook's `config()` describes (checking the checkpoint's sha256)."""
    opts = {k: v for k, v in config.items() if k not in ("name", "dim", "sample_rate", "checkpoint_sha256")}
    if config.get("name") == "wav2vec2":
        opts["device"] = device
        opts.pop("frame_rate", None)
    backend = make_features(str(config.get("name")), **opts)
    recorded = config.get("checkpoint_sha256")
    if recorded is not None and backend.config()["checkpoint_sha256"] != recorded:
        raise CheckpointError(f"checkpoint {config.get('checkpoint')} changed since the codebook was fitted")
    return backend
