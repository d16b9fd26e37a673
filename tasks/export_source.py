"""What every export target reads and declares: the verified source corpus, streamed shard by shard and
`BATCH_ROWS` rows at a time; row keys safe as file names; the `Exporter` declaration and its counts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import InputError, IntegrityError
from data_specs import corpus as corpus_spec
from data_specs._validate import check_schema
from tasks.data import shard_entries
from tasks.shards import finished_manifest, read_arrow, verify_manifest

BATCH_ROWS = 64  # rows converted at a time: bounds memory for any shard size
SIDES = ("question", "answer")
AUDIO_COLUMNS = tuple(f"{side}_audio" for side in SIDES)
SAMPLE_RATE = corpus_spec.SAMPLE_RATE
Progress = Callable[[str], None]
_KEY_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

# ---------------------------------------------------------------- the source corpus
@dataclass(frozen=True)
class CorpusSource:
    """A verified corpus: its manifest, its shards in `datasets` row order, what its units mean."""

    root: Path
    manifest: dict
    shards: list[dict]
    frame_rate: float | None  # unit frames per second (None: the codebook file does not say)
    language: str

    def tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(shard number, memory-mapped table) of every shard, in order."""
        for i, shard in enumerate(self.shards):
            table = read_arrow(self.root / shard["path"])
            if table.num_rows != shard.get("num_rows", table.num_rows):
                raise IntegrityError(f"{self.root / shard['path']} has {table.num_rows} rows, "
                                     f"the manifest says {shard['num_rows']}")
            yield i, table


def open_corpus(corpus: Path) -> CorpusSource:
    """The corpus at `corpus`; InputError / IntegrityError (one line) for a missing, failed, unfinished,
    corrupt or foreign one."""
    if not corpus.is_dir():
        raise InputError(f"corpus directory not found: {corpus}")
    manifest = finished_manifest(corpus)
    if manifest.get("kind", "echox.corpus") != "echox.corpus":
        raise InputError(f"{corpus} is not a corpus (its manifest is of kind {manifest['kind']!r})")
    shards = shard_entries(corpus)
    if not shards:
        raise InputError(f"{corpus} holds no shards")
    bad = verify_manifest(corpus, manifest)
    if bad:
        raise IntegrityError(f"{corpus} fails verification: {', '.join(bad)} missing or not matching the "
                             f"manifest's sha256; rebuild it with build-corpus")
    for shard in shards:
        _check_shard_schema(corpus / shard["path"])
    lang = str((manifest.get("config") or {}).get("lang", "en"))
    return CorpusSource(corpus, manifest, shards, _frame_rate(corpus, manifest), lang)


def _check_shard_schema(path: Path) -> None:
    """IntegrityError unless the shard's columns are the corpus schema's (with or without the ASR ones)."""
    with pa.memory_map(str(path), "r") as source:
        schema = pa.ipc.open_stream(source).schema
    has_asr = any(f.name in schema.names for f in corpus_spec.ASR_FIELDS)
    check_schema(schema.empty_table(), corpus_spec.schema(has_asr), f"corpus shard {path.name}")


def _frame_rate(corpus: Path, manifest: dict) -> float | None:
    """Unit frames per second, from the feature config the codebook file records."""
    path = corpus / str((manifest.get("codebook") or {}).get("path", "codebook.npz"))
    try:
        with np.load(path) as z:
            return float(json.loads(str(z["feature_config"]))["frame_rate"])
    except (OSError, KeyError, ValueError):
        return None


def batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
    """The table's rows, BATCH_ROWS at a time (zero-copy slices of the memory map)."""
    yield from table.to_batches(max_chunksize=BATCH_ROWS)


def int16_clips(column: pa.Array) -> list[np.ndarray]:
    """Each row's samples of a list<int16> column, as views of the Arrow buffer."""
    offsets = column.offsets.to_numpy()  # the slice's own offsets into the unsliced values
    values = column.values.to_numpy(zero_copy_only=False)
    return [values[a:b] for a, b in pairwise(offsets)]


def rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Rows as dicts: the audio columns as int16 arrays, every other column as Python values."""
    for batch in batches(table):
        clips = {c: int16_clips(batch.column(c)) for c in AUDIO_COLUMNS}
        meta = batch.select([n for n in batch.schema.names if n not in AUDIO_COLUMNS]).to_pylist()
        for i, row in enumerate(meta):
            yield row | {c: clips[c][i] for c in AUDIO_COLUMNS}


def safe_key(row_id: str) -> str:
    """`row_id` as a file name and WebDataset key: bytes outside [A-Za-z0-9_-] become %XX (so no '.', which
    WebDataset reads as the start of the extension, and no '/'); distinct ids stay distinct."""
    return "".join(chr(b) if b in _KEY_BYTES else f"%{b:02X}" for b in row_id.encode())


# ---------------------------------------------------------------- what a target declares
@dataclass
class Written:
    """What a writer wrote: counts, and the data files whose sha256 export.json records."""

    rows: int = 0
    utterances: int = 0
    audio_seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # relative to the export folder

    def add(self, rows: int, samples: int) -> None:
        """Count `rows` corpus rows (two utterances each) holding `samples` audio samples in all."""
        self.rows += rows
        self.utterances += rows * len(SIDES)
        self.audio_seconds += samples / SAMPLE_RATE

    def add_row(self, row: dict[str, Any]) -> None:
        """Count one corpus row."""
        self.add(1, sum(len(row[c]) for c in AUDIO_COLUMNS))


Writer = Callable[[CorpusSource, Path, Progress], Written]


@dataclass(frozen=True)
class Exporter:
    """An export target: its `--to` name, the writer, the library that reads it, how to load it."""

    name: str
    write: Writer
    library: str  # the distribution whose version export.json records
    description: str
    load: str  # how to open the result, "{out}" standing for the export folder (README: "Exports")


