"""The backend registries and the explicit list of built-in backends (one file per backend).

Adding a backend: write tasks/backends/<kind>_<name>.py with its working class, an options model and
a declaration `BACKEND` (name, options, flat_fields, check, create, identity), then add it to the
tuple below. Importing this package imports no torch, onnxruntime or fairseq2.
"""

from __future__ import annotations

from typing import Any, Protocol

from tasks.backends import features_mfcc, features_wav2vec2, tts_espeak, tts_piper
from tasks.backends.registry import Backend, BackendOptions, Choice, Registry

__all__ = ["FEATURE_EXTRACTORS", "TTS_ENGINES", "Backend", "BackendOptions", "Choice", "FeatureBackend",
           "Registry"]


class FeatureBackend(Backend, Protocol):
    """A feature extractor's declaration: a Backend that also says what a matching codebook records."""

    def codebook_key(self, options: Any) -> dict[str, Any]:
        """The parts of the extractor's config() a reused codebook must match, without loading a model."""
        ...


TTS_ENGINES: Registry[Backend] = Registry("TTS backend")
FEATURE_EXTRACTORS: Registry[FeatureBackend] = Registry("feature backend")

for _tts in (tts_piper.BACKEND, tts_espeak.BACKEND):  # the order is the UI's and the CLI's
    TTS_ENGINES.register(_tts)
for _features in (features_mfcc.BACKEND, features_wav2vec2.BACKEND):
    FEATURE_EXTRACTORS.register(_features)
