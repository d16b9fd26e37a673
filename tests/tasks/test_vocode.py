"""Speech out: the vocoder stage trains through the shared trainer, `vocode` writes the WAV, `echox vocode`
refuses every bad input with one line and exit 2, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

from models.io import save_model
from tests.models.test_vocoder import HOP, K, tiny_vocoder, vocoder_rows

torch.set_num_threads(1)
SHA = "ab" * 32


def write_vocoder_corpus(out: Path, n: int = 8, sha: str = SHA, num_units: int = K) -> Path:
    """A corpus directory of vocoder_rows with a manifest recording its codebook."""
    from tasks.shards import write_json
    from tests.helpers.dummy_model import write_corpus

    write_corpus(out, pa.Table.from_pylist(vocoder_rows(n)), shards=2)
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(out / "manifest.json", {**manifest, "codebook": {"num_units": num_units, "sha256": sha}})
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny vocoder checkpoint over K units of codebook SHA."""
    return save_model(tiny_vocoder(seed=1), tmp_path_factory.mktemp("voc") / "voc")


def _main(args: list[str]) -> int:
    from echox.cli import main

    return main(args)


def test_vocode_writes_a_16k_wav_of_the_predicted_length(voc: Path, tmp_path: Path) -> None:
    from tasks.vocode import load_vocoder, vocode_with_durations, write_wav_atomic

    model = load_vocoder(voc)
    audio, durations = vocode_with_durations(model, [3, 1, 4, 1, 5, 9, 2, 6])
    # Exactly: F = sum(durations) · upsample mel frames, F · hop samples (Griffin-Lim cut or padded to it).
    assert audio.dtype == np.int16 and len(audio) == int(durations.sum()) * model.cfg.upsample * HOP
    write_wav_atomic(tmp_path / "a.wav", audio)
    data, rate = sf.read(tmp_path / "a.wav", dtype="int16")
    assert rate == 16_000 and len(data) == len(audio) and np.abs(data).max() > 100
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temp file left


def test_cli_vocode_units_and_corpus_row(voc: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_vocoder_corpus(tmp_path / "corpus")
    out = ["--out-wav", str(tmp_path / "u.wav")]
    assert _main(["vocode", "--model", str(voc), "--units", "1 2 3 4", *out]) == 0
    assert "real-time factor" in capsys.readouterr().out
    assert _main(["vocode", "--model", str(voc), "--corpus", str(corpus), "--id", "v1",
                  "--out-wav", str(tmp_path / "c.wav")]) == 0
    assert sf.info(str(tmp_path / "c.wav")).samplerate == 16_000


@pytest.mark.parametrize(("args", "message"), [
    (["--units", "1 2 99"], "outside [0, 16)"),
    (["--units", " "], "empty"),
    (["--units", "1 x"], "whole numbers"),
    (["--units", "1", "--corpus", "C", "--id", "v0"], "one of the two"),
    (["--corpus", "C"], "one of the two"),
    (["--units", "1", "--out-wav", "/nonexistent-dir/a.wav"], "does not exist"),
    (["--corpus", "OTHER", "--id", "v0"], "codebook"),
    (["--corpus", "BIGGER", "--id", "v0"], "K=32"),
    (["--corpus", "C", "--id", "nope"], "no row with id"),
])
def test_cli_vocode_refuses_bad_inputs(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    corpora = {"C": write_vocoder_corpus(tmp_path / "c", n=2),
               "OTHER": write_vocoder_corpus(tmp_path / "o", n=2, sha="cd" * 32),
               "BIGGER": write_vocoder_corpus(tmp_path / "b", n=2, num_units=32)}
    args = [str(corpora.get(a, a)) for a in args]
    out = [] if "--out-wav" in args else ["--out-wav", str(tmp_path / "x.wav")]
    assert _main(["vocode", "--model", str(voc), *args, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_cli_vocode_refuses_other_checkpoints(voc: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    other = tmp_path / "t2c"
    shutil.copytree(voc, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "stage": "t2c"}))
    for path, message in ((other, "not a vocoder"), (tmp_path / "missing", "not found"),
                          (tmp_path, "not a vocoder checkpoint")):
        out = ["--out-wav", str(tmp_path / "x.wav")]
        assert _main(["vocode", "--model", str(path), "--units", "1", *out]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_vocoder_stage_trains_resumes_and_loads(tmp_path: Path) -> None:
    from dataclasses import replace

    from tasks.train import TrainConfig, run_local
    from tasks.train_stage import prepare_stage
    from tasks.vocode import load_vocoder

    corpus = write_vocoder_corpus(tmp_path / "corpus")
    build = prepare_stage("vocoder", "tiny", {}, corpus, tmp_path / "cache", seed=0)
    cfg = TrainConfig(stage="vocoder", corpus_dir=str(corpus), out_dir=str(tmp_path / "run"), max_steps=6,
                      batch_size=2, lr=3e-3, warmup_steps=1, log_every=2, ckpt_every=3, num_threads=1)
    summary = run_local(cfg, build)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 6 and {"loss", "mel", "duration"} <= set(rows[-1])
    assert rows[-1]["loss"] < rows[0]["loss"]
    resumed = run_local(replace(cfg, max_steps=8, resume=True), build)
    assert resumed["steps"] == 8 and int(resumed["resumed_from"].rsplit("-", 1)[1]) == 6
    model = load_vocoder(tmp_path / "run")
    assert model.cfg.codebook["sha256"] == SHA and model.num_units == K and model.cfg.frame_rate == 100.0
    assert not (tmp_path / "run" / "model" / "llm").exists()  # no LLM skeleton: the vocoder has no LLM
