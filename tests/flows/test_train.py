"""`echox train` on a real corpus: 2 Ray Train DDP workers, resume, then `echox ask` answers from audio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.configs import TrainFlowConfig

pytestmark = pytest.mark.integration


def _cfg(corpus: Path, out: Path, stage: str, **kw: object) -> TrainFlowConfig:
    base = {"stage": stage, "corpus": str(corpus), "out": str(out), "workers": 2, "max_steps": 8,
            "batch_size": 4, "log_every": 2, "ckpt_every": 4, "warmup_steps": 2, "lr": 3e-3,
            "cache_dir": str(out.parent / "llm-cache")}
    return TrainFlowConfig(**{**base, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _progress_descriptions(stage: str) -> list[str]:
    """The descriptions of every `train-<stage>-progress` artifact whose progress reached 100 %."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"train-{stage}-progress"])))
    return [a.description for a in arts if a.data == 100.0]


@pytest.fixture(scope="module")
def s2t_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flows.train import train

    out = tmp_path_factory.mktemp("s2t") / "run"
    train(cfg=_cfg(tiny_corpus, out, "s2t"))
    return out


def test_s2t_ddp_run_keeps_ranks_identical_and_loss_falls(s2t_run: Path) -> None:
    summary = json.loads((s2t_run / "summary.json").read_text())
    sums = summary["param_checksums"]
    assert summary["world_size"] == 2 and len(sums) == 2 and len(set(sums)) == 1
    metrics = _metrics(s2t_run)
    assert metrics[-1]["step"] == 8 and metrics[-1]["loss"] < metrics[0]["loss"]
    # the driver followed the Ray workers' metrics.jsonl into the progress artifact, to the last step
    assert any(d.startswith("Stage s2t: step 8/8 · loss") for d in _progress_descriptions("s2t"))


def test_resume_continues_from_the_last_checkpoint(s2t_run: Path, tiny_corpus: Path) -> None:
    from flows.train import train

    train(cfg=_cfg(tiny_corpus, s2t_run, "s2t", max_steps=12, resume=True))
    steps = [m["step"] for m in _metrics(s2t_run)]
    assert steps[-1] == 12 and steps == sorted(set(steps))  # continued, no step logged twice
    assert any(d.startswith("Stage s2t: step 12/12") for d in _progress_descriptions("s2t"))


def test_ask_answers_from_audio(s2t_run: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from echox.cli import main
    from tasks.data import load_corpus
    from tasks.tts import write_wav

    row = load_corpus(tiny_corpus)[0]
    write_wav(tmp_path / "q.wav", row["question_audio"])
    assert main(["ask", "--model", str(s2t_run / "model"), "--audio", str(tmp_path / "q.wav"),
                 "--max-new-tokens", "8"]) == 0


def test_t2c_stage_trains_and_prints_units(tiny_corpus: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main
    from flows.train import train
    from tests.tasks.test_train_metrics import scalars_of

    out = tmp_path / "t2c"
    train(cfg=_cfg(tiny_corpus, out, "t2c", max_steps=6, workers=1, launcher="local"))
    metrics = _metrics(out)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    # TensorBoard events beside metrics.jsonl hold the same loss at the same steps
    assert scalars_of(out / "tb", "loss") == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    assert main(["t2c", "--model", str(out / "model"), "--text", "two plus two is four",
                 "--max-units", "12"]) == 0
    units = capsys.readouterr().out.split()
    assert units and all(0 <= int(u) < 16 for u in units)


def test_vocoder_stage_trains_from_the_cli_and_vocodes_a_row(tiny_corpus: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile as sf

    from echox.cli import main
    from tasks.data import load_corpus

    out = tmp_path / "vocoder"
    assert main(["train", "--stage", "vocoder", "--corpus", str(tiny_corpus), "--out", str(out),
                 "--max-steps", "4", "--batch-size", "4", "--warmup-steps", "1", "--log-every", "2",
                 "--ckpt-every", "2", "--workers", "1", "--launcher", "local"]) == 0
    metrics = _metrics(out)
    assert {"mel", "duration"} <= set(metrics[-1]) and metrics[-1]["loss"] < metrics[0]["loss"]
    config = json.loads((out / "model" / "config.json").read_text())
    manifest = json.loads((tiny_corpus / "manifest.json").read_text())
    assert config["extra"]["codebook"]["sha256"] == manifest["codebook"]["sha256"]
    assert config["extra"]["num_units"] == 16 and config["extra"]["frame_rate"] == 100.0
    # the flow's ASR round trip on the held-out rows (which the trainer left out)
    summary = json.loads((out / "summary.json").read_text())
    check = json.loads((out / "intelligibility.json").read_text())
    assert summary["heldout_rows"] == 4 and summary["examples"] == 12  # 16 rows: 4 held out
    assert check["summary"]["rows"] == 4 and len(check["rows"]) == 8  # answer and question of each
    assert summary["intelligibility"] == check["summary"] and check["summary"]["wer_original"] is not None
    row_id = load_corpus(tiny_corpus)[0]["id"]
    wav = tmp_path / "row.wav"
    assert main(["vocode", "--model", str(out), "--corpus", str(tiny_corpus), "--id", row_id,
                 "--out-wav", str(wav)]) == 0
    assert sf.info(str(wav)).samplerate == 16_000 and sf.info(str(wav)).frames > 0


@pytest.mark.parametrize("ctc", ["tokens", "chars"])
def test_encoder_pretraining_then_stage_one_starts_from_it(tiny_corpus: Path, tmp_path: Path, ctc: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`--stage encoder` on a real corpus (a fixed tokenizer: the tiny sizes over a local LLM directory),
    its held-out greedy-CTC check, then stage I from `--encoder-init`; a random-init LLM is refused. Over
    the LLM's tokens and over characters (the character adapter)."""
    from echox.cli import main
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tasks.train_stage import corpus_texts

    base = prepare_base_llm(resolve_preset("tiny"), corpus_texts=corpus_texts(tiny_corpus),
                            cache_dir=tmp_path / "llm-cache")
    fixed = ["--set", "llm=path", "--set", f"llm_path={base}", "--set", "trim_audio_window=true",
             "--set", f"ctc_target={ctc}", "--set", f"adapter_ctc_embed={ctc == 'chars'}"]
    common = ["--corpus", str(tiny_corpus), "--batch-size", "4", "--warmup-steps", "1", "--log-every", "2",
              "--ckpt-every", "4", "--workers", "1", "--launcher", "local", "--cache-dir", str(tmp_path)]
    enc = tmp_path / "encoder"
    assert main(["train", "--stage", "encoder", "--out", str(enc), "--max-steps", "6", "--lr", "3e-3",
                 *common, *fixed]) == 0
    metrics = _metrics(enc)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    check = json.loads((enc / "asr_eval.json").read_text())
    summary = json.loads((enc / "summary.json").read_text())
    assert summary["heldout_rows"] == 4 and check["summary"]["rows"] == 4 and len(check["items"]) == 8
    assert summary["asr_eval"] == check["summary"] and check["summary"]["wer"] >= 0
    from core.errors import ConfigError
    from tasks.encoder_eval import lexicon_sweep  # tools/lexicon_sweep.py: greedy against lexicon settings

    if ctc == "chars":
        rows = lexicon_sweep(enc / "model", tiny_corpus, [{}, {"lexicon_beam": 2}])
        assert rows[0]["ctc_decoder"] == "greedy" and rows[0]["wer"] == check["summary"]["wer"]
        assert [(r["ctc_decoder"], r.get("lexicon_beam")) for r in rows[1:]] == [("lexicon", None),
                                                                                ("lexicon", 2)]
        for bad, needle in (({"lr": 1e-3}, "not lexicon settings"), ({"lexicon_weight": -1.0}, ">= 0")):
            with pytest.raises(ConfigError, match=needle):
                lexicon_sweep(enc / "model", tiny_corpus, [bad])
    else:
        with pytest.raises(ValueError, match="reads a character CTC"):
            lexicon_sweep(enc / "model", tiny_corpus, [{}])

    s2t = tmp_path / "s2t"
    assert main(["train", "--stage", "s2t", "--out", str(s2t), "--max-steps", "2", "--encoder-init",
                 str(enc), *common, *fixed]) == 0
    assert (s2t / "model" / "config.json").exists()

    capsys.readouterr()
    assert main(["train", "--stage", "encoder", "--out", str(tmp_path / "no"), *common]) == 2
    assert "stage encoder needs a fixed LLM tokenizer" in capsys.readouterr().err
    assert main(["train", "--stage", "t2c", "--out", str(tmp_path / "no"), "--encoder-init", str(enc),
                 *common]) == 2
    assert "encoder_init (--encoder-init) is a stage s2t option, not t2c" in capsys.readouterr().err
