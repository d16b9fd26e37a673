"""models/ and the collators must import on a GPU box without prefect, ray or fairseq2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys
for name in ("prefect", "ray", "fairseq2", "datasets"):
    sys.modules[name] = None  # makes any import of them fail
import models, models.presets, models.llm, models.speech, models.s2t, models.t2c, models.echo, models.io
import models.build_info, models.unit_language, models.collate, models.stages, models.factory
import tasks.collate
print("ok")
"""


def test_models_import_without_orchestration_stack() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
