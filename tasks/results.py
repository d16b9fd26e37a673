"""RESULTS.md of the knowledge experiment, generated from a pipeline run folder and nothing else.

The knowledge table with its intervals and goals (tasks/knowledge.py), a "Reading" of what the goals'
pass / fail say (sentences built from the numbers; the interpretation is left to a person), the encoder's
WER, each training step's loss curve (small PNGs in `results/` beside RESULTS.md, drawn from its
metrics.jsonl), the commands, every step's fingerprint, the machine and the wall times that the steps
recorded. Nothing is estimated: what the run folder does not hold is said to be missing.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.knowledge import file_sha256
from tasks.knowledge_format import command_lines as row_command_lines
from tasks.knowledge_format import goal_lines, markdown_table, pct, short, table_rows

TRAINING_ORDER = ("s2t", "t2c", "vocoder", "echo")
"""Training folders first in the DAG's order; any other folder with a metrics.jsonl follows by name."""


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _rows(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in table["rows"]}


# ----------------------------------------------------------------------------- reading
def _overlap(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Whether two rows' 95 % intervals overlap, in words (None unless both have one)."""
    ca, cb = a.get("ci95"), b.get("ci95")
    if a.get("status") != "ok" or b.get("status") != "ok" or not ca or not cb:
        return None
    word = "overlap" if ca[0] <= cb[1] and cb[0] <= ca[1] else "do not overlap"
    return (f"the 95 % intervals of {a['row']} ({100 * ca[0]:.1f}–{100 * ca[1]:.1f} %) and {b['row']} "
            f"({100 * cb[0]:.1f}–{100 * cb[1]:.1f} %) {word}")


def reading(table: dict[str, Any]) -> list[str]:
    """Sentences that say what the numbers say: each goal's outcome and its margin, the intervals, the
    speech scoring, what was not run. No interpretation beyond the numbers."""
    rows, out = _rows(table), []
    for goal in table["goals"]:
        gone = list(dict.fromkeys(r for c in goal["checks"] for r in c.get("missing", [])))
        scored = [c["detail"] for c in goal["checks"] if c["passed"] is not None]
        said = "; ".join(scored) + ("; " if scored and gone else "")
        said += f"No number yet for: {'; '.join(gone)}" if gone else ""
        out.append(f"Goal ({goal['goal']}), {goal['text']}: **{goal['status']}**. {said}.")
    pairs = (("text-llm", "s2t"), ("text-llm", "echo-text"), ("s2t", "echo-text"))
    overlaps = [o for a, b in pairs if (o := _overlap(rows[a], rows[b]))]
    if overlaps:
        out.append("Intervals: " + "; ".join(overlaps) + ".")
    out.append(f"Speech to speech: {table['speech']['detail']}.")
    enc = rows["encoder"]
    ok = enc["status"] == "ok"
    out.append("Encoder pretraining: " + (f"WER {enc['value']:.3f} on its held-out rows." if ok
                                          else f"{enc['status']}."))
    missing = [f"{r['row']} ({r['status']})" for r in table["rows"] if r["status"] != "ok"]
    if missing:
        out.append("Rows without a number: " + "; ".join(missing) + ".")
    out += [f"Note: {n}." for n in table["notes"]]
    return [f"- {line}" for line in out]


# ----------------------------------------------------------------------------- training
def training_folders(run: Path) -> list[Path]:
    """The run's step folders that hold a metrics.jsonl (training steps), in DAG order."""
    found = {p.parent.name: p.parent for p in Path(run).glob("*/metrics.jsonl")}
    order = [n for n in TRAINING_ORDER if n in found] + sorted(set(found) - set(TRAINING_ORDER))
    return [found[n] for n in order]


def _loss_keys(stage: str | None) -> tuple[str, ...]:
    from core.errors import ConfigError
    from models.stages import get_stage

    try:
        return get_stage(str(stage)).loss_keys
    except ConfigError:
        return ("loss",)


def training_lines(run: Path, figures: Path, link: str) -> list[str]:
    """A table of each training step (steps, first and final loss, time in steps) and its loss curve,
    drawn into `figures` (named in the markdown as `link/<file>`)."""
    from tasks.plots import read_metrics, save_loss_curve

    rows, images = [], []
    for folder in training_folders(run):
        metrics = [m for m in read_metrics(folder / "metrics.jsonl") if "step" in m and "loss" in m]
        summary = _json(folder / "summary.json") or {}
        if not metrics:
            continue
        name = folder.name
        save_loss_curve(metrics, figures / f"{name}-loss.png", f"{name} loss",
                        _loss_keys(summary.get("stage")))
        elapsed = summary.get("elapsed_s")
        rows.append({"step": name, "steps": str(summary.get("steps", metrics[-1]["step"])),
                     "first loss": f"{metrics[0]['loss']:.4f}", "final loss": f"{metrics[-1]['loss']:.4f}",
                     "time in steps": "-" if elapsed is None else f"{elapsed:.0f} s"})
        images.append(f"![{name} loss]({link}/{name}-loss.png)")
    if not rows:
        return ["No training step of this run folder has a metrics.jsonl."]
    return [*markdown_table(rows), "", *images]


def _llm_answers(run: Path) -> dict[str, Any] | None:
    """The llm-answers step's summary.json (None: the run has no such step)."""
    from tasks.llm_answers import SUMMARY_FILE

    return _json(Path(run) / "llm-answers" / SUMMARY_FILE)


def targets_lines(run: Path) -> list[str]:
    """What stage I and the steps after it learned: the base LLM's own answers (the llm-answers step's
    summary) or the source's reference answers."""
    summary = _llm_answers(run)
    if summary is None:
        return ["The QA source's reference answers (this run has no `llm-answers` step)."]
    first = ", first sentence kept" if summary.get("first_sentence") else ""
    return [f"The base LLM's own answers to the training questions (`llm-answers/`, self-distillation): "
            f"{summary['answered']} of {summary['source_records']} source records answered, "
            f"{summary['rejected']} rejected; greedy, at most {summary['max_new_tokens']} tokens{first}, "
            f"system prompt {json.dumps(summary.get('system_prompt'))}. "
            f"{summary['agree_with_reference']} of the {summary['with_aliases']} answers to questions with "
            "aliases hold one of the reference's (the LLM's own accuracy on the training questions, as "
            "learned)."]


def wall_times(run: Path, table: dict[str, Any]) -> list[dict[str, str]]:
    """The times the steps recorded: training (summary.json elapsed_s), echo-label generation (its
    manifest), answering the eval questions (each report's answer_wall_s)."""
    out = []
    answers = _llm_answers(run) or {}
    if answers.get("answer_wall_s") is not None:
        out.append({"step": "llm-answers", "seconds": f"{answers['answer_wall_s']:.0f}",
                    "what": "the base LLM answering the training questions (summary.json answer_wall_s)"})
    for folder in training_folders(run):
        s = _json(folder / "summary.json") or {}
        if s.get("elapsed_s") is not None:
            out.append({"step": folder.name, "seconds": f"{s['elapsed_s']:.0f}",
                        "what": "optimizer steps (summary.json elapsed_s; resumes summed)"})
    labels = ((_json(Path(run) / "echo-labels" / "manifest.json") or {}).get("totals") or {})
    if labels.get("generation_seconds") is not None:
        out.append({"step": "echo-labels", "seconds": f"{labels['generation_seconds']:.0f}",
                    "what": "T2C generation, summed over actors (manifest totals)"})
    seen = set()
    for r in table["rows"]:
        if r["status"] == "ok" and r.get("wall_s") is not None and r["report"] not in seen:
            seen.add(r["report"])
            out.append({"step": r["step"], "seconds": f"{r['wall_s']:.0f}",
                        "what": f"answering the questions ({r['report']} answer_wall_s)"})
    return out


# ----------------------------------------------------------------------------- provenance
def fingerprints(run: Path) -> list[dict[str, str]]:
    """Every step folder's recorded fingerprint digest and format."""
    out = []
    for path in sorted(Path(run).glob("*/fingerprint.json")):
        fp = _json(path) or {}
        if "digest" in fp:
            out.append({"step": str(fp.get("step", path.parent.name)), "folder": path.parent.name,
                        "fingerprint (sha256)": f"`{fp['digest']}`", "format": str(fp.get("version", "-"))})
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(run: Path) -> list[str]:
    """Where RESULTS.md was written (CPU, cores, memory, versions) and whether training used GPUs."""
    gpu = sorted({folder.name for folder in training_folders(run)
                  if ((_json(folder / "fingerprint.json") or {}).get("config") or {}).get("use_gpu")})
    mem = next((line.split()[1] for line in _lines("/proc/meminfo") if line.startswith("MemTotal:")), None)
    return [f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs"
            + ("" if mem is None else f", {int(mem) / 2**20:.1f} GiB memory"),
            f"- {platform.platform()}, Python {sys.version.split()[0]}, torch {_version('torch')}, "
            f"transformers {_version('transformers')}, echox {_version('echox')}",
            "- training on GPUs: " + (", ".join(gpu) if gpu else "none (use_gpu is false in every training "
                                      "step)"),
            "- the machine that wrote RESULTS.md (`make experiment` runs the pipeline and writes RESULTS.md "
            "on the same one)"]


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def results_commands(run: Path, results: Path, config: Path | None, table: dict[str, Any]) -> list[str]:
    """The commands that made the run and this file, then the command of each row."""
    knowledge = ["echox", "knowledge", "--run", str(run), "--results", str(results)]
    knowledge += ["--config", str(config)] if config else []
    head = [f"echox pipeline --config {shlex.quote(str(config))}"] if config else []
    lines = ["```", *head, shlex.join(knowledge), "```", ""]
    if config:
        lines.append(f"`{config}` sha256 `{file_sha256(config)}`; any row again: `echox pipeline --config "
                     f"{config} --from STEP` (that step and the steps after it).")
    else:
        lines.append("The pipeline config was not named (`echox knowledge --config`).")
    return [*lines, "", "Each row's report on its own:", "", *row_command_lines(table)]


# ----------------------------------------------------------------------------- the file
def results_markdown(run: Path, results: Path, table: dict[str, Any], config: Path | None = None) -> str:
    """The text of RESULTS.md (its loss curves are drawn into `results/` beside `results`)."""
    figures = Path(results).parent / "results"
    rows = _rows(table)
    enc = rows["encoder"]
    encoder = (f"WER {enc['value']:.3f}" + ("" if enc.get("cer") is None else f", CER {enc['cer']:.3f}")
               + ("" if enc.get("items") is None else f" on {enc['items']} held-out rows")
               + f" (`{enc['report']}`, fingerprint `{short(enc.get('fingerprint'))}`).") \
        if enc["status"] == "ok" else f"{enc['status']}: `{enc['report']}` is not in the run folder."
    text = (f"the text LLM's ({pct(rows['text-llm']['accuracy'])} here)" if rows["text-llm"]["status"] == "ok"
            else "the text LLM's (not run here)")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Knowledge experiment: results", "",
             f"Run folder `{run}`, written {stamp} by `echox knowledge`. Every number is read from the run "
             "folder's reports; rows whose report is missing say so.", "",
             "## Knowledge kept", "",
             "Same eval set, normaliser and whole-word alias match for every row; accuracy k/n, its "
             f"percentage and its Wilson 95 % interval; `vs text LLM` is the row's accuracy over {text}.", "",
             *markdown_table(table_rows(table)), "", "## Goals", "", *goal_lines(table), "",
             "## Reading", "", *reading(table), "", "## Training targets", "", *targets_lines(run), "",
             "## Encoder pretraining", "", encoder, "",
             "## Training", "", *training_lines(run, figures, "results"), "",
             "## Wall time per step (as recorded)", ""]
    times = wall_times(run, table)
    lines += markdown_table(times) if times else ["No step of this run recorded a wall time."]
    lines += ["", "## Commands", "", *results_commands(run, results, config, table), "",
              "## Config hashes (each step's fingerprint.json)", ""]
    prints = fingerprints(run)
    lines += markdown_table(prints) if prints else ["No step folder holds a fingerprint.json."]
    lines += ["", "## Machine", "", *machine_lines(run)]
    return "\n".join(lines) + "\n"


def write_results(run: Path, results: Path, table: dict[str, Any], config: Path | None = None) -> Path:
    """Write RESULTS.md (and its loss-curve PNGs in `results/` beside it); return its path."""
    from tasks.shards import atomic_write

    text = results_markdown(Path(run), Path(results), table, config)
    atomic_write(Path(results), lambda p: p.write_text(text))
    return Path(results)
