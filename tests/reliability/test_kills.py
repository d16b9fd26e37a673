"""Kills beyond the corpus build: echo labels, training, the pipeline, and the Prefect server.

Each test kills a real `echox` process (SIGKILL of its whole process group, or of one Ray worker through
the ECHOX_FAULT_INJECT hook), reruns the same command, and compares the outputs with an uninterrupted
run's: shard sha256s, final weights, rejects. A rerun that redoes, loses or changes anything fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.build_corpus import FAULT_ENV
from tasks.shards import file_sha256
from tests.reliability.conftest import ROOT, Cli, build_args, qa_rows, write_source
from tests.reliability.killing import (
    check_corpus,
    corpus_ids,
    expected_ids,
    kill_group,
    kill_when,
    survivors,
    wait_for,
)

pytestmark = pytest.mark.integration
MAX_UNITS = 6  # T2C length guard of the echo runs (kills are compared with a clean run at the same guard)
ECHO_SHARDS = 6


# ----------------------------------------------------------------------------- helpers


def rerun(cli: Cli, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `echox ARGS` to completion and require success."""
    res = cli.run(args, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def done_markers(folder: Path) -> dict[str, int]:
    """Done markers (name → mtime) in `folder`."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.done.json")}


def labels_result(out: Path) -> dict:
    """What must not depend on a kill: the run, every shard's rows and sha256, rejects, row totals."""
    manifest = json.loads((out / "manifest.json").read_text())
    totals = {k: manifest["totals"][k] for k in ("rows", "rejected", "segments", "units", "token_accuracy")}
    return {"run_hash": manifest["run_hash"], "shards": manifest["shards"], "totals": totals,
            "rejects": (out / "rejects.jsonl").read_text()}


def corpus_result(out: Path) -> dict:
    """A corpus build's kill-independent result: shards with sha256, codebook, totals."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {k: manifest[k] for k in ("shards", "config_hash", "totals")} | {
        "codebook": file_sha256(out / "codebook.npz")}


def weights_sha(run: Path) -> str:
    """sha256 of a training run's final model weights."""
    return file_sha256(run / "model" / "model.safetensors")


# ----------------------------------------------------------------------------- echo labels


@pytest.fixture(scope="module")
def echo_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic 12-row corpus in 6 shards, tiny S2T/T2C checkpoints, and the clean (one-process) labels."""
    from tasks.echo_labels import label_local
    from tests.tasks.test_echo_labels import tiny_checkpoints, tiny_rows, write_tiny_corpus

    root = tmp_path_factory.mktemp("kill-echo")
    rows = tiny_rows(2 * ECHO_SHARDS)
    corpus = write_tiny_corpus(root / "corpus", rows, shards=ECHO_SHARDS)
    s2t, t2c = tiny_checkpoints(root, rows)
    clean = root / "clean"
    label_local(str(corpus), str(s2t), str(t2c), str(clean), batch_size=2, max_units=MAX_UNITS)
    return {"root": root, "corpus": corpus, "s2t": s2t, "t2c": t2c, "clean": labels_result(clean)}


def echo_args(env: dict, out: Path) -> list[str]:
    """`echox echo-labels` on the module's corpus: one actor, so shards finish one after another."""
    return ["echo-labels", "--corpus", str(env["corpus"]), "--s2t", str(env["s2t"]), "--t2c",
            str(env["t2c"]), "--out", str(out), "--workers", "1", "--batch-size", "2",
            "--max-units", str(MAX_UNITS), "--quiet"]


def test_echo_labels_driver_sigkill_then_rerun_equals_a_clean_run(cli: Cli, echo_env: dict,
                                                                  tmp_path: Path) -> None:
    """Kill echo-labels at its first finished shard; the rerun keeps that shard and ends as a clean run."""
    out = tmp_path / "labels"
    kill_when(cli, echo_args(echo_env, out), tmp_path / "run1.log",
              lambda: bool(done_markers(out / ".echox")))
    done_before = done_markers(out / ".echox")
    assert 0 < len(done_before) < ECHO_SHARDS and not (out / "manifest.json").exists()
    stamps = {n: (out / n.replace(".done.json", ".arrow")).stat().st_mtime_ns for n in done_before}

    rerun(cli, echo_args(echo_env, out))
    assert labels_result(out) == echo_env["clean"]
    for name, mtime in done_before.items():  # finished shards were verified and kept, not redone
        assert (out / ".echox" / name).stat().st_mtime_ns == mtime
        assert (out / name.replace(".done.json", ".arrow")).stat().st_mtime_ns == stamps[name]
    assert not list(out.rglob("*.tmp")), "temp files of the killed run were left behind"


def test_echo_labels_ray_worker_sigkill_is_retried_to_the_clean_result(cli: Cli, echo_env: dict,
                                                                       tmp_path: Path) -> None:
    """The actor labelling shard 1 SIGKILLs itself before writing it; Ray restarts it, Prefect retries."""
    out = tmp_path / "labels"
    rerun(Cli({**cli.env, FAULT_ENV: "echo-shard-1:kill"}), echo_args(echo_env, out))
    assert [p.name for p in (out / ".echox" / "faults").iterdir()] == ["echo-shard-1-kill"]  # it fired
    assert labels_result(out) == echo_env["clean"]


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_env(tmp_path_factory: pytest.TempPathFactory, cli: Cli) -> dict:
    """A synthetic corpus and an uninterrupted local training run on it (the reference)."""
    from tests.tasks.test_echo_labels import tiny_rows, write_tiny_corpus

    root = tmp_path_factory.mktemp("kill-train")
    corpus = write_tiny_corpus(root / "corpus", tiny_rows(12), shards=2)
    env = {"root": root, "corpus": corpus}
    rerun(cli, train_args(env, root / "clean"))
    return {**env, "clean": root / "clean"}


def train_args(env: dict, out: Path, *extra: str) -> list[str]:
    """`echox train` of a tiny T2C in one local process: 16 steps, a checkpoint every 4."""
    return ["train", "--stage", "t2c", "--corpus", str(env["corpus"]), "--out", str(out), "--preset", "tiny",
            "--launcher", "local", "--max-steps", "16", "--batch-size", "2", "--lr", "3e-3",
            "--warmup-steps", "2", "--log-every", "2", "--ckpt-every", "4", "--seed", "3", *extra]


def _metrics(run: Path) -> list[dict]:
    """A run's metrics lines without the wall-clock fields."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "per_s" not in k and "time" not in k and "elapsed" not in k}
            for r in rows]


def test_training_sigkill_after_a_checkpoint_resumes_bit_identical(cli: Cli, train_env: dict,
                                                                   tmp_path: Path) -> None:
    """Kill `echox train` once its first checkpoint exists; `--resume` ends with the clean run's weights."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    kill_when(cli, train_args(train_env, out), tmp_path / "run1.log",
              lambda: any((out / "checkpoints").glob("step-*")))
    assert not (out / "summary.json").exists() and not (out / "model").exists()
    first = min(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert first < 16

    rerun(cli, train_args(train_env, out, "--resume"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 16
    assert weights_sha(out) == weights_sha(train_env["clean"])
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(train_env["clean"] / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert _metrics(out) == _metrics(train_env["clean"])  # the same loss curve, no line twice


def test_cli_resume_skips_a_malicious_rng_pt_in_one_line(cli: Cli, train_env: dict, tmp_path: Path) -> None:
    """The newest checkpoint's rng.pt pickles os.system (sha256 re-recorded): `--resume` warns once, in one
    line naming the file, runs no code, shows no traceback, and resumes from the checkpoint before."""
    from tests.tasks.test_checkpoint import poison

    out = tmp_path / "run"
    shutil.copytree(train_env["clean"], out)
    shutil.rmtree(out / "model")
    (out / "summary.json").unlink()
    ran = tmp_path / "code-ran"
    poison(out / "checkpoints" / "step-000016", "rng.pt", marker=ran)
    res = rerun(cli, train_args(train_env, out, "--resume"))
    text = res.stdout + res.stderr
    assert not ran.exists(), "the pickle's code ran"
    assert "Traceback" not in text and "UnpicklingError" in text, text[-3000:]
    warnings = [line for line in text.splitlines() if "skipping checkpoint" in line]
    assert len(warnings) == 1 and "step-000016" in warnings[0] and "rng.pt" in warnings[0], warnings
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("step-000012")
    assert weights_sha(out) == weights_sha(train_env["clean"])


# ----------------------------------------------------------------------------- the Prefect server


def test_a_lost_prefect_api_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A run that dies of a refused API connection (however deep the cause) prints one line, exit 2."""
    import httpx

    import tasks.build_corpus
    from echox import cli as cli_module

    def crash(cfg: object) -> None:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as e:
            raise RuntimeError("flow run crashed") from e

    monkeypatch.setattr(tasks.build_corpus, "inspect_build", crash)
    monkeypatch.setattr(cli_module.runtime, "ensure_prefect_api", lambda: None)
    assert cli_module.main(["build-corpus", "--source", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("echox build-corpus: error: lost the Prefect server at ")
    assert "Connection refused" in err and "rerun the same command" in err
    monkeypatch.setattr(tasks.build_corpus, "inspect_build", lambda cfg: 1 / 0)  # other errors stay errors
    with pytest.raises(ZeroDivisionError):
        cli_module.main(["build-corpus", "--source", "x", "--out", "y"])


def test_prefect_server_killed_mid_build_fails_cleanly_and_rerun_completes(cli: Cli, tmp_path: Path) -> None:
    """The build's Prefect server dies while shards run: the build finishes or fails in one line (no
    traceback, no hang); a rerun against a fresh server ends with the clean build's shards.

    Prefect's client retries a lost server 5 times (minutes in all); with retries off the same path is
    taken at once, so the test runs in the default suite."""
    from core import server

    src = write_source(tmp_path / "qa.jsonl", qa_rows(12))
    out, log = tmp_path / "out", tmp_path / "run1.log"
    proc, url = server.start_temporary(tmp_path / "state1")
    try:
        env = {**cli.env, "PREFECT_API_URL": url, "PREFECT_CLIENT_MAX_RETRIES": "0"}
        build = Cli(env).popen(build_args(src, out), log)
        try:
            wait_for(lambda: bool(done_markers(out / ".echox" / "audio")), build, 240, log)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            rc = build.wait(timeout=300)
        finally:
            if build.poll() is None:
                survivors(kill_group(build), timeout=10)
    finally:
        server.stop(proc)
    text = log.read_text()
    if rc != 0:
        assert "Traceback" not in text, text[-4000:]
        errors = [line for line in text.splitlines() if line.startswith("echox build-corpus: error:")]
        assert len(errors) == 1 and "Prefect" in errors[0], text[-3000:]
        assert not (out / "manifest.json").exists()

    proc, url = server.start_temporary(tmp_path / "state2")
    try:
        rerun(Cli({**cli.env, "PREFECT_API_URL": url}), build_args(src, out))
    finally:
        server.stop(proc)
    check_corpus(out, src)
    assert corpus_ids(out) == expected_ids(12)
    clean = tmp_path / "clean"
    rerun(cli, build_args(src, clean))
    assert corpus_result(out) == corpus_result(clean)


# ----------------------------------------------------------------------------- the pipeline


def test_pipeline_rerun_resumes_a_training_step_that_left_checkpoints(tmp_path: Path) -> None:
    """What lets a killed pipeline continue: a training step whose folder holds checkpoints of the run it
    plans (recorded as its pending fingerprint when it started) resumes them; others start clean."""
    from flows.pipeline_config import load_pipeline_config
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", out=str(tmp_path))
    s2t = next(p for p in make_plan(cfg) if p.step == "s2t")
    assert (s2t.action, s2t.resume) == ("run", False)
    (tmp_path / "s2t" / "checkpoints" / "step-000006").mkdir(parents=True)
    fp.write(tmp_path / "s2t", s2t.fingerprint, fp.PENDING)
    plans = {p.step: p for p in make_plan(cfg)}
    assert (plans["s2t"].action, plans["s2t"].resume) == ("resume", True) and not plans["t2c"].resume


@pytest.mark.slow
def test_pipeline_sigkill_during_training_then_rerun_equals_a_clean_run(cli: Cli, tmp_path: Path) -> None:
    """Kill `echox pipeline` (tiny config) after stage I's first checkpoint; the rerun skips the corpus,
    resumes stage I, runs the rest, and every step's output equals an uninterrupted pipeline's."""
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    for key in ("source", "eval_set"):
        base[key] = str(ROOT / base[key])

    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "out": str(tmp_path / name)}))
        return path

    rerun(cli, ["pipeline", "--config", str(config("clean"))], timeout=1200)
    out = tmp_path / "killed"
    kill_when(cli, ["pipeline", "--config", str(config("killed"))], tmp_path / "run1.log",
              lambda: any((out / "s2t" / "checkpoints").glob("step-*")), timeout=900)
    assert not (out / "s2t" / "summary.json").exists() and not (out / "echo-labels").exists()
    corpus_stamp = (out / "corpus" / "manifest.json").stat().st_mtime_ns

    rerun(cli, ["pipeline", "--config", str(config("killed"))], timeout=1200)
    clean = tmp_path / "clean"
    assert (out / "corpus" / "manifest.json").stat().st_mtime_ns == corpus_stamp  # skipped, not rebuilt
    assert corpus_result(out / "corpus") == corpus_result(clean / "corpus")
    assert json.loads((out / "s2t" / "summary.json").read_text())["resumed_from"] is not None
    for stage in ("s2t", "t2c", "echo"):
        assert weights_sha(out / stage) == weights_sha(clean / stage), stage
    assert labels_result(out / "echo-labels") == labels_result(clean / "echo-labels")
    assert eval_result(out) == eval_result(clean)


def eval_result(run: Path) -> dict:
    """An evaluation report without timings: accuracy, unit scores and every item's response."""
    report = json.loads((run / "eval" / "report.json").read_text())
    keys = ("items", "correct", "accuracy", "unit_accuracy", "unit_edit_distance", "rejected")
    items = [(r["id"], r["response"], r["correct"], r.get("unit_accuracy")) for r in report["items"]]
    return {"summary": {k: report["summary"][k] for k in keys}, "items": items}
