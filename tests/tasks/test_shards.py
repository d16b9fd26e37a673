"""Shard files: atomic writes, checksums, and the datasets layout."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from core.errors import IntegrityError
from tasks.shards import read_arrow, verify_manifest, write_arrow, write_datasets_layout


def test_arrow_roundtrip_is_verified_and_datasets_opens_it(tmp_path: Path) -> None:
    import datasets

    table = pa.table({"id": ["a", "b"], "audio": pa.array([[1, -2], [3]], pa.list_(pa.int16()))})
    entry = write_arrow(tmp_path / "shard-00000.arrow", table)
    assert entry["num_rows"] == 2 and not list(tmp_path.glob("*.tmp"))
    assert read_arrow(tmp_path / entry["path"], sha256=entry["sha256"]).equals(table)
    write_datasets_layout(tmp_path, [entry["path"]], table.schema, "f" * 64)
    ds = datasets.load_from_disk(str(tmp_path))
    assert ds["id"] == ["a", "b"] and ds.features["audio"].feature.dtype == "int16"


def test_a_flipped_byte_is_detected_by_name(tmp_path: Path) -> None:
    table = pa.table({"x": list(range(100))})
    entry = write_arrow(tmp_path / "shard-00000.arrow", table)
    path = tmp_path / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"shard-00000\.arrow"):
        read_arrow(path, sha256=entry["sha256"])
    assert verify_manifest(tmp_path, {"shards": [entry]}) == ["shard-00000.arrow"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    import os

    from tasks.shards import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        write_arrow(tmp_path / "shard-00000.arrow", pa.table({"x": [1, 2]}))
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "shard-00000.arrow").stat().st_mode & 0o777 == mode
