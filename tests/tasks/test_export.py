"""`echox export`: each target loaded back with its real library (datasets, lhotse, webdataset) against the
real tiny corpus; export.json; refused inputs (exit 2, one line, nothing written); atomic output."""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tasks import export_source
from tasks.data import load_corpus
from tasks.export import EXPORT_JSON, EXPORTERS, export_corpus
from tasks.export_source import Exporter, Written, safe_key
from tasks.shards import file_sha256

TARGETS = ("hf-audio", "lhotse", "webdataset")
SIDES = ("question", "answer")


@pytest.fixture(scope="module")
def exports(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each target exported once, 3 rows per batch (so the 8-row shards are read as Arrow slices)."""
    root = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_source, "BATCH_ROWS", 3)
        return {t: export_corpus(tiny_corpus, t, root / t).out for t in TARGETS}


@pytest.fixture(scope="module")
def corpus_rows(tiny_corpus: Path) -> dict[str, dict]:
    """The corpus rows by id (audio as int16 arrays)."""
    return {row["id"]: row for row in load_corpus(tiny_corpus)}


def _wav(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 16_000
    return samples


def _same_units(got: dict, row: dict, side: str) -> None:
    assert list(got["units"]) == row[f"{side}_units"].tolist()
    assert list(got["durations"]) == row[f"{side}_durations"].tolist()


def test_hf_audio_loads_with_datasets(exports: dict[str, Path], corpus_rows: dict[str, dict]) -> None:
    import datasets

    ds = datasets.load_from_disk(str(exports["hf-audio"]))
    assert len(ds) == len(corpus_rows) == 16
    for side in SIDES:
        assert ds.features[f"{side}_audio"] == datasets.Audio(sampling_rate=16_000)
    raw = ds.cast_column("question_audio", datasets.Audio(decode=False)).cast_column(
        "answer_audio", datasets.Audio(decode=False))
    for got in raw:
        row = corpus_rows[got["id"]]
        for side in SIDES:
            np.testing.assert_array_equal(_wav(got[f"{side}_audio"]["bytes"]), row[f"{side}_audio"])
            assert got[f"{side}_audio"]["path"] == f"{got['id']}-{side}.wav"
            _same_units({"units": got[f"{side}_units"], "durations": got[f"{side}_durations"]}, row, side)
        assert got["question_original"] == row["question_original"] and got["voice"] == row["voice"]


def test_hf_audio_decoding_needs_torchcodec(exports: dict[str, Path], corpus_rows: dict[str, dict]) -> None:
    """What the README says: the Audio columns decode with torchcodec; without it datasets says so."""
    import datasets

    ds = datasets.load_from_disk(str(exports["hf-audio"]))
    if importlib.util.find_spec("torchcodec") is None:
        with pytest.raises(ImportError, match="torchcodec"):
            ds[0]
        return
    decoded = ds[0]["question_audio"].get_all_samples()  # pragma: no cover - torchcodec not pinned
    expected = corpus_rows[ds[0]["id"]]["question_audio"] / 32768.0
    np.testing.assert_allclose(decoded.data.numpy()[0], expected, atol=1e-4)


def test_lhotse_manifests_load_and_play(exports: dict[str, Path], corpus_rows: dict[str, dict]) -> None:
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse.qa import validate

    out = exports["lhotse"]
    recordings = RecordingSet.from_file(out / "recordings.jsonl.gz").with_path_prefix(out)
    supervisions = SupervisionSet.from_file(out / "supervisions.jsonl.gz")
    cuts = CutSet.from_file(out / "cuts.jsonl.gz").with_recording_path_prefix(out)
    ids = {f"{i}-{side}" for i in corpus_rows for side in SIDES}
    assert set(recordings.ids) == set(supervisions.ids) == set(cuts.ids) == ids
    validate(cuts, read_data=True)
    for cut in cuts:
        row, side = corpus_rows[cut.qa_id], cut.side
        assert cut.id == f"{row['id']}-{side}"
        samples = np.round(cut.load_audio()[0] * 32768).astype(np.int16)
        np.testing.assert_array_equal(samples, row[f"{side}_audio"])
        _same_units({"units": cut.units, "durations": cut.unit_durations}, row, side)
        (sup,) = cut.supervisions
        assert sup.text == row[f"{side}_text"] and sup.original_text == row[f"{side}_original"]
        assert sup.speaker == row["voice"] and sup.language == "en"
    np.testing.assert_array_equal(recordings[cut.id].load_audio(), cut.load_audio())


def test_webdataset_shards_iterate(exports: dict[str, Path], corpus_rows: dict[str, dict]) -> None:
    import webdataset

    urls = sorted(glob.glob(str(exports["webdataset"] / "shard-*.tar")))
    assert len(urls) == 2  # one tar per corpus shard
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == len(corpus_rows)
    for sample in samples:
        meta = sample["json"]
        row = corpus_rows[meta["id"]]
        assert sample["__key__"] == safe_key(meta["id"])
        for side in SIDES:
            np.testing.assert_array_equal(_wav(sample[f"{side}.wav"]), row[f"{side}_audio"])
            _same_units({"units": meta[f"{side}_units"], "durations": meta[f"{side}_durations"]}, row, side)
        assert meta["answer_text"] == row["answer_text"] and meta["aliases"] == row["aliases"]


@pytest.mark.parametrize("target", TARGETS)
def test_export_json_records_source_counts_and_files(target: str, exports: dict[str, Path],
                                                     tiny_corpus: Path) -> None:
    out = exports[target]
    record = json.loads((out / EXPORT_JSON).read_text())
    assert record["target"] == target and record["kind"] == "echox.export"
    assert record["corpus"]["manifest_sha256"] == file_sha256(tiny_corpus / "manifest.json")
    assert record["counts"] == {"rows": 16, "utterances": 32}
    assert record["units"]["num_units"] == 16 and record["units"]["frame_rate"] == 100.0
    assert record["versions"][EXPORTERS[target].library] not in ("", "unknown")
    assert record["files"] and all(file_sha256(out / f["path"]) == f["sha256"] for f in record["files"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_safe_keys_are_distinct_file_names() -> None:
    ids = ["q1", "a.b", "a/b", "a%2Eb", "é", "a b", "A-b_9"]
    keys = [safe_key(i) for i in ids]
    assert len(set(keys)) == len(ids) and keys[0] == "q1" and keys[-1] == "A-b_9"
    assert all("." not in k and "/" not in k for k in keys)


# ---------------------------------------------------------------- refusals and atomicity
def _cli(*args: str) -> int:
    from echox.cli import main

    return main(["export", "--quiet", *args])


def _copy_corpus(corpus: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in corpus.iterdir():
        if path.is_file():
            shutil.copy(path, dest / path.name)
    return dest


def _refused(capsys: pytest.CaptureFixture[str], rc: int, words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and len(err.splitlines()) == 1, err


def test_missing_failed_and_corrupt_corpora_are_refused(tiny_corpus: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _refused(capsys, _cli("--corpus", str(tmp_path / "nope"), "--to", "webdataset", "--out", str(out)),
             "corpus directory not found")
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "failure.json").write_text(json.dumps({"reason": "too many rejects"}))
    _refused(capsys, _cli("--corpus", str(failed), "--to", "lhotse", "--out", str(out)),
             "is a failed corpus build, not a usable one: too many rejects")
    corrupt = _copy_corpus(tiny_corpus, tmp_path / "corrupt")
    shard = corrupt / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    _refused(capsys, _cli("--corpus", str(corrupt), "--to", "hf-audio", "--out", str(out)),
             "fails verification: shard-00001.arrow")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["corrupt", "failed"]


def test_a_non_empty_out_is_refused_and_an_earlier_export_replaced_with_overwrite(
        tiny_corpus: Path, exports: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        _refused(capsys, _cli("--corpus", str(tiny_corpus), "--to", "webdataset", "--out", str(foreign),
                              *extra), "is not empty and is not an echox export")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    earlier = shutil.copytree(exports["lhotse"], tmp_path / "earlier")
    _refused(capsys, _cli("--corpus", str(tiny_corpus), "--to", "webdataset", "--out", str(earlier)),
             "holds an earlier export; pass --overwrite")
    assert _cli("--corpus", str(tiny_corpus), "--to", "webdataset", "--out", str(earlier), "--overwrite") == 0
    record = json.loads((earlier / EXPORT_JSON).read_text())
    assert record["target"] == "webdataset"
    # the same corpus gives the same tar bytes (fixed member times)
    assert record["files"] == json.loads((exports["webdataset"] / EXPORT_JSON).read_text())["files"]
    assert not (earlier / "cuts.jsonl.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "foreign"]  # no temp or kept folder


def _failing_writer(source: export_source.CorpusSource, out: Path, progress: object) -> Written:
    (out / "half.bin").write_bytes(b"partial")
    raise RuntimeError("disk full")


@pytest.fixture
def failing_target(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(EXPORTERS, "boom", Exporter("boom", _failing_writer, "pyarrow", "fails", "-"))
    yield "boom"


def test_a_failed_export_leaves_out_as_it_was(tiny_corpus: Path, exports: dict[str, Path], tmp_path: Path,
                                              failing_target: str) -> None:
    with pytest.raises(RuntimeError, match="disk full"):
        export_corpus(tiny_corpus, failing_target, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    earlier = shutil.copytree(exports["webdataset"], tmp_path / "earlier")
    before = sorted(p.name for p in earlier.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        export_corpus(tiny_corpus, failing_target, earlier, overwrite=True)
    assert sorted(p.name for p in earlier.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["earlier"]


def test_optional_columns_travel_with_the_utterance() -> None:
    """ASR columns (a build with --asr-check) go to the supervisions, a non-empty extra to the cut."""
    from tasks.export_formats import lhotse_cut, wds_sample

    audio = np.arange(1600, dtype=np.int16)
    row = {"id": "x.1", "voice": "v", "aliases": ["4"], "extra": '{"topic": "sums"}',
           **{f"{side}_{k}": v for side in SIDES for k, v in (
               ("text", "two plus two"), ("original", "2+2"), ("audio", audio), ("units", [3, 1]),
               ("durations", [2, 5]), ("asr_text", "two plus to"), ("asr_wer", 0.333))}}
    cut = lhotse_cut(row, "answer", "audio/x.wav", "en")
    assert cut.id == "x.1-answer" and cut.duration == 0.1 and cut.extra == '{"topic": "sums"}'
    (sup,) = cut.supervisions
    assert sup.asr_text == "two plus to" and sup.asr_wer == 0.333 and sup.aliases == ["4"]
    sample = wds_sample(row)
    assert sample["__key__"] == "x%2E1" and json.loads(sample["json"])["question_asr_wer"] == 0.333
    np.testing.assert_array_equal(_wav(sample["answer.wav"]), audio)
