"""The llm-answers flow against a real Prefect server: a user's local LLM directory (the preset's `llm:
path`) answers the training questions; its source, rejects and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import qa, write_jsonl


def test_flow_answers_with_a_local_llm_and_publishes(tmp_path: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.llm_answers import llm_answers
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from tasks.configs import LLMAnswersConfig
    from tasks.source import read_source
    from tests.models.conftest import TEXTS

    llm = prepare_base_llm(resolve_preset("tiny"), corpus_texts=TEXTS * 3, cache_dir=tmp_path / "cache",
                           seed=0)
    source = write_jsonl(tmp_path / "qa.jsonl", [qa(i) for i in range(4)] + [{"id": "q9", "question": 3}])
    cfg = LLMAnswersConfig(source=str(source), out=str(tmp_path / "answers"), preset="tiny",
                           preset_overrides={"llm": "path", "llm_path": str(llm)}, max_new_tokens=5,
                           batch_size=3, cache_dir=str(tmp_path / "cache"))
    written = Path(llm_answers(config=cfg))
    assert written == tmp_path / "answers" / "source.jsonl"
    rows, _ = read_source(written)
    rejects = [json.loads(line) for line in (tmp_path / "answers" / "rejects.jsonl").read_text().splitlines()]
    assert len(rows) + len(rejects) == 5 and any(r["id"] == "q9" and r["stage"] == "source" for r in rejects)
    summary = json.loads((tmp_path / "answers" / "summary.json").read_text())
    assert summary["answered"] == len(rows) and summary["max_new_tokens"] == 5
    assert summary["with_aliases"] == sum(1 for r in rows if r.aliases)  # the answered rows, not the source's
    with get_client(sync_client=True) as client:
        found = {}
        for key in ("llm-answers", "llm-answers-samples"):
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert arts, f"no artifact {key}"
            found[key] = arts[-1].data
    table = {r["measure"]: r["value"] for r in json.loads(found["llm-answers"])}
    assert table["source records"] == 5 and table["answered (the corpus's targets)"] == len(rows)
    assert "| question | the LLM's answer (the target) | reference answer |" in found["llm-answers-samples"]
