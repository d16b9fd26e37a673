"""Distributed training of every stage: the public names of the recipe and its launchers, in one place.

- tasks/train_config.py: `TrainConfig`, everything one run needs besides the model factory.
- tasks/train_recipe.py: `train_loop`, the per-rank recipe (setup, loop, checkpoint, teardown); what it
  does per stage comes from the stage registry (models/stages.py) by `TrainConfig.stage`.
- tasks/launch.py: `run_local`, `run_ray`, and torchrun through `write_loop_json` + `python -m tasks.train`:
  `torchrun --standalone --nproc_per_node 2 -m tasks.train --config loop.json`.
- tasks/train_utils.py, tasks/distributed.py: the recipe's parts.
"""

from __future__ import annotations

from tasks.distributed import Process, all_gather, broadcast, init_distributed, pick_device
from tasks.launch import _fit as _fit
from tasks.launch import (
    absolute,
    loop_config,
    read_summary,
    run_local,
    run_ray,
    run_torchrun_main,
    write_loop_json,
)
from tasks.train_config import TrainConfig
from tasks.train_recipe import HOOK_NAMES, Hooks, Progress, Run, resolve, resolve_hooks, train_loop
from tasks.train_utils import (
    EpochBatches,
    lr_factor,
    make_optimizer,
    param_checksum,
    scalars,
    seed_rank,
    trim_metrics,
)

__all__ = [
    "HOOK_NAMES", "EpochBatches", "Hooks", "Process", "Progress", "Run", "TrainConfig", "absolute",
    "all_gather", "broadcast", "init_distributed", "loop_config", "lr_factor", "make_optimizer",
    "param_checksum", "pick_device", "read_summary", "resolve", "resolve_hooks", "run_local", "run_ray",
    "run_torchrun_main", "scalars", "seed_rank", "train_loop", "trim_metrics", "write_loop_json",
]

if __name__ == "__main__":
    run_torchrun_main()
