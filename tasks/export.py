"""`echox export`: a corpus copied into the forms speech users load: HF `datasets` with `Audio` columns,
Lhotse manifests, WebDataset tar shards (the writers: tasks/export_formats.py).

The corpus is refused unless it is a finished build whose every shard matches its sha256. It is read
shard by shard (memory-mapped, a batch of rows at a time), so memory stays flat whatever its size. The
target's writer fills a temp folder beside --out; `export.json` (the source manifest's sha256, counts,
target, versions, every data file's sha256) is written last, and the folder is renamed into place. An
interrupted or failed export leaves --out as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.errors import InputError, IntegrityError
from tasks.export_formats import BUILTIN
from tasks.export_source import SAMPLE_RATE, CorpusSource, Exporter, Progress, Written, open_corpus
from tasks.out_dir import check_out_path, recover_swap, swap_in
from tasks.shards import current_umask, file_sha256, write_json

EXPORT_JSON = "export.json"
EXPORT_VERSION = 1
EXPORTERS: dict[str, Exporter] = {e.name: e for e in BUILTIN}


def register_exporter(exporter: Exporter) -> Exporter:
    """Add a target (a plugin or a test may add its own); its name becomes a `--to` choice."""
    EXPORTERS[exporter.name] = exporter
    return exporter


def exporter_names() -> list[str]:
    """The `--to` choices."""
    return list(EXPORTERS)


def get_exporter(name: str) -> Exporter:
    """The target called `name`; InputError naming the known ones."""
    if name not in EXPORTERS:
        raise InputError(f"unknown export target {name!r}; choose one of {', '.join(EXPORTERS)}")
    return EXPORTERS[name]


@dataclass(frozen=True)
class ExportResult:
    """A finished export: where it is and its export.json record."""

    out: Path
    record: dict


def export_corpus(corpus: str | Path, target: str, out: str | Path, *, overwrite: bool = False,
                  progress: Progress | None = None) -> ExportResult:
    """Export the corpus at `corpus` as `target` into `out` (atomically; see the module docstring)."""
    corpus, out = Path(corpus), Path(out)
    exporter = get_exporter(target)
    source = open_corpus(corpus)
    recover_swap(out)  # an earlier export interrupted between its two renames goes back in place first
    check_out(out, corpus, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the export follows the umask
        t0 = time.perf_counter()
        written = exporter.write(source, tmp, progress or (lambda _: None))
        record = export_record(source, exporter, written, tmp, time.perf_counter() - t0)
        write_json(tmp / EXPORT_JSON, record)  # last: a folder with export.json is a finished export
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, record)


def check_out(out: Path, corpus: Path, overwrite: bool) -> None:
    """InputError unless --out is new, empty, or (with --overwrite) an earlier export."""
    check_out_path(out, corpus)
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / EXPORT_JSON).is_file():
        raise InputError(f"--out {out} is not empty and is not an echox export (no {EXPORT_JSON}); "
                         f"--overwrite replaces only an earlier export, so choose a new or empty folder")
    if not overwrite:
        raise InputError(f"--out {out} holds an earlier export; pass --overwrite to replace it, or choose "
                         f"another folder")


def export_record(source: CorpusSource, exporter: Exporter, written: Written, folder: Path,
                  seconds: float) -> dict:
    """The export.json record; IntegrityError when the rows written are not the corpus's rows."""
    expected = sum(int(s.get("num_rows", 0)) for s in source.shards)
    if written.rows != expected:
        raise IntegrityError(f"export wrote {written.rows} rows, the corpus has {expected}")
    codebook = source.manifest.get("codebook") or {}
    return {
        "kind": "echox.export", "version": EXPORT_VERSION, "target": exporter.name,
        "load": exporter.load.format(out="OUT"),
        "corpus": {"path": str(source.root.resolve()),
                   "manifest_sha256": file_sha256(source.root / "manifest.json"),
                   "config_hash": source.manifest.get("config_hash"),
                   "schema_version": source.manifest.get("schema_version"), "shards": len(source.shards)},
        "counts": {"rows": written.rows, "utterances": written.utterances},
        "audio": {"format": "WAV, 16-bit PCM, mono", "sample_rate": SAMPLE_RATE,
                  "seconds": round(written.audio_seconds, 3)},
        "units": {"num_units": codebook.get("num_units"), "frame_rate": source.frame_rate,
                  "features": codebook.get("features"), "codebook_sha256": codebook.get("sha256"),
                  "durations": "frames per deduplicated unit"},
        "files": [{"path": f, "bytes": (folder / f).stat().st_size, "sha256": file_sha256(folder / f)}
                  for f in written.files],
        "bytes": folder_bytes(folder),
        "export_seconds": round(seconds, 3),
        "versions": versions(exporter.library),
    }


def folder_bytes(folder: Path) -> int:
    """Total size of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def versions(library: str) -> dict[str, str]:
    """Installed versions of echox, the target's library and pyarrow."""
    found = {}
    for name in ("echox", library, "pyarrow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found
