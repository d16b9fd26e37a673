"""Small matplotlib plots rendered into markdown (PNG data URIs) for Prefect artifacts and reports."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path


def _png_markdown(fig: object, title: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")  # type: ignore[attr-defined]
    _close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n"


def _close(fig: object) -> None:
    """Release a pyplot figure (a figure made without pyplot holds no global state)."""
    if getattr(fig.canvas, "manager", None) is not None:  # type: ignore[attr-defined]
        import matplotlib.pyplot as plt

        plt.close(fig)  # type: ignore[arg-type]


def read_metrics(path: Path) -> list[dict]:
    """Lines of a metrics.jsonl (a torn last line is skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _loss_figure(metrics: list[dict], keys: Sequence[str]) -> object:
    """A matplotlib figure of the loss (and components) against step; made without pyplot, whose global
    state is not thread-safe (training stages render their live loss curves from threads of one driver)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    steps = [m["step"] for m in metrics]
    for key in keys:
        if metrics and key in metrics[0]:
            ax.plot(steps, [m[key] for m in metrics], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def loss_curve_markdown(metrics: list[dict], title: str, keys: Sequence[str] = ("loss",)) -> str:
    """Loss (and components) against step."""
    return _png_markdown(_loss_figure(metrics, keys), title)


def save_loss_curve(metrics: list[dict], path: Path, title: str, keys: Sequence[str] = ("loss",)) -> Path:
    """The loss curve as a small PNG file (80 dpi, a few tens of kB), written atomically."""
    from tasks.shards import atomic_write

    fig = _loss_figure(metrics, keys)
    fig.axes[0].set_title(title)  # type: ignore[attr-defined]
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=80,  # type: ignore[attr-defined]
                                                     bbox_inches="tight"))
    return Path(path)


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
