"""The pipeline reruns only what a change invalidates: the planner as a pure function over configs and
recorded fingerprints (table-driven, no training), --dry-run, --from/--only, the swap of a redone step."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import yaml

from core.errors import InputError
from tests.conftest import ROOT

STEPS = ["corpus", "s2t", "t2c", "vocoder", "echo-labels", "echo", "evaluate"]


def tiny_data(out: Path, **changes: object) -> dict:
    """configs/tiny.yaml with absolute inputs, `out`, and `changes` ("t2c.max_steps": 80 sets a field of a
    section; "seed": 1 a top-level one)."""
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data |= {"source": str(ROOT / data["source"]), "eval_set": str(ROOT / data["eval_set"]), "out": str(out)}
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            data[section] = {**data.get(section, {}), field: value}
        else:
            data[section] = value
    return data


def tiny_cfg(out: Path, **changes: object):
    from flows.pipeline_config import PipelineConfig, build

    return build(PipelineConfig, tiny_data(out, **changes), "test")


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step's outputs verify (the planner's own decisions are under test, not the checksums)."""
    import flows.pipeline_plan as plan_module

    steps = tuple(dataclasses.replace(s, done=lambda c: True) for s in plan_module.STEPS)
    monkeypatch.setattr(plan_module, "STEPS", steps)


def record(cfg) -> None:
    """What a finished pipeline leaves: each step's folder with its fingerprint (and a training step's
    last checkpoint), as the plan of `cfg` computes them."""
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    for p in make_plan(cfg):
        where = Path(p.folder)
        where.mkdir(parents=True, exist_ok=True)
        fp.write(where, p.fingerprint)
        if p.step in ("s2t", "t2c", "vocoder", "echo"):
            steps = getattr(cfg, p.step).max_steps
            (where / "checkpoints" / f"step-{steps:06d}").mkdir(parents=True)


def actions(cfg, **kw: str) -> dict[str, str]:
    from flows.pipeline_plan import make_plan

    return {p.step: p.action for p in make_plan(cfg, **kw)}


def expect(skip: str = "", resume: str = "", redo: str = "", absent: str = "") -> dict[str, str]:
    """{step: action} for all steps (but the `absent` ones): the named ones as given, the rest skipped."""
    out = dict.fromkeys((s for s in STEPS if s not in absent.split()), "skip")
    for action, names in (("skip", skip), ("resume", resume), ("redo", redo)):
        out |= dict.fromkeys(names.split(), action)
    return out


ALL_AFTER_S2T = "s2t echo-labels echo evaluate"
CASES = [
    ({}, expect()),
    ({"corpus.num_units": 17}, expect(redo=" ".join(STEPS))),
    ({"corpus.workers": 1}, expect()),  # scheduling only
    ({"corpus.max_reject_fraction": 0.5}, expect()),  # decides failure, not content
    ({"seed": 1}, expect(redo=" ".join(STEPS))),  # the corpus's voices and k-means, every init
    ({"preset_overrides": {"lora_rank": 4}}, expect(redo="s2t t2c vocoder echo-labels echo evaluate")),
    ({"s2t.lr": 1e-3}, expect(redo=ALL_AFTER_S2T)),
    ({"s2t.workers": 1}, expect(redo=ALL_AFTER_S2T)),  # Ray DDP: fewer ranks, other batches
    ({"s2t.log_every": 3}, expect()),
    ({"s2t.publish_every": 3}, expect()),  # live artifacts only
    ({"s2t.strategy": "fsdp", "s2t.gradient_checkpointing": True}, expect()),  # how, not what, it trains
    ({"s2t.load_dtype": "float32"}, expect()),  # what auto gives on CPU
    ({"s2t.ckpt_every": 4}, expect()),
    ({"t2c.max_steps": 80}, expect(resume="t2c", redo="echo-labels echo evaluate")),
    ({"t2c.max_steps": 40}, expect(redo="t2c echo-labels echo evaluate")),  # fewer steps: start over
    ({"t2c.workers": 2}, expect()),  # launcher local: one process whatever workers says
    ({"t2c.unit_vocab_size": 40}, expect(redo="t2c echo-labels echo evaluate")),
    ({"echo_labels.max_units": 500}, expect(redo="echo-labels echo evaluate")),
    ({"echo_labels.workers": 2}, expect()),
    ({"echo_labels.batch_size": 2}, expect()),
    ({"echo_labels.min_t2c_end_rate": 0.9}, expect()),
    ({"echo.max_steps": 10}, expect(resume="echo", redo="evaluate")),
    ({"echo.lr": 1e-3}, expect(redo="echo evaluate")),
    ({"echo.targets": "online"}, expect(redo="echo evaluate", absent="echo-labels")),  # another stage
    ({"evaluate.limit": 5}, expect(redo="evaluate")),
    ({"vocoder.max_steps": 10}, expect(resume="vocoder", redo="evaluate")),
    ({"vocoder.lr": 1e-3}, expect(redo="vocoder evaluate")),
    ({"vocoder": None}, expect(redo="evaluate", absent="vocoder")),  # no speech scoring: a new report
    ({"ray_address": "auto", "parallel_training": False}, expect()),
]


@pytest.mark.parametrize(("changes", "expected"), CASES, ids=[",".join(c) or "unchanged" for c, _ in CASES])
def test_a_changed_section_reruns_its_step_and_the_steps_after_it(
        tmp_path: Path, verified: None, changes: dict, expected: dict) -> None:
    record(tiny_cfg(tmp_path))
    assert actions(tiny_cfg(tmp_path, **changes)) == expected


def test_bf16_frozen_weights_enter_the_fingerprint_float32_ones_do_not(tmp_path: Path,
                                                                        verified: None) -> None:
    from flows.pipeline_plan import make_plan

    def config(**changes: object) -> dict:
        plan = make_plan(tiny_cfg(tmp_path, **changes))
        return next(p for p in plan if p.step == "s2t").fingerprint["config"]

    assert "frozen_dtype" not in config() and "load_dtype" not in config()
    assert config(**{"s2t.use_gpu": True})["frozen_dtype"] == "bfloat16"  # auto on a GPU
    assert "frozen_dtype" not in config(**{"s2t.use_gpu": True, "s2t.load_dtype": "float32"})


def test_reasons_name_the_change_and_the_changed_input(tmp_path: Path, verified: None) -> None:
    from flows.pipeline_plan import make_plan

    record(tiny_cfg(tmp_path))
    changed = tiny_cfg(tmp_path, **{"t2c.max_steps": 80, "echo.lr": 0.01})
    lines = {p.step: p.line() for p in make_plan(changed)}
    assert lines["t2c"] == "t2c: resume (t2c.max_steps 60 → 80: continue from step 60)"
    assert lines["echo-labels"] == "echo-labels: redo (input t2c changed)"
    assert lines["echo"] == "echo: redo (echo.lr 0.003 → 0.01, input echo-labels, input t2c changed)"
    assert lines["corpus"] == "corpus: skip (unchanged, outputs verify)"
    # a dict field names the keys that differ, not two truncated dicts
    overrides = make_plan(tiny_cfg(tmp_path, preset_overrides={"lora_rank": 4}))
    assert next(p for p in overrides if p.step == "s2t").line() == (
        "s2t: redo (preset_overrides.lora_rank (unset) → 4 changed)")


def test_a_training_redo_goes_beside_the_old_run_and_continues_an_interrupted_one(
        tmp_path: Path, verified: None) -> None:
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    record(tiny_cfg(tmp_path))
    changed = tiny_cfg(tmp_path, **{"t2c.lr": 0.01})
    t2c = next(p for p in make_plan(changed) if p.step == "t2c")
    assert t2c.work == str(tmp_path / "t2c.new") and not t2c.resume
    # The redo was killed after a checkpoint: the rerun continues it there, the old run still in place.
    (tmp_path / "t2c.new" / "checkpoints" / "step-000012").mkdir(parents=True)
    fp.write(tmp_path / "t2c.new", t2c.fingerprint, fp.PENDING)
    again = next(p for p in make_plan(changed) if p.step == "t2c")
    assert again.resume and again.work == t2c.work and "from step 12" in again.reason


def test_a_corpus_or_labels_redo_goes_beside_the_old_build(tmp_path: Path, verified: None) -> None:
    from flows.pipeline_plan import make_plan

    record(tiny_cfg(tmp_path))
    plans = {p.step: p for p in make_plan(tiny_cfg(tmp_path, **{"corpus.num_units": 17}))}
    assert plans["corpus"].work == str(tmp_path / "corpus.new")
    assert plans["echo-labels"].work == str(tmp_path / "echo-labels.new")
    assert plans["evaluate"].work == plans["evaluate"].folder == str(tmp_path / "eval")  # in place


def test_a_step_redone_beside_is_renamed_into_place_with_its_fingerprint(
        tmp_path: Path, verified: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline as pipeline_module
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    record(tiny_cfg(tmp_path))
    (tmp_path / "echo-labels" / "manifest.json").write_text("old")
    seen = []

    def fake_labels(c: object) -> str:  # what the echo-labels flow leaves: its files in c.out
        seen.append(c)
        assert (tmp_path / "echo-labels" / "manifest.json").read_text() == "old"  # still usable
        Path(c.out).mkdir()
        (Path(c.out) / "manifest.json").write_text("new")
        return c.out

    step = dataclasses.replace(pipeline_module.get_step("echo-labels"), run=fake_labels)
    monkeypatch.setattr(pipeline_module, "get_step", lambda name: step)
    cfg = tiny_cfg(tmp_path, **{"echo_labels.max_units": 500})
    plan = next(p for p in make_plan(cfg) if p.step == "echo-labels")
    done = pipeline_module.input_outputs(cfg)
    assert pipeline_module.run_step(cfg, plan, done) == str(tmp_path / "echo-labels")
    assert seen[0].out == str(tmp_path / "echo-labels.new") and seen[0].overwrite
    assert (tmp_path / "echo-labels" / "manifest.json").read_text() == "new"
    assert fp.read(tmp_path / "echo-labels") == plan.fingerprint
    assert not (tmp_path / "echo-labels.new").exists()


def test_unrecorded_outputs_and_a_killed_first_run(tmp_path: Path, verified: None) -> None:
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    cfg = tiny_cfg(tmp_path)
    assert set(actions(cfg).values()) == {"run"}
    (tmp_path / "s2t" / "checkpoints" / "step-000006").mkdir(parents=True)
    s2t = next(p for p in make_plan(cfg) if p.step == "s2t")
    fp.write(tmp_path / "s2t", s2t.fingerprint, fp.PENDING)  # what a killed first run leaves
    s2t = next(p for p in make_plan(cfg) if p.step == "s2t")
    assert (s2t.action, s2t.resume, s2t.work) == ("resume", True, str(tmp_path / "s2t"))


def test_outputs_from_before_fingerprints(tmp_path: Path, verified: None) -> None:
    """A build rechecks itself in place (its own build hash keeps what matches); a training run, which has
    no such hash, is retrained beside the old one."""
    from flows.pipeline_plan import make_plan

    for step in ("corpus", "s2t"):
        (tmp_path / step).mkdir()
        (tmp_path / step / "summary.json").write_text("{}")
    plans = {p.step: p for p in make_plan(tiny_cfg(tmp_path))}
    assert (plans["corpus"].action, plans["corpus"].work) == ("redo", str(tmp_path / "corpus"))
    assert (plans["s2t"].action, plans["s2t"].work) == ("redo", str(tmp_path / "s2t.new"))


def test_from_forces_the_step_and_its_dependants(tmp_path: Path, verified: None) -> None:
    record(tiny_cfg(tmp_path))
    assert actions(tiny_cfg(tmp_path), from_step="t2c") == expect(redo="t2c echo-labels echo evaluate")
    assert actions(tiny_cfg(tmp_path), from_step="corpus") == expect(redo=" ".join(STEPS))


def test_only_runs_one_step_on_existing_inputs(tmp_path: Path, verified: None) -> None:
    record(tiny_cfg(tmp_path))
    changed = tiny_cfg(tmp_path, **{"t2c.max_steps": 80, "echo.lr": 0.01})
    assert actions(changed, only="echo") == expect(redo="echo")  # t2c's change waits for a full run
    assert actions(changed, only="t2c") == expect(resume="t2c")


def test_only_refuses_inputs_that_do_not_verify(tmp_path: Path) -> None:
    from flows.pipeline_plan import make_plan

    with pytest.raises(InputError, match=r"^--only echo: its input corpus \(.*\) is missing or does not"):
        make_plan(tiny_cfg(tmp_path), only="echo")


def test_only_on_missing_inputs_is_a_one_line_cli_error(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(tiny_data(tmp_path / "run")))
    assert main(["pipeline", "--config", str(config), "--only", "echo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("echox pipeline: error: --only echo: its input corpus") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_step_choices_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(ROOT / "configs" / "tiny.yaml"), "--from", "vocoderx"])
    assert "invalid choice: 'vocoderx'" in capsys.readouterr().err


def tree_digest(root: Path) -> str:
    """sha256 over every path, size, mtime and content under `root`."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.stat()
        h.update(f"{path.relative_to(root)} {st.st_mtime_ns} {st.st_size}".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, verified: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from echox.cli import main

    out = tmp_path / "run"
    record(tiny_cfg(out))
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(tiny_data(out, **{"t2c.max_steps": 80})))
    before = tree_digest(tmp_path)
    env_before = os.environ.get("PREFECT_API_URL")
    assert main(["pipeline", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "t2c:         resume (t2c.max_steps 60 → 80: continue from step 60)" in printed
    assert "echo:        redo   (input echo-labels, input t2c changed)" in printed
    assert "corpus:      skip   (unchanged, outputs verify)" in printed
    assert tree_digest(tmp_path) == before
    assert os.environ.get("PREFECT_API_URL") == env_before  # no Prefect server was started


def test_dry_run_imports_neither_prefect_nor_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(tiny_data(tmp_path / "run")))
    code = ("import sys; from echox.cli import main; "
            f"rc = main(['pipeline', '--config', {str(config)!r}, '--dry-run']); "
            "print('loaded', sorted(m for m in ('prefect', 'ray') if m in sys.modules)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "corpus:      run    (no output yet)" in res.stdout and "loaded []" in res.stdout
    assert not (tmp_path / "run").exists()


def test_two_in_process_trainers_never_share_the_process(tmp_path: Path) -> None:
    from flows.pipeline import _parallel
    from flows.pipeline_config import stage_config

    cfg = tiny_cfg(tmp_path, parallel_training=True)
    done = {"corpus": str(tmp_path / "corpus")}
    local = [stage_config(cfg, s, done).model_copy(update={"launcher": "local"}) for s in ("s2t", "t2c")]
    assert not _parallel(cfg, local)
    assert _parallel(cfg, [stage_config(cfg, s, done) for s in ("s2t", "t2c")])  # tiny: s2t on Ray


# ----------------------------------------------------------------------------- the swap


def test_an_interrupted_swap_leaves_the_previous_output_usable(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import out_dir

    final, new = tmp_path / "t2c", tmp_path / "t2c.new"
    for folder, text in ((final, "old"), (new, "new")):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights").write_text(text)
    real_replace, calls = os.replace, []

    def crash_on_second(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(out_dir.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        out_dir.swap_in(new, final)
    monkeypatch.setattr(out_dir.os, "replace", real_replace)
    assert out_dir.kept_previous(final) is not None  # the planner reads the old output there
    assert out_dir.recover_swap(final)
    assert (final / "model" / "weights").read_text() == "old"
    out_dir.swap_in(new, final)
    assert (final / "model" / "weights").read_text() == "new"
    assert not new.exists() and not (tmp_path / out_dir.PREVIOUS).exists()


# ----------------------------------------------------------------------------- one real run


def _metric_steps(run: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.integration
def test_real_pipeline_resumes_a_larger_max_steps_and_redoes_beside_the_old_run(
        tmp_path: Path, ray_session: None, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/tiny.yaml (no evaluation, stage I in one process): a rerun skips everything; a larger
    t2c.max_steps resumes T2C (--only t2c) from its last step; --dry-run changes nothing; a changed
    echo.lr redoes echo beside the old run, which is then replaced, and so do changed echo labels."""
    import json

    from echox.cli import main
    from flows.pipeline import pipeline
    from flows.pipeline_plan import make_plan

    out = tmp_path / "run"
    base = {"eval_set": None, "s2t.launcher": "local", "s2t.workers": 1, "s2t.max_steps": 6}
    cfg = tiny_cfg(out, **base)
    pipeline(config=cfg)
    for step in ("corpus", "s2t", "t2c", "echo-labels", "echo"):
        assert (out / step / "fingerprint.json").exists(), step
    assert {p.action for p in make_plan(cfg)} == {"skip"}
    s2t_model = out / "s2t" / "model" / "model.safetensors"
    stamp = s2t_model.stat().st_mtime_ns
    pipeline(config=cfg)
    assert s2t_model.stat().st_mtime_ns == stamp

    bigger = {**base, "t2c.max_steps": 70}
    config = tmp_path / "bigger.yaml"
    config.write_text(yaml.safe_dump(tiny_data(out, **bigger)))
    before = tree_digest(tmp_path)
    assert main(["pipeline", "--config", str(config), "--dry-run"]) == 0
    assert "t2c:         resume (t2c.max_steps 60 → 70: continue from step 60)" in capsys.readouterr().out
    assert tree_digest(tmp_path) == before

    pipeline(config=tiny_cfg(out, **bigger), only="t2c")
    summary = json.loads((out / "t2c" / "summary.json").read_text())
    assert summary["steps"] == 70 and summary["resumed_from"].endswith("step-000060")
    steps = _metric_steps(out / "t2c")
    assert steps == sorted(set(steps)) and steps[-1] == 70 and 60 in steps  # one continuous curve
    plan = {p.step: p.line() for p in make_plan(tiny_cfg(out, **bigger))}
    assert plan["t2c"] == "t2c: skip (unchanged, outputs verify)"
    assert plan["echo-labels"] == "echo-labels: redo (input t2c changed)"

    changed = tiny_cfg(out, **{**base, "echo.lr": 1e-3})  # t2c back at 60 steps is a change too: --only
    old_echo = (out / "echo" / "model" / "model.safetensors").read_bytes()
    pipeline(config=changed, only="echo")
    assert (out / "echo" / "model" / "model.safetensors").read_bytes() != old_echo
    assert not (out / "echo.new").exists() and not (out / ".echox-previous").exists()
    assert next(p for p in make_plan(changed, only="echo") if p.step == "echo").action == "skip"

    relabel = tiny_cfg(out, **{**base, "echo_labels.max_units": 900})  # rebuilt beside, then renamed
    pipeline(config=relabel, only="echo-labels")
    assert json.loads((out / "echo-labels" / "manifest.json").read_text())["max_units"] == 900
    assert not (out / "echo-labels.new").exists()
    assert next(p for p in make_plan(relabel, only="echo-labels") if p.step == "echo-labels").action == "skip"


# ----------------------------------------------------------------------------- the no-echo baseline

BASELINE_STEPS = [*STEPS, "baseline-labels", "baseline", "evaluate-baseline"]
BASELINE = {"baseline": {"max_steps": 8, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "log_every": 2,
                         "ckpt_every": 4, "workers": 1, "launcher": "local"}}  # echo's section in tiny.yaml


def with_baseline(out: Path, **changes: object):
    """tiny_cfg with the baseline steps enabled (the echo section's values), then `changes`."""
    return tiny_cfg(out, **{**BASELINE, **changes})


def expect_baseline(redo: str = "", resume: str = "", absent: str = "") -> dict[str, str]:
    """{step: action} for every step of a pipeline with the baseline: the named ones as given."""
    out = dict.fromkeys((s for s in BASELINE_STEPS if s not in absent.split()), "skip")
    return out | dict.fromkeys(redo.split(), "redo") | dict.fromkeys(resume.split(), "resume")


AFTER_LABELS = "echo-labels echo evaluate baseline-labels baseline evaluate-baseline"
BASELINE_CASES = [
    ({}, expect_baseline()),
    ({"baseline.lr": 1e-3}, expect_baseline(redo="baseline evaluate-baseline")),
    ({"baseline.max_steps": 10}, expect_baseline(resume="baseline", redo="evaluate-baseline")),
    ({"baseline.log_every": 3}, expect_baseline()),
    ({"echo.lr": 1e-3}, expect_baseline(redo="echo evaluate")),  # the baseline does not read echo
    ({"echo_labels.max_units": 500}, expect_baseline(redo=AFTER_LABELS)),  # the same length guard
    ({"echo_labels.workers": 2}, expect_baseline()),
    ({"t2c.lr": 1e-3}, expect_baseline(redo=f"t2c {AFTER_LABELS}")),
    ({"evaluate.limit": 5}, expect_baseline(redo="evaluate evaluate-baseline")),
    ({"vocoder.lr": 1e-3}, expect_baseline(redo="vocoder evaluate evaluate-baseline")),
    ({"baseline": None}, expect_baseline(absent="baseline-labels baseline evaluate-baseline")),
    ({"eval_set": None}, expect_baseline(absent="evaluate evaluate-baseline")),
]


@pytest.mark.parametrize(("changes", "expected"), BASELINE_CASES,
                         ids=[",".join(c) or "unchanged" for c, _ in BASELINE_CASES])
def test_the_baseline_steps_rerun_for_their_own_changes(tmp_path: Path, verified: None, changes: dict,
                                                        expected: dict) -> None:
    cfg = with_baseline(tmp_path)
    record(cfg)
    (tmp_path / "baseline" / "checkpoints" / f"step-{cfg.baseline.max_steps:06d}").mkdir(parents=True)
    assert actions(with_baseline(tmp_path, **changes)) == expected


def test_the_baseline_is_stage_iii_on_the_baseline_labels(tmp_path: Path) -> None:
    from flows.pipeline_plan import input_outputs
    from flows.pipeline_steps import get_step

    cfg = with_baseline(tmp_path)
    done = input_outputs(cfg)
    labels = get_step("baseline-labels").config(cfg, done)
    assert labels.out == str(tmp_path / "baseline-labels") and (labels.s2t, labels.t2c) == (done["s2t"],
                                                                                           done["t2c"])
    echo, baseline = get_step("echo").config(cfg, done), get_step("baseline").config(cfg, done)
    assert baseline.stage == echo.stage == "echo" and baseline.out == str(tmp_path / "baseline")
    assert baseline.echo_labels == str(tmp_path / "baseline-labels") != echo.echo_labels
    paths = {"out", "echo_labels"}
    assert baseline.model_dump(exclude=paths) == echo.model_dump(exclude=paths)  # the same training
    report = get_step("evaluate-baseline").config(cfg, done)
    assert report.model == str(tmp_path / "baseline" / "model")
    assert report.out == done["evaluate-baseline"] == str(tmp_path / "eval-baseline" / "report.json")


def test_online_echo_targets_train_stage_echo_online_without_labels(tmp_path: Path) -> None:
    from flows.pipeline_plan import input_outputs, make_plan
    from flows.pipeline_steps import get_step

    cfg = tiny_cfg(tmp_path, **{"echo.targets": "online", "echo.max_steps": 7})
    assert "echo-labels" not in [p.step for p in make_plan(cfg)]
    echo = get_step("echo").config(cfg, input_outputs(cfg))
    assert echo.stage == "echo-online" and echo.echo_labels is None and echo.max_steps == 7
    assert (echo.s2t, echo.t2c) == (str(tmp_path / "s2t" / "model"), str(tmp_path / "t2c" / "model"))
    offline = get_step("echo").config(tiny_cfg(tmp_path), input_outputs(tiny_cfg(tmp_path)))
    assert offline.stage == "echo" and offline.echo_labels == str(tmp_path / "echo-labels")


def test_the_echo_targets_are_a_choice(tmp_path: Path) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="targets"):
        tiny_cfg(tmp_path, **{"echo.targets": "sometimes"})


def test_dry_run_lists_the_baseline_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from echox.cli import main

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(tiny_data(tmp_path / "run", **BASELINE)))
    assert main(["pipeline", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for step in ("baseline-labels", "baseline", "evaluate-baseline"):
        assert re.search(rf"^  {step}: +run +\(no output yet\)$", printed, re.M), printed
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the knowledge steps

KNOWLEDGE_STEPS = ["evaluate-text", "evaluate-s2t", "knowledge"]
SMOLLM2_TEXT = {"knowledge": {"text_preset": "smollm2-135m"}}  # tiny's own LLM is random: name a real one


def test_the_knowledge_steps_run_only_when_enabled(tmp_path: Path) -> None:
    assert not set(KNOWLEDGE_STEPS) & set(actions(tiny_cfg(tmp_path)))
    assert list(actions(tiny_cfg(tmp_path, **SMOLLM2_TEXT)))[-3:] == KNOWLEDGE_STEPS
    no_s2t = actions(tiny_cfg(tmp_path, knowledge={"text_preset": "smollm2-135m", "s2t": False}))
    assert list(no_s2t)[-2:] == ["evaluate-text", "knowledge"] and "evaluate-s2t" not in no_s2t
    no_eval = actions(tiny_cfg(tmp_path, eval_set=None, **SMOLLM2_TEXT))
    assert not set(KNOWLEDGE_STEPS) & set(no_eval) and "evaluate" not in no_eval


def test_a_random_text_llm_is_refused_before_any_work(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from flows.pipeline_config import validate

    with pytest.raises(ConfigError, match=r"pipeline\.knowledge: preset 'tiny' has a random-init LLM.*"
                                          r"knowledge\.text_preset"):
        validate(tiny_cfg(tmp_path, knowledge={}))


def _other_eval_set(tmp_path: Path) -> str:
    """The tiny eval set without its last question: another file, other content."""
    lines = (ROOT / "data" / "tiny" / "eval.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path / "eval-other.jsonl"
    path.write_text("".join(lines[:-1]))
    return str(path)


EVALS = "evaluate evaluate-text evaluate-s2t knowledge"
KNOWLEDGE_CASES = [
    ({}, ""),
    ({"eval_set": "OTHER"}, EVALS),  # the written and the spoken questions change
    ({"evaluate.limit": 5}, EVALS),
    ({"evaluate.tts": "piper"}, "evaluate evaluate-s2t knowledge"),  # the text LLM reads, it does not listen
    ({"evaluate.system_prompt": "Be brief."}, "evaluate evaluate-text knowledge"),  # text mode's prompt only
    ({"evaluate.max_units": 50}, "evaluate knowledge"),  # echo units only
    ({"evaluate.cache_dir": "/elsewhere"}, "evaluate knowledge"),  # the text LLM's cache: not evaluate-text
    ({"s2t.lr": 1e-3}, "s2t echo-labels echo evaluate evaluate-s2t knowledge"),
    ({"preset_overrides": {"lora_rank": 4}},  # trained models only: the text LLM is another preset
     "s2t t2c vocoder echo-labels echo evaluate evaluate-s2t knowledge"),
    ({"knowledge": {"text_preset": "smollm2-135m", "s2t": True}}, ""),  # the default, written out
    ({"knowledge": {"text_preset": "smollm2-135m", "text_batch_size": 16}}, "evaluate-text knowledge"),
    ({"knowledge": {"text_preset": "smollm2-135m", "text_batch_size": 1}}, ""),  # the default, written out
]


@pytest.mark.parametrize(("changes", "redo"), KNOWLEDGE_CASES,
                         ids=[",".join(c) or "unchanged" for c, _ in KNOWLEDGE_CASES])
def test_a_changed_section_reruns_the_knowledge_steps_that_read_it(
        tmp_path: Path, verified: None, changes: dict, redo: str) -> None:
    changes = {k: _other_eval_set(tmp_path) if v == "OTHER" else v for k, v in changes.items()}
    record(tiny_cfg(tmp_path / "run", **SMOLLM2_TEXT))
    got = actions(tiny_cfg(tmp_path / "run", **{**SMOLLM2_TEXT, **changes}))
    assert {s for s, a in got.items() if a != "skip"} == set(redo.split())
    assert {a for a in got.values()} <= {"skip", "redo"}


def test_the_knowledge_table_follows_the_baseline(tmp_path: Path, verified: None) -> None:
    cfg = with_baseline(tmp_path, **SMOLLM2_TEXT)
    record(cfg)
    (tmp_path / "baseline" / "checkpoints" / f"step-{cfg.baseline.max_steps:06d}").mkdir(parents=True)
    got = actions(with_baseline(tmp_path, **SMOLLM2_TEXT, **{"baseline.lr": 1e-3}))
    assert {s for s, a in got.items() if a != "skip"} == {"baseline", "evaluate-baseline", "knowledge"}


def test_the_pipeline_preset_is_the_text_llm_unless_one_is_named(tmp_path: Path, verified: None) -> None:
    """With knowledge: {} the text LLM is the pipeline's preset and its overrides: changing them redoes it."""
    from flows.pipeline_config import evaluate_text_config

    smol = {"preset": "smollm2-135m", "knowledge": {}}
    text = evaluate_text_config(tiny_cfg(tmp_path, **smol, preset_overrides={"lora_rank": 4}), {})
    assert (text.mode, text.preset, text.preset_overrides) == ("text", "smollm2-135m", {"lora_rank": 4})
    assert text.out == str(tmp_path / "eval-text" / "report.json") and text.eval_set.endswith("eval.jsonl")
    record(tiny_cfg(tmp_path, **smol))
    got = actions(tiny_cfg(tmp_path, **smol, preset_overrides={"lora_rank": 4}))
    assert got["evaluate-text"] == "redo" and got["corpus"] == "skip"


def test_the_text_row_is_batched_only_when_asked(tmp_path: Path) -> None:
    """knowledge.text_batch_size reaches evaluate-text alone; at 1 it is left out of the fingerprint, so a
    report made before the option existed is kept."""
    from flows.pipeline_config import evaluate_config, evaluate_text_config
    from flows.pipeline_steps import get_step

    step = get_step("evaluate-text")
    one = evaluate_text_config(tiny_cfg(tmp_path, **SMOLLM2_TEXT), {})
    many_cfg = tiny_cfg(tmp_path, knowledge={"text_preset": "smollm2-135m", "text_batch_size": 16})
    many = evaluate_text_config(many_cfg, {})
    assert one.batch_size == 1 and "batch_size" not in step.normalised(one)
    assert many.batch_size == 16 and step.normalised(many)["batch_size"] == 16
    spoken = evaluate_config(many_cfg, {"echo": "e", "t2c": "t"})
    assert spoken.batch_size == 1  # the spoken evaluations answer one question at a time


def test_the_s2t_evaluation_shares_the_spoken_questions_of_the_evaluation(tmp_path: Path) -> None:
    from flows.pipeline_config import evaluate_s2t_config

    cfg = tiny_cfg(tmp_path, **SMOLLM2_TEXT, evaluate={"tts": "espeak", "max_units": 50})
    s2t = evaluate_s2t_config(cfg, {"s2t": str(tmp_path / "s2t" / "model")})
    assert (s2t.mode, s2t.model, s2t.tts, s2t.t2c, s2t.vocoder) == ("speech", str(tmp_path / "s2t" / "model"),
                                                                    "espeak", None, None)
    assert s2t.audio_cache == str(tmp_path / "eval" / "tts-cache")  # evaluate's default cache
    assert s2t.out == str(tmp_path / "eval-s2t" / "report.json")
    from flows.pipeline_config import evaluate_config

    done = {"echo": "E", "baseline": "B", "t2c": "T"}
    for model in ("echo", "baseline"):  # the baseline hears the same questions, against the same ceiling
        assert evaluate_config(cfg, done, model).audio_cache == str(tmp_path / "eval" / "tts-cache")
    mine = tiny_cfg(tmp_path, **SMOLLM2_TEXT, evaluate={"audio_cache": str(tmp_path / "mine")})
    assert evaluate_config(mine, done, "baseline").audio_cache == str(tmp_path / "mine")


def test_the_knowledge_step_is_redone_when_a_report_changed_behind_it(tmp_path: Path) -> None:
    """Its done check compares the reports with the ones its table was built from (a report rewritten by
    hand, or by a step that is not among its inputs yet)."""
    from flows.pipeline_steps import get_step
    from tasks.knowledge import write_knowledge
    from tests.tasks.test_knowledge import bools, items, write

    step = get_step("knowledge")
    c = step.config(tiny_cfg(tmp_path, **SMOLLM2_TEXT), {})
    write(tmp_path, "eval", items(bools(3, 4)))
    assert not step.done(c)
    write_knowledge(tmp_path, tmp_path / "knowledge")
    assert step.done(c)
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "asr_eval.json").write_text('{"wer": 0.3, "cer": 0.1, "rows": 8}')
    assert not step.done(c)
