"""Echo training on pseudo-labels (run_local), the Echo decoder's unit accuracy, and `echox speak`."""

from __future__ import annotations

import functools
import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from tasks.echo_labels import label_local
from tasks.speak import initial_echo, unit_accuracy
from tests.tasks.test_echo_labels import K, tiny_checkpoints, tiny_rows, write_tiny_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny corpus, checkpoints and their echo labels (every row kept)."""
    root = tmp_path_factory.mktemp("speak")
    rows = tiny_rows()
    corpus = write_tiny_corpus(root / "corpus", rows)
    s2t, t2c = tiny_checkpoints(root, rows)
    labels = root / "labels"
    manifest = label_local(str(corpus), str(s2t), str(t2c), str(labels), batch_size=4, max_units=40)
    if manifest["totals"]["rejected"]:
        raise RuntimeError(f"fixture expects no rejects: {manifest['rejects_by_reason']}")
    return {"root": root, "rows": rows, "corpus": corpus, "s2t": s2t, "t2c": t2c, "labels": labels}


def test_the_t2c_reads_back_its_own_labels_exactly(env: dict) -> None:
    # Teacher-forced on E(y′) of each segment, the decoder that generated the labels greedily must predict
    # every one of them (units and EOS): this pins the h_t ↔ y′_t alignment and the collator's spans.
    base = initial_echo(env["s2t"], env["t2c"])
    assert unit_accuracy(base, env["corpus"], env["labels"], prefix="text") == 1.0
    identity = unit_accuracy(base, env["corpus"], env["labels"], prefix="identity")
    assert 0.0 <= identity < 1.0


def test_unit_hits_counts_units_and_eos_or_only_the_first_targets(env: dict) -> None:
    from tasks.collate import make_collator
    from tasks.data import echo_examples
    from tasks.speak import unit_hits

    base = initial_echo(env["s2t"], env["t2c"]).eval()
    rows = list(echo_examples(env["corpus"], env["labels"]))
    batch = make_collator("echo", base)(rows)
    targets = [len(r["segment_units"]) + 1 for r in rows]  # every unit and the EOS
    with torch.no_grad():
        assert unit_hits(base, batch, "text") == (sum(targets), sum(targets))
        assert unit_hits(base, batch, "text", first=2) == (2 * len(rows), 2 * len(rows))
        right, total = unit_hits(base, batch, "adapter", first=3)
    assert total == sum(min(3, t) for t in targets) and 0 <= right < total


def test_echo_training_lowers_the_loss_and_beats_the_step0_model(env: dict, tmp_path: Path) -> None:
    from models.factory import build_for_stage
    from models.presets import preset_to_dict, resolve_preset
    from tasks.inference import load_checkpoint_model
    from tasks.train import TrainConfig, run_local

    build = functools.partial(build_for_stage, "echo", preset_to_dict(resolve_preset("tiny")), "",
                              s2t_checkpoint=str(env["s2t"]), t2c_checkpoint=str(env["t2c"]), seed=0)
    cfg = TrainConfig(stage="echo", corpus_dir=str(env["corpus"]), out_dir=str(tmp_path / "run"),
                      labels_dir=str(env["labels"]), max_steps=16, batch_size=3, lr=3e-3, warmup_steps=2,
                      log_every=1, ckpt_every=16, num_threads=1)
    summary = run_local(cfg, build)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 16 and summary["examples"] == 6  # one example per (row, segment)
    first, last = metrics[0], metrics[-1]
    assert last["echo"] < 0.5 * first["echo"] and last["loss"] < first["loss"], (first, last)
    step0 = unit_accuracy(initial_echo(env["s2t"], env["t2c"], seed=0), env["corpus"], env["labels"])
    trained = unit_accuracy(load_checkpoint_model(tmp_path / "run", "echo"), env["corpus"], env["labels"])
    assert trained > step0, (step0, trained)


@pytest.fixture(scope="module")
def echo_ckpt(env: dict) -> Path:
    """A random-init echo model (T2C decoder + untrained adapter) saved like a trained one."""
    from models.io import save_model

    return save_model(initial_echo(env["s2t"], env["t2c"]), env["root"] / "echo")


@pytest.fixture
def wav(env: dict, tmp_path: Path) -> Path:
    from tasks.tts import write_wav

    write_wav(tmp_path / "q.wav", env["rows"][1]["question_audio"])
    return tmp_path / "q.wav"


def _speak(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`echox speak ...` through the CLI's main (no Prefect server needed)."""
    from echox.cli import main

    monkeypatch.setattr("core.runtime.ensure_prefect_api", lambda: "")
    return main(["speak", *args])


def test_speak_streams_segments_with_units(echo_ckpt: Path, wav: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # lookahead 0: every state is its own local peak, so a random model cuts every 4 tokens.
    trigger = ["--min-len-thresh", "3", "--min-len-peak", "5", "--lookahead", "0", "--thresh", "-1"]
    args = ["--model", str(echo_ckpt), "--audio", str(wav), "--max-new-tokens", "10", "--max-units", "4"]
    assert _speak(args + trigger, monkeypatch) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [re.match(r"segment (\d+) \[(\d+), (\d+)\) at ([\d.]+) s: ", line) for line in out]
    spans = [(int(m[2]), int(m[3])) for m in heads if m]
    assert [int(m[1]) for m in heads if m] == list(range(1, len(spans) + 1)) and len(spans) >= 3
    assert spans[0][0] == 0 and spans[-1][1] == 10 and all(a[1] == b[0] for a, b in pairwise(spans))
    units = [re.match(r"  units \((\d+)\)[^:]*: ?(.*)", line) for line in out]
    units = [m for m in units if m]
    assert len(units) == len(spans)
    for m in units:
        listed = [int(u) for u in m[2].split()]
        assert int(m[1]) == len(listed) <= 4 and all(0 <= u < K for u in listed)
    assert sum(int(m[1]) for m in units) > 0
    assert any(line.startswith("answer: ") for line in out)
    assert re.search(r"time to first segment: [\d.]+ s; \d+ segments, \d+ units", "\n".join(out))
    assert "no waveform written" in out[-1]


def test_speak_vocoder_errors(echo_ckpt: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--model", str(echo_ckpt), "--audio", str(wav)]
    out = ["--out-wav", str(tmp_path / "a.wav")]
    assert _speak([*base, "--vocoder", str(tmp_path / "none.pt"), *out], monkeypatch) == 2
    assert "vocoder checkpoint not found" in capsys.readouterr().err
    (tmp_path / "voc.pt").write_bytes(b"x")
    assert _speak([*base, "--vocoder", str(tmp_path / "voc.pt"), *out], monkeypatch) == 2
    assert "not a vocoder checkpoint" in capsys.readouterr().err
    assert _speak([*base, *out], monkeypatch) == 2
    assert "needs --vocoder" in capsys.readouterr().err
    assert _speak([*base, "--vocoder", str(_vocoder(tmp_path, K))], monkeypatch) == 2
    assert "needs --out-wav" in capsys.readouterr().err
    assert _speak([*base, "--vocoder", str(_vocoder(tmp_path, K)), "--out-wav", "/no/such/dir/a.wav"],
                  monkeypatch) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _speak([*base, "--vocoder", str(_vocoder(tmp_path, K + 1)), *out], monkeypatch) == 2
    assert f"K={K}" in capsys.readouterr().err
    assert not (tmp_path / "a.wav").exists()
    assert _speak(["--model", str(tmp_path / "nope"), "--audio", str(wav)], monkeypatch) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _vocoder(root: Path, num_units: int) -> Path:
    """A random tiny vocoder checkpoint over `num_units` units."""
    from models.io import save_model
    from models.presets import resolve_preset
    from models.vocoder import build_vocoder, vocoder_config

    preset = resolve_preset("tiny")
    model = build_vocoder(preset, vocoder_config(preset, {"num_units": num_units}), seed=0)
    return save_model(model, root / f"voc-{num_units}")


def test_speak_with_a_vocoder_writes_the_answer_wav(echo_ckpt: Path, wav: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    # lookahead 0: every state is its own local peak, so a random model cuts every 4 tokens.
    trigger = ["--min-len-thresh", "3", "--min-len-peak", "5", "--lookahead", "0", "--thresh", "-1"]
    args = ["--model", str(echo_ckpt), "--audio", str(wav), "--max-new-tokens", "10", "--max-units", "4",
            "--vocoder", str(_vocoder(tmp_path, K)), "--out-wav", str(tmp_path / "answer.wav")]
    assert _speak(args + trigger, monkeypatch) == 0
    out = capsys.readouterr().out
    first = re.search(r"time to first audio: ([\d.]+) s; ([\d.]+) s of speech written", out)
    assert first and float(first[2]) > 0, out
    info = sf.info(str(tmp_path / "answer.wav"))
    assert info.samplerate == 16_000 and info.frames > 0
