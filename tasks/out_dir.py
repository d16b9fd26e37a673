"""An output directory that a build owns: its lock, what it wrote there, and a safe --overwrite.

Used by the corpus build and echo labels. `--overwrite` never deletes what a build did not write:
the previous build's own files (its manifest, shards, markers and fixed names) are moved into
`.echox-previous/` and removed only when the new build has finished; anything else is left alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from core.errors import InputError
from core.run_log import LOG_DIR

WORK = ".echox"
PREVIOUS = ".echox-previous"
FAILURE = "failure.json"
# Names every build writes beside its shards (datasets layout, manifest, rejects, codebook, failure).
FIXED_NAMES = ("manifest.json", "state.json", "dataset_info.json", "rejects.jsonl", "codebook.npz", FAILURE)
SHARD_NAME = re.compile(r"^(shard|echo)-\d{5}\.arrow$")


@dataclass(frozen=True)
class OutDirPlan:
    """What preparing the output directory will do: start fresh, resume, or replace a previous build."""

    action: str  # "fresh" | "resume" | "replace"
    owned: list[Path] = field(default_factory=list)  # the previous build's files (replace only)
    finished: bool = False  # the previous build has a manifest (worth keeping until the new one ends)


def check_out_path(out: Path, source: Path | None = None) -> None:
    """--out must be a directory or not exist yet, and must not hold (or be) the source."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file, not a directory; choose a directory")
    if source is None:
        return
    src, dst = source.resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise InputError(f"the source {source} lies inside --out {out}; a build writes and replaces files "
                         f"there, so choose an --out outside the source")


def _recorded_hash(out: Path) -> str | None:
    build_json = out / WORK / "build.json"
    if not build_json.is_file():
        return None
    try:
        return json.loads(build_json.read_text()).get("hash")
    except (json.JSONDecodeError, AttributeError):
        return None


def owned_files(out: Path) -> list[Path]:
    """The top-level files a previous echox build wrote in `out` (by its manifest and fixed names)."""
    names = {n for n in FIXED_NAMES if (out / n).exists()}
    names |= {p.name for p in out.iterdir() if SHARD_NAME.match(p.name)}
    manifest = out / "manifest.json"
    try:
        shards = json.loads(manifest.read_text()).get("shards", []) if manifest.is_file() else []
    except (json.JSONDecodeError, AttributeError):
        shards = []
    names |= {Path(s["path"]).name for s in shards if isinstance(s, dict) and "path" in s
              and (out / Path(s["path"]).name).exists()}
    return sorted(out / n for n in names)


def plan_out_dir(out: Path, build_hash: str, overwrite: bool) -> OutDirPlan:
    """Decide, without changing anything, how to use `out`; InputError when it must be refused."""
    if not out.exists():
        return OutDirPlan("fresh")
    existing = _recorded_hash(out)
    if existing == build_hash:
        return OutDirPlan("resume")
    owned = owned_files(out) if existing else []
    # The logs of the CLI runs that wrote here (core/run_log.py) are echox's too, and kept.
    foreign = [p.name for p in out.iterdir() if p.name not in (WORK, PREVIOUS, LOG_DIR) and p not in owned]
    if existing is None and not foreign:
        return OutDirPlan("fresh")
    if existing is None:
        listed = ", ".join(sorted(foreign)[:5]) + (" …" if len(foreign) > 5 else "")
        raise InputError(f"{out} holds files that no echox build wrote ({listed}); --overwrite replaces only "
                         f"a previous build's files, so choose another --out")
    if not overwrite:
        raise InputError(f"{out} holds a different build (other config or source); choose another --out "
                         f"or pass --overwrite to replace it")
    return OutDirPlan("replace", owned, finished=(out / "manifest.json").exists())


def apply_out_dir(out: Path, plan: OutDirPlan) -> None:
    """Carry out a replace: keep a finished previous build aside, drop an unfinished one's files."""
    if plan.action != "replace":
        return
    previous = out / PREVIOUS
    if plan.finished:  # the last finished build is kept until the new one has finished
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        for path in plan.owned:
            os.replace(path, previous / path.name)
    else:  # an unfinished build's partial files are this tool's own work, not the user's data
        for path in plan.owned:
            path.unlink(missing_ok=True)
    for sub in (out / WORK).iterdir():
        if sub.name != "lock":
            shutil.rmtree(sub) if sub.is_dir() else sub.unlink()


def drop_previous(out: Path) -> bool:
    """Remove the build kept aside by a replace (call once the new build has finished)."""
    previous = out / PREVIOUS
    if not previous.exists():
        return False
    shutil.rmtree(previous)
    return True


@dataclass
class Lock:
    """An exclusive lock on an output directory, and what taking it created (removed on a refusal)."""

    handle: IO[str]
    created: list[Path]

    def release(self, *, remove_created: bool = False) -> None:
        """Release the lock; with remove_created, also remove the folders taking it made."""
        self.handle.close()
        if remove_created:
            for path in self.created:  # deepest first
                shutil.rmtree(path, ignore_errors=True)


def acquire_lock(out: Path) -> Lock:
    """Hold an exclusive lock on `out` for this process's lifetime (released on exit or kill)."""
    check_out_path(out)
    lock_path = out / WORK / "lock"
    created = [p for p in (lock_path.parent, out) if not p.exists()]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open on purpose until the build ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(
            f"{out} is locked by a running build ({holder}); wait for it or use another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return Lock(handle, created)


def prepare_out_dir(out: Path, build_hash: str, overwrite: bool) -> OutDirPlan:
    """Refuse an output directory holding something else (see plan_out_dir); replace safely if asked."""
    plan = plan_out_dir(out, build_hash, overwrite)
    apply_out_dir(out, plan)
    return plan


def swap_in(new: Path, final: Path) -> None:
    """Put the finished output `new` in place of `final` with renames, as a replace keeps a build: the old
    `final` waits in `<parent>/.echox-previous/<name>` until `new` is in place, then is removed.

    Interrupted at any point, either `final` or the kept previous output is whole (`recover_swap`)."""
    previous = final.parent / PREVIOUS / final.name
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        previous.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, previous)
    os.replace(new, final)
    shutil.rmtree(previous, ignore_errors=True)
    if previous.parent.is_dir() and not any(previous.parent.iterdir()):
        previous.parent.rmdir()


def kept_previous(final: Path) -> Path | None:
    """The previous output a swap interrupted between its renames left aside (None if none)."""
    previous = final.parent / PREVIOUS / final.name
    return previous if not final.exists() and previous.is_dir() else None


def recover_swap(final: Path) -> bool:
    """Undo a swap interrupted between its renames: the previous output goes back to `final`."""
    previous = kept_previous(final)
    if previous is None:
        return False
    os.replace(previous, final)
    return True
