"""The project's packages are layers you can draw: each imports only its own layer and those below it,
nothing imports in a circle (imports inside functions count too), and the registries import no torch.

    core  →  data_specs  →  models  →  tasks  →  flows  →  echox (the CLI)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "data_specs", "models", "tasks", "flows", "echox")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module → the project modules it imports anywhere in its file (functions included)."""
    files = {_module(p): p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")}
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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among the project's modules (each reported once, from its smallest module)."""
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_imports_a_layer_above_its_own(layer: str) -> None:
    upward = sorted((m, d) for m, deps in import_graph().items() if m.split(".")[0] == layer
                    for d in deps if _layer(d) > _layer(m))
    assert upward == []


def test_core_imports_nothing_of_the_project_but_itself() -> None:
    outside = sorted((m, d) for m, deps in import_graph().items() if m.startswith("core")
                     for d in deps if not d.startswith("core"))
    assert outside == []


def test_registries_and_configs_import_without_torch() -> None:
    code = ("import sys; import models.stages, tasks.configs, tasks.backends; "
            "models.stages.stage_names(); tasks.configs.TrainFlowConfig.model_json_schema(); "
            "tasks.configs.BuildCorpusConfig.model_json_schema(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
