"""One layer of a HuBERT-style (fairseq2 wav2vec2) encoder at 50 Hz, from a local checkpoint.

Checkpoint reading and the fairseq v1 key conversion live in tasks/features.py (imported lazily:
it imports torch), so registering this backend stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from core.errors import CheckpointError, ConfigError, InputError
from tasks.audio import SAMPLE_RATE, as_float_waveform
from tasks.backends.registry import BackendOptions

NEEDS_CHECKPOINT = "--units wav2vec2 needs a checkpoint path (--feature-checkpoint)"


class Wav2Vec2Features:
    """One layer of a HuBERT-style (fairseq2 wav2vec2) encoder at 50 Hz, from a local checkpoint."""

    name = "wav2vec2"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        layer: int,
        arch: str = "base",
        device: str = "cpu",
        arch_overrides: Mapping[str, Any] | None = None,
        normalize: bool = False,
    ) -> None:
        from fairseq2.models.transformer import TransformerNormOrder

        from tasks.features import _conv_geometry, build_wav2vec2, load_wav2vec2_state, wav2vec2_config

        self.checkpoint = Path(checkpoint)
        self.arch, self.device, self.normalize = arch, device, normalize
        self.arch_overrides = dict(arch_overrides or {})
        cfg = wav2vec2_config(arch, self.arch_overrides)
        enc = cfg.encoder_config
        if not 1 <= layer <= enc.num_encoder_layers:
            raise ConfigError(f"layer must be in 1..{enc.num_encoder_layers} for this encoder, got {layer}")
        self.layer, self.dim = layer, int(enc.model_dim)
        self._min_samples, stride = _conv_geometry(enc.feature_extractor_layer_descs)
        self.frame_rate = SAMPLE_RATE / stride
        if not self.checkpoint.is_file():  # before building the model: fail fast and cheap
            raise CheckpointError(f"checkpoint not found: {self.checkpoint}")
        model = build_wav2vec2(cfg, device)
        load_wav2vec2_state(model, self.checkpoint, pre_norm=enc.norm_order == TransformerNormOrder.PRE)
        self._model = model.eval()

    def extract(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz audio -> (T, model_dim) float32 at 50 Hz from encoder layer `layer`."""
        import torch

        from tasks.features import encoder_layer_output

        wav = as_float_waveform(audio)
        if wav.size < self._min_samples:
            raise InputError(f"audio has {wav.size} samples; the encoder needs at least {self._min_samples}")
        with torch.inference_mode():
            x = torch.from_numpy(wav).to(self.device)[None]  # (1, S)
            if self.normalize:  # fairseq's task.normalize (large models): zero mean, unit variance
                x = torch.nn.functional.layer_norm(x, x.shape[-1:])
            out = encoder_layer_output(self._model, x, self.layer)  # (1, T, D)
        return out[0].float().cpu().numpy()

    def config(self) -> dict[str, Any]:
        """JSON-able description; the checkpoint's sha256 pins the weights."""
        from tasks.shards import file_sha256

        return {
            "name": self.name,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": file_sha256(self.checkpoint),
            "layer": self.layer,
            "arch": self.arch,
            "arch_overrides": self.arch_overrides,
            "normalize": self.normalize,
            "frame_rate": self.frame_rate,
            "dim": self.dim,
            "sample_rate": SAMPLE_RATE,
        }


class Wav2Vec2Options(BackendOptions):
    """Options of the wav2vec2/HuBERT extractor."""

    checkpoint: str | None = Field(None, description="Local wav2vec2/HuBERT checkpoint (fairseq2 or "
                                   "fairseq .pt); required.")
    layer: int = Field(11, ge=1, description="Encoder layer whose output is clustered (1-based).")
    arch: str = Field("base", description="fairseq2 wav2vec2 architecture of the checkpoint.")
    arch_overrides: dict[str, Any] | None = Field(None, description="Arch config fields to override "
                                                  "(nested dicts for encoder_config).")
    normalize: bool = Field(False, description="Normalise the waveform first (fairseq's large models).")
    device: str = Field("cpu", description="Torch device of the encoder (not part of the identity).")


class Wav2Vec2:
    """The wav2vec2/HuBERT backend: declaration for the feature registry."""

    name = "wav2vec2"
    options = Wav2Vec2Options
    flat_fields: ClassVar[dict[str, str]] = {"checkpoint": "feature_checkpoint", "layer": "feature_layer",
                                             "arch": "feature_arch"}

    def check(self, options: Wav2Vec2Options) -> None:
        """An existing checkpoint file and a layer its architecture has (no model is built)."""
        if not options.checkpoint:
            raise ConfigError(NEEDS_CHECKPOINT)
        if not Path(options.checkpoint).is_file():
            raise CheckpointError(f"feature checkpoint not found: {options.checkpoint}")
        layers = self._encoder(options).num_encoder_layers
        if not 1 <= options.layer <= layers:
            raise ConfigError(f"--feature-layer must be in 1..{layers} for the {options.arch} "
                              f"architecture, got {options.layer}")

    def create(self, options: Wav2Vec2Options, threads: int | None) -> Wav2Vec2Features:
        """The encoder loaded from the checkpoint (torch threads are pinned by the worker)."""
        if not options.checkpoint:
            raise ConfigError(NEEDS_CHECKPOINT)
        return Wav2Vec2Features(options.checkpoint, layer=options.layer, arch=options.arch,
                                device=options.device, arch_overrides=options.arch_overrides,
                                normalize=options.normalize)

    def identity(self, options: Wav2Vec2Options) -> dict[str, Any]:
        """Checkpoint path, layer and arch (the manifest's codebook.features), plus overrides if any."""
        extra = options.model_dump(include={"arch_overrides", "normalize"}, exclude_defaults=True)
        return {"name": self.name, "checkpoint": options.checkpoint, "layer": options.layer,
                "arch": options.arch, **extra}

    def codebook_key(self, options: Wav2Vec2Options) -> dict[str, Any]:
        """What a codebook fitted on these features must record, computed without loading the model."""
        from tasks.shards import file_sha256

        return {"name": self.name, "layer": options.layer, "dim": int(self._encoder(options).model_dim),
                "checkpoint_sha256": file_sha256(Path(str(options.checkpoint)))}

    def _encoder(self, options: Wav2Vec2Options) -> Any:
        from tasks.features import wav2vec2_config

        return wav2vec2_config(options.arch, options.arch_overrides).encoder_config


BACKEND = Wav2Vec2()
