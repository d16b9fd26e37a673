"""Frame features that discrete units are cut from: what an extractor is, building one by name, and
the fairseq2 wav2vec2/HuBERT checkpoint loading behind tasks/backends/features_wav2vec2.py.

Extractors (one per file in tasks/backends/, found through FEATURE_EXTRACTORS) take 16 kHz mono audio
and return float32 frames (T, dim). `config()` is what a codebook records, so that a later build labels
its audio with the same features.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core.errors import CheckpointError, ConfigError

# Keys a features-only model may lack: pretraining heads, and the mask embedding (only used to mask).
_ALLOWED_MISSING = ("quantizer.", "final_proj.", "final_target_proj.", "masker.")

# fairseq v1 HuBERT/wav2vec2 key prefix -> fairseq2 wav2vec2 key prefix; first match wins, so the
# conv layer-norm row (N.2.1.) sits before the group-norm row (0.2.) that would also match it.
_FAIRSEQ_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"encoder_frontend.feature_extractor.layers.\1.conv."),
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.",
        r"encoder_frontend.feature_extractor.layers.\1.layer_norm.",
    ),
    (r"^feature_extractor\.conv_layers\.0\.2\.", r"encoder_frontend.feature_extractor.layers.0.group_norm."),
    (r"^layer_norm\.", r"encoder_frontend.post_extract_layer_norm."),
    (r"^post_extract_proj\.", r"encoder_frontend.model_dim_proj."),
    # Newer torch stores weight norm as parametrizations; fairseq2 keeps the old weight_g/weight_v.
    (
        r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original0$",
        r"encoder_frontend.pos_encoder.conv.weight_g",
    ),
    (
        r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original1$",
        r"encoder_frontend.pos_encoder.conv.weight_v",
    ),
    (r"^encoder\.pos_conv\.0\.", r"encoder_frontend.pos_encoder.conv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"encoder.layers.\1.self_attn.output_proj."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.ffn.inner_proj."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.ffn.output_proj."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.ffn_layer_norm."),
    (r"^mask_emb$", r"masker.temporal_mask_embed"),
)

# Pretraining-only fairseq v1 entries that features never need (HuBERT label head, wav2vec2 quantizer).
_FAIRSEQ_DROPPED = re.compile(r"^(label_embs_concat$|final_proj\.|quantizer\.|project_q\.)")


class FeatureExtractor(Protocol):
    """What unit extraction needs from a feature extractor (the working object a backend creates)."""

    name: str
    dim: int
    frame_rate: float

    def extract(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz mono audio (1-D int16 or float32) -> float32 frames (T, dim)."""
        ...

    def config(self) -> dict[str, Any]:
        """A JSON-able description that rebuilds the same features."""
        ...


# --- checkpoint loading -------------------------------------------------------------------------


class _PickledStandIn:
    """Inert placeholder for a class a checkpoint pickled but this process must not import (fairseq cfg)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(qualified_name: str) -> tuple[type, str]:
    """A fresh stand-in class registered under `qualified_name` for torch's weights-only unpickler."""
    module, _, name = qualified_name.rpartition(".")
    return type(name or "StandIn", (_PickledStandIn,), {"__module__": module}), qualified_name


# What a legacy (pre-zip) state dict needs besides storages; every other global becomes a stand-in.
_LEGACY_GLOBALS = {
    "collections.OrderedDict",
    "torch.Size",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuilding globals; anything else (fairseq cfg, argparse) is a stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        """The real object for allowlisted names, an inert stand-in class otherwise."""
        if f"{module}.{name}" in _LEGACY_GLOBALS:
            return super().find_class(module, name)
        return _stand_in(f"{module}.{name}")[0]


def _restricted_pickle() -> types.SimpleNamespace:
    """A `pickle_module` for torch.load that never imports or calls what the file names."""

    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=load, __name__="restricted_pickle")


def load_checkpoint_object(path: Path) -> Any:
    """torch.load a checkpoint without running pickled code; unknown classes become inert stand-ins."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):  # scan the pickle statically, then torch's weights-only loader
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            with torch.serialization.safe_globals([_stand_in(n) for n in unsafe]):
                return torch.load(path, map_location="cpu", weights_only=True)
        # Legacy format (e.g. 2020 wav2vec2 releases) cannot be scanned: restrict the unpickler instead.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle())
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, KeyError) as ex:
        raise CheckpointError(f"cannot read checkpoint {path}: {ex}") from ex


def _tensor_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint: `{"model": sd, ...}` or a bare sd."""
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{path} holds no model state dict (expected a dict of tensors or {{'model': ...}})"
        )
    return dict(sd)


def is_fairseq_v1_state_dict(sd: Mapping[str, Any]) -> bool:
    """True for fairseq v1 HuBERT/wav2vec2 key names (fairseq2's own keys start with encoder_frontend.)."""
    return any(
        k.startswith(("w2v_model.", "feature_extractor.conv_layers.", "encoder.pos_conv.")) for k in sd
    )


def convert_fairseq_hubert_state_dict(sd: Mapping[str, Any], *, pre_norm: bool = False) -> dict[str, Any]:
    """Rename a fairseq v1 HuBERT state dict to fairseq2 wav2vec2 keys (table in ENV.md); drops the heads.

    `encoder.layer_norm` runs before the layers in post-norm models (HuBERT base) but after them in
    pre-norm ones (large), which is where fairseq2 keeps it: `pre_norm` picks the target.
    """
    if any(k.startswith("w2v_model.") for k in sd):
        # Fine-tuned files wrap the encoder; the rest (e.g. a CTC `proj`) is not the encoder's.
        sd = {k.removeprefix("w2v_model."): v for k, v in sd.items() if k.startswith("w2v_model.")}
    norm_target = "encoder.layer_norm." if pre_norm else "encoder_frontend.layer_norm."
    key_map = (*_FAIRSEQ_KEY_MAP, (r"^encoder\.layer_norm\.", norm_target))
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if _FAIRSEQ_DROPPED.match(key):
            continue
        out[_rename(key, key_map)] = value
    return out


def _rename(key: str, key_map: tuple[tuple[str, str], ...]) -> str:
    """Apply the first matching (pattern, replacement) row to `key`; unmatched keys keep their name."""
    for pattern, target in key_map:
        if re.match(pattern, key):
            return re.sub(pattern, target, key, count=1)
    return key


# --- wav2vec2 / HuBERT encoder --------------------------------------------------------------------


def wav2vec2_config(arch: str = "base", overrides: Mapping[str, Any] | None = None) -> Any:
    """fairseq2's wav2vec2 arch config with `overrides` (nested dicts for encoder_config) and no LayerDrop."""
    from fairseq2.models.wav2vec2 import get_wav2vec2_model_hub

    hub = get_wav2vec2_model_hub()
    cfg = hub.maybe_get_arch_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown wav2vec2 arch {arch!r}; fairseq2 knows {sorted(hub.get_archs())}")
    cfg = copy.deepcopy(cfg)
    _apply_overrides(cfg, overrides or {}, "")
    cfg.encoder_config.layer_drop_p = 0.0
    if cfg.encoder_config.use_fbank:
        raise ConfigError(
            "wav2vec2 features need the waveform feature extractor (encoder_config.use_fbank=False)"
        )
    return cfg


def _apply_overrides(cfg: Any, overrides: Mapping[str, Any], where: str) -> None:
    """Set dataclass fields in place from a (JSON-style) mapping; unknown names are a ConfigError."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown wav2vec2 config field {where}{key!r}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            _apply_overrides(current, value, f"{where}{key}.")
        elif isinstance(current, enum.Enum) and isinstance(value, str):
            setattr(cfg, key, type(current)[value])
        elif key == "feature_extractor_layer_descs":
            setattr(cfg, key, [tuple(d) for d in value])  # JSON gives lists; fairseq2 means tuples
        else:
            setattr(cfg, key, value)


def build_wav2vec2(cfg: Any, device: str = "cpu") -> torch.nn.Module:
    """A randomly initialised fairseq2 wav2vec2 model for `cfg`."""
    from fairseq2.models.wav2vec2 import get_wav2vec2_model_hub

    return get_wav2vec2_model_hub().create_new_model(cfg, device=torch.device(device))


def load_wav2vec2_state(model: torch.nn.Module, path: Path, *, pre_norm: bool) -> None:
    """Load a fairseq2 or fairseq v1 checkpoint into `model`, checking the key lists explicitly."""
    sd = _tensor_state_dict(load_checkpoint_object(path), path)
    if is_fairseq_v1_state_dict(sd):
        sd = convert_fairseq_hubert_state_dict(sd, pre_norm=pre_norm)
    expected = set(model.state_dict())
    # strict=False alone is not enough: a key aimed at a None submodule is not reported.
    missing = sorted(k for k in expected - set(sd) if not k.startswith(_ALLOWED_MISSING))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the wav2vec2 config: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}"
        )
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as ex:  # shape mismatches: the arch config differs from the checkpoint's
        raise CheckpointError(f"{path} does not fit the wav2vec2 config: {ex}") from ex


def _short(keys: list[str], limit: int = 8) -> str:
    """A readable prefix of a key list."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def _conv_geometry(layer_descs: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(receptive field in samples, total stride) of the conv feature extractor."""
    field, stride = 1, 1
    for _, kernel, step in reversed(layer_descs):
        field = (field - 1) * step + kernel
    for _, _, step in layer_descs:
        stride *= step
    return field, stride


def encoder_layer_output(model: torch.nn.Module, wav: torch.Tensor, layer: int) -> torch.Tensor:
    """Output of encoder layer `layer` (1-based, fairseq's output_layer) for waveforms (N, S) -> (N, T, D).

    Runs only the first `layer` layers and no final encoder norm, as fairseq does for an output layer.
    """
    from fairseq2.models.transformer import AttentionBiasCache
    from fairseq2.nn import BatchLayout

    layout = BatchLayout.of(wav)
    frontend = model.encoder_frontend
    seqs, layout, _ = frontend.extract_features(wav, layout)  # (N, T, F)
    seqs, _ = frontend.process_features(seqs, layout, None)  # (N, T, D); None: no masking
    cache = AttentionBiasCache()
    for block in model.encoder.layers[:layer]:
        seqs = block(seqs, layout, cache)
    return seqs
