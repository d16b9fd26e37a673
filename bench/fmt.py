"""Number formatting shared by the benchmark report's sections."""

from __future__ import annotations

from typing import Any


def fmt_s(x: float | None) -> str:
    """Seconds, readable at any scale."""
    if x is None:
        return "–"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def fmt_n(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands grouped)."""
    if x is None:
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_wall(w: dict[str, Any]) -> str:
    """Median wall time with its range and repeat count."""
    if not w or w.get("median") is None:
        return "–"
    if w["n"] == 1:
        return f"{fmt_s(w['median'])} (n=1)"
    return f"{fmt_s(w['median'])} ({fmt_s(w['min'])}–{fmt_s(w['max'])}, n={w['n']})"


def median_of(v: Any) -> Any:
    """The median of a stats dict, or the value itself."""
    return v.get("median") if isinstance(v, dict) and "median" in v else v
