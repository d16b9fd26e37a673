"""The no-echo baseline's labels: the corpus's own answer units in the echo-label format, every row
accounted for, read by the echo stage's own reader and collator, and trained on by stage III."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch

from core.errors import InputError
from tasks.baseline_labels import label_corpus
from tests.tasks.test_echo_labels import TEXTS, K, tiny_rows, write_tiny_corpus

torch.set_num_threads(1)


def random_checkpoints(root: Path) -> tuple[Path, Path]:
    """A random-init tiny S2T and T2C saved under root (no model runs for the baseline labels)."""
    from models.io import save_model
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from models.t2c import build_t2c

    preset = resolve_preset("tiny")
    base = prepare_base_llm(preset, corpus_texts=TEXTS * 3, cache_dir=root / "llm-cache", seed=0)
    return (save_model(build_s2t(preset, base, seed=0), root / "s2t"),
            save_model(build_t2c(preset, base, K, seed=0), root / "t2c"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny corpus (6 rows, 2 shards), random-init checkpoints and the corpus's baseline labels."""
    root = tmp_path_factory.mktemp("baseline-labels")
    rows = tiny_rows()
    corpus = write_tiny_corpus(root / "corpus", rows)
    s2t, t2c = random_checkpoints(root)
    manifest = label_corpus(str(corpus), str(s2t), str(t2c), str(root / "labels"))
    return {"root": root, "rows": rows, "corpus": corpus, "s2t": s2t, "t2c": t2c, "labels": root / "labels",
            "manifest": manifest}


def test_labels_are_the_gold_answers_and_the_corpus_units(env: dict) -> None:
    from flows.pipeline_steps import labels_done
    from tasks.inference import load_checkpoint_model
    from tasks.shards import read_arrow

    manifest, out = env["manifest"], env["labels"]
    assert manifest["labels"] == "corpus" and labels_done(out)
    assert manifest["totals"]["rows"] + manifest["totals"]["rejected"] == len(env["rows"]) == 6
    assert manifest["totals"]["rejected"] == 0 and manifest["totals"]["token_accuracy"] == 1.0
    chat = load_checkpoint_model(env["s2t"], "s2t").chat  # the tokenizer the echo collator uses
    records = [r for shard in manifest["shards"] for r in read_arrow(out / shard["path"]).to_pylist()]
    corpus = {r["id"]: r for r in env["rows"]}
    assert sorted(r["id"] for r in records) == sorted(corpus)
    for rec in records:
        row = corpus[rec["id"]]
        gold = chat.encode(row["answer_text"])
        assert rec["answer_token_ids"] == rec["echo_token_ids"] == gold
        assert (rec["segment_start"], rec["segment_end"]) == ([0], [len(gold)])  # one segment: the answer
        assert rec["segment_units"] == [row["answer_units"].tolist()]  # the corpus's own units, unchanged


def test_the_echo_stage_reads_and_collates_them(env: dict) -> None:
    from tasks.collate import make_collator
    from tasks.data import echo_examples
    from tasks.speak import initial_echo

    examples = list(echo_examples(env["corpus"], env["labels"]))
    assert len(examples) == len(env["rows"])  # one example per row
    for ex in examples:
        assert list(ex["segment_units"]) == list(ex["answer_units"])
    batch = make_collator("echo", initial_echo(env["s2t"], env["t2c"]))(examples)
    assert batch["segment_units"].shape[0] == len(examples) and bool(batch["segment_unit_eos"].all())


def test_a_finished_run_is_kept_and_is_not_taken_for_echo_labels(env: dict) -> None:
    from tasks.echo_labels import plan_run

    again = label_corpus(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(env["labels"]))
    assert again == env["manifest"]
    with pytest.raises(InputError, match="overwrite"):  # echo labels hash differently: not "done" here
        plan_run(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(env["labels"]), max_units=1000,
                 overwrite=False)


def test_answers_over_the_length_guard_are_rejects_with_a_reason(env: dict, tmp_path: Path) -> None:
    lengths = {r["id"]: len(r["answer_units"]) for r in env["rows"]}
    guard = sorted(lengths.values())[len(lengths) // 2]
    over = {rid for rid, n in lengths.items() if n > guard}
    assert over and len(over) < len(lengths), lengths  # a mix of kept and rejected rows
    manifest = label_corpus(str(env["corpus"]), str(env["s2t"]), str(env["t2c"]), str(tmp_path / "out"),
                            max_units=guard)
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert manifest["totals"]["rows"] + len(rejects) == len(env["rows"])
    assert {r["id"] for r in rejects} == over and all(r["stage"] == "baseline" for r in rejects)
    pattern = rf"the answer's \d+ unit targets exceed the length guard of {guard} units"
    assert all(re.fullmatch(pattern, r["reason"]) for r in rejects), rejects
    assert manifest["totals"]["units"] == sum(n for rid, n in lengths.items() if rid not in over)


def test_echo_training_on_baseline_labels(env: dict, tmp_path: Path) -> None:
    from models.factory import build_for_stage
    from models.presets import preset_to_dict, resolve_preset
    from tasks.inference import load_checkpoint_model
    from tasks.train import TrainConfig, run_local

    build = functools.partial(build_for_stage, "echo", preset_to_dict(resolve_preset("tiny")), "",
                              s2t_checkpoint=str(env["s2t"]), t2c_checkpoint=str(env["t2c"]), seed=0)
    cfg = TrainConfig(stage="echo", corpus_dir=str(env["corpus"]), out_dir=str(tmp_path / "run"),
                      labels_dir=str(env["labels"]), max_steps=4, batch_size=3, lr=3e-3, warmup_steps=1,
                      log_every=1, ckpt_every=4, num_threads=1)
    summary = run_local(cfg, build)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 4 and summary["examples"] == 6  # one example per row
    assert all(torch.isfinite(torch.tensor(m["echo"])) for m in metrics)
    assert metrics[-1]["echo"] < metrics[0]["echo"], (metrics[0], metrics[-1])
    assert load_checkpoint_model(tmp_path / "run", "echo") is not None
