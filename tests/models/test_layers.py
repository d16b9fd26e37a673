"""models/ is a layer: its modules import no module above it (tasks, flows, the CLI) and none of each
other in a circle, counting imports inside functions too; the stage registry imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("echox", "data_specs", "models", "tasks", "flows")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module → the project modules it imports anywhere in its file (functions included)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Import cycles among the modules of package `within` (each reported once, from its first module)."""
    nodes = {n for n in graph if n.startswith(within + ".")}
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node] & nodes):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # start each cycle at its smallest module
                visit(nxt, [*path, nxt])

    for start in sorted(nodes):
        visit(start, [start])
    return found


def test_models_have_no_import_cycles() -> None:
    assert cycles(import_graph(), "models") == []


def test_models_import_nothing_above_them() -> None:
    upward = {(m, d) for m, deps in import_graph().items() if m.startswith("models")
              for d in deps if d.split(".")[0] in ("tasks", "flows") or d in ("echox.cli", "echox.server")}
    assert upward == set()


def test_stage_registry_and_config_import_without_torch() -> None:
    code = ("import sys; import models.stages, echox.config; "
            "models.stages.stage_names(); echox.config.TrainFlowConfig.model_json_schema(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
