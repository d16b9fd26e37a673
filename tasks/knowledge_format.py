"""The knowledge table (tasks/knowledge.py: build_table) as markdown, terminal lines and artifact rows."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

ACCURACY_METRICS = ("accuracy", "s2s_accuracy", "asr_ceiling_accuracy")


def pct(value: float | Fraction | None, digits: int = 1) -> str:
    """0.4068 → "40.7 %"."""
    return "-" if value is None else f"{100 * float(value):.{digits}f} %"


def accuracy_cell(row: dict[str, Any]) -> str:
    """k/n, the unit accuracy or the WER of a row; its status when it has no numbers."""
    if row["status"] != "ok":
        return row["status"]
    if row["metric"] in ACCURACY_METRICS:
        return f"{row['correct']}/{row['items']}"
    if row["metric"] == "unit_accuracy":
        return f"unit accuracy {row['value']:.3f} (mean of {row['items']} items; not k/n)"
    cer = "" if row.get("cer") is None else f", CER {row['cer']:.3f}"
    rows = "" if row.get("items") is None else f" ({row['items']} rows)"
    return f"WER {row['value']:.3f}{cer}{rows}"


def pct_cell(row: dict[str, Any]) -> str:
    """The accuracy in percent ("-" for rows without k/n)."""
    return pct(row["accuracy"]) if row.get("metric") in ACCURACY_METRICS else "-"


def ci_cell(row: dict[str, Any]) -> str:
    """"29.1–53.7 %": the Wilson 95 % interval."""
    ci = row.get("ci95") if row.get("metric") in ACCURACY_METRICS else None
    return "-" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %"


def category_cell(row: dict[str, Any]) -> str:
    """"arithmetic 3/15, general 12/29"."""
    cats = row.get("by_category") or {}
    return ", ".join(f"{c} {v['correct']}/{v['items']}" for c, v in cats.items()) or "-"


def ratio_cell(row: dict[str, Any]) -> str:
    """The row's accuracy as a multiple of the text LLM's."""
    if row["key"] == "text-llm" and row["status"] == "ok":
        return "reference"
    return "-" if row.get("vs_text_llm") is None else f"{row['vs_text_llm']:.2f}×"


def short(digest: str | None) -> str:
    """The first 12 hex digits of a fingerprint digest."""
    return digest[:12] if digest else "-"


def table_rows(table: dict[str, Any]) -> list[dict[str, str]]:
    """One plain dict per row (the Prefect table artifact, the markdown table)."""
    return [{"row": r["row"], "measures": r["measures"], "accuracy": accuracy_cell(r), "%": pct_cell(r),
             "95 % CI": ci_cell(r), "per category": category_cell(r), "vs text LLM": ratio_cell(r),
             "fingerprint": short(r.get("fingerprint"))} for r in table["rows"]]


def goal_lines(table: dict[str, Any], bullet: str = "- ") -> list[str]:
    """Each goal with its status, then its checks; the speech-to-speech line; the notes."""
    lines = []
    for goal in table["goals"]:
        lines.append(f"{bullet}goal ({goal['goal']}) {goal['text']}: **{goal['status'].upper()}**")
        lines += [f"  {bullet}{c['what']}: {c['status']} — {c['detail']}" for c in goal["checks"]]
    lines.append(f"{bullet}speech to speech: {table['speech']['detail']}")
    lines += [f"{bullet}note: {n}" for n in table["notes"]]
    return lines


def markdown_table(rows: list[dict[str, str]]) -> list[str]:
    """Rows of equal keys as a markdown table."""
    head = list(rows[0])
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r[h].replace("|", "\\|") for h in head) + " |" for r in rows])


def command_lines(table: dict[str, Any]) -> list[str]:
    """One line per report: the rows it gives and the command that writes it again; the steps not run."""
    by_report: dict[str, list[dict[str, Any]]] = {}
    for r in table["rows"]:
        by_report.setdefault(r["report"], []).append(r)
    lines, missing = [], []
    for rows in by_report.values():
        names, first = " / ".join(r["row"] for r in rows), rows[0]
        if first.get("command"):
            lines.append(f"- {names}: `{first['command']}`")
        elif first["status"] == "ok":
            lines.append(f"- {names}: the pipeline's `{first['step']}` step ({first['report']})")
        elif first["status"] == "not run" and first["step"] not in missing:
            missing.append(first["step"])
    if missing:
        lines.append(f"- not run (no report in the run folder): the steps {', '.join(missing)}")
    return lines


def table_markdown(table: dict[str, Any]) -> str:
    """knowledge.md: the table, the goals, the notes and the command of each row."""
    lines = [f"# Knowledge kept: `{table['run']}`", "",
             "Same eval set, normaliser and whole-word alias match for every row; accuracy k/n with its "
             "Wilson 95 % interval.", "", *markdown_table(table_rows(table)), "", "## Goals", "",
             *goal_lines(table), "", "## Commands", ""]
    lines += command_lines(table)
    return "\n".join(lines) + "\n"


def terminal_text(table: dict[str, Any]) -> str:
    """The table for a terminal: one line per row that has a report, one line naming those that have none,
    then the goals (what `echox knowledge` and the pipeline's last lines print)."""
    rows = [r for r in table["rows"] if r["status"] != "not run"]
    width = max((len(r["row"]) for r in rows), default=0)
    lines = [f"knowledge kept, {table['run']} (same eval set, normaliser and alias match):"]
    for r in rows:
        ci = "" if ci_cell(r) == "-" else f"  (95 % CI {ci_cell(r)})"
        ratio = "" if ratio_cell(r) == "-" else f"  vs text LLM: {ratio_cell(r)}"
        pct_text = "" if pct_cell(r) == "-" else f"  {pct_cell(r):>7}"
        lines.append(f"  {r['row']:<{width}}  {accuracy_cell(r):>7}{pct_text}{ci}{ratio}")
    missing = [r["row"] for r in table["rows"] if r["status"] == "not run"]
    if missing:
        lines.append(f"  not run: {'; '.join(missing)}")
    return "\n".join([*lines, *goal_lines(table, bullet="")]).replace("**", "") + "\n"
