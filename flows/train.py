"""The training flow: one stage of EchoX training under DDP (Ray Train), with metrics as artifacts (live while
it trains: flows/train_live.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from core import runtime
from core.runs import record_process
from flows.train_live import LiveTraining, publish_metrics
from models.stages import stage_names
from tasks.configs import TrainFlowConfig

Stage = Literal[stage_names()]  # type: ignore[valid-type]
"""A registered training stage (models/stages.py), a choice in the Prefect form."""

if TYPE_CHECKING:
    from tasks.train_config import TrainConfig


def train_config(cfg: TrainFlowConfig) -> TrainConfig:
    """The trainer's config from the flow's parameters."""
    from tasks.train import TrainConfig

    return TrainConfig(
        stage=cfg.stage, corpus_dir=cfg.corpus, out_dir=cfg.out, labels_dir=cfg.echo_labels,
        max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
        warmup_steps=min(cfg.warmup_steps, cfg.max_steps), log_every=cfg.log_every,
        ckpt_every=cfg.ckpt_every, seed=cfg.seed, workers=cfg.workers if cfg.launcher == "ray" else 1,
        use_gpu=cfg.use_gpu, resume=cfg.resume, num_threads=cfg.threads_per_worker or 0,
        max_failures=cfg.max_failures, strategy=cfg.strategy,
        gradient_checkpointing=cfg.gradient_checkpointing, load_dtype=cfg.load_dtype)


@task(name="train-stage", task_run_name="train-{cfg.stage}", tags=["train"])
def train_task(cfg: TrainFlowConfig) -> dict:
    """Prepare the model factory and run the DDP trainer, its progress live as artifacts; returns the run
    summary."""
    from models.stages import get_stage
    from tasks.train import run_local, run_ray
    from tasks.train_stage import check_stage_needs, prepare_stage

    cfg = cfg.absolute()  # the workers (on a cluster: other machines) do not share this working directory
    check_stage_needs(cfg.stage, get_stage(cfg.stage).needs, cfg)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else runtime.state_dir() / "models"
    tc = train_config(cfg)
    build = prepare_stage(cfg.stage, cfg.preset, cfg.preset_overrides, Path(cfg.corpus), cache,
                          seed=cfg.seed, s2t=cfg.s2t, t2c=cfg.t2c, init_checkpoint=cfg.init_checkpoint,
                          unit_vocab_size=cfg.unit_vocab_size, encoder_init=cfg.encoder_init,
                          load_dtype=tc.frozen_dtype)
    with LiveTraining(cfg):
        if cfg.launcher == "local":
            return run_local(tc, build)
        return run_ray(tc, build, ray_address=cfg.ray_address, name=f"train-{cfg.stage}")


def publish(cfg: TrainFlowConfig, summary: dict) -> None:
    """Loss curve and final metrics as artifacts; for the vocoder, its held-out ASR round trip too."""
    publish_metrics(cfg)
    if cfg.stage == "vocoder":
        publish_intelligibility(cfg)
    if cfg.stage == "encoder":
        publish_asr_eval(cfg)


def publish_check(cfg: TrainFlowConfig, what: str, write: Callable[[str, str], dict],
                  rows: Callable[[dict], list[dict]], key: str, describe: Callable[[dict], str]) -> None:
    """Run a stage's after-training check (`write(run, corpus)` → {"summary", ...}) and publish its table;
    a failure of the check is a warning, never a failed training."""
    logger = get_run_logger()
    try:
        result = write(cfg.out, cfg.corpus)
    except Exception as e:  # a recogniser or model missing, a corpus without text: report, keep the model
        logger.warning(f"{what} skipped: {type(e).__name__}: {e}")
        return
    create_table_artifact(key=key, table=rows(result), description=describe(result["summary"]))
    logger.info(f"{what}: {result['summary']}")


def publish_intelligibility(cfg: TrainFlowConfig) -> None:
    """The vocoder's ASR round trip on its held-out rows (intelligibility.json, summary.json, a table)."""
    from tasks.vocoder_eval import table_rows, write_intelligibility

    publish_check(cfg, "vocoder intelligibility check", write_intelligibility, table_rows,
                  "train-vocoder-intelligibility",
                  lambda s: f"Vocoder ASR round trip on {s['rows']} held-out rows: WER original "
                            f"{s['wer_original']}, vocoded {s['wer_vocoded']}, ratio {s['ratio']}")


def publish_asr_eval(cfg: TrainFlowConfig) -> None:
    """The pretrained encoder's greedy CTC transcripts of its held-out rows (asr_eval.json, summary.json, a
    table artifact)."""
    from tasks.encoder_eval import table_rows, write_asr_eval

    publish_check(cfg, "encoder held-out WER check", write_asr_eval, table_rows, "train-encoder-asr",
                  lambda s: f"Pretrained encoder, greedy CTC on {s['rows']} held-out rows: WER {s['wer']}, "
                            f"CER {s['cer']} (questions: WER {s['question_wer']})")


@flow(name="train", flow_run_name="train-{cfg.stage}", on_running=[record_process])
def train(cfg: TrainFlowConfig) -> str:
    """Train one stage; returns the directory of the final model."""
    summary = train_task(cfg)
    publish(cfg, summary)
    model_dir = str(Path(cfg.out) / "model")
    get_run_logger().info(f"stage {cfg.stage}: final model in {model_dir}")
    return model_dir


@flow(name="retrain", flow_run_name="{stage}-{data_version}", on_running=[record_process])
def retrain(stage: Stage, data_version: str, corpus: str, out_root: str = "outputs/retrain",
            init_checkpoint: str | None = None, preset: str = "tiny", max_steps: int = 200,
            workers: int = 2, use_gpu: bool = False, s2t: str | None = None, t2c: str | None = None,
            echo_labels: str | None = None) -> str:
    """Retrain one stage on a data version (optionally from a checkpoint); for deployments and the UI form.

    The run directory is `out_root/<stage>/<data_version>`; rerunning the same version resumes it.

    Args:
        stage: Training stage (s2t: stage I, t2c: stage II, echo: stage III, or another registered one).
        data_version: Name of the data version; the run folder is out_root/<stage>/<data_version>.
        corpus: Corpus directory built by build-corpus.
        out_root: Folder of the retraining runs.
        init_checkpoint: Start from this checkpoint of the same stage (None: fresh weights).
        preset: Model preset: tiny, smollm2-135m, llama-3b, llama-8b.
        max_steps: Optimizer steps.
        workers: DDP workers.
        use_gpu: Train on GPUs.
        s2t: Stage-I checkpoint (stage echo).
        t2c: Stage-II checkpoint (stage echo).
        echo_labels: Echo pseudo-label directory (stage echo).
    """
    from core.config import build

    data = {"stage": stage, "corpus": corpus, "out": str(Path(out_root) / stage / data_version),
            "init_checkpoint": init_checkpoint, "preset": preset, "max_steps": max_steps,
            "workers": workers, "use_gpu": use_gpu, "s2t": s2t, "t2c": t2c, "echo_labels": echo_labels,
            "resume": (Path(out_root) / stage / data_version / "checkpoints").exists()}
    return train(cfg=build(TrainFlowConfig, data, "retrain"))
