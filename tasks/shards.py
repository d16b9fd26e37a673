"""Shard files: atomic Arrow writes, sha256, manifests, and the `datasets` directory layout."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.errors import IntegrityError

MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file beside `path`, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a written file follows the umask
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically write raw bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def record_check(run_dir: Path, name: str, result: dict) -> None:
    """Write an after-training check's result as `<run>/<name>.json` and its summary into the run's
    summary.json (when the run has one) under `name`."""
    write_json(run_dir / f"{name}.json", result)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        write_json(summary_path, {**json.loads(summary_path.read_text()), name: result["summary"]})


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Atomically write one JSON object per line."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_arrow(path: Path, table: pa.Table, *, batch_rows: int = 64) -> dict:
    """Atomically write `table` as an Arrow IPC stream (the `datasets` format); return its shard entry."""

    def _write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)

    atomic_write(path, _write)
    return {"path": path.name, "num_rows": table.num_rows, "sha256": file_sha256(path)}


def read_arrow(path: Path, *, sha256: str | None = None) -> pa.Table:
    """Memory-map an Arrow stream file, first checking its sha256 when one is given."""
    if sha256 is not None:
        verify_file(path, sha256)
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_stream(source).read_all()


def verify_file(path: Path, sha256: str) -> None:
    """Raise IntegrityError when `path` is missing or its sha256 differs from the recorded one."""
    if not path.exists():
        raise IntegrityError(f"shard missing: {path}")
    actual = file_sha256(path)
    if actual != sha256:
        raise IntegrityError(f"shard {path} is corrupt: sha256 {actual[:12]}… != recorded {sha256[:12]}…")


def file_verifies(path: Path, sha256: str | None) -> bool:
    """True when `path` exists and matches `sha256`."""
    return sha256 is not None and path.exists() and file_sha256(path) == sha256


def write_datasets_layout(out_dir: Path, shard_names: list[str], schema: pa.Schema, fingerprint: str,
                          features: Any = None) -> None:
    """Write state.json and dataset_info.json so `datasets.load_from_disk(out_dir)` opens the shards
    (`features`: a `datasets.Features` to declare instead of the plain ones the schema implies)."""
    import datasets

    features = features if features is not None else datasets.Features.from_arrow_schema(schema)
    write_json(out_dir / "dataset_info.json", {"citation": "", "description": "", "homepage": "",
                                               "license": "", "features": features.to_dict()})
    write_json(out_dir / "state.json", {
        "_data_files": [{"filename": n} for n in shard_names],
        "_fingerprint": fingerprint[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    })


def load_manifest(out_dir: Path) -> dict | None:
    """The manifest of a finished build, or None when there is none."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{path} is not valid JSON: {e}") from e


def finished_manifest(out_dir: Path, what: str = "corpus build") -> dict:
    """The manifest of a finished build; InputError (one line) for a failed or unfinished one."""
    from core.errors import InputError

    failure = out_dir / "failure.json"
    if failure.exists():
        try:
            reason = json.loads(failure.read_text()).get("reason", "")
        except (json.JSONDecodeError, AttributeError):
            reason = ""
        raise InputError(f"{out_dir} is a failed {what}, not a usable one: {reason or 'see failure.json'}")
    manifest = load_manifest(out_dir)
    if manifest is None:
        raise InputError(f"{out_dir} has no manifest.json (not a finished {what})")
    status = manifest.get("status", "complete")  # manifests of older builds have no status
    if status != "complete":
        raise InputError(f"{out_dir} is not a finished {what} (manifest status {status!r})")
    return manifest


def verify_manifest(out_dir: Path, manifest: dict) -> list[str]:
    """Names of the manifest's shards that are missing or corrupt (empty when all verify)."""
    return [s["path"] for s in manifest.get("shards", [])
            if not file_verifies(out_dir / s["path"], s.get("sha256"))]
