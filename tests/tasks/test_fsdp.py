"""Strategy fsdp: FSDP2 over 2 gloo ranks on CPU trains a tiny LoRA S2T (frozen encoder and base LLM) along
the curve DDP trains, resumes from its sharded checkpoint after a crash (skipping a corrupt newest one) onto
the identical curve, and exports a model that loads as any checkpoint does. Plus the options' validation,
frozen-weight dtypes and gradient checkpointing in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, ConfigError
from tasks.train import TrainConfig, run_local, write_loop_json
from tests.helpers import dummy_model as dm
from tests.helpers.speech_corpus import CRASH_AT, texts, write_speech_corpus

ROOT = Path(__file__).resolve().parents[2]
COMPARED = ("loss", "ce", "ctc", "lr", "grad_norm", "tokens", "epoch")
LORA = {"lora_rank": 4, "train_encoder": False}  # frozen encoder and base LLM beside trained LoRA + adapter


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 16-row spoken corpus and the tiny preset's base LLM (tokenizer trained on its texts)."""
    from models.llm import prepare_base_llm
    from models.presets import preset_to_dict, resolve_preset

    tmp = tmp_path_factory.mktemp("fsdp")
    preset = resolve_preset("tiny", **LORA)
    base = prepare_base_llm(preset, corpus_texts=texts(), cache_dir=tmp / "cache")
    build = {"stage": "s2t", "preset": preset_to_dict(preset), "llm_dir": str(base)}
    return {"corpus": write_speech_corpus(tmp / "corpus", 16), "base": base, "build": build}


def _config(inputs: dict, out: Path, **kw: object) -> TrainConfig:
    base = {"stage": "s2t", "corpus_dir": str(inputs["corpus"]), "out_dir": str(out), "max_steps": 6,
            "batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "log_every": 1, "ckpt_every": 2,
            "bucket_size": 8, "num_threads": 1, "strategy": "fsdp"}
    return TrainConfig(**{**base, **kw})


def _torchrun(cfg: TrainConfig, inputs: dict, crash_at: int = 0) -> subprocess.CompletedProcess:
    """Two gloo ranks under torchrun on the real stage factory (crash_at: the batch whose collate fails)."""
    loop = write_loop_json(Path(cfg.out_dir + ".json"), cfg, "models.factory:build_for_stage",
                           build_kwargs=inputs["build"],
                           make_collator="tests.helpers.speech_corpus:crashing_collator")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           CRASH_AT: str(crash_at)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasks.train", "--config", str(loop)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted fsdp run of 6 steps, with gradient checkpointing."""
    out = tmp_path_factory.mktemp("straight") / "run"
    _ok(_torchrun(_config(inputs, out, gradient_checkpointing=True), inputs), out)
    return out


@pytest.mark.slow  # two torchrun launches of two ranks each: about 80 s here
def test_fsdp_trains_the_curve_ddp_trains_and_exports_a_loadable_model(
        inputs: dict, straight: Path, tmp_path: Path) -> None:
    from models.io import load_model
    from tasks.checkpoint import checkpoint_layout, verify_checkpoint
    from tasks.train_utils import param_checksum

    summary = json.loads((straight / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["world_size"] == 2 and summary["steps"] == 6
    ckpt = Path(summary["checkpoint"])
    assert checkpoint_layout(ckpt) == "sharded" and "sharded/.metadata" in verify_checkpoint(ckpt)["files"]
    assert not (ckpt / "model.safetensors").exists()  # the weights are DCP shards, written by both ranks
    model = load_model(straight / "model", expect_stage="s2t")  # what a later stage or `echox ask` loads
    assert param_checksum(model) == summary["param_checksums"][0]

    ddp = tmp_path / "ddp"
    _ok(_torchrun(_config(inputs, ddp, strategy="ddp"), inputs), ddp)
    a, b = _metrics(ddp), _metrics(straight)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6] and b[-1]["loss"] < b[0]["loss"]
    for ra, rb in zip(a, b, strict=True):  # sharding and recomputation change no number but float sums
        for key in COMPARED:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)


@pytest.mark.slow  # two torchrun launches of two ranks each: about 80 s here
def test_fsdp_resumes_the_identical_curve_from_the_last_verified_sharded_checkpoint(
        inputs: dict, straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "crashed"
    cfg = _config(inputs, out, gradient_checkpointing=True)
    crashed = _torchrun(cfg, inputs, crash_at=5)  # checkpoints at 2 and 4, dies in step 5
    assert crashed.returncode != 0 and "SimulatedCrash" in crashed.stderr
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step-000002",
                                                                                     "step-000004"]
    shard = next((ckpts / "step-000004" / "sharded").glob("__1_*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-16])  # the newest is torn: every rank skips it

    summary = _ok(_torchrun(replace(cfg, resume=True), inputs), out)
    assert summary["resumed_from"].endswith("step-000002")
    a, b = _metrics(straight), _metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    straight_summary = json.loads((straight / "summary.json").read_text())
    assert summary["param_checksums"] == straight_summary["param_checksums"]


# ---- one process: validation, layouts, dtypes, gradient checkpointing -----------------------------------

def test_options_are_validated_with_one_line_errors(tmp_path: Path) -> None:
    from tasks.configs import TrainStep

    for data, match in [({"strategy": "fsdp", "launcher": "local"}, "needs launcher ray and workers >= 2"),
                        ({"strategy": "fsdp", "workers": 1}, "needs launcher ray and workers >= 2"),
                        ({"load_dtype": "bfloat16"}, "load_dtype bfloat16 needs use_gpu"),
                        ({"strategy": "zero3"}, "'ddp' or 'fsdp'")]:
        with pytest.raises(ValueError, match=match):
            TrainStep(**data)
    TrainStep(strategy="fsdp", workers=2, gradient_checkpointing=True, load_dtype="float32")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        TrainConfig(stage="s2t", corpus_dir="c", out_dir="o", strategy="zero3")
    with pytest.raises(ConfigError, match="needs use_gpu"):
        TrainConfig(stage="s2t", corpus_dir="c", out_dir="o", load_dtype="bfloat16")
    corpus = dm.write_corpus(tmp_path / "corpus", dm.corpus_table(8))
    hooks = {"save_fn": dm.save_model, "make_collator": dm.make_collator, "example_length": dm.example_length}
    cfg = TrainConfig(stage="t2c", corpus_dir=str(corpus), out_dir=str(tmp_path / "run"), strategy="fsdp",
                      bucket_size=8, batch_size=2)
    with pytest.raises(ConfigError, match="2 or more workers"):  # torchrun or Ray with one process
        run_local(cfg, dm.build, **hooks)


def test_each_strategy_resumes_only_its_own_checkpoint_layout(tmp_path: Path) -> None:
    from tasks.checkpoint import check_layout, read_checkpoint
    from tasks.shards import file_sha256, write_json

    step = tmp_path / "step-000002"
    (step / "sharded").mkdir(parents=True)
    metadata = step / "sharded" / ".metadata"
    metadata.write_bytes(b"x")
    write_json(step / "checkpoint.json", {"format": 1, "step": 2, "layout": "sharded", "extra": {},
                                          "files": {"sharded/.metadata": file_sha256(metadata)}})
    check_layout(tmp_path, "fsdp")
    with pytest.raises(ConfigError, match="checkpoint of strategy fsdp: resume it with strategy fsdp"):
        check_layout(tmp_path, "ddp")
    with pytest.raises(CheckpointError, match="sharded checkpoint"):
        read_checkpoint(step)


def test_frozen_weights_load_in_bf16_and_trained_ones_stay_float32(inputs: dict) -> None:
    from models.factory import build_for_stage
    from tasks.train_utils import cast_for_training

    torch.manual_seed(0)
    model = build_for_stage(**inputs["build"], dtype="bfloat16")
    llm_frozen = {p.dtype for n, p in model.llm.named_parameters() if "lora_" not in n}
    assert llm_frozen == {torch.bfloat16}  # loaded so, never as a float32 copy
    cast_for_training(model, "bfloat16")
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    # The GPU path computes under bf16 autocast; the CPU's autocast stands in for it here.
    from tasks.collate import make_collator
    from tests.helpers.speech_corpus import speech_table

    batch = make_collator("s2t", model)(speech_table(2).to_pylist())  # as the trainer: outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(out["loss"]) and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_gradient_checkpointing_recomputes_the_same_loss_and_gradients(inputs: dict) -> None:
    from models.factory import build_for_stage
    from tasks.collate import make_collator
    from tasks.train_utils import enable_gradient_checkpointing
    from tests.helpers.speech_corpus import speech_table

    rows = speech_table(2).to_pylist()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_for_stage(**{**inputs["build"], "preset": {**inputs["build"]["preset"],
                                                                  "train_encoder": True}}).train()
        if checkpointing:
            assert enable_gradient_checkpointing(model) >= 2  # the LLM and the Whisper encoder
        torch.manual_seed(1)
        loss = model(**make_collator("s2t", model)(rows))["loss"]
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and len(grads_a) == len(grads_b)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b, strict=True))
    with pytest.raises(ConfigError, match="holds no transformers model"):
        enable_gradient_checkpointing(dm.build())
