"""User mistakes through the `echox` CLI: exit code 2, one `error:` message naming the problem, no traceback.

The table runs `echox.cli.main --verbose` in-process (the same code path, with stderr captured at the file
descriptor, and Prefect's and Ray's log output streamed there, so it is checked too); a few cases also run
as a real child process, as a user runs it (that output then goes to the run's log:
tests/echox/test_quiet_cli.py). Per-record problems (malformed JSON, wrong types, missing fields, duplicate
ids, empty text, text that normalises to nothing) are tabled in tests/tasks/test_source.py and
tests/flows/test_build_corpus.py; here the remaining ones go through a whole build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from tests.reliability.conftest import Cli, assert_user_error, build_args, qa_rows, write_source

pytestmark = pytest.mark.integration


def _main(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in this process (--verbose, for a command that runs flows); (exit code, everything
    written to stderr)."""
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    from echox.cli import COMMANDS, main

    # Prefect's console handler keeps the stream it was set up with (an earlier test's capture).
    consoles = [h.console for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [c.file for c in consoles]
    capfd.readouterr()
    try:
        for c in consoles:
            c.file = sys.stderr
        streams = next(c.verbose for c in COMMANDS if c.name == argv[0])  # a command that runs flows
        rc = main([*argv, "--verbose"] if streams else argv)
    finally:
        for c, f in zip(consoles, saved, strict=True):
            c.file = f
    return rc, capfd.readouterr().err


def _mfcc_codebook(path: Path, k: int = 8) -> Path:
    """A codebook as an MFCC build writes it (K centroids over 39-dim MFCC+deltas)."""
    from tasks.backends.features_mfcc import MFCCFeatures
    from tasks.units import Codebook

    centroids = np.random.default_rng(0).normal(size=(k, 39)).astype(np.float32)
    Codebook(centroids=centroids, feature_config=MFCCFeatures().config(), seed=0).save(path)
    return path


def _src3(tmp: Path) -> Path:
    return write_source(tmp / "qa3.jsonl", qa_rows(3))


# Each case: (setup(tmp) -> extra build-corpus arguments with --source/--out, expected message part).
Case = Callable[[Path], list[str]]


def _datasets_like_dir(tmp: Path) -> list[str]:
    (tmp / "notads").mkdir()
    (tmp / "notads" / "notes.txt").write_text("not a dataset")
    return build_args(tmp / "notads", tmp / "out")


def _parquet_garbage(tmp: Path) -> list[str]:
    (tmp / "qa.parquet").write_bytes(b"PAR1 this is not parquet")
    return build_args(tmp / "qa.parquet", tmp / "out")


def _codebook_other_features(tmp: Path) -> list[str]:
    (tmp / "hubert.pt").write_bytes(b"a checkpoint file; never loaded by the preflight")
    return build_args(_src3(tmp), tmp / "out", "--units", "wav2vec2", "--feature-checkpoint",
                      str(tmp / "hubert.pt"), "--codebook", str(_mfcc_codebook(tmp / "mfcc.npz")))


def _not_a_checkpoint(tmp: Path) -> list[str]:
    (tmp / "bad.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    return build_args(_src3(tmp), tmp / "out", "--units", "wav2vec2",
                      "--feature-checkpoint", str(tmp / "bad.pt"))


def _garbage_codebook(tmp: Path) -> list[str]:
    (tmp / "bad.npz").write_bytes(b"PK not a zip")
    return build_args(_src3(tmp), tmp / "out", "--codebook", str(tmp / "bad.npz"))


def _all_rejected(tmp: Path) -> list[str]:
    rows = [{**r, "voice": "xx-none"} for r in qa_rows(3)]
    return build_args(write_source(tmp / "qa.jsonl", rows), tmp / "out")


BUILD_CASES: dict[str, tuple[Case, str]] = {
    "missing source": (lambda t: build_args(t / "nope.jsonl", t / "out"), "source not found"),
    "directory that is not a datasets dir": (_datasets_like_dir, "is not a readable datasets directory"),
    "parquet garbage": (_parquet_garbage, "is not a readable Parquet file"),
    "wav2vec2 without checkpoint": (lambda t: build_args(_src3(t), t / "out", "--units", "wav2vec2"),
                                    "--units wav2vec2 needs a checkpoint path (--feature-checkpoint)"),
    "wav2vec2 missing checkpoint": (
        lambda t: build_args(_src3(t), t / "out", "--units", "wav2vec2", "--feature-checkpoint",
                             str(t / "nope.pt")), "feature checkpoint not found: {tmp}/nope.pt"),
    # Passes the driver's checks; fails inside the Ray worker, and must arrive as itself, not retried.
    "wav2vec2 file that is no checkpoint": (_not_a_checkpoint, "cannot read checkpoint {tmp}/bad.pt"),
    "voice the engine lacks": (lambda t: build_args(_src3(t), t / "out", "--voices", "en-us", "xx-none"),
                               "--voices 'xx-none': voice 'xx-none' is not available in espeak-ng"),
    "missing codebook": (lambda t: build_args(_src3(t), t / "out", "--codebook", str(t / "nope.npz")),
                         "codebook not found"),
    "garbage codebook": (_garbage_codebook, "codebook is corrupt: {tmp}/bad.npz"),
    "codebook of other features": (_codebook_other_features,
                                   "has dimension 39, but this build's wav2vec2 features have dimension 768"),
    "codebook with another K": (
        lambda t: build_args(_src3(t), t / "out", "--codebook", str(_mfcc_codebook(t / "k8.npz")),
                             "--num-units", "100"), "has K=8 units but --num-units is 100"),
    "K larger than the frames": (lambda t: build_args(_src3(t), t / "out", "--num-units", "5000"),
                                 "k-means needs at least K=5000 frames but the speech of 3 records gives"),
    "every record rejected": (_all_rejected, "every record was rejected (3 rejects): 3× voice"),
    "reject fraction out of range": (lambda t: build_args(_src3(t), t / "out", "--max-reject-fraction", "2"),
                                     "max_reject_fraction: Input should be less than or equal to 1"),
}


@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_build_corpus_user_error(case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                 ray_session: None) -> None:
    setup, match = BUILD_CASES[case]
    rc, err = _main(setup(tmp_path), capfd)
    assert_user_error(rc, err, "build-corpus", match.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "out" / "manifest.json").exists()
    if case == "missing source":
        assert not (tmp_path / "out").exists()  # a typo leaves no empty output directory behind


def test_other_commands_user_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                    prefect_server: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bogus.yaml").write_text("source: qa.jsonl\nout: out\nbogus_field: 3\n")
    cases = [
        (["ask", "--model", "/nope", "--audio", str(tmp_path / "x.wav")], "checkpoint not found: /nope"),
        (["t2c", "--model", "/nope", "--text", "hello"], "checkpoint not found: /nope"),
        (["t2c", "--model", str(tmp_path / "empty"), "--text", "hello"], "is not an echox model checkpoint"),
        (["pipeline", "--config", str(tmp_path / "bogus.yaml")],
         "bogus_field: Extra inputs are not permitted"),
        (["pipeline", "--config", str(tmp_path / "none.yaml")], "config file not found"),
    ]
    for argv, match in cases:
        rc, err = _main(argv, capfd)
        assert_user_error(rc, err, argv[0], match)


def test_unknown_config_field_is_named() -> None:
    from core.config import build
    from tasks.configs import BuildCorpusConfig

    with pytest.raises(ConfigError, match=r"(?s)build-corpus: invalid configuration.*num_unit: Extra inputs"):
        build(BuildCorpusConfig, {"source": "qa.jsonl", "out": "o", "num_unit": 8}, "build-corpus")


def test_unknown_option_is_an_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["build-corpus", "--source", "s", "--out", "o", "--bogus", "8"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus 8" in capsys.readouterr().err


def test_k_above_the_frame_sample_is_refused_before_any_work(tmp_path: Path) -> None:
    from tasks.configs import BuildCorpusConfig
    from tasks.corpus_preflight import preflight

    cfg = BuildCorpusConfig(source=str(_src3(tmp_path)), out=str(tmp_path / "out"), tts="espeak",
                            num_units=64, kmeans_max_frames=50)
    with pytest.raises(ConfigError, match=r"num_units \(K=64\) exceeds kmeans_max_frames \(50\)"):
        preflight(cfg)


def test_other_build_in_out_dir_is_refused_unless_overwrite(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                            ray_session: None) -> None:
    src = _src3(tmp_path)
    out = tmp_path / "out"
    assert _main(build_args(src, out), capfd)[0] == 0
    rc, err = _main(build_args(src, out, "--num-units", "9"), capfd)
    assert_user_error(rc, err, "build-corpus", "holds a different build (other config or source); "
                                               "choose another --out or pass --overwrite")
    assert json.loads((out / "manifest.json").read_text())["codebook"]["num_units"] == 8  # left alone
    rc, err = _main(build_args(src, out, "--num-units", "9", "--overwrite"), capfd)
    assert rc == 0, err[-3000:]
    assert json.loads((out / "manifest.json").read_text())["codebook"]["num_units"] == 9


def test_bad_records_become_rejects_and_too_many_fail_with_a_summary(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ray_session: None) -> None:
    rows: list[dict | bytes] = [*qa_rows(6)]
    rows.append({"id": "long", "question": "Why? " + "Because it is so. " * 300, "answer": "No."})
    rows.append(b'{"id": "latin1", "question": "Caf\xe9 or tea?", "answer": "Tea."}')
    rows.append({"id": "klingon", "question": "Hello?", "answer": "Hi.", "voice": "xx-none"})
    src = write_source(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "out"
    rc, err = _main(build_args(src, out, "--max-reject-fraction", "0.5"), capfd)
    assert rc == 0, err[-3000:]
    rejects = {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert sorted(rejects) == ["klingon", "latin1", "long"]
    assert "more than the limit of 600" in rejects["long"]["reason"]
    assert "not valid UTF-8" in rejects["latin1"]["reason"] and rejects["latin1"]["line"] == 8
    assert rejects["klingon"]["reason"] == "voice 'xx-none' is not available in espeak-ng"
    # The same build with the default limit (25 %) fails loudly, naming the count and the reasons.
    rc, err = _main(build_args(src, out), capfd)
    assert_user_error(rc, err, "build-corpus", "3 of 9 records rejected (33% > the allowed 25%): ")
    for reason in ("1× voice … is not available in espeak-ng", "1× line is not valid UTF-",
                   "1× spoken text has … characters, more than the limit of …"):
        assert reason in err


@pytest.mark.parametrize(("argv", "command", "match"), [
    (["build-corpus", "--source", "/nope/qa.jsonl", "--out", "/tmp/never-written"], "build-corpus",
     "source not found: /nope/qa.jsonl"),
    (["t2c", "--model", "/nope", "--text", "hi"], "t2c", "checkpoint not found: /nope"),
    (["ask", "--model", "/nope", "--audio", "/nope.wav"], "ask", "checkpoint not found: /nope"),
])
def test_real_process_prints_no_traceback(cli: Cli, argv: list[str], command: str, match: str) -> None:
    res = cli.run(argv, timeout=120)
    assert_user_error(res.returncode, res.stderr, command, match)
