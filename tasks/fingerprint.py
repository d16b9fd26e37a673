"""Step fingerprints: what a pipeline step consumed, recorded beside its output, compared on a rerun.

A fingerprint is a JSON object `{format, step, version, config, inputs, digest}`: `config` is the step's
normalised config (only the fields that decide its output), `inputs` maps each input to the digest of
what produced it (an upstream step's fingerprint, or a file's sha256), `version` is the format of what
the step writes, and `digest` hashes all of it. It is written atomically as `<folder>/fingerprint.json`
once the step has finished; a run in progress records the one it works towards as
`fingerprint.pending.json`, so a rerun knows whether a killed run's checkpoints are its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.shards import json_sha256, write_json

FORMAT = 1
"""Layout of the fingerprint record itself; bump it to make every step of every pipeline rerun."""
NAME = "fingerprint.json"
PENDING = "fingerprint.pending.json"


def make(step: str, version: str, config: dict, inputs: dict[str, str | None]) -> dict:
    """The fingerprint of `step` (with its digest) from its normalised config, inputs and version."""
    body = {"format": FORMAT, "step": step, "version": version, "config": config, "inputs": inputs}
    return {**body, "digest": json_sha256(body)}


def read(folder: Path, name: str = NAME) -> dict | None:
    """The fingerprint recorded in `folder` (None when absent or unreadable: the step is redone)."""
    path = Path(folder) / name
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "digest" in data else None


def write(folder: Path, fingerprint: dict, name: str = NAME) -> None:
    """Record `fingerprint` in `folder`, atomically (temp file, then rename)."""
    write_json(Path(folder) / name, fingerprint)


def _show(value: Any) -> str:
    """A config value as the plan prints it (short)."""
    if value is _ABSENT:
        return "(unset)"
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


_ABSENT = object()
"""A dict key one side of `changes` does not have (shown as "(unset)")."""


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints of one step, in words ("t2c.lr 0.001 → 0.003", "input t2c");
    empty when the digests agree. The plan says "<these> changed"."""
    if old.get("digest") == new.get("digest"):
        return []
    out = []
    if old.get("format") != new.get("format") or old.get("version") != new.get("version"):
        out.append(f"format {old.get('version')} → {new.get('version')}")
    step = new.get("step", "")
    o_cfg, n_cfg = old.get("config", {}), new.get("config", {})
    for key in sorted(set(o_cfg) | set(n_cfg)):
        o_val, n_val = o_cfg.get(key), n_cfg.get(key)
        if o_val == n_val:
            continue
        name = key if key.startswith("preset") else f"{step}.{key}"
        if isinstance(o_val, dict) and isinstance(n_val, dict):  # the keys that differ, not two long dicts
            keys = sorted(set(o_val) | set(n_val))
            pairs = {k: (o_val.get(k, _ABSENT), n_val.get(k, _ABSENT)) for k in keys}
            out += [f"{name}.{k} {_show(a)} → {_show(b)}" for k, (a, b) in pairs.items() if a != b]
        else:
            out.append(f"{name} {_show(o_val)} → {_show(n_val)}")
    o_in, n_in = old.get("inputs", {}), new.get("inputs", {})
    out += [f"input {name}" for name in sorted(set(o_in) | set(n_in))
            if o_in.get(name) != n_in.get(name)]
    return out or ["fingerprint"]


def only_grown(old: dict, new: dict, field: str) -> tuple[int, int] | None:
    """(old, new) when the fingerprints differ only in a larger `field` of the config; else None."""
    o_cfg, n_cfg = old.get("config", {}), new.get("config", {})
    rest_old, rest_new = ({k: v for k, v in c.items() if k != field} for c in (o_cfg, n_cfg))
    same_rest = rest_old == rest_new
    same = all(old.get(k) == new.get(k) for k in ("format", "version", "inputs", "step"))
    o, n = o_cfg.get(field), n_cfg.get(field)
    if same and same_rest and isinstance(o, int) and isinstance(n, int) and n > o:
        return o, n
    return None
