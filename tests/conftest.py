"""Shared fixtures: quiet offline environment, a session Ray, a Prefect test server, QA factories."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="echox-test-state-"))
os.environ.setdefault("ECHOX_STATE_DIR", str(_STATE))
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests draw the same examples on every run (a failure reproduces; CI does not flake on a new
# draw); HYPOTHESIS_PROFILE=explore draws fresh ones.
from hypothesis import settings  # noqa: E402

from core import runtime  # noqa: E402

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

runtime.configure()

ROOT = Path(__file__).resolve().parents[1]
# The corpus contract checker from ../shared/tools (a copy is kept in tools/ for clean clones).
_SHARED = ROOT.parent / "shared" / "tools" / "check_corpus.py"
CHECK_CORPUS = _SHARED if _SHARED.exists() else ROOT / "tools" / "check_corpus.py"


@pytest.fixture(scope="session")
def ray_session(prefect_server: str) -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs, no dashboard); workers report to the test server."""
    import ray

    if not ray.is_initialized():
        ray.init(**runtime.ray_init_kwargs(2, object_store_mb=256))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server (SQLite, temporary) for the session; PREFECT_API_URL points at it."""
    from core import server

    proc, url = server.start_temporary(_STATE)
    os.environ["PREFECT_API_URL"] = url
    _refresh_prefect_settings()
    yield url
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # flush queued run logs before the server goes away
    os.environ.pop("PREFECT_API_URL", None)
    _refresh_prefect_settings()
    server.stop(proc)


def _refresh_prefect_settings() -> None:
    """Make an already imported Prefect read PREFECT_API_URL again.

    Prefect snapshots the environment into its global settings when it is imported. A test module that
    imports prefect (or a flow) at the top does so at collection, before this fixture runs: that process
    would then run its flows on a private ephemeral server of its own while the Ray workers, started later
    with the variable set, report to this one (their task-run events and states lost to the driver).
    """
    import sys

    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def qa(i: int, **kw: object) -> dict:
    """A small valid QA record."""
    return {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}.",
            "aliases": [str(2 * i)], **kw}


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    """Write records (dicts as JSON, str/bytes verbatim) one per line."""
    with open(path, "wb") as f:
        for r in rows:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
            f.write(line + b"\n")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """A real 16-record espeak corpus (K=16 MFCC units) built once through the flow, for later stages."""
    from flows.build_corpus import build_corpus
    from tasks.configs import BuildCorpusConfig

    tmp = tmp_path_factory.mktemp("tiny-corpus")
    src = write_jsonl(tmp / "qa.jsonl", [qa(i) for i in range(1, 17)])
    cfg = BuildCorpusConfig(source=str(src), out=str(tmp / "corpus"), tts="espeak", num_units=16,
                            shard_size=8, workers=2, progress=False)
    return Path(build_corpus(config=cfg))
