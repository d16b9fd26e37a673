"""Backend registries: a test-only TTS engine and feature extractor build a corpus; unknown names fail."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import Field

from core.config import build
from core.errors import ConfigError, RecordRejected
from tasks.backends import FEATURE_EXTRACTORS, TTS_ENGINES, BackendOptions, Choice, Registry
from tasks.configs import BuildCorpusConfig, EvaluateConfig
from tests.conftest import qa, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SR = 16_000


# --- a sine-tone "speaker" ----------------------------------------------------------------------------


class SineOptions(BackendOptions):
    """Options of the sine speaker."""

    base_hz: float = Field(220.0, description="Pitch of the 'low' voice; 'high' is an octave up.")


class SineSpeaker:
    """Speaks a tone per character: 40 ms each, pitch by voice; rejects text with a '#'."""

    name = "sine"

    def __init__(self, base_hz: float) -> None:
        self.pitch = {"low": base_hz, "high": 2 * base_hz}

    def voices(self) -> list[str]:
        return list(self.pitch)

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        if voice not in self.pitch:
            raise RecordRejected(f"voice {voice!r} is not a sine voice")
        t = np.arange(int(0.04 * SR * max(len(text), 8))) / SR
        tone = np.sin(2 * np.pi * self.pitch[voice] * (1 + 0.01 * (t * 7 % 3)) * t)
        return (8000 * tone).astype(np.int16)


class Sine:
    """Declaration of the sine speaker."""

    name = "sine"
    options = SineOptions
    flat_fields: ClassVar[dict[str, str]] = {}
    created: ClassVar[list[tuple[SineOptions, int | None]]] = []

    def check(self, options: SineOptions) -> None:
        if options.base_hz <= 0:
            raise ConfigError("base_hz must be positive")

    def create(self, options: SineOptions, threads: int | None) -> SineSpeaker:
        self.created.append((options, threads))
        return SineSpeaker(options.base_hz)

    def identity(self, options: SineOptions) -> str:
        return f"sine:{options.base_hz}"


# --- a frame-energy "feature extractor" ---------------------------------------------------------------


class EnergyOptions(BackendOptions):
    """Options of the energy extractor."""

    hop: int = Field(160, description="Samples per frame.")


class EnergyFeatures:
    """(log energy, zero-crossing rate) per frame."""

    name = "energy"
    dim = 2

    def __init__(self, hop: int) -> None:
        self.hop, self.frame_rate = hop, SR / hop

    def extract(self, audio: np.ndarray) -> np.ndarray:
        x = audio.astype(np.float32) / 32768
        frames = x[: len(x) // self.hop * self.hop].reshape(-1, self.hop)  # (T, hop)
        energy = np.log(1e-6 + (frames**2).mean(1))
        zcr = (np.diff(np.sign(frames), axis=1) != 0).mean(1)
        return np.stack([energy, zcr], 1).astype(np.float32)  # (T, 2)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "hop": self.hop, "dim": self.dim, "sample_rate": SR}


class Energy:
    """Declaration of the energy extractor."""

    name = "energy"
    options = EnergyOptions
    flat_fields: ClassVar[dict[str, str]] = {}

    def check(self, options: EnergyOptions) -> None:
        pass

    def create(self, options: EnergyOptions, threads: int | None) -> EnergyFeatures:
        return EnergyFeatures(options.hop)

    def identity(self, options: EnergyOptions) -> dict[str, Any]:
        return {"name": self.name, "hop": options.hop}

    def codebook_key(self, options: EnergyOptions) -> dict[str, Any]:
        return EnergyFeatures(options.hop).config()


@pytest.fixture
def dummies() -> Iterator[None]:
    """The two test backends, registered for one test only."""
    TTS_ENGINES.register(Sine())
    FEATURE_EXTRACTORS.register(Energy())
    try:
        yield
    finally:
        TTS_ENGINES.unregister("sine")
        FEATURE_EXTRACTORS.unregister("energy")


def test_a_registered_engine_and_extractor_build_a_corpus(dummies: None, tmp_path: Path) -> None:
    from tasks import build_corpus as stages
    from tasks.data import load_corpus

    rows: list = [qa(i) for i in range(1, 6)] + [qa(6, voice="baritone")]
    src = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = BuildCorpusConfig(source=str(src), out=str(tmp_path / "out"), tts="sine", units="energy",
                            num_units=4, shard_size=2, workers=1, threads_per_worker=1, progress=False)
    assert cfg.tts_choice() == Choice("sine", SineOptions()) and cfg.feature_choice().as_dict() == {
        "name": "energy", "hop": 160}
    manifest = stages.build_in_process(cfg)

    assert manifest["status"] == "complete" and manifest["totals"]["rows"] == 5
    assert manifest["codebook"]["features"] == {"name": "energy", "hop": 160}  # the backend's identity
    assert manifest["rejects_by_reason"] == {"voice … is not a sine voice": 1}
    corpus = load_corpus(Path(cfg.out))
    assert sorted(r["id"] for r in corpus) == [f"q{i}" for i in range(1, 6)]
    assert {r["voice"] for r in corpus} <= {"low", "high"}
    assert all(max(r["answer_units"]) < 4 for r in corpus)
    # Each shard task read its own plan file: 3 shards of 2 records, in source order.
    paths = stages.BuildPaths(Path(cfg.out))
    plans = [[json.loads(line)["id"] for line in paths.plan(i).read_text().splitlines()] for i in range(3)]
    assert plans == [["q1", "q2"], ["q3", "q4"], ["q5", "q6"]]
    assert Sine.created[-1][1] == 1  # the worker's thread count reached create()


def test_unknown_engine_fails_config_validation_naming_the_known_ones() -> None:
    base = {"source": "qa.jsonl", "out": "o"}
    with pytest.raises(ConfigError, match=r"unknown TTS backend 'festival'; choose one of: espeak, piper"):
        build(BuildCorpusConfig, {**base, "tts": "festival"}, "build-corpus")
    features = r"unknown feature backend 'whisper'; choose one of: mfcc, wav2vec2"
    with pytest.raises(ConfigError, match=features):
        build(BuildCorpusConfig, {**base, "units": "whisper"}, "build-corpus")
    with pytest.raises(ConfigError, match=r"tts: .*unknown TTS backend 'festival'"):
        build(EvaluateConfig, {"model": "m", "eval_set": "e", "out": "r", "tts": "festival"}, "evaluate")


def test_choices_are_in_the_schema_and_registration_is_strict(dummies: None) -> None:
    props = BuildCorpusConfig.model_json_schema()["properties"]
    assert props["tts"]["enum"] == ["piper", "espeak"] and props["units"]["enum"] == ["mfcc", "wav2vec2"]
    assert BuildCorpusConfig(source="s", out="o", tts="sine").tts == "sine"  # validated at use, not import
    with pytest.raises(ValueError, match="already registered"):
        TTS_ENGINES.register(Sine())
    reg: Registry = Registry("vocoder")
    with pytest.raises(ConfigError, match=r"unknown vocoder 'hifigan'; choose one of: $"):
        reg.get("hifigan")


def test_options_are_frozen_strict_and_hashable() -> None:
    from tasks.backends.features_wav2vec2 import Wav2Vec2Options

    a = Wav2Vec2Options(checkpoint="x.pt", arch_overrides={"encoder_config": {"model_dim": 64}})
    assert hash(a) == hash(a.model_copy()) and {a: 1}[a.model_copy()] == 1  # a dict field still hashes
    with pytest.raises(ConfigError, match="bad options for the mfcc feature backend"):
        FEATURE_EXTRACTORS.options("mfcc", layer=3)
    for backend in (*TTS_ENGINES, *FEATURE_EXTRACTORS):
        assert all(f.description for f in backend.options.model_fields.values()), backend.name


def test_registries_import_without_heavy_libraries() -> None:
    code = ("import sys, tasks.configs, tasks.backends; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'fairseq2', 'piper') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
