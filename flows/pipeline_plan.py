"""The pipeline's plan, as a build system makes one: from the configs and the files alone, which steps
to skip, resume, redo or run, and why. A pure function of the PipelineConfig and what is on disk; it
writes nothing and starts neither Prefect nor Ray (`echox pipeline --dry-run` prints it).

Per step (in DAG order) it computes the fingerprint the step would record (tasks/fingerprint.py) over
its normalised config and its inputs' fingerprints, and compares it with the recorded one:
- equal, outputs verify → skip; a step's inputs are fingerprinted by their steps' new fingerprints, so
  a step whose input is redone or resumed is redone too ("input t2c changed");
- a training step whose fingerprint differs only by a larger `max_steps` → resume from its newest
  checkpoint (the step counter and metrics.jsonl continue);
- any other change → redo: the step writes into `<step>.new/` beside the old output, which stays
  usable until the new one is renamed into place (the evaluation report is rewritten in place);
- `--from STEP` forces the step and every step after it; `--only STEP` plans that step alone, on inputs
  that must already verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from flows.pipeline_config import PipelineConfig
from flows.pipeline_steps import STEPS, Step, downstream, folder, inputs_of, output_path
from tasks import fingerprint as fp
from tasks.out_dir import kept_previous

ACTIONS = ("skip", "resume", "redo", "run")
NEW_SUFFIX = ".new"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class StepPlan:
    """What the pipeline will do with one step, and why."""

    step: str
    action: str
    """skip | resume | redo | run"""
    reason: str
    fingerprint: dict | None
    """The fingerprint the step records when it finishes (None: it does not run)."""
    folder: str
    """The step's output folder."""
    work: str
    """Where it writes: its folder, or `<folder>.new` for a training redo that keeps the old run."""
    resume: bool = False
    """A training step continues the checkpoints in `work`."""

    def line(self) -> str:
        """The plan line of this step, e.g. "t2c: resume (t2c.max_steps 50 → 80: from step 50)"."""
        return f"{self.step}: {self.action} ({self.reason})"


def active_steps(cfg: PipelineConfig) -> list[Step]:
    """The steps this pipeline runs, in DAG order."""
    return [s for s in STEPS if s.enabled(cfg)]


def last_step(run_dir: Path) -> int | None:
    """The newest checkpoint step under a training run folder (by name; the trainer verifies it)."""
    names = (p.name for p in (run_dir / "checkpoints").glob("step-*"))
    steps = [int(m.group(1)) for n in names if (m := _STEP_DIR.match(n))]
    return max(steps) if steps else None


def make_plan(cfg: PipelineConfig, *, from_step: str | None = None,
              only: str | None = None) -> list[StepPlan]:
    """Each active step's action and reason; InputError for an unknown step or --only's missing inputs."""
    steps = active_steps(cfg)
    names = [s.name for s in steps]
    for flag, value in (("--from", from_step), ("--only", only)):
        if value is not None and value not in names:
            raise InputError(f"{flag} {value}: not a step of this pipeline (its steps: {', '.join(names)})")
    planned = {s.name: output_path(cfg, s) for s in steps}
    forced = set(downstream(from_step)) if from_step else set()
    digests: dict[str, str | None] = {}
    plans = []
    for step in steps:
        step_cfg = step.config(cfg, planned)
        where = folder(cfg, step)
        recorded = fp.read(kept_previous(where) or where)
        if only is not None and step.name != only:
            digests[step.name] = recorded["digest"] if recorded else None
            plans.append(StepPlan(step.name, "skip", f"--only {only}", None, str(where), str(where)))
            continue
        if only is not None:
            _check_inputs(cfg, step, planned)
        inputs = {d: digests.get(d) for d in inputs_of(step, cfg)} | step.files(step_cfg)
        new = fp.make(step.name, step.version(), step.normalised(step_cfg), inputs)
        digests[step.name] = new["digest"]
        plans.append(decide(step, step_cfg, new, recorded, where,
                            forced_by=from_step if step.name in forced else None))
    return plans


def _check_inputs(cfg: PipelineConfig, step: Step, planned: dict[str, str]) -> None:
    """--only: every input of `step` exists and verifies (InputError naming the first that does not)."""
    for name in inputs_of(step, cfg):
        dep = next(s for s in STEPS if s.name == name)
        if not dep.done(dep.config(cfg, planned)):
            raise InputError(f"--only {step.name}: its input {name} ({folder(cfg, dep)}) is missing or does "
                             f"not verify; run the pipeline (or --from {name}) first")


def decide(step: Step, step_cfg: Any, new: dict, recorded: dict | None, where: Path,
           forced_by: str | None = None) -> StepPlan:
    """The action for one step from its new and recorded fingerprints and what its folder holds."""
    def plan(action: str, reason: str, work: Path = where, resume: bool = False) -> StepPlan:
        return StepPlan(step.name, action, reason, new, str(where), str(work), resume)

    holds = (kept_previous(where) or where).is_dir() and any((kept_previous(where) or where).iterdir())
    if forced_by is not None:
        return _redo(step, plan, where, new, f"forced by --from {forced_by}") if holds else \
            plan("run", f"forced by --from {forced_by}")
    if recorded is None:
        if not holds:
            return plan("run", "no output yet")
        if step.training:
            pending, at = fp.read(where, fp.PENDING), last_step(where)
            if pending and pending["digest"] == new["digest"] and at:
                return plan("resume", f"continue the interrupted run from step {at}", resume=True)
            if not step.done(step_cfg):
                same = pending is not None and pending["digest"] == new["digest"]
                return plan("run", "its interrupted run left no checkpoint: start over" if same else
                            "its folder holds an unfinished run of another config: start over")
        elif not step.done(step_cfg):
            return plan("run", "continue the unfinished build")
        else:  # a build from before fingerprints: its own build hash decides, in place, what is redone
            return plan("redo", "no fingerprint recorded; the build keeps what its own hash matches")
        return _redo(step, plan, where, new, "no fingerprint recorded")
    diff = fp.changes(recorded, new)
    if not diff:
        if step.done(step_cfg):
            return plan("skip", "unchanged, outputs verify")
        return _redo(step, plan, where, new, "unchanged, but its outputs do not verify")
    grown = fp.only_grown(recorded, new, "max_steps") if step.training else None
    at = last_step(where) if grown else None
    if grown and at:
        return plan("resume", f"{step.name}.max_steps {grown[0]} → {grown[1]}: continue from step {at}",
                    resume=True)
    return _redo(step, plan, where, new, ", ".join(diff) + " changed")


def _redo(step: Step, plan: Any, where: Path, new: dict, reason: str) -> StepPlan:
    """Redo a step that holds an output beside it, in `<folder>.new` (a training step continues an
    interrupted redo of the same fingerprint there; a corpus or echo-labels build resumes its own
    verified shards there), or in place for a step that is not `beside` (the evaluation report)."""
    beside = where.with_name(where.name + NEW_SUFFIX)
    if not step.beside:
        return plan("redo", reason)
    if not step.training:
        return plan("redo", reason, beside)
    pending, at = fp.read(beside, fp.PENDING), last_step(beside)
    if pending and pending["digest"] == new["digest"] and at:
        return plan("redo", f"{reason}; continue the interrupted redo from step {at}", beside, True)
    return plan("redo", reason, beside)


def plan_rows(plans: list[StepPlan]) -> list[dict]:
    """The plan as table rows (the pipeline run's artifact)."""
    return [{"step": p.step, "action": p.action, "reason": p.reason, "folder": p.folder} for p in plans]


def format_plan(plans: list[StepPlan]) -> str:
    """The plan as the lines `--dry-run` prints."""
    width = max(len(p.step) for p in plans) + 1
    return "\n".join(f"  {p.step + ':':{width}s} {p.action:6s} ({p.reason})" for p in plans)


def input_outputs(cfg: PipelineConfig) -> dict[str, str]:
    """Every active step's output path (what later steps read), by step name."""
    return {s.name: output_path(cfg, s) for s in active_steps(cfg)}

