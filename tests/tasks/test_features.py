"""Features: MFCC shapes; a tiny random fairseq2 wav2vec2 saved and loaded back (fairseq2 and fairseq v1)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import CheckpointError, ConfigError, InputError
from tasks.backends import make_features
from tasks.backends.features_mfcc import MFCCFeatures
from tasks.backends.features_wav2vec2 import Wav2Vec2Features
from tasks.features import build_wav2vec2, convert_fairseq_hubert_state_dict, wav2vec2_config

SMALL = {
    "encoder_config": {
        "model_dim": 64,
        "num_encoder_layers": 2,
        "num_encoder_attn_heads": 4,
        "ffn_inner_dim": 128,
        "feature_dim": 32,
        "feature_extractor_layer_descs": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
        "pos_conv_kernel_size": 16,
        "num_pos_conv_groups": 4,
    },
    "final_dim": 16,
    "quantized_dim": 16,
    "num_codebook_entries": 8,
}

# fairseq2 key prefix -> fairseq v1 HuBERT key prefix: ENV.md's table inverted.
TO_FAIRSEQ_V1 = [
    (r"^encoder_frontend\.feature_extractor\.layers\.0\.group_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^encoder_frontend\.post_extract_layer_norm\.", "layer_norm."),
    (r"^encoder_frontend\.model_dim_proj\.", "post_extract_proj."),
    (r"^encoder_frontend\.pos_encoder\.conv\.", "encoder.pos_conv.0."),
    (r"^encoder_frontend\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.output_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.layers\.(\d+)\.ffn\.inner_proj\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.ffn\.output_proj\.", r"encoder.layers.\1.fc2."),
    (r"^encoder\.layers\.(\d+)\.ffn_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    (r"^masker\.temporal_mask_embed$", "mask_emb"),
]


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    return (wav * 32767).astype(np.int16)


# --- MFCC -----------------------------------------------------------------------------------------


def test_mfcc_shape_dtype_and_determinism() -> None:
    feats = MFCCFeatures()
    out = feats.extract(_noise())
    assert out.dtype == np.float32
    assert out.shape == (1 + (16000 - 400) // 160, 39)  # 98 frames: 100 Hz, full 25 ms windows
    assert feats.dim == 39 and feats.frame_rate == 100.0
    assert np.isfinite(out).all() and out[:, :13].std() > 0.1
    np.testing.assert_array_equal(out, MFCCFeatures().extract(_noise()))
    assert not np.allclose(out, feats.extract(_noise(seed=1)))


def test_mfcc_options_int16_equals_float_and_cmvn() -> None:
    wav = _noise()
    np.testing.assert_allclose(
        MFCCFeatures().extract(wav), MFCCFeatures().extract(wav.astype(np.float32) / 32768), atol=1e-5
    )
    plain = MFCCFeatures(deltas=False).extract(wav)
    assert plain.shape[1] == 13
    normed = MFCCFeatures(cmvn=True).extract(wav)
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-4)
    assert MFCCFeatures().extract(wav[:100]).shape == (1, 39)  # shorter than a window: padded to one
    assert json.loads(json.dumps(MFCCFeatures(cmvn=True).config()))["cmvn"] is True


def test_bad_audio_is_input_error() -> None:
    with pytest.raises(InputError, match="1-D"):
        MFCCFeatures().extract(np.zeros((2, 100), np.int16))
    with pytest.raises(InputError, match="empty"):
        MFCCFeatures().extract(np.zeros(0, np.int16))


def test_make_features_errors() -> None:
    assert isinstance(make_features("mfcc", n_mfcc=13), MFCCFeatures)
    with pytest.raises(ConfigError, match="unknown feature backend"):
        make_features("whisper")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--feature-checkpoint"):
        make_features("wav2vec2", layer=1)
    with pytest.raises(ConfigError, match="bad options"):
        make_features("mfcc", layer=3)


# --- wav2vec2 through fairseq2 ----------------------------------------------------------------------


def _tiny_model() -> torch.nn.Module:
    """A random SMALL wav2vec2 with every parameter perturbed, so that a default-initialised tensor
    (LayerNorm ones/zeros) that silently failed to load would change the features."""
    torch.manual_seed(0)
    model = build_wav2vec2(wav2vec2_config("base", SMALL))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _reference(model: torch.nn.Module, audio: np.ndarray, layer: int) -> np.ndarray:
    """Layer output through fairseq2's own encoder forward, captured with its layer hook."""
    from fairseq2.nn import BatchLayout

    wav = torch.from_numpy(audio.astype(np.float32) / 32768)[None]
    captured: dict[int, torch.Tensor] = {}

    def hook(idx: int, out: torch.Tensor, layout: object, num_layers: int) -> bool:
        captured[idx] = out.clone()
        return True

    handle = model.encoder.register_layer_hook(hook)
    with torch.inference_mode():
        layout = BatchLayout.of(wav)
        seqs, layout, _ = model.encoder_frontend.extract_features(wav, layout)
        seqs, _ = model.encoder_frontend.process_features(seqs, layout, None)
        model.encoder(seqs, layout)
    handle.remove()
    return captured[layer - 1][0].numpy()


def _to_fairseq_v1(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("quantizer.", "final_proj.", "final_target_proj.")):
            continue
        for pattern, target in TO_FAIRSEQ_V1:
            if re.match(pattern, key):
                key = re.sub(pattern, target, key, count=1)
                break
        out[key] = value.clone()
    out["label_embs_concat"] = torch.randn(10, 16)
    out["final_proj.weight"] = torch.randn(16, 64)
    out["final_proj.bias"] = torch.randn(16)
    return out


def _save_with_unimportable_cfg(
    obj: dict, path: Path, monkeypatch: pytest.MonkeyPatch, *, legacy: bool = False
) -> None:
    """torch.save a fairseq-style checkpoint whose cfg class lives in a module that is gone at load time."""

    class FairseqConfig:
        def __init__(self) -> None:
            self.model = {"_name": "hubert", "label_rate": 50.0}
            self.task = {"data": Path("/data/librispeech"), "normalize": False}

    fake_modules = {name: types.ModuleType(name) for name in ("fairseq", "fairseq.dataclass")}
    configs = types.ModuleType("fairseq.dataclass.configs")
    FairseqConfig.__module__, FairseqConfig.__qualname__ = configs.__name__, "FairseqConfig"
    configs.FairseqConfig = FairseqConfig  # type: ignore[attr-defined]
    fake_modules[configs.__name__] = configs
    with monkeypatch.context() as m:
        for name, module in fake_modules.items():
            m.setitem(sys.modules, name, module)
        torch.save({**obj, "cfg": FairseqConfig()}, path, _use_new_zipfile_serialization=not legacy)
    assert "fairseq.dataclass.configs" not in sys.modules


def test_fairseq2_checkpoint_round_trip(tmp_path: Path) -> None:
    model, audio = _tiny_model(), _noise()
    path = tmp_path / "w2v.pt"
    torch.save({"model": model.state_dict()}, path)
    for layer in (1, 2):
        feats = Wav2Vec2Features(path, layer=layer, arch_overrides=SMALL)
        out = feats.extract(audio)
        assert out.dtype == np.float32 and out.shape == (49, 64)  # (16000 - 400) // 320 + 1 frames at 50 Hz
        assert feats.dim == 64 and feats.frame_rate == 50.0
        np.testing.assert_array_equal(out, _reference(model, audio, layer))
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    np.testing.assert_array_equal(
        Wav2Vec2Features(bare, layer=1, arch_overrides=SMALL).extract(audio), _reference(model, audio, 1)
    )
    config = json.loads(json.dumps(feats.config()))
    assert config["layer"] == 2 and len(config["checkpoint_sha256"]) == 64


def test_fairseq_v1_hubert_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, audio = _tiny_model(), _noise()
    v1 = _to_fairseq_v1(model.state_dict())
    assert {
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "mask_emb",
        "encoder.layer_norm.weight",
    } <= set(v1)
    for legacy in (False, True):  # zip format, and the pre-1.6 format of early releases
        path = tmp_path / f"hubert_{legacy}.pt"
        _save_with_unimportable_cfg({"model": v1}, path, monkeypatch, legacy=legacy)
        out = Wav2Vec2Features(path, layer=2, arch_overrides=SMALL).extract(audio)
        np.testing.assert_array_equal(out, _reference(model, audio, 2))
        assert "fairseq" not in sys.modules  # the cfg's module was never imported

    # Fine-tuned files nest the encoder under w2v_model. next to their own head.
    wrapped = {f"w2v_model.{k}": v for k, v in v1.items()} | {"proj.weight": torch.randn(5, 64)}
    torch.save({"model": wrapped}, tmp_path / "ft.pt")
    np.testing.assert_array_equal(
        Wav2Vec2Features(tmp_path / "ft.pt", layer=2, arch_overrides=SMALL).extract(audio), out
    )


def test_fairseq_v1_negative_controls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, audio = _tiny_model(), _noise()
    v1 = _to_fairseq_v1(model.state_dict())
    dropped = {k: v for k, v in v1.items() if not k.startswith("encoder.layer_norm.")}
    torch.save({"model": dropped}, tmp_path / "dropped.pt")
    with pytest.raises(CheckpointError, match=r"missing keys .*encoder_frontend\.layer_norm\.weight"):
        Wav2Vec2Features(tmp_path / "dropped.pt", layer=1, arch_overrides=SMALL)
    misnamed = dropped | {"encoder.final_norm.weight": v1["encoder.layer_norm.weight"]}
    torch.save({"model": misnamed}, tmp_path / "misnamed.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys .*encoder\.final_norm\.weight"):
        Wav2Vec2Features(tmp_path / "misnamed.pt", layer=1, arch_overrides=SMALL)
    # The check matters: loaded leniently, the forgotten norm silently changes the features.
    lenient = build_wav2vec2(wav2vec2_config("base", SMALL)).eval()
    lenient.load_state_dict(convert_fairseq_hubert_state_dict(dropped), strict=False)
    assert np.abs(_reference(lenient, audio, 1) - _reference(model, audio, 1)).max() > 1e-2


def test_wav2vec2_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Wav2Vec2Features(tmp_path / "nope.pt", layer=1, arch_overrides=SMALL)
    model = _tiny_model()
    path = tmp_path / "w2v.pt"
    torch.save({"model": model.state_dict()}, path)
    for layer in (0, 3):
        with pytest.raises(ConfigError, match=r"layer must be in 1\.\.2"):
            Wav2Vec2Features(path, layer=layer, arch_overrides=SMALL)
    with pytest.raises(ConfigError, match="unknown wav2vec2 config field"):
        Wav2Vec2Features(path, layer=1, arch_overrides={"encoder_config": {"model_dimm": 3}})
    with pytest.raises(CheckpointError, match="does not fit"):  # weights of another size
        Wav2Vec2Features(
            path,
            layer=1,
            arch_overrides={**SMALL, "encoder_config": {**SMALL["encoder_config"], "ffn_inner_dim": 96}},
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        Wav2Vec2Features(tmp_path / "junk.pt", layer=1, arch_overrides=SMALL)
    feats = Wav2Vec2Features(path, layer=1, arch_overrides=SMALL)
    with pytest.raises(InputError, match="at least 400"):
        feats.extract(np.zeros(399, np.int16))


class _OpensAFile:
    """Unpickling this with a plain pickle would create `marker`: a stand-in for a hostile cfg."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_checkpoint_loading_runs_no_pickled_code(tmp_path: Path) -> None:
    from tasks.features import load_checkpoint_object

    marker = tmp_path / "pwned"
    for legacy in (False, True):
        path = tmp_path / f"hostile_{legacy}.pt"
        obj = {"model": {"w": torch.ones(2)}, "cfg": _OpensAFile(marker)}
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        loaded = load_checkpoint_object(path)
        torch.testing.assert_close(loaded["model"]["w"], torch.ones(2))
        assert not marker.exists()


def test_features_from_config_rebuilds_and_pins_weights(tmp_path: Path) -> None:
    from tasks.backends import features_from_config

    path, audio = tmp_path / "w2v.pt", _noise()
    torch.save({"model": _tiny_model().state_dict()}, path)
    feats = Wav2Vec2Features(path, layer=2, arch_overrides=SMALL)
    config = json.loads(json.dumps(feats.config()))
    np.testing.assert_array_equal(features_from_config(config).extract(audio), feats.extract(audio))
    mfcc = MFCCFeatures(cmvn=True)
    np.testing.assert_array_equal(features_from_config(mfcc.config()).extract(audio), mfcc.extract(audio))
    torch.save({"model": build_wav2vec2(wav2vec2_config("base", SMALL)).state_dict()}, path)
    with pytest.raises(CheckpointError, match="changed since"):
        features_from_config(config)
