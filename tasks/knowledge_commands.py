"""The command that regenerates a row of the knowledge table: `echox evaluate ...` rebuilt from what the
report records (its model, eval set and run parameters) and what its step's fingerprint recorded (the
options that decide the report), with only the options that differ from their defaults."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from data_specs.eval_results import REPORT_TAG

SPEECH_ONLY = {"tts", "voices", "seed", "max_units", "asr", "audio_cache", "t2c", "vocoder"}
TEXT_ONLY = {"preset", "preset_overrides", "system_prompt", "cache_dir"}
FROM_REPORT = ("mode", "tts", "voices", "seed", "limit", "max_new_tokens", "device", "asr", "system_prompt")


def _text_model(report: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """--preset (with its --set pairs) or --model of a text-mode report."""
    if options.get("preset"):
        return {}
    model = str(report.get("model") or "")
    if model.startswith("preset "):
        return {"preset": model.removeprefix("preset ")}
    return {"model": report.get("llm_dir") or model}


def evaluate_options(report: dict[str, Any], path: Path,
                     fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """EvaluateConfig fields that reproduce `report` (written to `path`)."""
    options = dict((fingerprint or {}).get("config", {}))
    options |= {k: report[k] for k in FROM_REPORT if k in report and k not in options}
    text = options.get("mode") == "text"
    if text:
        options |= _text_model(report, options)
    else:
        options |= {k: report.get(k) for k in ("model", "t2c", "vocoder")}
        if not options.get("vocoder"):
            options.pop("asr", None)  # the recogniser scores vocoded answers only
    drop = SPEECH_ONLY if text else TEXT_ONLY
    return {k: v for k, v in options.items() if k not in drop} | {"eval_set": report.get("eval_set"),
                                                                    "out": str(path)}


def _flags(name: str, value: Any) -> list[str]:
    """The command-line words of one option."""
    if name == "preset_overrides":
        return [w for k, v in sorted(value.items()) for w in ("--set", f"{k}={v}")]
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def evaluate_command(report: dict[str, Any], path: Path, fingerprint: dict[str, Any] | None) -> str:
    """`echox evaluate ...` that writes this report again (options at their defaults left out)."""
    from tasks.configs import EvaluateConfig

    options = evaluate_options(report, path, fingerprint)
    words = ["echox", "evaluate"]
    for name, info in EvaluateConfig.model_fields.items():
        value = options.get(name)
        if value is None or (not info.is_required() and value == info.get_default(call_default_factory=True)):
            continue
        words += _flags(name, value)
    return " ".join(shlex.quote(w) for w in words)


def row_command(report: dict[str, Any], path: Path, fingerprint: dict[str, Any] | None) -> str | None:
    """The command that regenerates a row's report; None when it is not an evaluation report (the encoder's
    ASR check: its pipeline step regenerates it)."""
    if report.get("schema") != REPORT_TAG:
        return None
    return evaluate_command(report, path, fingerprint)
