"""The echo-labels flow on real Ray + Prefect: actors, datasets-loadable output, verified manifest, reruns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import InputError
from tests.tasks.test_echo_labels import tiny_checkpoints, tiny_rows, write_tiny_corpus

pytestmark = pytest.mark.integration


def _cfg(env: dict, out: Path, **kw: object):
    from flows.echo_labels import EchoLabelsConfig

    base = {"corpus": str(env["corpus"]), "s2t": str(env["s2t"]), "t2c": str(env["t2c"]),
            "out": str(out), "workers": 2, "batch_size": 2, "max_units": env["guard"], "progress": False,
            "min_t2c_end_rate": 0.0}  # guards the rows hit on purpose; the end-rate check is tested apart
    return EchoLabelsConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def _send_logs_before_the_server_stops() -> Iterator[None]:
    """Flush Prefect's queued API logs at module end, while the session's test server still runs
    (otherwise the exiting interpreter retries them against a stopped server for a minute)."""
    yield
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("echo-flow")
    rows = tiny_rows(8)
    corpus = write_tiny_corpus(root / "corpus", rows, shards=3)
    s2t, t2c = tiny_checkpoints(root, rows)
    needs = _unit_needs(root, corpus, s2t, t2c)
    return {"root": root, "corpus": corpus, "s2t": s2t, "t2c": t2c, "needs": needs,
            "guard": needs[0]}  # rows whose longest segment has the fewest units pass (all, if even)


def _unit_needs(root: Path, corpus: Path, s2t: Path, t2c: Path) -> list[int]:
    """The distinct longest-segment unit counts of the rows, from an unguarded in-process run.

    Which rows the seeded tiny T2C ends early varies with the numerics of the installed libraries
    (it once needed 4 and 8 units; with today's stack every row needs the same), so the guards the tests
    use are read off the models rather than fixed.
    """
    import datasets

    from tasks.echo_labels import label_local

    label_local(str(corpus), str(s2t), str(t2c), str(root / "unguarded"), batch_size=2, max_units=64)
    rows = datasets.load_from_disk(str(root / "unguarded")).to_list()
    assert len(rows) == 8
    return sorted({max(len(u) for u in row["segment_units"]) for row in rows})


@pytest.fixture(scope="module")
def labelled(env: dict, ray_session: None, prefect_server: str) -> Path:
    from flows.echo_labels import echo_labels

    out = env["root"] / "labels"
    echo_labels(config=_cfg(env, out))
    return out


def test_flow_output_is_datasets_loadable_with_a_verified_manifest(env: dict, labelled: Path) -> None:
    import datasets

    from tasks.echo_labels import checkpoint_hash, label_local
    from tasks.shards import file_sha256, verify_manifest

    manifest = json.loads((labelled / "manifest.json").read_text())
    assert manifest["kind"] == "echox.echo_labels" and not verify_manifest(labelled, manifest)
    assert manifest["checkpoints"]["t2c"]["sha256"] == checkpoint_hash(env["t2c"], "t2c")["sha256"]
    assert manifest["corpus"]["manifest_sha256"] == file_sha256(env["corpus"] / "manifest.json")
    ds = datasets.load_from_disk(str(labelled))
    rejects = [json.loads(x) for x in (labelled / "rejects.jsonl").read_text().splitlines()]
    assert len(ds) == manifest["totals"]["rows"] > 0 and len(ds) + len(rejects) == 8
    assert bool(rejects) == (len(env["needs"]) > 1)  # rows needing more units than the fewest hit the guard
    assert all(r["stage"] == "echo" and r["reason"].startswith(f"T2C hit the length guard of {env['guard']} ")
               for r in rejects)
    assert [r["line"] for r in rejects] == sorted(int(r["id"][1:]) for r in rejects)  # line = row index
    assert set(ds["id"]).isdisjoint(r["id"] for r in rejects)
    # The actors computed what one process computes.
    local = env["root"] / "local"
    label_local(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(local), batch_size=2,
                max_units=env["guard"])
    assert datasets.load_from_disk(str(local)).to_list() == ds.to_list()


def test_rerun_is_skipped_and_a_lost_shard_is_redone(env: dict, labelled: Path) -> None:
    from flows.echo_labels import echo_labels

    stamps = {p.name: p.stat().st_mtime_ns for p in labelled.glob("echo-*.arrow")}
    echo_labels(config=_cfg(env, labelled))
    assert {p.name: p.stat().st_mtime_ns for p in labelled.glob("echo-*.arrow")} == stamps
    before = (labelled / "echo-00000.arrow").read_bytes()
    (labelled / "echo-00000.arrow").unlink()
    echo_labels(config=_cfg(env, labelled, workers=1))  # resume: only shard 0 is labelled again
    after = {p.name: p.stat().st_mtime_ns for p in labelled.glob("echo-*.arrow")}
    assert after.pop("echo-00000.arrow") != stamps.pop("echo-00000.arrow") and after == stamps
    assert (labelled / "echo-00000.arrow").read_bytes() == before


def test_an_output_of_another_run_is_refused(env: dict, labelled: Path) -> None:
    from flows.echo_labels import echo_labels

    with pytest.raises(InputError, match="overwrite"):
        echo_labels(config=_cfg(env, labelled, max_units=env["guard"] + 1))


def test_rows_hitting_the_guard_are_rejects_with_reasons_through_the_actors(env: dict,
                                                                          tmp_path: Path) -> None:
    """A guard every row's longest segment hits: each row is a reject naming the guard, and the run fails."""
    from core.errors import EchoxError
    from flows.echo_labels import echo_labels

    guard = env["needs"][0] - 1  # short of what the longest segment of every row needs
    assert guard >= 1
    out = tmp_path / "strict"
    with pytest.raises(EchoxError, match="every corpus row was rejected"):
        echo_labels(config=_cfg(env, out, max_units=guard))
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rejects) == [f"r{i}" for i in range(8)]
    assert all(r["reason"].startswith(f"T2C hit the length guard of {guard} ") for r in rejects)
    assert not (out / "manifest.json").exists()
