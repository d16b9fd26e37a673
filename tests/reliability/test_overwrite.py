"""`--overwrite` never deletes user data, failed builds never look finished, refused folders stay untouched,
and every mistake the input alone shows fails before Prefect or Ray start (issue: reliability round 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import runtime
from tests.conftest import CHECK_CORPUS
from tests.reliability.conftest import assert_user_error, build_args, qa_rows, write_source
from tests.reliability.test_bad_inputs import _main


@pytest.fixture()
def no_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as starting (or finding) a Prefect server."""

    def refuse() -> str:
        raise AssertionError("the command started Prefect before reporting a mistake in its input")

    monkeypatch.setattr(runtime, "ensure_prefect_api", refuse)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to show a folder was left exactly as it was)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _finished_build(tmp: Path, capfd: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, Path]:
    src = write_source(tmp / "qa.jsonl", qa_rows(3))
    out = tmp / "out"
    rc, err = _main(build_args(src, out, *extra), capfd)
    assert rc == 0, err[-3000:]
    return src, out


# ------------------------------------------------------------------ --overwrite and the user's data
def test_source_inside_out_is_refused_even_with_overwrite(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                          no_prefect: None) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = write_source(out / "qa.jsonl", qa_rows(3))
    before = _tree(out)
    rc, err = _main(build_args(src, out, "--overwrite"), capfd)
    assert_user_error(rc, err, "build-corpus", f"the source {src} lies inside --out {out}")
    assert _tree(out) == before  # the source is still there, and nothing was added


def test_source_equal_to_out_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                        ray_session: None) -> None:
    _, corpus = _finished_build(tmp_path, capfd)
    before = _tree(corpus)
    rc, err = _main(build_args(corpus, corpus, "--overwrite"), capfd)
    assert_user_error(rc, err, "build-corpus", "lies inside --out")
    assert _tree(corpus) == before


def test_overwrite_keeps_files_no_build_wrote(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                              ray_session: None) -> None:
    src, out = _finished_build(tmp_path, capfd)
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(b"\x00\x01")
    rc, err = _main(build_args(src, out, "--num-units", "9", "--overwrite"), capfd)
    assert rc == 0, err[-3000:]
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "mine" / "data.bin").read_bytes() == b"\x00\x01"
    assert json.loads((out / "manifest.json").read_text())["codebook"]["num_units"] == 9
    assert not (out / ".echox-previous").exists()  # removed once the new build finished
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_overwrite_of_a_folder_of_foreign_files_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                            no_prefect: None) -> None:
    src = write_source(tmp_path / "qa.jsonl", qa_rows(3))
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = _tree(out)
    rc, err = _main(build_args(src, out, "--overwrite"), capfd)
    assert_user_error(rc, err, "build-corpus", "holds files that no echox build wrote (holiday.jpg)")
    assert _tree(out) == before and not (out / ".echox").exists()


def test_failed_overwrite_keeps_the_previous_build(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                   ray_session: None) -> None:
    src, out = _finished_build(tmp_path, capfd)
    old = _tree(out)
    old_manifest = json.loads((out / "manifest.json").read_text())
    bad = write_source(tmp_path / "qa.jsonl", [*qa_rows(3), {"id": "x", "question": "Hi?", "answer": "Yo.",
                                                             "voice": "xx-none"}])
    assert bad == src  # the source changed in place: a different build
    rc, err = _main(build_args(src, out, "--overwrite", "--max-reject-fraction", "0.1"), capfd)
    assert_user_error(rc, err, "build-corpus", "1 of 4 records rejected")
    assert "previous build is kept in .echox-previous" in err
    kept = out / ".echox-previous"
    assert json.loads((kept / "manifest.json").read_text()) == old_manifest
    assert {n: b for n, b in _tree(kept).items()} == {n: b for n, b in old.items() if "/" not in n}


# ------------------------------------------------------------------ a failed build never looks finished
def test_build_over_the_reject_limit_leaves_no_manifest(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                        ray_session: None) -> None:
    from core.errors import InputError
    from tasks.data import load_corpus
    from tasks.train_stage import corpus_num_units

    rows: list = [*qa_rows(3), {"id": "v", "question": "Hi?", "answer": "Yo.", "voice": "xx-none"}]
    src = write_source(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "out"
    rc, err = _main(build_args(src, out, "--max-reject-fraction", "0.1"), capfd)
    assert_user_error(rc, err, "build-corpus", "1 of 4 records rejected (25% > the allowed 10%)")
    assert not (out / "manifest.json").exists() and not (out / "state.json").exists()
    failure = json.loads((out / "failure.json").read_text())
    assert failure["status"] == "failed" and "1 of 4 records rejected" in failure["reason"]
    res = subprocess.run([sys.executable, str(CHECK_CORPUS), str(out), "--source", str(src)],
                         capture_output=True, text=True)
    assert res.returncode != 0, res.stdout
    for read in (load_corpus, corpus_num_units):
        with pytest.raises(InputError, match="is a failed corpus build, not a usable one: 1 of 4 records"):
            read(out)
    labels = ["echo-labels", "--corpus", str(out), "--s2t", "a", "--t2c", "b", "--out", str(tmp_path / "l")]
    rc, err = _main(labels, capfd)
    assert_user_error(rc, err, "echo-labels", "is a failed corpus build")
    train = ["train", "--stage", "s2t", "--corpus", str(out), "--out", str(tmp_path / "run")]
    rc, err = _main(train, capfd)
    assert_user_error(rc, err, "train", "is a failed corpus build")
    # Accepting the rejects finishes the same build (a resume): the manifest appears, failure.json goes.
    rc, err = _main(build_args(src, out, "--max-reject-fraction", "0.5"), capfd)
    assert rc == 0, err[-3000:]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert not (out / "failure.json").exists() and len(load_corpus(out)) == 3


# ------------------------------------------------------------------ refused before Prefect starts
def _src(tmp: Path) -> Path:
    return write_source(tmp / "qa.jsonl", qa_rows(3))


def _a_file(tmp: Path) -> Path:
    (tmp / "file.txt").write_text("not a folder")
    return tmp / "file.txt"


@pytest.mark.parametrize(("setup", "match"), [
    (lambda t: build_args(_src(t), _a_file(t)), "is an existing file, not a directory"),
    (lambda t: build_args(write_source(t / "empty.jsonl", []), t / "out"), "holds no records"),
    (lambda t: build_args(write_source(t / "bad.jsonl", [b"{not json", b"[1, 2]"]), t / "out"),
     "none of the 2 records of"),
    (lambda t: build_args(_src(t), t / "out", "--units", "wav2vec2", "--feature-checkpoint",
                          str(t / "missing.pt")), "feature checkpoint not found"),
    (lambda t: build_args(_src(t), t / "out", "--voices", "xx-none"), "--voices 'xx-none'"),
])
def test_build_input_mistakes_fail_before_prefect_and_create_nothing(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], no_prefect: None, setup: object,
        match: str) -> None:
    argv = setup(tmp_path)  # type: ignore[operator]
    rc, err = _main(argv, capfd)
    assert_user_error(rc, err, "build-corpus", match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "command", "match"), [
    (["train", "--stage", "s2t", "--corpus", "/nope", "--out", "/tmp/x", "--max-steps", "0"], "train",
     "max_steps: Input should be greater than or equal to 1"),
    (["train", "--stage", "s2t", "--corpus", "/nope", "--out", "/tmp/x"], "train", "is not a built corpus"),
    (["train", "--stage", "s2t", "--corpus", "/nope", "--out", "/tmp/x", "--preset", "huge"], "train",
     "unknown model preset 'huge'"),
    (["evaluate", "--model", "m", "--eval-set", "e.jsonl", "--out", "r.json", "--max-new-tokens", "0"],
     "evaluate", "max_new_tokens"),
    (["echo-labels", "--corpus", "c", "--s2t", "a", "--t2c", "b", "--out", "o", "--workers", "0"],
     "echo-labels", "workers"),
    (["pipeline", "--config", "/nope.yaml"], "pipeline", "config file not found: /nope.yaml"),
    (["echo-labels", "--corpus", "/nope", "--s2t", "a", "--t2c", "b", "--out", "o"], "echo-labels",
     "corpus directory not found: /nope"),
    (["evaluate", "--model", "m", "--eval-set", "/nope.jsonl", "--out", "r.json"], "evaluate",
     "eval set not found: /nope.jsonl"),
    (["evaluate", "--model", "/nope", "--eval-set", __file__, "--out", "r.json"], "evaluate",
     "checkpoint directory /nope does not exist"),
])
def test_bad_options_fail_before_prefect(capfd: pytest.CaptureFixture[str], no_prefect: None,
                                         argv: list[str], command: str, match: str) -> None:
    rc, err = _main(argv, capfd)
    assert_user_error(rc, err, command, match)


def test_refused_flow_run_leaves_no_folder(tmp_path: Path, prefect_server: str) -> None:
    """The flow itself (a deployment run skips the CLI's checks) also leaves a refused folder untouched."""
    from core.errors import InputError
    from flows.build_corpus import build_corpus
    from tasks.configs import BuildCorpusConfig

    src = write_source(tmp_path / "qa.jsonl", [b"{broken"])
    cfg = BuildCorpusConfig(source=str(src), out=str(tmp_path / "out"), tts="espeak", progress=False)
    with pytest.raises(InputError, match="none of the 1 records"):
        build_corpus(config=cfg)
    assert not (tmp_path / "out").exists()
