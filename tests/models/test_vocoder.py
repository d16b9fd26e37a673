"""The unit vocoder: shapes, alignment with the unit frames, a falling loss, and a save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError, InputError
from models.presets import resolve_preset
from models.vocoder import (
    VocoderConfig,
    build_vocoder,
    collate_vocoder,
    frame_upsample,
    regulate,
    target_mel,
    vocoder_config,
    vocoder_length,
)

K = 16
HOP = 160


def vocoder_rows(n: int = 2, seed: int = 0) -> list[dict]:
    """Corpus-like rows: a tone per unit (so units predict the mel), units, durations, int16 audio."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict = {"id": f"v{i}", "sample_rate": 16_000}
        for side in ("question", "answer"):
            units = rng.permutation(K)[: 6 + i]
            durs = rng.integers(2, 6, len(units))
            tones = [np.sin(2 * np.pi * (200 + 100 * u) * np.arange(d * HOP) / 16_000) for u, d in
                     zip(units, durs, strict=True)]
            audio = np.concatenate([np.zeros(240), *tones, np.zeros(400)])  # MFCC-like frame count
            row[f"{side}_units"] = units.astype(np.int32)
            row[f"{side}_durations"] = durs.astype(np.int32)
            row[f"{side}_audio"] = (audio * 8000).astype(np.int16)
        rows.append(row)
    return rows


def tiny_vocoder(seed: int = 0, **codebook: object) -> torch.nn.Module:
    """A random tiny vocoder over K units."""
    preset = resolve_preset("tiny")
    return build_vocoder(preset, vocoder_config(preset, {"num_units": K, "sha256": "ab" * 32, **codebook}),
                         seed=seed)


def test_collate_aligns_mel_frames_with_unit_frames() -> None:
    model = tiny_vocoder()
    rows = vocoder_rows(2)
    batch = collate_vocoder(rows, model)
    assert batch["units"].shape[0] == 4  # question and answer of each row
    frames = [int(r[f"{s}_durations"].sum()) for r in rows for s in ("question", "answer")]
    assert batch["mel_lengths"].tolist() == frames
    assert batch["mels"].shape == (4, max(frames), 80)
    assert vocoder_length(rows[0]) == frames[0] + frames[1]


def test_duration_predictor_and_mel_shapes() -> None:
    model = tiny_vocoder().eval()
    units = torch.tensor([3, 7, 1, 9])
    durations, mel = model.predict(units)
    assert durations.shape == (4,) and int(durations.min()) >= 1
    assert mel.shape == (int(durations.sum()), 80)
    out = model(**collate_vocoder(vocoder_rows(2), model))
    assert {"loss", "mel", "duration", "num_tokens"} <= set(out)


def test_regulate_repeats_and_positions() -> None:
    x = torch.arange(6.0).reshape(1, 3, 2)
    frames, mask, pos = regulate(x, torch.tensor([[1, 2, 0]]), upsample=2)
    assert frames.shape == (1, 6, 2) and mask.all()
    assert frames[0, :, 0].tolist() == [0, 0, 2, 2, 2, 2]
    assert pos[0].tolist() == [0, 0.5, 0, 0.25, 0.5, 0.75]


def test_frame_rates_map_to_whole_mel_upsampling() -> None:
    assert frame_upsample(100) == 1 and frame_upsample(50) == 2
    with pytest.raises(ConfigError, match="not a whole multiple"):
        frame_upsample(60)
    with pytest.raises(ConfigError):
        tiny_vocoder(frame_rate=200.0)
    cfg = VocoderConfig(num_units=K, frame_rate=50.0)
    assert target_mel(np.zeros(16_000, np.int16), 10, cfg).shape == (20, 80)


def test_loss_falls_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = tiny_vocoder()
    batch = collate_vocoder(vocoder_rows(2), model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_units_outside_k_are_refused() -> None:
    rows = vocoder_rows(1)
    rows[0]["answer_units"] = rows[0]["answer_units"] + K
    with pytest.raises(InputError, match="outside"):
        collate_vocoder(rows, tiny_vocoder())


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    from models.io import read_config, save_model
    from tasks.inference import load_checkpoint_model

    model = tiny_vocoder(seed=3).eval()
    save_model(model, tmp_path / "voc")
    config = read_config(tmp_path / "voc")
    assert config["stage"] == "vocoder" and config["extra"]["num_units"] == K
    assert config["extra"]["codebook"]["sha256"] == "ab" * 32 and config["extra"]["hop_length"] == HOP
    loaded = load_checkpoint_model(tmp_path / "voc", "vocoder")
    units = torch.tensor([1, 5, 2, 11, 3])
    d1, m1 = model.predict(units)
    d2, m2 = loaded.predict(units)
    assert torch.equal(d1, d2) and torch.equal(m1, m2)


def test_training_crops_utterances_to_unit_windows_with_their_mel() -> None:
    import dataclasses

    model = tiny_vocoder()
    model.cfg = dataclasses.replace(model.cfg, max_train_units=3)
    rows = vocoder_rows(1)
    torch.manual_seed(1)
    batch = collate_vocoder(rows, model.train())
    assert batch["unit_lengths"].tolist() == [3, 3]
    assert batch["mel_lengths"].tolist() == batch["durations"].sum(1).tolist()
    units, durs = rows[0]["question_units"], rows[0]["question_durations"]
    start = next(i for i in range(len(units)) if units[i:i + 3].tolist() == batch["units"][0].tolist())
    full = target_mel(rows[0]["question_audio"], int(durs.sum()), model.cfg)
    first = int(durs[:start].sum())
    n = int(batch["mel_lengths"][0])
    assert torch.equal(batch["mels"][0, :n], full[first : first + n])
    assert collate_vocoder(rows, model.eval())["unit_lengths"].tolist() == [6, 6]  # eval: whole utterances


def test_log_mel_of_a_frame_range_equals_the_centred_stft_mel() -> None:
    import torchaudio

    from models.vocoder import log_mel

    cfg = VocoderConfig(num_units=K)
    audio = (np.random.default_rng(0).standard_normal(16_000) * 3000).astype(np.int16)
    ref = torchaudio.transforms.MelSpectrogram(sample_rate=16_000, n_fft=1024, hop_length=160, n_mels=80,
                                               power=1.0, norm="slaney", mel_scale="slaney")(
        torch.from_numpy(audio.astype(np.float32) / 32768))
    ref = torch.log(ref.clamp_min(1e-5)).T  # (101, 80)
    assert torch.allclose(log_mel(audio, cfg), ref, atol=1e-5)
    assert torch.allclose(log_mel(audio, cfg, 30, 20), ref[30:50], atol=1e-5)
