"""The output folder a build owns: what --overwrite may move, what it must never touch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError
from tasks.out_dir import (
    acquire_lock,
    check_out_path,
    drop_previous,
    owned_files,
    plan_out_dir,
    prepare_out_dir,
)


def _old_build(out: Path, build_hash: str = "old", finished: bool = True) -> None:
    (out / ".echox").mkdir(parents=True)
    (out / ".echox" / "build.json").write_text(json.dumps({"hash": build_hash}))
    (out / "shard-00000.arrow").write_bytes(b"rows")
    (out / "codebook.npz").write_bytes(b"book")
    if finished:
        (out / "manifest.json").write_text(json.dumps({"shards": [{"path": "shard-00000.arrow"}]}))


def test_source_inside_or_equal_to_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    for source in (tmp_path / "out", tmp_path / "out" / "qa.jsonl", tmp_path / "out" / "a" / "b.jsonl"):
        with pytest.raises(InputError, match="lies inside --out"):
            check_out_path(tmp_path / "out", source)
    check_out_path(tmp_path / "out", tmp_path / "qa.jsonl")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is an existing file"):
        check_out_path(tmp_path / "f")


def test_owned_files_are_the_builds_and_nothing_else(tmp_path: Path) -> None:
    _old_build(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "shard-1.arrow").write_text("not a build's name")
    assert [p.name for p in owned_files(tmp_path)] == ["codebook.npz", "manifest.json", "shard-00000.arrow"]


def test_replace_moves_a_finished_build_aside_and_keeps_foreign_files(tmp_path: Path) -> None:
    _old_build(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="pass --overwrite"):
        plan_out_dir(tmp_path, "new", overwrite=False)
    plan = prepare_out_dir(tmp_path, "new", overwrite=True)
    assert plan.action == "replace" and plan.finished
    assert sorted(p.name for p in (tmp_path / ".echox-previous").iterdir()) == [
        "codebook.npz", "manifest.json", "shard-00000.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".echox", ".echox-previous", "notes.txt"]
    assert drop_previous(tmp_path) and not (tmp_path / ".echox-previous").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_replacing_an_unfinished_build_keeps_the_last_finished_one(tmp_path: Path) -> None:
    (tmp_path / ".echox-previous").mkdir()
    (tmp_path / ".echox-previous" / "manifest.json").write_text("{}")
    _old_build(tmp_path, finished=False)
    plan = prepare_out_dir(tmp_path, "new", overwrite=True)
    assert not plan.finished and not (tmp_path / "shard-00000.arrow").exists()
    assert (tmp_path / ".echox-previous" / "manifest.json").read_text() == "{}"


def test_same_build_resumes_and_a_fresh_folder_starts(tmp_path: Path) -> None:
    assert plan_out_dir(tmp_path / "new", "h", overwrite=False).action == "fresh"
    _old_build(tmp_path / "b", "h")
    assert plan_out_dir(tmp_path / "b", "h", overwrite=False).action == "resume"


def test_a_refused_lock_holder_can_remove_what_the_lock_created(tmp_path: Path) -> None:
    lock = acquire_lock(tmp_path / "a" / "out")
    assert (tmp_path / "a" / "out" / ".echox" / "lock").exists()
    lock.release(remove_created=True)
    assert not (tmp_path / "a" / "out").exists() and (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    lock = acquire_lock(tmp_path / "kept")
    lock.release(remove_created=True)
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / ".echox").exists()
