"""Small matplotlib plots rendered into markdown (PNG data URIs) for Prefect artifacts and reports."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path


def _png_markdown(fig: object, title: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    data = base64.b64encode(buf.getvalue()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n"


def read_metrics(path: Path) -> list[dict]:
    """Lines of a metrics.jsonl (a torn last line is skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_curve_markdown(metrics: list[dict], title: str, keys: Sequence[str] = ("loss",)) -> str:
    """Loss (and components) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = [m["step"] for m in metrics]
    for key in keys:
        if metrics and key in metrics[0]:
            ax.plot(steps, [m[key] for m in metrics], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png_markdown(fig, title)


def histogram_markdown(values: Sequence[float], title: str, xlabel: str, bins: int = 50) -> str:
    """A histogram of `values`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=bins)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(alpha=0.3)
    return _png_markdown(fig, title)
