"""Vocoder intelligibility: the held-out split (deterministic, disjoint, kept out of the vocoder's
training rows only) and the ASR round trip on it (finite WERs, a row per held-out utterance, a warning
on failure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from models.holdout import HOLDOUT_MOST, holdout_ids, id_rank
from models.io import save_model
from tests.models.test_vocoder import tiny_vocoder, vocoder_rows

torch.set_num_threads(1)
SHA = "ab" * 32


def write_text_corpus(out: Path, n: int = 8) -> Path:
    """A vocoder corpus (tone rows) with spoken texts and a manifest recording its codebook."""
    from tasks.shards import write_json
    from tests.helpers.dummy_model import write_corpus

    rows = [{**r, "question_text": f"what is {i}", "answer_text": f"it is {i}"}
            for i, r in enumerate(vocoder_rows(n))]
    write_corpus(out, pa.Table.from_pylist(rows), shards=2)
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(out / "manifest.json", {**manifest, "codebook": {"num_units": 16, "sha256": SHA}})
    return out


class EchoingASR:
    """A stand-in recogniser: hears "it is 1" in anything audible (16 kHz int16)."""

    name = "echo"

    def transcribe(self, audio: np.ndarray) -> str:
        assert audio.dtype == np.int16  # what pocketsphinx takes (or float32), never Arrow's int64 lists
        return "it is 1" if np.abs(np.asarray(audio, dtype=np.float32)).max() > 0 else ""

    def config(self) -> dict:
        return {"name": self.name}


def test_the_split_is_a_stable_hash_of_the_ids_and_bounded() -> None:
    ids = [f"r{i}" for i in range(40)]
    held = holdout_ids(ids)
    assert held == holdout_ids(reversed(ids)) == holdout_ids(ids + ids)  # order and duplicates do not matter
    assert held == {"r22", "r27", "r32", "r4"}  # blake2b, not the per-process salted hash()
    assert id_rank("gk-0001") == 17565249606468651724
    assert held < set(ids) and set(ids) - held  # disjoint from the training rows, which are not empty
    assert len(holdout_ids([f"r{i}" for i in range(100)])) == 5  # ~5 %
    assert len(holdout_ids([f"r{i}" for i in range(5000)])) == HOLDOUT_MOST
    assert len(holdout_ids(["a", "b"])) == 1 and holdout_ids(["a"]) == frozenset()


def test_only_the_vocoder_trains_without_its_heldout_rows(tmp_path: Path) -> None:
    from tasks.distributed import Process
    from tasks.train_config import TrainConfig
    from tasks.train_recipe import load_examples, resolve_hooks

    corpus = write_text_corpus(tmp_path / "corpus", n=12)
    proc = Process(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    seen = {}
    for stage in ("vocoder", "t2c"):
        hooks = resolve_hooks({"build": "models.factory:build_for_stage"}, stage)
        cfg = TrainConfig(stage=stage, corpus_dir=str(corpus), out_dir=str(tmp_path / stage))
        examples, heldout = load_examples(cfg, proc, hooks.holdout)
        seen[stage] = ({examples.lazy_row(i)["id"] for i in range(len(examples))}, heldout)
    all_ids = {f"v{i}" for i in range(12)}
    held = holdout_ids(all_ids)
    assert seen["vocoder"] == (all_ids - held, len(held)) and held
    assert seen["t2c"] == (all_ids, 0)


def test_intelligibility_scores_every_heldout_utterance(tmp_path: Path) -> None:
    from tasks.vocoder_eval import intelligibility, table_rows

    corpus = write_text_corpus(tmp_path / "corpus")
    voc = save_model(tiny_vocoder(seed=1, sha256=SHA), tmp_path / "voc")
    result = intelligibility(voc, corpus, asr=EchoingASR())
    held = holdout_ids(f"v{i}" for i in range(8))
    assert {r["id"] for r in result["rows"]} == held and len(result["rows"]) == 2 * len(held)
    s = result["summary"]
    for key in ("wer_original", "wer_vocoded", "wer_vocoded_gold_durations", "wer_resynthesized", "ratio",
                "rtf"):
        assert math.isfinite(s[key]), key
    assert s["utterances"] == 2 * len(held) and s["asr"] == {"name": "echo"}
    assert table_rows(result)[-1]["id"] == "mean" and len(table_rows(result)) == 2 * len(held) + 1


class ListLogger:
    """Collects warnings (the flow's run logger outside a flow run)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def test_the_flow_writes_the_check_and_warns_when_it_fails(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.train as ft
    from tasks import vocoder_eval
    from tasks.configs import TrainFlowConfig
    from tasks.shards import write_json

    corpus = write_text_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    save_model(tiny_vocoder(seed=1, sha256=SHA), run / "model")
    write_json(run / "summary.json", {"stage": "vocoder", "steps": 1})
    tables: list[tuple[str, list]] = []
    logger = ListLogger()
    monkeypatch.setattr(ft, "get_run_logger", lambda: logger)
    monkeypatch.setattr(ft, "create_table_artifact",
                        lambda key, table, description: tables.append((key, table)))
    monkeypatch.setattr(vocoder_eval, "make_asr", lambda name, threads: EchoingASR())
    cfg = TrainFlowConfig(stage="vocoder", corpus=str(corpus), out=str(run))
    ft.publish_intelligibility(cfg)
    assert [k for k, _ in tables] == ["train-vocoder-intelligibility"]
    saved = json.loads((run / "intelligibility.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["intelligibility"] == saved["summary"]

    def broken(name: str, threads: int) -> None:
        raise RuntimeError("no acoustic model")

    monkeypatch.setattr(vocoder_eval, "make_asr", broken)
    ft.publish_intelligibility(cfg)  # no exception: the training stands
    assert logger.warnings == ["vocoder intelligibility check skipped: RuntimeError: no acoustic model"]
