"""The training run's config: everything one run needs besides the model factory (picklable, JSON-able)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import get_args

from core.errors import ConfigError
from tasks.configs import TrainStep

_STEP = TrainStep.model_fields  # the options a user sets are declared once, there (with their defaults)
STRATEGIES: tuple[str, ...] = get_args(_STEP["strategy"].annotation)  # ("ddp", "fsdp")
LOAD_DTYPES: tuple[str, ...] = get_args(_STEP["load_dtype"].annotation)  # ("auto", "float32", "bfloat16")


def resolve_load_dtype(load_dtype: str, use_gpu: bool) -> str:
    """"auto" → bfloat16 when training on GPUs, float32 on CPU; any other value as given."""
    if load_dtype == "auto":
        return "bfloat16" if use_gpu else "float32"
    return load_dtype


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the model factory; picklable and JSON-able."""

    stage: str
    """Training stage, handed to the collator and example_length (e.g. "s2t", "t2c", "echo")."""
    corpus_dir: str
    """Corpus directory: Arrow shards, state.json and manifest.json."""
    out_dir: str
    """Run directory: metrics.jsonl, checkpoints/, model/, summary.json."""
    labels_dir: str | None = None
    """Echo-labels directory joined to the corpus by id (one example per segment); None: corpus rows."""
    max_steps: int = _STEP["max_steps"].default
    """Optimizer steps to train for (the cosine schedule spans them)."""
    batch_size: int = _STEP["batch_size"].default
    """Examples per rank per micro-step."""
    grad_accum: int = _STEP["grad_accum"].default
    """Micro-steps per optimizer step (gradients sync across ranks only on the last)."""
    lr: float = _STEP["lr"].default
    """Peak learning rate (AdamW)."""
    warmup_steps: int = _STEP["warmup_steps"].default
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (biases, norms and 1-d parameters get none)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    clip_norm: float = 1.0
    """Gradient norm clip; 0 disables clipping (the norm is still logged)."""
    log_every: int = _STEP["log_every"].default
    """Write a metrics line every this many steps (and at every checkpoint and the last step)."""
    ckpt_every: int = _STEP["ckpt_every"].default
    """Save a checkpoint every this many steps (and at the last step)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (newest first)."""
    seed: int = 0
    """Seed of model init, data order and every rank's RNG."""
    bucket_size: int = 256
    """Examples per length bucket of the sampler (rounded up to whole global batches)."""
    workers: int = 1
    """DDP processes that run_ray starts (torchrun's count comes from its own flags)."""
    use_gpu: bool = False
    """Train on CUDA (NCCL between ranks) instead of CPU (gloo)."""
    bf16: bool = True
    """bf16 autocast of the forward pass; applies on CUDA only."""
    resume: bool = False
    """Continue from the newest verified checkpoint in out_dir/checkpoints (if there is one)."""
    num_threads: int = 0
    """torch threads per process; 0: CPU cores divided by the processes on this machine."""
    max_failures: int = 2
    """Ray Train: restarts of the worker group after a worker fails or its node is lost; each restart
    resumes from the newest verified checkpoint of this launch. A user mistake (EchoxError) is not retried."""
    launch_id: str = ""
    """Set by run_ray: lets a restarted attempt resume the checkpoints its own launch wrote."""
    find_unused_parameters: bool = False
    """Tell DDP that some trainable parameters get no gradient in a step (slower; only if needed)."""
    strategy: str = _STEP["strategy"].default
    """"ddp": a whole model per rank; "fsdp": FSDP2 sharding per transformer block, sharded checkpoints."""
    gradient_checkpointing: bool = _STEP["gradient_checkpointing"].default
    """Recompute transformer blocks' activations in backward (HF gradient checkpointing)."""
    load_dtype: str = _STEP["load_dtype"].default
    """dtype of the frozen weights: "auto" (bfloat16 with use_gpu, else float32), "float32", "bfloat16"."""

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints",
                    "bucket_size", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_failures < 0:
            raise ConfigError(f"train config: max_failures must be >= 0, got {self.max_failures}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.clip_norm < 0 or self.num_threads < 0:
            raise ConfigError("train config: lr must be > 0; warmup_steps, clip_norm, num_threads >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train config: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train config: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.load_dtype not in LOAD_DTYPES:
            raise ConfigError(f"train config: load_dtype must be one of {LOAD_DTYPES}, "
                              f"got {self.load_dtype!r}")
        if self.frozen_dtype == "bfloat16" and not self.use_gpu:
            raise ConfigError("train config: load_dtype bfloat16 needs use_gpu (CPU training runs in "
                              "float32)")

    @property
    def frozen_dtype(self) -> str:
        """The dtype frozen weights are loaded in: load_dtype with "auto" resolved by use_gpu."""
        return resolve_load_dtype(self.load_dtype, self.use_gpu)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a plain dict (JSON), naming unknown fields."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"train config: unknown fields {sorted(unknown)}")
        if "adam_betas" in data:
            data = {**data, "adam_betas": tuple(data["adam_betas"])}
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"train config: {e}") from e
