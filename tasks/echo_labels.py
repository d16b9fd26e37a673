"""Stage III data: echo pseudo-labels from a stage-I (S2T) and a stage-II (T2C) checkpoint.

For each corpus row the S2T model runs teacher-forced on the gold answer; `hidden[:, t]` is the
last-layer state that predicts answer token t (models/s2t.py), and Y′_t = argmax lm_head(hidden[:, t])
is what the model "echoes" there. Y′ is cut into sentence segments (`sentence_segments`) and the frozen
T2C greedily generates units for each segment's Y′ token ids (batched over all segments of a batch,
KV-cached, with a length guard). A row whose segment hits the guard is rejected with a reason.

`EchoLabeler` holds both models (loaded once, e.g. inside a Ray actor) and labels whole corpus shards,
retry-safe: output written to a temp name and renamed, a done marker with its sha256 written last, and
a shard whose verified output exists is skipped. `plan_run` / `finalize_run` are the driver's side.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from core.errors import CheckpointError, EchoxError, InputError, IntegrityError
from data_specs import echo_labels as spec
from data_specs.rejects import Reject
from tasks.echo_labelling import (  # noqa: F401 - re-exported: the labelling functions' old home
    LabelResult,
    LabelStats,
    echo_token_ids,
    label_batch,
    label_rows,
    labels_table,
    length_guard,
    sentence_segments,
)
from tasks.shards import (
    file_sha256,
    file_verifies,
    json_sha256,
    load_manifest,
    read_arrow,
    verify_manifest,
    write_arrow,
    write_datasets_layout,
    write_json,
    write_jsonl,
)

ROW_COLUMNS = ("id", "question_text", "answer_text", "question_audio", "sample_rate")


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(path: str | Path) -> Path:
    """The model directory of a checkpoint path (a training run directory's model/ is found too)."""
    p = Path(path)
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        return p / "model"
    return p


def check_inputs(corpus: str, s2t: str, t2c: str, out: str) -> None:
    """What the inputs alone show wrong, checked in the driver before Prefect or Ray start."""
    from models.io import read_config
    from tasks.out_dir import check_out_path
    from tasks.shards import finished_manifest

    if not Path(corpus).is_dir():
        raise InputError(f"corpus directory not found: {corpus}")
    finished_manifest(Path(corpus))
    for given, stage in ((s2t, "s2t"), (t2c, "t2c")):
        config = read_config(checkpoint_path(given))
        if config["stage"] != stage:
            raise CheckpointError(f"--{stage} {given} is a {config['stage']} checkpoint, not a {stage} one")
    for given in (corpus, s2t, t2c):
        check_out_path(Path(out), Path(given))


def checkpoint_hash(path: str | Path, stage: str) -> dict:
    """{path, stage, config_sha256, weights_sha256, sha256} of a saved model (sha256 covers both files)."""
    from models.io import CONFIG_NAME, WEIGHTS_NAME, read_config

    p = checkpoint_path(path)
    config = read_config(p)
    if config["stage"] != stage:
        raise CheckpointError(f"{p} holds a {config['stage']} model; expected a {stage} checkpoint")
    hashes = {"config_sha256": file_sha256(p / CONFIG_NAME), "weights_sha256": file_sha256(p / WEIGHTS_NAME)}
    return {"path": str(p.resolve()), "stage": stage, **hashes, "sha256": json_sha256(hashes),
            "num_units": config.get("extra", {}).get("num_units")}


def check_compatible(s2t: Any, t2c: Any) -> None:
    """Raise CheckpointError unless the T2C reads the S2T model's token ids (same tokenizer, vocabulary)."""
    vocab = s2t.lm_head().out_features
    if t2c.decoder.text_embed.num_embeddings != vocab:
        raise CheckpointError(f"the S2T model predicts {vocab} tokens but the T2C embeds "
                              f"{t2c.decoder.text_embed.num_embeddings}: built from different base LLMs")
    if s2t.chat.tokenizer.get_vocab() != t2c.tokenizer.get_vocab():
        raise CheckpointError("the S2T and T2C checkpoints use different tokenizers")


# ----------------------------------------------------------------------------- fail fast on an untrained T2C


def sample_answers(corpus: str | Path, n: int) -> list[str]:
    """Up to `n` distinct answer texts of a corpus, in order (from as few shards as that takes)."""
    from tasks.data import shard_entries

    root, found = Path(corpus), []
    for shard in shard_entries(root):
        for text in read_arrow(root / shard["path"]).column("answer_text").to_pylist():
            if text not in found:
                found.append(text)
            if len(found) == n:
                return found
    return found


@torch.inference_mode()
def t2c_end_rate(t2c: Any, answers: Sequence[str], max_units: int) -> tuple[float, int]:
    """(fraction, count) of the answers' sentence segments for which the T2C, greedy, emits its end of
    sequence within `max_units` units: the segments echo labelling would hand it."""
    pieces = []
    for text in answers:
        ids = t2c.encode(text)
        pieces += [ids[a:b] for a, b in sentence_segments([t2c.tokenizer.decode([t]) for t in ids])]
    if not pieces:
        return 1.0, 0
    out = t2c.generate_units(pieces, max_units=max_units)
    return sum(not o.truncated for o in out) / len(out), len(out)


def check_t2c_ends(corpus: str, t2c_path: str, *, max_units: int, min_rate: float,
                   samples: int = 16) -> float:
    """Fail fast (InputError, one line) when the T2C ends too few sampled answer segments within
    `max_units`: every row would be rejected at the length guard after a full pass. Returns the rate."""
    if min_rate <= 0:
        return 1.0
    from tasks.inference import load_checkpoint_model

    t2c = load_checkpoint_model(t2c_path, "t2c").eval()
    rate, count = t2c_end_rate(t2c, sample_answers(corpus, samples), max_units)
    if count and rate < min_rate:
        raise InputError(f"the T2C ends only {100 * rate:.0f} % of sequences within {max_units} units "
                         f"({count} segments of {samples} answers; min_t2c_end_rate {min_rate:g}): train "
                         f"it longer")
    return rate


# ----------------------------------------------------------------------------- the worker


def shard_index(out_path: Path) -> int:
    """The shard number of an output shard path (`echo-00003.arrow` → 3)."""
    return int(out_path.stem.rsplit("-", 1)[1])


def done_marker(out_path: Path) -> Path:
    """Where the done marker of an output shard lives (hidden from datasets)."""
    return out_path.parent / ".echox" / f"{out_path.stem}.done.json"


class EchoLabeler:
    """Holds the S2T and T2C models (loaded once) and labels corpus shards; what a Ray actor wraps."""

    columns = ROW_COLUMNS
    """The corpus columns `label` reads."""
    stage = "echo"
    """The `stage` of its rejects."""

    def __init__(self, s2t_path: str, t2c_path: str, device: str = "cpu", threads: int = 1, *,
                 batch_size: int = 8, max_units: int = 1000) -> None:
        from tasks.inference import load_checkpoint_model

        if batch_size < 1 or max_units < 1:
            raise InputError(f"batch_size and max_units must be >= 1, got {batch_size}, {max_units}")
        torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        self.s2t = load_checkpoint_model(s2t_path, "s2t").to(self.device).eval()
        self.t2c = load_checkpoint_model(t2c_path, "t2c").to(self.device).eval()
        check_compatible(self.s2t, self.t2c)
        self.batch_size, self.max_units = batch_size, max_units

    def ready(self) -> dict:
        """A cheap call that returns once the models are loaded (Ray raises a failed __init__ here)."""
        return {"device": str(self.device), "num_units": self.t2c.num_units}

    def label(self, rows: Sequence[dict]) -> LabelResult:
        """Labels of rows, batch by batch; reject indices refer to `rows`."""
        total = LabelResult()
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            part = label_batch(self.s2t, self.t2c, chunk, max_units=self.max_units)
            total.records += part.records
            total.rejects += [(start + i, reason) for i, reason in part.rejects]
            total.stats.add(part.stats)
        total.stats.rejected = len(total.rejects)
        return total

    def label_shard(self, corpus_shard: str, out_path: str, *, sha256: str | None = None,
                    first_row: int = 0, run_hash: str = "") -> dict:
        """Label one corpus shard into `out_path` (skipped when its verified output exists); its entry."""
        return write_label_shard(self, corpus_shard, out_path, sha256=sha256, first_row=first_row,
                                 run_hash=run_hash)


class ShardLabeler(Protocol):
    """What labels the rows of a corpus shard: the echo labeler, or the baseline's corpus labeler."""

    columns: tuple[str, ...]
    stage: str

    def label(self, rows: Sequence[dict]) -> LabelResult:
        """Labels of rows; reject indices refer to `rows`."""
        ...


def write_label_shard(labeler: ShardLabeler, corpus_shard: str, out_path: str, *, sha256: str | None = None,
                      first_row: int = 0, run_hash: str = "") -> dict:
    """Label one corpus shard into `out_path` (skipped when its verified output exists); its entry."""
    out, marker = Path(out_path), done_marker(Path(out_path))
    key = {"run_hash": run_hash, "input_sha256": sha256}
    if marker.exists():
        entry = json.loads(marker.read_text())
        if {k: entry.get(k) for k in key} == key and file_verifies(out, entry.get("sha256")):
            return {**entry, "skipped": True}
    from tasks.build_corpus import BuildPaths, inject_fault
    from tasks.data import TableRows

    table = read_arrow(Path(corpus_shard), sha256=sha256)  # verified before anything is read
    rows = list(TableRows(table.select([c for c in labeler.columns if c in table.column_names])))
    result = labeler.label(rows)
    # After the work, before the output: a fault here loses a labelled but unwritten shard.
    inject_fault(BuildPaths(out.parent), f"{labeler.stage}-shard-{shard_index(out)}")
    rejects = [Reject(first_row + i, rows[i].get("id"), reason, stage=labeler.stage).to_dict()
               for i, reason in result.rejects]
    entry = {**write_arrow(out, labels_table(result.records)), **key, "rejects": rejects,
             "stats": asdict(result.stats), "input_rows": len(rows)}
    write_json(marker, entry)
    return {**entry, "skipped": False}


# ----------------------------------------------------------------------------- driver side


def plan_run(corpus: str, s2t: str, t2c: str, out: str, *, max_units: int, overwrite: bool,
             labels: str = "echo") -> dict:
    """Check inputs, hash them, prepare the output directory; the run's identity and one job per shard.

    `labels` names where the labels come from: "echo" (the S2T's Y′ and the T2C's units) or "corpus"
    (the no-echo baseline, tasks/baseline_labels.py); it enters the run hash, so neither output is
    taken for the other."""
    from tasks.build_corpus import BuildPaths
    from tasks.data import shard_entries, verify_corpus
    from tasks.out_dir import check_out_path, prepare_out_dir

    root, out_dir = Path(corpus).resolve(), Path(out).resolve()  # absolute: workers may run elsewhere
    for given in (corpus, s2t, t2c):  # --overwrite must never be able to touch an input
        check_out_path(out_dir, Path(given))
    if not root.is_dir():
        raise InputError(f"corpus directory not found: {root}")
    shards = shard_entries(root)
    if not shards or any("sha256" not in s for s in shards):
        raise IntegrityError(f"{root}/manifest.json must list shards with sha256")
    verify_corpus(root)  # fail before any actor starts; each actor checks its shard again as it reads it
    checkpoints = {"s2t": checkpoint_hash(s2t, "s2t"), "t2c": checkpoint_hash(t2c, "t2c")}
    _check_units(root, checkpoints["t2c"]["num_units"])
    corpus_info = {"path": str(root.resolve()), "manifest_sha256": file_sha256(root / "manifest.json"),
                   "rows": sum(int(s["num_rows"]) for s in shards)}
    identity = {"corpus": corpus_info["manifest_sha256"], "max_units": max_units,
                "s2t": checkpoints["s2t"]["sha256"], "t2c": checkpoints["t2c"]["sha256"],
                "schema": spec.SCHEMA_VERSION}
    if labels != "echo":  # the echo labels' hash stays what it was, so their finished runs still verify
        identity["labels"] = labels
    run_hash = json_sha256(identity)
    paths = BuildPaths(out_dir)
    prepare_out_dir(out_dir, run_hash, overwrite)
    write_json(paths.build_json, {"hash": run_hash, "corpus": corpus_info, "checkpoints": checkpoints})
    offsets = [sum(int(s["num_rows"]) for s in shards[:i]) for i in range(len(shards))]
    jobs = [{"shard": i, "corpus_shard": str(root / s["path"]), "sha256": s["sha256"], "first_row": off,
             "out_path": str(out_dir / f"echo-{i:05d}.arrow"), "run_hash": run_hash}
            for i, (s, off) in enumerate(zip(shards, offsets, strict=True))]
    return {"hash": run_hash, "corpus": corpus_info, "checkpoints": checkpoints, "max_units": max_units,
            "labels": labels, "jobs": jobs, "done": run_done(out_dir, run_hash)}


def _check_units(corpus: Path, t2c_units: int | None) -> None:
    """Raise InputError when the corpus codebook and the T2C disagree on K."""
    codebook = (load_manifest(corpus) or {}).get("codebook") or {}
    if t2c_units is not None and "num_units" in codebook and int(codebook["num_units"]) != int(t2c_units):
        raise InputError(f"the corpus has {codebook['num_units']} units but the T2C was trained on "
                         f"{t2c_units}: they come from different codebooks")


def run_done(out: Path, run_hash: str) -> bool:
    """True when `out` holds the finished, verifying output of this very run."""
    manifest = load_manifest(out)
    return bool(manifest) and manifest.get("run_hash") == run_hash and not verify_manifest(out, manifest)


ECHO_SEGMENTING = "a Y′ token whose text ends with . ? or ! closes a segment; the tail is the last"


def finalize_run(out: str, plan: dict, entries: list[dict], *, segmenting: str = ECHO_SEGMENTING) -> dict:
    """Write rejects, the datasets layout and, last, the manifest; check every corpus row is accounted for."""
    from tasks.build_corpus import reason_key
    from tasks.out_dir import drop_previous

    out_dir = Path(out)
    rejects = sorted((r for e in entries for r in e["rejects"]), key=lambda r: r["line"])
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    shards = [{k: e[k] for k in ("path", "num_rows", "sha256")} for e in entries if e["num_rows"]]
    rows = sum(s["num_rows"] for s in shards)
    if rows + len(rejects) != plan["corpus"]["rows"]:
        raise EchoxError(f"accounting failed: {rows} rows + {len(rejects)} rejects != "
                         f"{plan['corpus']['rows']} corpus rows")
    by_reason = dict(Counter(reason_key(r["reason"]) for r in rejects).most_common())
    if not rows:
        raise EchoxError(f"every corpus row was rejected ({by_reason}); see {out_dir / 'rejects.jsonl'}")
    stats = LabelStats()
    for e in entries:
        stats.add(LabelStats.from_dict(e["stats"]))
    write_datasets_layout(out_dir, [s["path"] for s in shards], spec.SCHEMA, plan["hash"])
    manifest = {
        "kind": "echox.echo_labels", "schema_version": spec.SCHEMA_VERSION, "status": "complete",
        "run_hash": plan["hash"], "labels": plan.get("labels", "echo"),
        "corpus": plan["corpus"], "checkpoints": plan["checkpoints"], "max_units": plan["max_units"],
        "segmenting": segmenting,
        "shards": shards, "totals": totals(stats, rows, len(rejects)), "rejects_by_reason": by_reason,
    }
    write_json(out_dir / "manifest.json", manifest)
    drop_previous(out_dir)
    return manifest


def totals(stats: LabelStats, rows: int, rejected: int) -> dict:
    """The manifest's totals and statistics."""
    return {"rows": rows, "rejected": rejected, "segments": stats.segments,
            "token_accuracy": stats.correct_tokens / max(stats.tokens, 1),
            "units": stats.units, "units_per_segment": stats.units / max(stats.segments, 1),
            "segments_per_row": stats.segments / max(rows, 1), "units_generated": stats.units_generated,
            "generation_seconds": round(stats.gen_seconds, 4),
            "units_per_second": stats.units_generated / max(stats.gen_seconds, 1e-9)}


def stats_rows(manifest: dict) -> list[dict]:
    """The statistics table artifact of a finished run."""
    t = manifest["totals"]
    keys = [("rows", "rows labelled"), ("rejected", "rows rejected"),
            ("token_accuracy", "token accuracy of Y′ vs gold"), ("segments_per_row", "segments per row"),
            ("units_per_segment", "units per segment (mean)"),
            ("units_per_second", "T2C generation throughput (units/s, per actor)"),
            ("generation_seconds", "T2C generation time (s, all actors)")]
    rows = [{"statistic": label, "value": round(float(t[k]), 4)} for k, label in keys]
    reasons = manifest["rejects_by_reason"].items()
    return rows + [{"statistic": f"rejected: {r}", "value": n} for r, n in reasons]


def label_local(corpus: str, s2t: str, t2c: str, out: str, *, batch_size: int = 8, max_units: int = 1000,
                overwrite: bool = False, threads: int = 1, min_end_rate: float = 0.0) -> dict:
    """The whole stage in this process, without Ray or Prefect (tests, debugging); returns the manifest.

    `min_end_rate` > 0 runs the T2C end-rate check first (the flow always does, with its config's rate)."""
    plan = plan_run(corpus, s2t, t2c, out, max_units=max_units, overwrite=overwrite)
    if plan["done"]:
        return load_manifest(Path(out)) or {}
    check_t2c_ends(corpus, t2c, max_units=max_units, min_rate=min_end_rate)
    labeler = EchoLabeler(s2t, t2c, "cpu", threads, batch_size=batch_size, max_units=max_units)
    entries = []
    for job in plan["jobs"]:
        kwargs = {k: job[k] for k in ("sha256", "first_row", "run_hash")}
        entries.append({**labeler.label_shard(job["corpus_shard"], job["out_path"], **kwargs),
                        "shard": job["shard"]})
    return finalize_run(out, plan, entries)
