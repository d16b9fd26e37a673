"""Where a corpus build writes, its identity and shard plan: shared by the driver and the shard tasks."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_specs import corpus as corpus_spec
from tasks.configs import BuildCorpusConfig
from tasks.shards import json_sha256

FAULT_ENV = "ECHOX_FAULT_INJECT"


@dataclass(frozen=True)
class BuildPaths:
    """Where each stage of one build writes; names derive from the output directory and shard index."""

    out: Path

    @property
    def work(self) -> Path:
        """Intermediate outputs and markers (hidden from datasets)."""
        return self.out / ".echox"

    @property
    def plan_dir(self) -> Path:
        """The shard plan: one JSONL file per shard of its valid records with their spoken forms."""
        return self.work / "plan"

    def plan(self, i: int) -> Path:
        """The planned records of shard i (what its stage-1 task reads, and nothing more)."""
        return self.plan_dir / f"shard-{i:05d}.jsonl"

    @property
    def build_json(self) -> Path:
        """Identity of the build: config hash, source hash, shard count."""
        return self.work / "build.json"

    @property
    def codebook(self) -> Path:
        """The fitted (or reused) k-means codebook."""
        return self.out / "codebook.npz"

    def audio(self, i: int) -> Path:
        """Stage-1 output of shard i: speech and texts."""
        return self.work / "audio" / f"shard-{i:05d}.arrow"

    def feats(self, i: int) -> Path:
        """Stage-1 output of shard i: frame features of every utterance."""
        return self.work / "feats" / f"shard-{i:05d}.npz"

    def stage1_done(self, i: int) -> Path:
        """Marker of a finished stage-1 shard (hashes and its rejects)."""
        return self.work / "audio" / f"shard-{i:05d}.done.json"

    def shard(self, i: int) -> Path:
        """Final corpus shard i."""
        return self.out / f"shard-{i:05d}.arrow"

    def shard_done(self, i: int) -> Path:
        """Marker of a finished corpus shard (its manifest entry and codebook hash)."""
        return self.work / "final" / f"shard-{i:05d}.json"

    def of_shard(self, i: int) -> ShardPaths:
        """Every path of shard i, for the task that builds it."""
        return ShardPaths(index=i, out=self.out, work=self.work, plan=self.plan(i), audio=self.audio(i),
                          feats=self.feats(i), stage1_done=self.stage1_done(i), shard=self.shard(i),
                          shard_done=self.shard_done(i))


@dataclass(frozen=True)
class ShardPaths:
    """The files of one shard: what its tasks read and write (small and picklable, for Prefect and Ray)."""

    index: int
    out: Path  # the corpus directory: damaged files are reported relative to it
    work: Path  # .echox: fault-injection flags
    plan: Path
    audio: Path
    feats: Path
    stage1_done: Path
    shard: Path
    shard_done: Path


def config_hash(cfg: BuildCorpusConfig, source_sha: str) -> str:
    """Hash of everything that decides the build's content."""
    return json_sha256({"config": cfg.content_hash_fields(), "source": source_sha,
                        "schema": corpus_spec.SCHEMA_VERSION})


def shard_count(records: int, shard_size: int) -> int:
    """Shards of a build: enough that none holds more than `shard_size` records."""
    return -(-records // shard_size)


def shard_of(index: int, records: int, num_shards: int) -> int:
    """The shard of the index-th of `records` records: contiguous runs whose sizes differ by at most one.

    Even shards keep the workers busy to the end (300 records at size 32 are 10 × 30, not 9 × 32 + 12).
    """
    return index * num_shards // records


def shard_sizes(records: int, shard_size: int) -> list[int]:
    """Sizes of the shards a build plans for `records` records (see shard_of)."""
    num_shards = shard_count(records, shard_size)
    return list(Counter(shard_of(n, records, num_shards) for n in range(records)).values())


def load_plan(plan: Path) -> list[dict]:
    """The planned records of one shard, from its plan file."""
    with open(plan, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def remove_stale_temps(paths: BuildPaths) -> None:
    """Delete temp files a killed run left behind (safe: the caller holds the directory's lock)."""
    for folder in (paths.out, paths.work, paths.plan_dir, paths.work / "audio", paths.work / "feats",
                   paths.work / "final"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)


def inject_fault(paths: BuildPaths | ShardPaths | Path, point: str) -> None:
    """Test hook: fail once at `point` (e.g. "synthesize-shard-1") when ECHOX_FAULT_INJECT names it.

    ECHOX_FAULT_INJECT holds comma-separated "<point>:<action>" entries; "raise" raises a transient
    RuntimeError (Prefect retries it), "kill" SIGKILLs this worker process (Ray retries it). Each
    entry fires once per output directory (a file under .echox/faults remembers it; a Path `paths` is
    that .echox folder itself).
    """
    work = paths if isinstance(paths, Path) else paths.work
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_ENV, "").split(","))):
        where, _, action = entry.partition(":")
        if where != point:
            continue
        if action not in ("raise", "kill"):
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} in {entry!r} (raise or kill)")
        flag = work / "faults" / entry.replace(":", "-")
        flag.parent.mkdir(parents=True, exist_ok=True)
        try:
            flag.touch(exist_ok=False)
        except FileExistsError:
            continue  # fired before: this is the retry
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected transient fault at {point} ({FAULT_ENV})")
