"""The export targets, one writer each: a verified corpus in, files under the export's temp folder out.

- `hf-audio`: a `datasets` directory (Arrow shards, one per corpus shard) whose `question_audio` /
  `answer_audio` columns are `Audio(sampling_rate=16000)` holding WAV bytes; every other column as is.
- `lhotse`: `recordings.jsonl.gz`, `supervisions.jsonl.gz`, `cuts.jsonl.gz` and one WAV per utterance under
  `audio/shard-NNNNN/`, two utterances per row (`<id>-question`, `<id>-answer`). Audio paths are relative
  to the export folder (it can be moved): `.with_recording_path_prefix(OUT)` on loading.
- `webdataset`: `shard-NNNNN.tar`, one sample per row: `question.wav`, `answer.wav` and `json` (every
  other column), keyed by `safe_key(id)`.

Each library is imported when its writer runs (lhotse imports torch), so the registry stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.audio import wav_bytes
from tasks.export_source import (
    AUDIO_COLUMNS,
    SAMPLE_RATE,
    SIDES,
    CorpusSource,
    Exporter,
    Progress,
    Written,
    batches,
    int16_clips,
    rows,
    safe_key,
)
from tasks.shards import write_datasets_layout

TAR_MTIME = 0.0  # fixed member times: the same corpus exports to the same tar bytes


def shard_name(i: int, suffix: str) -> str:
    """The export's file for corpus shard `i`."""
    return f"shard-{i:05d}{suffix}"


def wav_name(row_id: str, side: str) -> str:
    """An utterance's WAV file name."""
    return f"{safe_key(row_id)}-{side}.wav"


def _report(progress: Progress, i: int, source: CorpusSource, written: Written) -> None:
    progress(f"shard {i + 1}/{len(source.shards)} exported ({written.rows} rows so far)")


# ---------------------------------------------------------------- hf-audio
def hf_features(schema: pa.Schema) -> Any:
    """The corpus's `datasets.Features` with the audio columns as `Audio(sampling_rate=16000)`."""
    import datasets

    features = datasets.Features.from_arrow_schema(schema.remove_metadata())
    for column in AUDIO_COLUMNS:
        features[column] = datasets.Audio(sampling_rate=SAMPLE_RATE)
    return features


def hf_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """One corpus batch with each audio column as Audio's struct<bytes: WAV, path: file name>."""
    ids = batch.column("id").to_pylist()
    arrays = []
    for name in schema.names:
        column = batch.column(name)
        if name in AUDIO_COLUMNS:
            side = name.removesuffix("_audio")
            wavs = pa.array([wav_bytes(c) for c in int16_clips(column)], pa.binary())
            paths = pa.array([wav_name(i, side) for i in ids], pa.string())
            column = pa.StructArray.from_arrays([wavs, paths], names=["bytes", "path"])
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _samples(column: pa.Array) -> int:
    """Samples in all rows of a list<int16> column."""
    offsets = column.offsets
    return offsets[len(offsets) - 1].as_py() - offsets[0].as_py()


def write_hf_audio(source: CorpusSource, out: Path, progress: Progress) -> Written:
    """A `datasets` directory with Audio columns (WAV bytes), one Arrow shard per corpus shard."""
    written, features, schema = Written(), None, None
    for i, table in source.tables():
        if features is None:
            features = hf_features(table.schema)
            schema = features.arrow_schema  # carries the features (Audio) in its "huggingface" metadata
        name = shard_name(i, ".arrow")
        with pa.OSFile(str(out / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches(table):
                writer.write_batch(hf_batch(batch, schema))
                written.add(batch.num_rows, sum(_samples(batch.column(c)) for c in AUDIO_COLUMNS))
        written.files.append(name)
        _report(progress, i, source, written)
    fingerprint = str(source.manifest.get("config_hash") or "export")
    write_datasets_layout(out, written.files, schema, f"export-{fingerprint}", features=features)
    return written


# ---------------------------------------------------------------- lhotse
def lhotse_cut(row: dict[str, Any], side: str, audio_path: str, language: str) -> Any:
    """One utterance as a MonoCut: its recording (a WAV file), its supervision (spoken text; the original
    text, aliases and ASR columns as custom fields), units and unit durations as custom fields."""
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    uid, samples = f"{row['id']}-{side}", len(row[f"{side}_audio"])
    duration = samples / SAMPLE_RATE
    recording = Recording(id=uid, sources=[AudioSource(type="file", channels=[0], source=audio_path)],
                          sampling_rate=SAMPLE_RATE, num_samples=samples, duration=duration)
    custom = {"original_text": row[f"{side}_original"]}
    custom |= {"aliases": row["aliases"]} if side == "answer" else {}
    custom |= {k: row[f"{side}_{k}"] for k in ("asr_text", "asr_wer") if f"{side}_{k}" in row}
    supervision = SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=duration, channel=0,
                                     text=row[f"{side}_text"], language=language, speaker=row["voice"],
                                     custom=custom)
    fields = {"qa_id": row["id"], "side": side, "units": row[f"{side}_units"],
              "unit_durations": row[f"{side}_durations"]}
    fields |= {"extra": row["extra"]} if row["extra"] not in ("", "{}") else {}
    return MonoCut(id=uid, start=0.0, duration=duration, channel=0, recording=recording,
                   supervisions=[supervision], custom=fields)


LHOTSE_MANIFESTS = ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz")


def write_lhotse(source: CorpusSource, out: Path, progress: Progress) -> Written:
    """Lhotse manifests (recordings, supervisions, cuts) and a WAV per utterance."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    written = Written(files=list(LHOTSE_MANIFESTS))
    recs, sups, cuts = (out / name for name in LHOTSE_MANIFESTS)
    with RecordingSet.open_writer(recs) as rec_w, SupervisionSet.open_writer(sups) as sup_w, \
            CutSet.open_writer(cuts) as cut_w:
        for i, table in source.tables():
            folder = Path("audio") / shard_name(i, "")
            (out / folder).mkdir(parents=True)
            for row in rows(table):
                for side in SIDES:
                    path = str(folder / wav_name(row["id"], side))
                    (out / path).write_bytes(wav_bytes(row[f"{side}_audio"]))
                    cut = lhotse_cut(row, side, path, source.language)
                    rec_w.write(cut.recording)
                    sup_w.write(cut.supervisions[0])
                    cut_w.write(cut)
                written.add_row(row)
            _report(progress, i, source, written)
    return written


# ---------------------------------------------------------------- webdataset
def wds_sample(row: dict[str, Any]) -> dict[str, Any]:
    """One row as a WebDataset sample: the two WAVs and every other column as `json`."""
    meta = {k: v for k, v in row.items() if k not in AUDIO_COLUMNS}
    wavs = {f"{side}.wav": wav_bytes(row[f"{side}_audio"]) for side in SIDES}
    return {"__key__": safe_key(row["id"]), **wavs, "json": json.dumps(meta, ensure_ascii=False).encode()}


def write_webdataset(source: CorpusSource, out: Path, progress: Progress) -> Written:
    """WebDataset tar shards, one per corpus shard, one sample per row."""
    import webdataset

    written = Written()
    for i, table in source.tables():
        name = shard_name(i, ".tar")
        with webdataset.TarWriter(str(out / name), mtime=TAR_MTIME) as sink:
            for row in rows(table):
                sink.write(wds_sample(row))
                written.add_row(row)
        written.files.append(name)
        _report(progress, i, source, written)
    return written


BUILTIN = (
    Exporter("hf-audio", write_hf_audio, "datasets",
             "a datasets directory whose question_audio/answer_audio are Audio columns of WAV bytes",
             "datasets.load_from_disk('{out}'); decoding an Audio column needs torchcodec (and FFmpeg), "
             "else cast it to datasets.Audio(decode=False) and read x['bytes'] with soundfile"),
    Exporter("lhotse", write_lhotse, "lhotse",
             "Lhotse recordings/supervisions/cuts manifests and a WAV per utterance (<id>-question, "
             "<id>-answer)",
             "lhotse.CutSet.from_file('{out}/cuts.jsonl.gz').with_recording_path_prefix('{out}'): audio "
             "paths are relative to the export folder; units and unit_durations are custom fields of a cut"),
    Exporter("webdataset", write_webdataset, "webdataset",
             "WebDataset tar shards, one sample per row: question.wav, answer.wav, json",
             "webdataset.WebDataset(sorted(glob.glob('{out}/shard-*.tar')), shardshuffle=False).decode(): "
             "question.wav/answer.wav stay WAV bytes (soundfile.read(io.BytesIO(...))); json holds the "
             "other columns"),
)
