"""Corrupt, truncated or missing build outputs: readers name the file, a rerun rebuilds exactly that file.

A corrupt training checkpoint (detected, skipped, and refused by name) is covered in
tests/tasks/test_checkpoint.py (test_corrupt_newest_is_skipped_and_refused); not repeated here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.errors import IntegrityError
from tasks.configs import BuildCorpusConfig
from tasks.shards import file_sha256
from tests.reliability.conftest import qa_rows, write_source

pytestmark = pytest.mark.integration


def _cfg(src: Path, out: Path) -> BuildCorpusConfig:
    return BuildCorpusConfig(source=str(src), out=str(out), tts="espeak", num_units=8, shard_size=3,
                             workers=2, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> tuple[Path, Path]:
    """A finished 9-record build (3 shards): (source, output directory). Tests work on copies."""
    from flows.build_corpus import build_corpus

    tmp = tmp_path_factory.mktemp("corruption")
    src = write_source(tmp / "qa.jsonl", qa_rows(9))
    build_corpus(config=_cfg(src, tmp / "out"))
    return src, tmp / "out"


@pytest.fixture
def copy(built: tuple[Path, Path], tmp_path: Path) -> tuple[BuildCorpusConfig, dict]:
    """A copy of the finished build (same source, so the same build identity) and its manifest."""
    src, out = built
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return _cfg(src, dst), json.loads((dst / "manifest.json").read_text())


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rebuild(cfg: BuildCorpusConfig) -> None:
    from flows.build_corpus import build_corpus

    build_corpus(config=cfg)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_corpus_shard_is_named_by_readers_and_rebuilt(copy: tuple, damage: str) -> None:
    from tasks.data import load_corpus, verify_corpus
    from tasks.shards import verify_manifest

    cfg, manifest = copy
    out = Path(cfg.out)
    shard = out / "shard-00001.arrow"
    {"flip": _flip_byte, "truncate": lambda p: p.write_bytes(p.read_bytes()[:1000]),
     "delete": Path.unlink}[damage](shard)
    with pytest.raises(IntegrityError, match=r"shard-00001\.arrow"):
        verify_corpus(out)
    with pytest.raises(IntegrityError, match=r"shard-00001\.arrow"):
        load_corpus(out)
    assert verify_manifest(out, manifest) == ["shard-00001.arrow"]
    others = {n: t for n, t in _mtimes(out, "shard-*.arrow").items() if n != shard.name}

    _rebuild(cfg)
    recorded = {s["path"]: s["sha256"] for s in manifest["shards"]}
    assert file_sha256(shard) == recorded[shard.name]  # rebuilt byte-identical, so it verifies again
    verify_corpus(out)
    assert sorted(r["id"] for r in load_corpus(out)) == sorted(f"q{i}" for i in range(1, 10))
    assert {n: t for n, t in _mtimes(out, "shard-*.arrow").items() if n != shard.name} == others
    # The rerun said what it repaired: the manifest's history names the file (the log and a table
    # artifact say it too), and a later clean rerun adds nothing.
    assert json.loads((out / "manifest.json").read_text())["repairs"] == [["shard-00001.arrow"]]
    _rebuild(cfg)
    assert json.loads((out / "manifest.json").read_text())["repairs"] == [["shard-00001.arrow"]]


@pytest.mark.parametrize("part", ["audio/shard-00002.arrow", "feats/shard-00002.npz"])
def test_truncated_intermediate_file_is_redone(copy: tuple, part: str) -> None:
    from tasks.build_corpus import BuildPaths
    from tasks.data import verify_corpus

    cfg, manifest = copy
    paths = BuildPaths(Path(cfg.out))
    damaged = paths.work / part
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    untouched = _mtimes(paths.work / "audio", "*.done.json")
    del untouched["shard-00002.done.json"]

    _rebuild(cfg)
    marker = json.loads(paths.stage1_done(2).read_text())
    assert file_sha256(paths.audio(2)) == marker["audio_sha256"]
    assert file_sha256(paths.feats(2)) == marker["feats_sha256"]
    assert {n: t for n, t in _mtimes(paths.work / "audio", "*.done.json").items()
            if n != "shard-00002.done.json"} == untouched  # only the damaged shard was redone
    assert json.loads((paths.out / "manifest.json").read_text())["totals"] == manifest["totals"]
    assert json.loads((paths.out / "manifest.json").read_text())["repairs"] == [[f".echox/{part}"]]
    verify_corpus(paths.out)


def test_corrupt_codebook_manifest_and_stale_temps_are_repaired_on_rerun(copy: tuple) -> None:
    """A flipped codebook byte, a cut-off manifest and a killed run's temp files: one rerun repairs all."""
    from tasks.data import load_corpus

    cfg, manifest = copy
    out = Path(cfg.out)
    book, manifest_path = out / "codebook.npz", out / "manifest.json"
    _flip_byte(book)
    manifest_path.write_text(manifest_path.read_text()[:40])
    stale = [out / ".shard-00000.arrow.k1ll3d.tmp", out / ".echox" / "audio" / ".shard-00001.arrow.x.tmp",
             out / ".echox" / "feats" / ".shard-00001.npz.y.tmp", out / ".echox" / ".records.jsonl.z.tmp"]
    for p in stale:
        p.write_bytes(b"half a write")
    with pytest.raises(IntegrityError, match=r"manifest\.json is not valid JSON"):
        load_corpus(out)

    _rebuild(cfg)
    assert file_sha256(book) == manifest["codebook"]["sha256"]  # refitted (deterministically)
    assert json.loads(manifest_path.read_text()) == manifest
    assert len(load_corpus(out)) == 9
    assert not list(out.rglob("*.tmp"))
