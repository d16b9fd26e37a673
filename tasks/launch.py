"""Launchers of the training recipe (tasks/train_recipe.py): one process, torchrun, Ray Train.

- `run_local(config, build)`: one process, for debugging and tests.
- torchrun: write the loop config with `write_loop_json(path, config, build="pkg.mod:factory")` and run
  `torchrun --standalone --nproc_per_node 2 -m tasks.train --config path.json`
  (or `python -m tasks.train --config path.json` for one process).
- `run_ray(config, build)`: `ray.train.torch.TorchTrainer` with `config.workers` workers. Ray Train sets
  up the process group; run it from a driver (or a Ray task with num_cpus=0) so the workers get the CPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import ConfigError, EchoxError
from models.stages import get_stage
from tasks.corpus_paths import FAULT_ENV
from tasks.shards import write_json
from tasks.train_config import TrainConfig
from tasks.train_recipe import HOOK_NAMES, train_loop

TORCHRUN_HELP = "Train one stage on this rank from a loop config written by write_loop_json."


# ---- the loop config (what every launcher hands to train_loop) ------------------------------------------

def loop_config(config: TrainConfig, build: Callable[[], nn.Module] | str, *, launcher: str = "local",
                build_kwargs: dict | None = None, **hooks: Callable | str | None) -> dict:
    """The dict train_loop takes: the config, the model factory, and optional overrides (save_fn, ...)."""
    unknown = set(hooks) - set(HOOK_NAMES)
    if unknown:
        raise ConfigError(f"unknown training hooks {sorted(unknown)}; known: {sorted(HOOK_NAMES)}")
    loop = {"train": asdict(config), "build": build, "build_kwargs": build_kwargs or {}, "launcher": launcher}
    loop.update({name: value for name, value in hooks.items() if value is not None})
    if launcher != "torchrun":  # ship the stage itself: Ray workers then know a stage registered only here
        loop["stage_spec"] = get_stage(config.stage)
    return loop


def write_loop_json(path: str | Path, config: TrainConfig, build: str, **kwargs: Any) -> Path:
    """Write a torchrun config: like loop_config, with hooks as "package.module:name" strings."""
    loop = loop_config(config, build, launcher="torchrun", **kwargs)
    bad = [k for k, v in loop.items() if callable(v)]
    if bad:
        raise ConfigError(f"torchrun configs are JSON: give {bad} as 'package.module:name' strings")
    write_json(Path(path), loop)
    return Path(path)


# ---- launchers -------------------------------------------------------------------------------------------

def absolute(config: TrainConfig) -> TrainConfig:
    """The config with absolute paths (Ray Train changes the workers' working directory)."""
    def fix(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return replace(config, corpus_dir=fix(config.corpus_dir), out_dir=fix(config.out_dir),
                   labels_dir=fix(config.labels_dir))

def read_summary(out_dir: str | Path) -> dict:
    """The summary.json a finished run wrote."""
    return json.loads((Path(out_dir) / "summary.json").read_text())

def run_local(config: TrainConfig, build: Callable[[], nn.Module] | str, **hooks: Any) -> dict:
    """Train in this process (one rank); return the summary."""
    config = absolute(config)
    train_loop(loop_config(config, build, launcher="local", **hooks))
    return read_summary(config.out_dir)

def _repo_pythonpath() -> str:
    """PYTHONPATH for Ray workers: this checkout's root first, so `tasks`, `models` (and tests) import."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

def run_ray(config: TrainConfig, build: Callable[[], nn.Module] | str, *, ray_address: str | None = None,
            object_store_mb: int = 256, name: str = "train", callbacks: Sequence[Any] = (),
            **hooks: Any) -> dict:
    """Train with `config.workers` DDP workers under Ray Train's TorchTrainer; return the summary.

    Starts a local Ray (or joins `ray_address`) unless one is already running in this process.
    Every rank reports each metrics line to `ray.train.report`; `callbacks` (`ray.train.UserCallback`s,
    run by Ray Train's controller) see them. A failure on any worker is raised here: EchoxErrors as
    themselves, others as RuntimeError.
    """
    from core.runtime import ray_session

    config = replace(absolute(config), launch_id=uuid.uuid4().hex)
    env = {"env_vars": {"PYTHONPATH": _repo_pythonpath(),  # workers import the project from this tree
                        **{k: os.environ[k] for k in (FAULT_ENV,) if k in os.environ}}}  # test hook
    with ray_session(ray_address, object_store_mb=object_store_mb, runtime_env=env):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from core.runtime import cluster_cpus, task_threads

        total, node = cluster_cpus()
        threads = task_threads(config.workers, config.num_threads, total, node)
        if config.workers * threads > total and not ray_address:
            raise ConfigError(f"{config.workers} workers × {threads} threads need {config.workers * threads} "
                              f"CPUs; this Ray has {total}: lower workers or num_threads")
        config = replace(config, num_threads=threads)  # each worker runs the threads it reserves
        trainer = TorchTrainer(
            train_loop, train_loop_config=loop_config(config, build, launcher="ray", **hooks),
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": threads}),
            run_config=RunConfig(storage_path=str(Path(config.out_dir) / "ray"), name=name,
                                 worker_runtime_env=env, callbacks=list(callbacks),
                                 failure_config=FailureConfig(max_failures=config.max_failures)))
        _fit(trainer)
    return read_summary(config.out_dir)


def _fit(trainer: Any) -> None:
    """trainer.fit(), turning a worker failure into the worker's own error (or a RuntimeError naming it)."""
    from ray.train import TrainingFailedError

    try:
        trainer.fit()
    except TrainingFailedError as e:
        failures = getattr(e, "worker_failures", None) or {}
        if not failures:
            raise RuntimeError(f"Ray training failed: {e}") from e
        rank = min(failures)
        cause = failures[rank]
        if isinstance(cause, EchoxError):
            raise cause from e
        raise RuntimeError(f"training failed on rank {rank}: {type(cause).__name__}: {cause}") from e


def run_torchrun_main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.train --config loop.json` (under torchrun: one process per rank)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.train", description=TORCHRUN_HELP)
    parser.add_argument("--config", required=True, type=Path, help="JSON written by write_loop_json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank" + os.environ.get("RANK", "0")
                        + " %(levelname)s %(message)s")
    try:
        loop = json.loads(args.config.read_text())
        if not isinstance(loop, dict):
            raise ConfigError(f"{args.config} must hold a JSON object (see write_loop_json)")
        train_loop({**loop, "launcher": "torchrun"})
    except (EchoxError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
