"""The plain single-process baseline: QA → TTS → 16 kHz → MFCC+deltas → k-means → dedup → one Arrow file.

No Prefect, no Ray: the shape of fairseq's simple_kmeans scripts (dump features, fit k-means, dump
labels), over the same stage functions the corpus build uses, so that the build's orchestration
overhead and parallel speedup are measured against it rather than assumed. Run it on its own:

    python -m bench.baseline --source qa.jsonl --out DIR [--tts piper] [--num-units 100]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class BaselineConfig:
    """What the plain loop builds; the defaults equal the corpus build's."""

    source: str
    """QA JSONL (id, question, answer, aliases)."""
    out: str
    """Output directory: feats.npy/feats.len, codebook.npy, corpus.arrow."""
    tts: str = "piper"
    """TTS engine ("piper" or "espeak")."""
    num_units: int = 100
    """K of the k-means codebook."""
    kmeans_iters: int = 20
    """Lloyd iterations."""
    kmeans_max_frames: int = 100_000
    """Frames sampled for the fit."""
    seed: int = 0
    """Seed of voice choice and k-means."""


class PhaseTimer:
    """Accumulates wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the enclosed block into `phase`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0


def read_records(path: Path) -> list[dict]:
    """The QA records of a JSONL file (the workload is clean: no validation here)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dump_features(cfg: BaselineConfig, records: list[dict], timer: PhaseTimer) -> tuple[list[dict], Path]:
    """Speak every question and answer, extract MFCCs, save all frames (.npy) and lengths (.len)."""
    from core.errors import RecordRejected
    from tasks.backends.features_mfcc import MFCCFeatures
    from tasks.text_norm import spoken_form
    from tasks.tts import choose_voice, make_tts

    with timer("load_models"):
        tts = make_tts(cfg.tts)  # type: ignore[arg-type]
        mfcc = MFCCFeatures()
        voices = tts.voices()
    rows, feats = [], []
    for rec in records:
        with timer("text_norm"):
            texts = {k: spoken_form(rec[k]) for k in ("question", "answer")}
        voice = choose_voice(rec["id"], voices, cfg.seed)
        try:
            with timer("tts"):
                audio = {k: tts.synthesize(texts[k], voice) for k in texts}
        except RecordRejected:
            continue
        with timer("features"):
            feats += [mfcc.extract(audio["question"]), mfcc.extract(audio["answer"])]
        rows.append({**rec, "voice": voice, "texts": texts, "audio": audio})
    with timer("dump_features"):
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "feats.npy", np.concatenate(feats).astype(np.float32))
        (out / "feats.len").write_text("".join(f"{len(f)}\n" for f in feats))
    return rows, out / "feats.npy"


def load_features(path: Path) -> list[np.ndarray]:
    """Per-utterance frames from a feats.npy + feats.len dump."""
    lengths = [int(x) for x in path.with_suffix(".len").read_text().split()]
    return np.split(np.load(path), np.cumsum(lengths)[:-1])


def fit_codebook(cfg: BaselineConfig, feats_path: Path) -> np.ndarray:
    """k-means over the dumped frames (the build's fit function and settings); saved as codebook.npy."""
    from tasks.units import fit_kmeans

    centroids = fit_kmeans(np.load(feats_path), cfg.num_units, seed=cfg.seed, iters=cfg.kmeans_iters,
                           max_frames=cfg.kmeans_max_frames)
    np.save(Path(cfg.out) / "codebook.npy", centroids)
    return centroids


def dump_labels(feats: list[np.ndarray], centroids: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Deduplicated units and durations of every utterance."""
    from tasks.units import dedup, label_frames

    out = []
    for f in feats:
        units, durations = dedup(label_frames(f, centroids))
        out.append((units.tolist(), durations.tolist()))
    return out


def corpus_table(rows: list[dict], labels: list[tuple[list[int], list[int]]]) -> pa.Table:
    """The rows in the corpus schema (data_specs.corpus), like the build's final shards."""
    from data_specs import corpus as spec

    q, a = labels[0::2], labels[1::2]
    cols: dict[str, Any] = {
        "id": [r["id"] for r in rows],
        "question_text": [r["texts"]["question"] for r in rows],
        "answer_text": [r["texts"]["answer"] for r in rows],
        "question_original": [r["question"] for r in rows],
        "answer_original": [r["answer"] for r in rows],
        "aliases": [r.get("aliases", []) for r in rows],
        "voice": [r["voice"] for r in rows],
        "sample_rate": [SAMPLE_RATE] * len(rows),
        "question_audio": [r["audio"]["question"] for r in rows],
        "answer_audio": [r["audio"]["answer"] for r in rows],
        "question_seconds": [len(r["audio"]["question"]) / SAMPLE_RATE for r in rows],
        "answer_seconds": [len(r["audio"]["answer"]) / SAMPLE_RATE for r in rows],
        "answer_units": [u for u, _ in a], "answer_durations": [d for _, d in a],
        "question_units": [u for u, _ in q], "question_durations": [d for _, d in q],
        "extra": ["{}"] * len(rows),
    }
    return pa.table(cols, schema=spec.SCHEMA)


def run_baseline(cfg: BaselineConfig) -> dict[str, Any]:
    """The whole loop; returns rows, audio seconds, wall seconds and the seconds of every phase."""
    from tasks.shards import write_arrow

    timer = PhaseTimer()
    t0 = time.perf_counter()
    with timer("read"):
        records = read_records(Path(cfg.source))
    rows, feats_path = dump_features(cfg, records, timer)
    with timer("kmeans_fit"):
        centroids = fit_codebook(cfg, feats_path)
    with timer("label"):
        labels = dump_labels(load_features(feats_path), centroids)
    with timer("write_arrow"):
        entry = write_arrow(Path(cfg.out) / "corpus.arrow", corpus_table(rows, labels))
    wall = time.perf_counter() - t0
    seconds = sum(len(r["audio"]["question"]) + len(r["audio"]["answer"]) for r in rows) / SAMPLE_RATE
    return {"rows": len(rows), "source_records": len(records), "audio_seconds": seconds, "wall_s": wall,
            "phases_s": {k: round(v, 4) for k, v in timer.seconds.items()}, "sha256": entry["sha256"],
            "config": asdict(cfg)}


def main(argv: list[str] | None = None) -> int:
    """Command line: run the baseline, print (or write) its JSON summary."""
    p = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tts", choices=["piper", "espeak"], default="piper")
    p.add_argument("--num-units", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", type=Path, default=None, help="write the JSON summary here")
    args = p.parse_args(argv)
    cfg = BaselineConfig(source=args.source, out=args.out, tts=args.tts, num_units=args.num_units,
                         seed=args.seed)
    summary = json.dumps(run_baseline(cfg), indent=2)
    if args.result:
        args.result.write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
