"""Checkpoints: atomic writes, verification, corrupt/partial skipping, keep-last-N, exact restore."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import CheckpointError
from tasks import checkpoint as ckpt
from tasks.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tests.helpers.dummy_model import TinyLM


def _trained(seed: int = 0) -> tuple[TinyLM, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """A tiny model after two optimizer steps (so Adam has state)."""
    torch.manual_seed(seed)
    model = TinyLM(dim=8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    ids = torch.randint(0, 16, (2, 5))
    for _ in range(2):
        model(ids, ids)["loss"].backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _save(root: Path, step: int, **kw: object) -> Path:
    model, opt, sched = _trained(step)
    return save_checkpoint(root, step, model, opt, sched, [capture_rng_state()], {"note": step}, **kw)


def test_save_then_load_restores_everything(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 7, model, opt, sched, [capture_rng_state()], {"tokens": 42})
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    assert path == tmp_path / "step-000007"
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["step"] == 7 and set(meta["files"]) == {"model.safetensors", "optimizer.pt", "scheduler.pt",
                                                         "rng.pt"}
    assert not list(tmp_path.glob(".tmp-*"))

    fresh, fresh_opt, fresh_sched = _trained(seed=99)
    state = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert state.step == 7 and state.extra == {"tokens": 42}
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_sched.last_epoch == sched.last_epoch == 2
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restore_rng_state(state.rng_state[0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


def test_interrupted_save_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _save(tmp_path, 1)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    assert list_checkpoints(tmp_path) == [first]
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path) == first


def test_corrupt_newest_is_skipped_and_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older = _save(tmp_path, 1)
    newer = _save(tmp_path, 2)
    weights = newer / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tasks.checkpoint"):
        assert latest_checkpoint(tmp_path) == older
    assert "step-000002" in caplog.text and "model.safetensors" in caplog.text
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(newer, TinyLM(dim=8))


def test_partial_and_missing_files_are_skipped(tmp_path: Path) -> None:
    good = _save(tmp_path, 1)
    (tmp_path / "step-000005").mkdir()  # a directory without checkpoint.json
    missing = _save(tmp_path, 3)
    (missing / "optimizer.pt").unlink()
    assert latest_checkpoint(tmp_path) == good
    assert latest_checkpoint(tmp_path / "none") is None
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is missing"):
        load_checkpoint(missing, TinyLM(dim=8))


def test_keep_last_n_and_stale_temp_dirs(tmp_path: Path) -> None:
    (tmp_path / ".tmp-step-000001-crashed").mkdir(parents=True)
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_resave_same_step_replaces_it(tmp_path: Path) -> None:
    _save(tmp_path, 3)
    model, opt, sched = _trained(seed=11)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, None, {"again": True})
    assert load_checkpoint(path, TinyLM(dim=8)).extra == {"again": True}
    assert [p.name for p in tmp_path.iterdir()] == ["step-000003"]


def test_frozen_parameters_are_left_out(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, opt, sched = _trained()
    model.proj.bias.requires_grad_(False)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, None, {})
    saved = load_file(str(path / "model.safetensors"))
    assert "frozen_scale" not in saved and "proj.bias" not in saved and "proj.weight" in saved
    fresh = TinyLM(dim=8)
    fresh.proj.bias.requires_grad_(False)
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.proj.weight, model.proj.weight)
    with pytest.raises(CheckpointError, match=r"proj\.bias"):
        load_checkpoint(path, TinyLM(dim=8))  # here proj.bias trains, so the checkpoint must hold it


def test_wrong_model_raises_checkpoint_error(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, TinyLM(dim=12))


class _RunsShell:
    """Pickles to a call of os.system: what a malicious rng.pt holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (self.command,))


def poison(path: Path, name: str, content: bytes | None = None, *, marker: Path | None = None) -> None:
    """Replace `name` in checkpoint `path` (with a pickle that runs a shell command touching `marker`, or
    `content`) and record its new sha256 in checkpoint.json, so only loading it can refuse it."""
    from tasks.shards import file_sha256, write_json

    target = path / name
    if content is None:
        torch.save({"python": _RunsShell(f"touch {marker}")}, target)
    else:
        target.write_bytes(content)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["files"][name] = file_sha256(target)
    write_json(path / "checkpoint.json", meta)


def test_unsafe_or_unreadable_files_skip_to_the_previous_checkpoint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A newest checkpoint whose files verify by sha256 but fail to load safely is skipped, not raised."""
    from tasks.checkpoint import latest_loadable, verify_checkpoint

    older, newer, newest = _save(tmp_path, 1), _save(tmp_path, 2), _save(tmp_path, 3)
    ran = tmp_path / "code-ran"
    poison(newest, "rng.pt", marker=ran)
    poison(newer, "optimizer.pt", (newer / "optimizer.pt").read_bytes()[:40])  # truncated, sha256 fixed
    verify_checkpoint(newest)  # the sha256 list agrees: only the load can catch it
    with caplog.at_level(logging.WARNING, logger="tasks.checkpoint"):
        found = latest_loadable(tmp_path)
    assert found is not None and found.path == older and found.meta["step"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    assert "step-000003" in warnings[0] and "rng.pt cannot be loaded safely" in warnings[0]
    assert "UnpicklingError" in warnings[0] and "system" in warnings[0]
    assert "step-000002" in warnings[1] and "optimizer.pt cannot be loaded safely" in warnings[1]
    assert not ran.exists(), "the pickle's code ran"
    with pytest.raises(CheckpointError, match=r"rng\.pt cannot be loaded safely"):
        load_checkpoint(newest, TinyLM(dim=8))
    fresh = TinyLM(dim=8)
    state = ckpt.apply_checkpoint(found, fresh)
    assert state.step == 1 and torch.equal(fresh.proj.weight, _trained(1)[0].proj.weight)

    poison(older, "model.safetensors", b"\x00" * 16)  # none left: start fresh
    assert latest_loadable(tmp_path) is None and latest_loadable(tmp_path / "none") is None
    assert not ran.exists()
