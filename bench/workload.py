"""The fixed synthetic workload: seeded short QA pairs, and what benchmarks derive from them (cached).

`qa_pairs(n, seed)` is the same list on every machine. Derived inputs (espeak audio, MFCC frames,
a small corpus for training) are built once per work directory, untimed, and reused by later stages.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tasks.shards import write_jsonl

CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
            ("Norway", "Oslo"), ("Greece", "Athens"), ("Chile", "Santiago"), ("Poland", "Warsaw"))
LEGS = (("a spider", "eight"), ("a dog", "four"), ("a bird", "two"), ("an ant", "six"),
        ("a horse", "four"), ("a crab", "ten"))
COLOURS = (("the sky on a clear day", "blue"), ("fresh grass", "green"), ("snow", "white"),
           ("a ripe banana", "yellow"), ("coal", "black"), ("a ripe tomato", "red"))
OPERATIONS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    """A short sum, difference or product with digits (the normaliser reads them out)."""
    word, op = rng.choice(OPERATIONS)
    a, b = rng.randint(2, 99), rng.randint(2, 20)
    a, b = (a, b) if word != "minus" else (max(a, b), min(a, b))
    result = op(a, b)
    return f"What is {a} {word} {b}?", f"{a} {word} {b} is {result}.", str(result)


def _general(rng: random.Random) -> tuple[str, str, str]:
    """A short general-knowledge sentence pair."""
    kind = rng.randrange(3)
    if kind == 0:
        country, city = rng.choice(CAPITALS)
        return f"What is the capital of {country}?", f"The capital of {country} is {city}.", city
    if kind == 1:
        animal, legs = rng.choice(LEGS)
        return f"How many legs does {animal} have?", f"{animal.capitalize()} has {legs} legs.", legs
    thing, colour = rng.choice(COLOURS)
    return f"What colour is {thing}?", f"{thing[0].upper()}{thing[1:]} is {colour}.", colour


def qa_pairs(n: int, seed: int = 0) -> list[dict]:
    """n short QA records (60% arithmetic, 40% general sentences), the same for a given seed."""
    if n < 1:
        raise ValueError(f"a workload needs at least one record, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, answer, alias = (_arithmetic if rng.random() < 0.6 else _general)(rng)
        rows.append({"id": f"b{i:06d}", "question": question, "answer": answer, "aliases": [alias]})
    return rows


def write_workload(path: Path, n: int, seed: int = 0) -> Path:
    """Write the workload as QA JSONL (the corpus build's source format); returns the path."""
    write_jsonl(path, qa_pairs(n, seed))
    return path


class Workspace:
    """Cached derived inputs under one work directory (built untimed, on first use)."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.seed = seed

    def workload(self, n: int) -> Path:
        """The n-record QA JSONL."""
        path = self.root / "workload" / f"qa-{n}-s{self.seed}.jsonl"
        return path if path.exists() else write_workload(path, n, self.seed)

    def espeak_audio(self, n: int) -> list[np.ndarray]:
        """Question and answer speech (espeak-ng, 16 kHz int16) of the first n records, interleaved."""
        path = self.root / "audio" / f"espeak-{n}-s{self.seed}.npz"
        if not path.exists():
            from tasks.backends.tts_espeak import EspeakTTS
            from tasks.text_norm import spoken_form

            tts = EspeakTTS()
            voice = tts.voices()[0]
            clips = [tts.synthesize(spoken_form(r[k]), voice) for r in qa_pairs(n, self.seed)
                     for k in ("question", "answer")]
            _save_clips(path, clips)
        with np.load(path) as z:
            return np.split(z["samples"], np.cumsum(z["lengths"])[:-1])

    def mfcc_frames(self, n: int) -> np.ndarray:
        """MFCC+delta frames (N, 39) float32 of the espeak audio of n records."""
        path = self.root / "frames" / f"mfcc-{n}-s{self.seed}.npy"
        if not path.exists():
            from tasks.backends.features_mfcc import MFCCFeatures

            mfcc = MFCCFeatures()
            frames = np.concatenate([mfcc.extract(a) for a in self.espeak_audio(n)])
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, frames)
        return np.load(path)

    def train_corpus(self, n: int, num_units: int) -> Path:
        """A small espeak corpus (built by the corpus stage functions in-process: no Ray, no Prefect)."""
        out = self.root / "corpora" / f"espeak-{n}-k{num_units}-s{self.seed}"
        if not (out / "manifest.json").exists():
            _build_plain_corpus(self.workload(n), out, num_units, self.seed)
        return out


def _save_clips(path: Path, clips: list[np.ndarray]) -> None:
    """Save int16 clips as one array plus lengths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(c) for c in clips], np.int64)
    np.savez(path, samples=np.concatenate(clips).astype(np.int16), lengths=lengths)


def _build_plain_corpus(source: Path, out: Path, num_units: int, seed: int) -> None:
    """Run the corpus build's stage functions one after another in this process."""
    from tasks import build_corpus as stages
    from tasks.configs import BuildCorpusConfig

    cfg = BuildCorpusConfig(source=str(source), out=str(out), tts="espeak", num_units=num_units,
                            shard_size=32, workers=1, progress=False, overwrite=True, seed=seed)
    stages.build_in_process(cfg)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
