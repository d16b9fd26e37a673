"""The end of a corpus build, in the driver: rejects, accounting, the manifest (or failure.json)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from core.errors import EchoxError, InputError
from data_specs import corpus as corpus_spec
from tasks.backends import FEATURE_EXTRACTORS, RECOGNISERS
from tasks.configs import BuildCorpusConfig
from tasks.corpus_paths import BuildPaths
from tasks.out_dir import FAILURE, drop_previous
from tasks.shards import write_datasets_layout, write_json, write_jsonl


def reason_key(reason: str) -> str:
    """A reason with its quoted values and numbers elided, to count rejects by kind."""
    return re.sub(r"'[^']*'|(?<![A-Za-z]-)\b\d+(\.\d+)?\b", "…", reason)


def collect_rejects(paths: BuildPaths, stage1: list[dict]) -> list[dict]:
    """Every reject of the build, in source order."""
    with open(paths.work / "source_rejects.jsonl", encoding="utf-8") as f:
        rejects = [json.loads(line) for line in f]
    rejects += [r for m in stage1 for r in m["rejects"]]
    return sorted(rejects, key=lambda r: r["line"])


def finalize_build(cfg: BuildCorpusConfig, identity: dict, stage1: list[dict], entries: list[dict],
                   codebook_sha: str) -> dict:
    """Write rejects and, last, the manifest (or failure.json); check every record is accounted for.

    A build over --max-reject-fraction writes no manifest and no datasets layout, so no reader takes it
    for a finished corpus; its manifest (status "failed", with the reason) goes to failure.json.
    """
    paths = BuildPaths(Path(cfg.out))
    rejects = collect_rejects(paths, stage1)
    write_jsonl(paths.out / "rejects.jsonl", rejects)
    shards = [{k: e[k] for k in ("path", "num_rows", "sha256")} for e in entries if e["num_rows"]]
    rows = sum(s["num_rows"] for s in shards)
    if rows + len(rejects) != identity["num_source_records"]:
        raise EchoxError(f"accounting failed: {rows} rows + {len(rejects)} rejects != "
                         f"{identity['num_source_records']} source records")
    manifest = corpus_manifest(cfg, identity, shards, entries, rejects, codebook_sha)
    if cfg.asr_check:  # only then: a build without the gate keeps its manifest as it was
        manifest["asr"] = asr_report(cfg, stage1)
    manifest["repairs"] = previous_repairs(paths.out) + ([rebuilt] if (rebuilt := rebuilt_files(
        stage1, entries)) else [])
    failure = reject_fraction_problem(manifest, cfg.max_reject_fraction)
    if failure:
        mark_failed(paths.out, {**manifest, "status": "failed", "reason": failure})
        return {**manifest, "status": "failed", "reason": failure}
    (paths.out / FAILURE).unlink(missing_ok=True)
    write_datasets_layout(paths.out, [s["path"] for s in shards], corpus_spec.schema(cfg.asr_check),
                          identity["hash"])
    write_json(paths.out / "manifest.json", manifest)
    drop_previous(paths.out)
    return manifest


def corpus_manifest(cfg: BuildCorpusConfig, identity: dict, shards: list[dict], entries: list[dict],
                    rejects: list[dict], codebook_sha: str) -> dict:
    """The manifest of a finished build (status "complete")."""
    hours = sum(e["audio_seconds"] for e in entries) / 3600
    return {
        "kind": "echox.corpus", "schema_version": corpus_spec.SCHEMA_VERSION, "status": "complete",
        "config": identity["config"], "config_hash": identity["hash"],
        "source": str(cfg.source), "source_sha256": identity["source_sha256"],
        "codebook": {"path": BuildPaths(Path(cfg.out)).codebook.name, "sha256": codebook_sha,
                     "num_units": cfg.num_units,
                     "features": FEATURE_EXTRACTORS.identity(cfg.feature_choice())},
        "shards": shards,
        "totals": {"source_records": identity["num_source_records"],
                   "rows": sum(s["num_rows"] for s in shards),
                   "rejected": len(rejects), "audio_hours": round(hours, 6)},
        "rejects_by_reason": dict(Counter(reason_key(r["reason"]) for r in rejects).most_common()),
    }


def asr_report(cfg: BuildCorpusConfig, stage1: list[dict]) -> dict:
    """The ASR gate's figures: recogniser, threshold, rows it rejected, mean WERs per voice (all heard)."""
    from tasks.asr import wer_by_voice

    choice = cfg.asr_choice()
    parts = [m.get("asr", {}) for m in stage1]
    return {"recogniser": RECOGNISERS.identity(choice) if choice else None, "max_wer": cfg.max_asr_wer,
            "rejected": sum(p.get("rejected", 0) for p in parts),
            "wer_by_voice": wer_by_voice(p.get("by_voice", {}) for p in parts)}


def mark_failed(out: Path, failed_manifest: dict) -> None:
    """Leave a failed build unreadable as a corpus: no manifest or datasets layout, a failure.json."""
    for name in ("manifest.json", "state.json", "dataset_info.json"):
        (out / name).unlink(missing_ok=True)
    write_json(out / FAILURE, failed_manifest)


def rebuilt_files(stage1: list[dict], entries: list[dict]) -> list[str]:
    """Files this run found damaged (recorded done, failing their sha256) and rebuilt."""
    return sorted(f for part in (stage1, entries) for m in part for f in m.get("rebuilt", []))


def previous_repairs(out: Path) -> list[list[str]]:
    """The repairs recorded by earlier runs of this build (its failure.json or manifest)."""
    for name in (FAILURE, "manifest.json"):
        try:
            return list(json.loads((out / name).read_text()).get("repairs", []))
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return []


def reject_summary(by_reason: dict[str, int], top: int = 5) -> str:
    """The most frequent reject reasons as "3× reason; 1× other"."""
    return "; ".join(f"{n}× {r}" for r, n in list(by_reason.items())[:top])


def check_codebook_frames(cfg: BuildCorpusConfig, stage1: list[dict]) -> None:
    """Before the k-means fit (in the driver): some speech survived, and the frame sample holds K frames."""
    if cfg.codebook or any("frames" not in m for m in stage1):
        return  # a reused codebook, or markers of an older build (fit_codebook checks again)
    paths = BuildPaths(Path(cfg.out))
    per_shard = max(1, cfg.kmeans_max_frames // max(len(stage1), 1))  # as sample_frames takes them
    sample = sum(min(per_shard, m["frames"]) for m in stage1)
    if sample == 0:
        rejects = collect_rejects(paths, stage1)
        write_jsonl(paths.out / "rejects.jsonl", rejects)
        by_reason = dict(Counter(reason_key(r["reason"]) for r in rejects).most_common())
        raise InputError(f"every record was rejected ({len(rejects)} rejects): {reject_summary(by_reason)}. "
                         f"See {paths.out / 'rejects.jsonl'}")
    if sample < cfg.num_units:
        raise InputError(f"k-means needs at least K={cfg.num_units} frames but the speech of "
                         f"{sum(m['rows'] for m in stage1)} records gives only {sample}; "
                         f"lower --num-units or add data")


def reject_fraction_problem(manifest: dict, max_fraction: float) -> str | None:
    """Why the build fails when too many records were rejected (None when within the limit)."""
    totals = manifest["totals"]
    fraction = totals["rejected"] / max(totals["source_records"], 1)
    if fraction <= max_fraction:
        return None
    top = reject_summary(manifest["rejects_by_reason"])
    return (f"{totals['rejected']} of {totals['source_records']} records rejected "
            f"({fraction:.0%} > the allowed {max_fraction:.0%}): {top}. "
            f"See rejects.jsonl; raise --max-reject-fraction to accept this.")
