"""Training rows from Arrow corpus directories: verified, memory-mapped, joined, and split across ranks.

A corpus directory is what the corpus build writes (and `datasets.load_from_disk` opens): Arrow
IPC-stream shards, `state.json`, `dataset_info.json` and, last, `manifest.json` listing every shard as
`{"path", "num_rows", "sha256"}`. Shards are read with pyarrow directly (memory-mapped), so training
needs neither `datasets` nor a copy of the audio in RAM, and list<int16> audio stays int16.
"""

from __future__ import annotations

import json
import math
from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import InputError, IntegrityError
from tasks.shards import finished_manifest, read_arrow, verify_file

SEGMENT_PREFIX = "segment_"


class LazyRow(Mapping[str, Any]):
    """One row whose columns are converted on first access (a length function touches only what it reads)."""

    def __init__(self, row: pa.Table) -> None:
        self._row = row
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            if name not in self._row.column_names:
                raise KeyError(name)
            self._cache[name] = _cell(self._row.column(name))
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._row.column_names)

    def __len__(self) -> int:
        return self._row.num_columns


class TableRows(Sequence[dict]):
    """Rows of a (memory-mapped) Arrow table as dicts; numeric lists become numpy arrays of their dtype."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return dict(self.lazy_row(i))

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def lazy_row(self, i: int) -> LazyRow:
        """Row `i` as a mapping that converts columns only when read."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return LazyRow(self.table.slice(i % len(self), 1))


def _cell(column: pa.ChunkedArray) -> Any:
    """The single value of a one-row column as a Python object (numeric lists as numpy arrays)."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return _value(arr)


def _value(arr: pa.Array) -> Any:
    """Convert a length-1 Arrow array, recursing into nested lists."""
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        values = arr.flatten()  # respects the slice's offsets
        vt = values.type
        if pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt):
            # Copy: zero-copy views of the mmap are read-only, and torch.from_numpy wants writable.
            return values.to_numpy(zero_copy_only=False).copy()
        return [_value(values.slice(k, 1)) for k in range(len(values))]
    return arr[0].as_py()


def shard_entries(corpus_dir: Path) -> list[dict]:
    """The manifest's shard entries, in the order `state.json` lists them (datasets' row order)."""
    manifest = finished_manifest(corpus_dir)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "path" in s for s in shards):
        raise IntegrityError(f"{corpus_dir}/manifest.json: 'shards' must list {{path, num_rows, sha256}}")
    state_path = corpus_dir / "state.json"
    if not state_path.exists():
        return shards
    files = [f["filename"] for f in json.loads(state_path.read_text()).get("_data_files", [])]
    by_path = {s["path"]: s for s in shards}
    if sorted(files) != sorted(by_path):
        raise IntegrityError(f"{corpus_dir}: state.json shards {files} differ from the manifest's "
                             f"{sorted(by_path)}")
    return [by_path[f] for f in files]


def verify_corpus(corpus_dir: str | Path) -> None:
    """Raise IntegrityError naming the first shard that is missing or does not match its sha256."""
    root = Path(corpus_dir)
    for shard in shard_entries(root):
        if "sha256" not in shard:
            raise IntegrityError(f"{root}/manifest.json: shard {shard['path']} has no sha256")
        verify_file(root / shard["path"], shard["sha256"])


def load_table(corpus_dir: str | Path, *, verify: bool = True) -> pa.Table:
    """Memory-map every shard of a corpus directory into one table (checking sha256s first if `verify`)."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise InputError(f"corpus directory not found: {root}")
    shards = shard_entries(root)
    if not shards:
        raise InputError(f"{root} holds no shards")
    if verify:
        verify_corpus(root)
    tables = [read_arrow(root / s["path"]) for s in shards]
    for shard, table in zip(shards, tables, strict=True):
        if "num_rows" in shard and table.num_rows != shard["num_rows"]:
            raise IntegrityError(f"shard {root / shard['path']} has {table.num_rows} rows, "
                                 f"manifest says {shard['num_rows']}")
    return pa.concat_tables(tables)


class _IndexedRows(Sequence[dict]):
    """Rows picked by `self.index`, each converted from the mapping `lazy_row(i)` returns."""

    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return dict(self.lazy_row(i))

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def lazy_row(self, i: int) -> Mapping[str, Any]:
        """Row `i` as a mapping that converts columns only when read."""
        raise NotImplementedError


class RowSubset(_IndexedRows):
    """Some rows of a TableRows, by index, without copying the (memory-mapped) table."""

    def __init__(self, rows: TableRows, index: np.ndarray) -> None:
        self.rows, self.index = rows, np.asarray(index, dtype=np.int64)

    def lazy_row(self, i: int) -> LazyRow:
        """Row `i` of the subset as a mapping that converts columns only when read."""
        return self.rows.lazy_row(int(self.index[i]))


def without_ids(rows: TableRows, ids: frozenset[str] | set[str]) -> TableRows | RowSubset:
    """The rows whose `id` is not in `ids` (the rows themselves when none is)."""
    if not ids:
        return rows
    keep = pc.invert(pc.is_in(rows.table.column("id"), value_set=pa.array(sorted(ids), pa.string())))
    return RowSubset(rows, np.flatnonzero(keep.to_numpy(zero_copy_only=False)))


def load_corpus(corpus_dir: str | Path, *, verify: bool = True) -> TableRows:
    """The rows of a corpus directory, memory-mapped and verified against the manifest."""
    return TableRows(load_table(corpus_dir, verify=verify))


class EchoExamples(_IndexedRows):
    """One example per (labels row, segment): the corpus row joined by id plus that segment's labels."""

    def __init__(self, corpus: TableRows, labels: TableRows, index: np.ndarray,
                 explode: Sequence[str]) -> None:
        self.corpus, self.labels = corpus, labels
        self.index = index  # (N, 3): corpus row, labels row, segment number
        self.explode = tuple(explode)

    def lazy_row(self, i: int) -> Mapping[str, Any]:
        """Example `i`: this segment's label values over the lazily converted corpus row."""
        corpus_row, label_row, k = (int(v) for v in self.index[i])
        labels = self.labels[label_row]
        for name in self.explode:
            value = labels[name][k]
            labels[name] = value.item() if isinstance(value, np.generic) else value
        labels["segment_index"] = k
        return ChainMap(labels, self.corpus.lazy_row(corpus_row))


def echo_examples(corpus_dir: str | Path, labels_dir: str | Path, *, verify: bool = True,
                  explode: Sequence[str] | None = None) -> EchoExamples:
    """Join an echo-labels directory to its corpus on `id`; one training example per (row, segment).

    `explode` names the list columns holding one entry per segment (all of equal length in a row).
    By default these are the `segment_*` columns when all of them are lists; when any `segment_*`
    column is a scalar, the labels table already has one row per segment and nothing is exploded.
    """
    corpus = load_corpus(corpus_dir, verify=verify)
    labels = load_corpus(labels_dir, verify=verify)
    explode = default_explode(labels.table.schema) if explode is None else tuple(explode)
    check_label_columns(corpus.table.schema, labels.table.schema, explode)
    corpus_rows = corpus_row_of(corpus.table, labels.table)
    counts = segment_counts(labels.table, explode)
    label_rows = np.repeat(np.arange(labels.table.num_rows), counts)
    starts = np.cumsum(counts) - counts  # each labels row's first example
    segments = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    index = np.stack([corpus_rows[label_rows], label_rows, segments], axis=1).astype(np.int64)
    return EchoExamples(corpus, labels, index, explode)


def default_explode(schema: pa.Schema) -> tuple[str, ...]:
    """The `segment_*` columns when all are lists, else none (the table is already one row per segment)."""
    names = [f.name for f in schema if f.name.startswith(SEGMENT_PREFIX)]
    if not names:
        raise IntegrityError(f"echo labels have no {SEGMENT_PREFIX}* columns: {schema.names}")
    if all(_is_list(schema.field(n).type) for n in names):
        return tuple(names)
    return ()


def _is_list(t: pa.DataType) -> bool:
    """True for every Arrow list type."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def check_label_columns(corpus: pa.Schema, labels: pa.Schema, explode: Sequence[str]) -> None:
    """Raise unless both have `id`, exploded columns are lists, and no label column repeats the corpus."""
    if "id" not in labels.names or "id" not in corpus.names:
        raise IntegrityError("both the corpus and the echo labels need an 'id' column")
    for name in explode:
        if name not in labels.names or not _is_list(labels.field(name).type):
            raise IntegrityError(f"echo labels column {name!r} must be a list (one entry per segment)")
    clashes = (set(corpus.names) & set(labels.names)) - {"id"}
    if clashes:
        raise IntegrityError(f"echo labels repeat corpus columns {sorted(clashes)}; rename them")


def corpus_row_of(corpus: pa.Table, labels: pa.Table) -> np.ndarray:
    """For each labels row, the index of the corpus row with its id (IntegrityError if any id is unknown)."""
    ids = corpus.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise IntegrityError("corpus ids are not unique; cannot join echo labels")
    where = {rid: i for i, rid in enumerate(ids)}
    label_ids = labels.column("id").to_pylist()
    missing = [rid for rid in label_ids if rid not in where]
    if missing:
        raise IntegrityError(f"{len(missing)} echo label ids are not in the corpus, e.g. {missing[:5]}")
    return np.array([where[rid] for rid in label_ids], dtype=np.int64)


def segment_counts(labels: pa.Table, explode: Sequence[str]) -> np.ndarray:
    """Segments per labels row (1 each when nothing is exploded); IntegrityError if exploded lists differ."""
    if not explode:
        return np.ones(labels.num_rows, dtype=np.int64)
    lengths = [pc.fill_null(pc.list_value_length(labels.column(n)), 0).to_numpy(zero_copy_only=False)
               for n in explode]
    for name, other in zip(explode[1:], lengths[1:], strict=True):
        bad = np.flatnonzero(other != lengths[0])
        if bad.size:
            rid = labels.column("id")[int(bad[0])].as_py()
            raise IntegrityError(f"echo labels row {rid}: {name} has {other[bad[0]]} segments, "
                                 f"{explode[0]} has {lengths[0][bad[0]]}")
    return lengths[0].astype(np.int64)  # a null list has no segments


def rank_batches(lengths: Sequence[int], *, batch_size: int, rank: int, world_size: int, seed: int,
                 epoch: int, bucket_size: int) -> list[list[int]]:
    """This rank's batches (example indices) for one epoch: seeded, length-bucketed, disjoint across ranks.

    Policy: a seeded shuffle of all examples, truncated to a multiple of `world_size` (at most
    world_size - 1 examples dropped per epoch, different ones each epoch); buckets of about
    `bucket_size` examples are sorted by length and cut into global batches of
    `batch_size * world_size` similar-length examples, dealt round-robin to the ranks, and the
    global batches are shuffled. Every rank gets the same number of batches (DDP never waits on a
    rank that ran out), rank r's batch i has lengths close to every other rank's batch i, and at most
    one global batch per epoch is short (by the same amount on every rank).
    """
    _check_sampler_args(len(lengths), batch_size, rank, world_size, bucket_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = order[: len(order) - len(order) % world_size]
    group = batch_size * world_size
    bucket = max(1, math.ceil(bucket_size / group)) * group
    lens = np.asarray(lengths, dtype=np.int64)
    groups: list[np.ndarray] = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        groups += [chunk[g : g + group] for g in range(0, len(chunk), group)]
    return [groups[g][rank::world_size].tolist() for g in rng.permutation(len(groups))]


def _check_sampler_args(n: int, batch_size: int, rank: int, world_size: int, bucket_size: int) -> None:
    """Raise InputError for arguments that would give an empty or uneven split."""
    if batch_size < 1 or world_size < 1 or bucket_size < 1:
        raise InputError(f"batch_size, world_size and bucket_size must be >= 1, got "
                         f"{batch_size}, {world_size}, {bucket_size}")
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is outside world size {world_size}")
    if n < world_size:
        raise InputError(f"{n} examples cannot feed {world_size} ranks")
