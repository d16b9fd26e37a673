"""The knowledge table: how much of the text LLM's knowledge each speech model of a pipeline run keeps.

Every row is read from a report the pipeline's steps wrote under the run folder, all scored on the same
eval set with the same normaliser and whole-word alias match (tasks/evaluate.py):

    text LLM             eval-text/report.json      written question → the base instruct LLM
    S2T (stage I)        eval-s2t/report.json       spoken question → text
    echo model, text     eval/report.json           spoken question → the echo model's text answer
    echo model, speech   eval/report.json           its spoken answer, vocoded and heard by the ASR
    ASR ceiling          eval/report.json           the reference answer's TTS speech, heard by the ASR
    no-echo baseline     eval-baseline/report.json  the same two, of a model trained without echo labels
    encoder pretraining  encoder/asr_eval.json      the pretrained encoder's WER / CER

A report that is absent makes its row "not run"; one that cannot be read says so; nothing here raises on
a run folder's contents. The issue's two goals are evaluated from exact counts (fractions, not floats):
(a) spoken-question accuracy (S2T and echo text) ≥ 80 % of the text LLM's; (b) echo text accuracy at
most 2 points below S2T's. No Prefect here: `echox knowledge` and the pipeline's `knowledge` step (whose
flow adds the table artifact) both call `write_knowledge` / `build_table`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tasks.eval_stats import wilson_interval
from tasks.knowledge_commands import row_command
from tasks.knowledge_format import pct, table_markdown

FORMAT = 1
"""Layout of knowledge.json (the `knowledge` step's version)."""
GOAL_RATIO = Fraction(4, 5)
"""Goal (a): a spoken-question accuracy at least this fraction of the text LLM's."""
GOAL_POINTS = 2
"""Goal (b): echo text accuracy at most this many percentage points below S2T's."""
NOT_RUN = "not run"


# ----------------------------------------------------------------------------- reading one report
def _stats(k: int, n: int) -> dict[str, Any]:
    """k/n with its accuracy and Wilson 95 % interval."""
    return {"correct": k, "items": n, "accuracy": k / n if n else None, "ci95": wilson_interval(k, n)}


def _by_category(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per-category k/n of the items whose boolean `key` was scored."""
    cats: dict[str, list[bool]] = {}
    for r in items:
        if r.get(key) is not None and r.get("category") is not None:
            cats.setdefault(r["category"], []).append(bool(r[key]))
    return {c: _stats(sum(v), len(v)) for c, v in sorted(cats.items())}


def text_accuracy(report: dict[str, Any]) -> dict[str, Any]:
    """The report's text accuracy (summary and by_category as evaluate wrote them)."""
    s = report["summary"]
    cats = {c: _stats(v["correct"], v["items"]) for c, v in report.get("by_category", {}).items()}
    return {"metric": "accuracy", **_stats(s["correct"], s["items"]), "by_category": cats}


def _counted(report: dict[str, Any], name: str, key: str) -> dict[str, Any]:
    """The summary's `<name>_*` counts (s2s, asr_ceiling) and per category from the items' `key`."""
    s = report["summary"]
    return {"metric": f"{name}_accuracy", **_stats(s[f"{name}_correct"], s[f"{name}_items"]),
            "by_category": _by_category(report.get("items", []), key)}


def speech_accuracy(report: dict[str, Any]) -> dict[str, Any]:
    """s2s accuracy when a vocoder ran; else the Echo decoder's teacher-forced unit accuracy (a mean, no
    counts); else not scored."""
    s = report["summary"]
    if s.get("s2s_items"):
        return _counted(report, "s2s", "s2s_correct")
    if s.get("unit_accuracy") is not None:
        scored = sum(r.get("unit_accuracy") is not None for r in report.get("items", []))
        return {"metric": "unit_accuracy", "value": s["unit_accuracy"], "items": scored}
    return {"status": "not scored", "note": "no vocoder and no T2C in this evaluation"}


def ceiling_accuracy(report: dict[str, Any]) -> dict[str, Any]:
    """The ASR ceiling of the report's speech scoring (when a vocoder ran)."""
    if report["summary"].get("asr_ceiling_items"):
        return _counted(report, "asr_ceiling", "ceiling_correct")
    return {"status": "not scored", "note": "no vocoder in this evaluation"}


def encoder_error(report: dict[str, Any]) -> dict[str, Any]:
    """The pretrained encoder's ASR error on its held-out rows (encoder/asr_eval.json: its `summary` of
    wer, cer, rows, as tasks/encoder_eval.py writes it; or those keys at the top)."""
    s = report.get("summary", report)
    return {"metric": "wer", "value": float(s["wer"]), "cer": s.get("cer"), "items": s.get("rows")}


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: where its report is and what it reads from it."""

    key: str
    label: str
    measures: str
    folder: str
    """The step's folder under the run (its fingerprint.json is there)."""
    file: str
    step: str
    """The pipeline step that writes the report."""
    read: Callable[[dict[str, Any]], dict[str, Any]]


ROWS: tuple[RowSpec, ...] = (
    RowSpec("text-llm", "text LLM", "written question → the base instruct LLM (the knowledge there is to "
            "keep)", "eval-text", "report.json", "evaluate-text", text_accuracy),
    RowSpec("s2t", "S2T (stage I)", "spoken question → text", "eval-s2t", "report.json", "evaluate-s2t",
            text_accuracy),
    RowSpec("echo-text", "echo model, text", "spoken question → the echo model's text answer", "eval",
            "report.json", "evaluate", text_accuracy),
    RowSpec("echo-speech", "echo model, speech", "spoken answer, vocoded and heard by the ASR (without a "
            "vocoder: Echo-decoder unit accuracy)", "eval", "report.json", "evaluate", speech_accuracy),
    RowSpec("asr-ceiling", "ASR ceiling", "the reference answer's TTS speech heard by the same ASR: what "
            "any spoken answer can score", "eval", "report.json", "evaluate", ceiling_accuracy),
    RowSpec("baseline-text", "no-echo baseline, text", "spoken question → text, trained without echo "
            "labels", "eval-baseline", "report.json", "evaluate-baseline", text_accuracy),
    RowSpec("baseline-speech", "no-echo baseline, speech", "its spoken answer, vocoded and heard by the "
            "ASR (else unit accuracy)", "eval-baseline", "report.json", "evaluate-baseline", speech_accuracy),
    RowSpec("encoder", "encoder pretraining", "the pretrained speech encoder's ASR error on held-out rows "
            "(WER, lower is better)", "encoder", "asr_eval.json", "encoder", encoder_error),
)


def file_sha256(path: Path) -> str | None:
    """sha256 of a file (None when it does not exist)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _load(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object, "ok") or (None, why not)."""
    if not path.is_file():
        return None, NOT_RUN
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__})"
    return (data, "ok") if isinstance(data, dict) else (None, "unreadable (not a JSON object)")


def _fingerprint(run: Path, folder: str) -> dict[str, Any] | None:
    data, status = _load(run / folder / "fingerprint.json")
    return data if status == "ok" and "digest" in data else None  # type: ignore[operator]


def read_row(run: Path, spec: RowSpec) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the row, the report it was read from, or None)."""
    path = run / spec.folder / spec.file
    report, status = _load(path)
    fingerprint = _fingerprint(run, spec.folder) if report is not None else None
    row: dict[str, Any] = {"key": spec.key, "row": spec.label, "measures": spec.measures,
                           "report": f"{spec.folder}/{spec.file}", "step": spec.step, "status": status,
                           "fingerprint": fingerprint["digest"] if fingerprint else None}
    if report is None:
        return row, None
    try:
        row |= {"status": "ok", **spec.read(report)}
    except (KeyError, TypeError, ValueError) as e:
        return {**row, "status": f"unreadable (no {e})"}, None
    row |= {"model": report.get("model"), "eval_set": report.get("eval_set"),
            "wall_s": report.get("summary", {}).get("answer_wall_s"),
            "command": row_command(report, path, fingerprint)}
    return row, report


# ----------------------------------------------------------------------------- goals
def _frac(row: dict[str, Any]) -> Fraction | None:
    """A row's accuracy as an exact fraction (None unless it is a scored k/n)."""
    ok = row.get("status") == "ok" and row.get("items")
    return Fraction(row["correct"], row["items"]) if ok and "correct" in row else None


def counts(row: dict[str, Any]) -> str:
    """"24/59 (40.7 %)"."""
    return f"{row['correct']}/{row['items']} ({pct(_frac(row))})"


def _missing(what: str, *rows: dict[str, Any]) -> dict[str, Any] | None:
    """The check `what` as not run when one of `rows` has no k/n accuracy (None when all have one)."""
    gone = [r for r in rows if _frac(r) is None]
    if not gone:
        return None
    return {"what": what, "passed": None, "status": NOT_RUN, "missing": [r["row"] for r in gone],
            "detail": "; ".join(f"{r['row']} {r['status']}" for r in gone)}


def ratio_check(row: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """Goal (a) for one row: its accuracy ≥ GOAL_RATIO × the text LLM's."""
    what = f"{row['row']} / text LLM"
    missing = _missing(what, row, text)
    if missing:
        return missing
    a, t = _frac(row), _frac(text)
    if not t:
        return {"what": what, "passed": None, "status": "undefined",
                "detail": f"the text LLM answered none ({counts(text)}): no ratio"}
    ratio, passed = a / t, a >= GOAL_RATIO * t  # type: ignore[operator]
    return {"what": what, "value": float(ratio), "threshold": float(GOAL_RATIO), "passed": passed,
            "status": "pass" if passed else "fail",
            "detail": f"{row['row']} {counts(row)} is {float(ratio):.2f} × the text LLM's {counts(text)} "
                      f"(goal ≥ {float(GOAL_RATIO):.2f})"}


def gap_check(echo: dict[str, Any], s2t: dict[str, Any]) -> dict[str, Any]:
    """Goal (b): echo text accuracy − S2T accuracy ≥ −GOAL_POINTS percentage points."""
    what = "echo text − S2T"
    missing = _missing(what, echo, s2t)
    if missing:
        return missing
    points = 100 * (_frac(echo) - _frac(s2t))  # type: ignore[operator]
    passed = points >= -GOAL_POINTS
    return {"what": what, "value": float(points), "threshold": -GOAL_POINTS, "passed": passed,
            "status": "pass" if passed else "fail",
            "detail": f"echo text {counts(echo)} − S2T {counts(s2t)} = {float(points):+.1f} points "
                      f"(goal ≥ −{GOAL_POINTS})"}


def _overall(checks: list[dict[str, Any]], comparable: bool) -> str:
    """A goal's status from its checks: fail > not run > undefined > pass; not comparable first."""
    if not comparable and any(c["passed"] is not None for c in checks):
        return "not comparable"
    for status in ("fail", NOT_RUN, "undefined"):
        if any(c["status"] == status for c in checks):
            return status
    return "pass"


def goals(rows: dict[str, dict[str, Any]], comparable: bool = True) -> list[dict[str, Any]]:
    """The issue's two goals, each with its checks, computed from exact counts."""
    text, s2t, echo = rows["text-llm"], rows["s2t"], rows["echo-text"]
    a = [ratio_check(s2t, text), ratio_check(echo, text)]
    b = [gap_check(echo, s2t)]
    return [{"goal": "a", "text": f"spoken-question accuracy (S2T and echo text) ≥ "
                                  f"{int(100 * GOAL_RATIO)} % of the text LLM's",
             "status": _overall(a, comparable), "checks": a},
            {"goal": "b", "text": f"echo text accuracy within {GOAL_POINTS} points of S2T's (at most "
                                  f"{GOAL_POINTS} below)", "status": _overall(b, comparable), "checks": b}]


def speech_beside_ceiling(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Speech-to-speech accuracy beside the ASR ceiling and the echo model's text accuracy."""
    s2s, ceiling, echo = rows["echo-speech"], rows["asr-ceiling"], rows["echo-text"]
    if s2s.get("metric") != "s2s_accuracy" or _frac(ceiling) is None:
        return {"status": NOT_RUN, "detail": "no speech-to-speech scoring (the pipeline has no vocoder)"}
    a, c, t = _frac(s2s), _frac(ceiling), _frac(echo)
    out = {"status": "ok", "s2s_of_ceiling": float(a / c) if c else None,  # type: ignore[operator]
           "s2s_of_echo_text": float(a / t) if t else None}  # type: ignore[operator]
    of_ceiling = "" if not c else f" = {float(a / c):.2f} × the ceiling"  # type: ignore[operator]
    return {**out, "detail": f"spoken answers {counts(s2s)} heard right, beside the ASR ceiling "
                             f"{counts(ceiling)}{of_ceiling}; text answers of the same model {counts(echo)}"}


# ----------------------------------------------------------------------------- the table
def _preset_of(fingerprint: dict[str, Any] | None) -> str | None:
    config = (fingerprint or {}).get("config", {})
    overrides = config.get("preset_overrides") or {}
    name = config.get("preset")
    return None if not name else name + "".join(f" {k}={v}" for k, v in sorted(overrides.items()))


def presets(run: Path, rows: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(the text LLM's preset, the trained models' preset), from their steps' fingerprints."""
    text = _preset_of(_fingerprint(run, "eval-text"))
    model = str(rows["text-llm"].get("model") or "")
    if text is None and model.startswith("preset "):
        text = model.removeprefix("preset ")
    trained = next((p for s in ("s2t", "echo") if (p := _preset_of(_fingerprint(run, s)))), None)
    return text, trained


def _ids(report: dict[str, Any] | None) -> frozenset[str]:
    return frozenset(r["id"] for r in (report or {}).get("items", []) if isinstance(r, dict) and "id" in r)


def comparability(run: Path, rows: dict[str, dict[str, Any]],
                  reports: dict[str, dict[str, Any] | None]) -> tuple[bool, list[str]]:
    """(whether the goal rows measure the same thing, notes saying where they do not)."""
    notes, comparable = [], True
    text, trained = presets(run, rows)
    if text and trained and text.split()[0] != trained.split()[0]:
        comparable = False
        notes.append(f"the text LLM (preset {text}) is not the LLM the speech models were trained from "
                     f"(preset {trained}): the ratios compare two different LLMs, not knowledge kept")
    keys = [k for k in ("text-llm", "s2t", "echo-text") if reports.get(k) is not None]
    names = {k: Path(str(reports[k].get("eval_set"))).name for k in keys}  # type: ignore[union-attr]
    if len(set(names.values())) > 1:
        comparable = False
        notes.append("the rows come from different eval sets: " + ", ".join(f"{rows[k]['row']} {v}"
                                                                             for k, v in names.items()))
    ids = {k: _ids(reports[k]) for k in keys}
    if len(set(ids.values())) > 1:
        notes.append("the rows scored different questions (rejects or --limit): " + ", ".join(
            f"{rows[k]['row']} {len(v)}" for k, v in ids.items()))
    return comparable, notes


def build_table(run: Path) -> dict[str, Any]:
    """knowledge.json's content for a pipeline run folder (rows "not run" where reports are missing)."""
    run = Path(run)
    rows: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any] | None] = {}
    for spec in ROWS:
        rows[spec.key], reports[spec.key] = read_row(run, spec)
    text = _frac(rows["text-llm"])
    for key, row in rows.items():  # the ASR ceiling measures the recogniser, not a model's knowledge
        f = None if key == "asr-ceiling" else _frac(row)
        row["vs_text_llm"] = float(f / text) if f is not None and text else None
    comparable, notes = comparability(run, rows, reports)
    text_preset, trained_preset = presets(run, rows)
    sources = {f"{s.folder}/{s.file}": file_sha256(run / s.folder / s.file) for s in ROWS}
    return {"format": FORMAT, "run": str(run), "text_preset": text_preset, "trained_preset": trained_preset,
            "comparable": comparable, "notes": notes, "rows": list(rows.values()),
            "goals": goals(rows, comparable), "speech": speech_beside_ceiling(rows), "sources": sources}


def is_current(run: Path, out: Path) -> bool:
    """knowledge.json in `out` exists and was built from the reports the run folder holds now."""
    try:
        recorded = json.loads((Path(out) / "knowledge.json").read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(file_sha256(Path(run) / name) == sha for name, sha in recorded.items()) and \
        set(recorded) == {f"{s.folder}/{s.file}" for s in ROWS}


def write_knowledge(run: Path, out: Path) -> dict[str, Any]:
    """Build the table of `run` and write knowledge.json and knowledge.md into `out`; return the table."""
    from tasks.shards import atomic_write, write_json

    table = build_table(Path(run))
    write_json(Path(out) / "knowledge.json", table)
    atomic_write(Path(out) / "knowledge.md", lambda p: p.write_text(table_markdown(table)))
    return table
