"""The pipeline's DAG as data: one `Step` entry per step, read by the planner and the flow.

No Prefect (and no torch) at import: the CLI validates `--from`/`--only` against `step_names()` and
`--dry-run` plans from configs and files alone. A step entry says what it depends on, how its config is
built from the PipelineConfig and its inputs' outputs, how it runs, how its outputs verify, and which
config fields its fingerprint leaves out. Adding a training stage to the pipeline is one
`training_step(...)` entry in `STEPS` plus a `TrainStep` field of that name in `PipelineConfig`.

The preset and its overrides enter the fingerprints of the training steps (they are fields of their
configs); the corpus build does not read them, so changing the preset keeps the corpus, and echo labels
and evaluation see them through the fingerprints of the checkpoints they read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.pipeline_config import (
    LLM_ANSWERS_SOURCE,
    PipelineConfig,
    baseline_labels_config,
    corpus_config,
    echo_labels_config,
    evaluate_config,
    evaluate_s2t_config,
    evaluate_text_config,
    is_llm_answers_source,
    knowledge_config,
    llm_answers_config,
    pretrain_corpus_config,
    stage_config,
)
from models.presets import DECODE_FIELDS, PROMPT_FIELDS, STAGE_THREE_FIELDS
from tasks.configs import EXECUTION_FIELDS, BuildCorpusConfig, PretrainCorpusConfig, TrainFlowConfig
from tasks.train_config import resolve_load_dtype


@dataclass(frozen=True)
class Step:
    """One step of the pipeline DAG."""

    name: str
    """The step's name (`--from`, `--only`, the plan, its folder under the pipeline's out)."""
    depends_on: tuple[str, ...]
    """Steps whose outputs it reads; a changed one makes this step rerun."""
    config: Callable[[PipelineConfig, dict[str, str]], Any]
    """Its validated config from the pipeline's config and its inputs' outputs (step name → path)."""
    run: Callable[[Any], str]
    """Runs its flow on that config; returns the output path later steps read (imports Prefect)."""
    done: Callable[[Any], bool]
    """Its outputs exist and verify."""
    ignored: frozenset[str]
    """Config fields its fingerprint leaves out: they do not change its output (see each list)."""
    version: Callable[[], str]
    """The format of what it writes (a schema or format version constant, not the git hash)."""
    files: Callable[[Any], dict[str, str | None]] = lambda c: {}
    """Input files that are not steps' outputs, by name → sha256 (the QA source, the eval set)."""
    output: str = ""
    """The path later steps read, relative to the step's folder ("" = the folder)."""
    training: bool = False
    """A training stage: resumable on a larger max_steps, redone beside the old run, run in parallel."""
    beside: bool = True
    """A redo writes into `<folder>.new` (its config's `out`) and is renamed into place when finished,
    so the previous output stays usable until then; False: redone in place (a single report file)."""
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    """Whether this pipeline runs the step at all (evaluation needs an eval set)."""
    reduce: Callable[[dict], dict] = lambda data: data
    """Narrows the fingerprint's config further, after `ignored` (the pretraining corpus keeps only the
    preset fields that decide its base LLM)."""

    def normalised(self, step_cfg: Any) -> dict:
        """The step config's fields that decide its output (its fingerprint's `config`)."""
        data = self.reduce(step_cfg.model_dump(exclude=set(self.ignored)))
        if self.training:  # workers/launcher are ignored; the DDP world size they give is not
            data["world_size"] = step_cfg.workers if step_cfg.launcher == "ray" else 1
            frozen = resolve_load_dtype(step_cfg.load_dtype, step_cfg.use_gpu)
            if frozen != "float32":  # bf16 frozen weights change the numbers; float32 is what runs always had
                data["frozen_dtype"] = frozen
        return data


# ------------------------------------------------------------------ done checks
def corpus_done(c: BuildCorpusConfig) -> bool:
    """The corpus exists, its shards verify, and it was built from this config and source."""
    from tasks import build_corpus as stages
    from tasks.shards import load_manifest, verify_manifest

    out = Path(c.out)
    manifest = load_manifest(out)
    build_json = stages.BuildPaths(out).build_json
    if manifest is None or verify_manifest(out, manifest) or not build_json.exists():
        return False
    recorded = json.loads(build_json.read_text())
    return manifest.get("config_hash") == recorded["hash"] == stages.config_hash(
        c, recorded["source_sha256"]) and Path(c.source).exists()


def training_done(tc: TrainFlowConfig) -> bool:
    """The run finished its steps and its final checkpoint verifies (found by name under the run
    folder, so a run trained beside the old one and renamed into place still verifies)."""
    from tasks.checkpoint import verify_checkpoint

    summary_path = Path(tc.out) / "summary.json"
    if not summary_path.exists() or not (Path(tc.out) / "model" / "config.json").exists():
        return False
    try:
        summary = json.loads(summary_path.read_text())
        verify_checkpoint(Path(tc.out) / "checkpoints" / Path(summary["checkpoint"]).name)
    except Exception:  # any failure to verify means: redo the step
        return False
    return int(summary["steps"]) >= tc.max_steps


def labels_done(out: Path) -> bool:
    """The echo labels exist and every shard verifies."""
    from tasks.shards import load_manifest, verify_manifest

    manifest = load_manifest(out)
    return manifest is not None and not verify_manifest(out, manifest)


def llm_answers_done(out: Path) -> bool:
    """The LLM's answers exist and are the file their summary was written with."""
    from tasks.llm_answers import llm_answers_done as done

    return done(out)


def report_done(out: Path) -> bool:
    """The evaluation report exists and is a finished JSON report."""
    try:
        return "summary" in json.loads(Path(out).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def _sha(path: str | None) -> str | None:
    """sha256 of an input file or folder (None when not given)."""
    if path is None:
        return None
    from tasks.corpus_plan import source_digest

    return source_digest(Path(path)) if Path(path).exists() else "missing"


# ------------------------------------------------------------------ run functions (Prefect inside)
def _run_corpus(c: BuildCorpusConfig) -> str:
    from flows.build_corpus import build_corpus

    return build_corpus(config=c)


def _run_llm_answers(c: Any) -> str:
    from flows.llm_answers import llm_answers

    return llm_answers(config=c)


def _llm_answers_version() -> str:
    from tasks.llm_answers import FORMAT_VERSION

    return f"llm answers {FORMAT_VERSION}"


def _corpus_files(c: BuildCorpusConfig) -> dict[str, str | None]:
    """The corpus's input files: the QA source (unless the llm-answers step wrote it: that step's
    fingerprint stands for it) and the codebook."""
    source = None if is_llm_answers_source(c.source) else _sha(c.source)
    return {"source": source, "codebook": _sha(c.codebook)}


def _run_pretrain_corpus(c: PretrainCorpusConfig) -> str:
    """Generate the text set (tasks/pretrain_text.py) from the QA source and the base LLM's tokenizer,
    then build its corpus."""
    from core import runtime
    from flows.build_corpus import build_corpus
    from models.llm import load_tokenizer, prepare_base_llm
    from models.presets import resolve_preset
    from tasks.pretrain_text import TextOptions, write_pretraining_text
    from tasks.train_stage import check_encoder_preset

    preset = resolve_preset(c.preset, **c.preset_overrides)
    check_encoder_preset("encoder", preset)
    cache = Path(c.cache_dir) if c.cache_dir else runtime.state_dir() / "models"
    llm_dir = prepare_base_llm(preset, corpus_texts=None, cache_dir=cache, seed=c.seed)
    options = TextOptions(words=c.words, repeats=c.repeats, min_words=c.min_words, max_words=c.max_words,
                          seed=c.seed)
    write_pretraining_text(Path(c.qa_source), load_tokenizer(llm_dir), Path(c.source), options)
    return build_corpus(config=c.corpus_config())


def _base_llm_only(data: dict) -> dict:
    """The pretraining corpus reads the preset only through its base LLM's tokenizer: its fingerprint keeps
    the fields that build that LLM (models/llm.py `base_llm_key`) instead of the preset and its overrides,
    so a change of the encoder or adapter sizes keeps the synthesized speech."""
    from models.llm import base_llm_key
    from models.presets import resolve_preset

    preset = resolve_preset(data.pop("preset"), **data.pop("preset_overrides"))
    return {**data, "base_llm": base_llm_key(preset)}


def _without_preset_fields(fields: frozenset[str]) -> Callable[[dict], dict]:
    """A fingerprint reduction that leaves `fields` (preset fields, models/presets.py DECODE_FIELDS,
    PROMPT_FIELDS, STAGE_THREE_FIELDS) out of the config's preset_overrides: a step that never reads them
    keeps its output when only they change."""

    def reduce(data: dict) -> dict:
        overrides = data.get("preset_overrides")
        if isinstance(overrides, dict):
            data = {**data, "preset_overrides": {k: v for k, v in overrides.items() if k not in fields}}
        return data

    return reduce


_NO_SPEECH_LLM = _without_preset_fields(DECODE_FIELDS | PROMPT_FIELDS | STAGE_THREE_FIELDS)
"""Steps that never run a speech model's LLM input (encoder pretraining, T2C, the vocoder, the base LLM's
answers, the text row): switching the character CTC's decoder, the speech model's system prompt or stage
III's options keeps them."""
_STAGE_ONE = _without_preset_fields(STAGE_THREE_FIELDS)
"""Stage I: stage III's options keep it (and what reads it alone: echo labels, its evaluation)."""


def _text_row(data: dict) -> dict:
    """The text LLM's evaluation: `_NO_SPEECH_LLM`, and one-at-a-time answering (batch_size 1) left out, so
    a report made before the option existed is kept."""
    data = _NO_SPEECH_LLM(data)
    return {k: v for k, v in data.items() if not (k == "batch_size" and v == 1)}


def _pretrain_version() -> str:
    from data_specs.corpus import SCHEMA_VERSION
    from tasks.pretrain_text import FORMAT_VERSION

    return f"corpus schema {SCHEMA_VERSION}, pretraining text {FORMAT_VERSION}"


def _run_labels(c: Any) -> str:
    from flows.echo_labels import echo_labels

    return echo_labels(config=c)


def _run_baseline_labels(c: Any) -> str:
    from flows.baseline_labels import baseline_labels

    return baseline_labels(config=c)


def _run_training(tc: TrainFlowConfig) -> str:
    from flows.train import train

    return train(cfg=tc)


def _run_evaluate(c: Any) -> str:
    from flows.evaluate import evaluate

    return str(evaluate(config=c))


def _run_knowledge(c: Any) -> str:
    from flows.knowledge import knowledge

    return knowledge(config=c)


def _knowledge_done(c: Any) -> bool:
    """knowledge.json exists and was built from the reports the run folder holds now."""
    from tasks.knowledge import is_current

    return is_current(Path(c.run), Path(c.out))


def _knowledge_version() -> str:
    from tasks.knowledge import FORMAT

    return f"knowledge {FORMAT}"


def _model_version() -> str:
    from models.io import FORMAT, FORMAT_VERSION
    from tasks.checkpoint import FORMAT as CHECKPOINT_FORMAT

    return f"{FORMAT} {FORMAT_VERSION}, checkpoint {CHECKPOINT_FORMAT}"


def _baseline_labels_version() -> str:
    from tasks.baseline_labels import FORMAT_VERSION

    return f"{_schema('echo_labels')()}, baseline labels {FORMAT_VERSION}"


def _schema(module: str) -> Callable[[], str]:
    def version() -> str:
        import importlib

        return f"{module} schema {importlib.import_module(f'data_specs.{module}').SCHEMA_VERSION}"
    return version


# ------------------------------------------------------------------ ignored fields, per step
CORPUS_IGNORED = frozenset(EXECUTION_FIELDS | {"codebook"})
"""The corpus build's own EXECUTION_FIELDS (also left out of its build hash): where it writes, how many
workers and threads, the Ray address, the reject threshold (it only decides whether the run fails),
--overwrite and progress lines; `source` and `codebook` are paths, fingerprinted by their sha256 instead."""

PRETRAIN_IGNORED = CORPUS_IGNORED | {"qa_source", "cache_dir"}
"""The corpus build's, plus the QA source (a path, fingerprinted by its sha256) and the LLM cache folder;
the generated text is a function of the rest (the preset's tokenizer, the word options, the seed)."""

TRAIN_IGNORED = frozenset({
    "out", "corpus", "echo_labels", "s2t", "t2c",  # paths: their steps' fingerprints stand for them
    "encoder_init",  # a path: the encoder step's fingerprint stands for it
    "resume",  # how the run starts, decided by the planner, not what it trains
    "ray_address",  # where it runs
    "cache_dir",  # where the base LLM is cached; it is built deterministically from the corpus
    "log_every", "publish_every",  # metrics lines and live artifacts only
    "ckpt_every",  # checkpoints resume bit-identically, so their spacing does not change the model
    "workers", "launcher",  # replaced by the DDP world size they give (which does change batches)
    "threads_per_worker", "max_failures",  # CPUs per worker and restarts: how it runs, not what it learns
    "strategy",  # ddp and fsdp average the same gradients over the same batches (only float sums reorder)
    "gradient_checkpointing",  # recomputes the same forward (RNG state kept), trading compute for memory
    "load_dtype",  # replaced by the dtype it resolves to, when that is not float32 (see Step.normalised)
})
"""Training fields that decide how a run is carried out, not the model it ends with."""

LLM_ANSWERS_IGNORED = frozenset({
    "source",  # a path: its sha256 is an input
    "out", "cache_dir",  # where it writes, and where the base LLM is cached (built deterministically)
    "batch_size", "device",  # how the questions are batched and run (greedy answers, up to float sums)
})
"""llm-answers fields that do not change the answers (the preset, the prompt and the length do)."""

LABELS_IGNORED = frozenset({
    "out", "corpus", "s2t", "t2c",  # paths: their steps' fingerprints stand for them
    "workers", "cpus_per_actor", "num_gpus_per_actor", "ray_address",  # scheduling of the actors
    "batch_size",  # rows are labelled independently; the labels' own run hash leaves it out too
    "overwrite", "progress",
    "min_t2c_end_rate", "t2c_check_samples",  # the fail-fast check decides whether it runs, not what
})
"""Echo-labels fields that do not change the labels (its run hash keeps corpus, models, max_units)."""

BASELINE_LABELS_IGNORED = frozenset({
    "out", "corpus", "s2t", "t2c",  # paths: their steps' fingerprints stand for them
    "overwrite", "progress",
})
"""Baseline-labels fields that do not change the labels (max_units, the guard, does)."""

EVALUATE_IGNORED = frozenset({
    "out", "model", "t2c", "vocoder",  # paths: their steps' fingerprints stand for them
    "train_source",  # a path: only the overlap count in the report reads it (the corpus stands for it)
    "eval_set",  # a path: its sha256 is an input
    "audio_cache",  # a content-keyed cache of the spoken questions
    "max_reject_fraction",  # decides only whether the evaluation fails
    "batch_size",  # text mode's alone (speech mode refuses any but 1); evaluate-text keeps it unless 1
})
"""Evaluation fields that do not change the report."""

TEXT_EVALUATE_IGNORED = (EVALUATE_IGNORED - {"batch_size"}) | {"cache_dir"}  # where the base LLM is cached
"""The text LLM's evaluation: also where its base LLM is cached (built deterministically from the preset)."""

KNOWLEDGE_IGNORED = frozenset({"run", "out"})  # paths; the table's inputs are the evaluate steps
"""The knowledge table: nothing but its inputs' reports decides it."""


def _knowledge_on(cfg: PipelineConfig) -> bool:
    """The knowledge experiment runs: a `knowledge:` section and an eval set."""
    return cfg.knowledge is not None and bool(cfg.eval_set)


def training_step(stage: str, depends_on: tuple[str, ...],
                  enabled: Callable[[PipelineConfig], bool] = lambda cfg: True,
                  reduce: Callable[[dict], dict] = lambda data: data) -> Step:
    """The entry of a training stage (a registered stage with a `TrainStep` field of its name in
    PipelineConfig, or a section that SECTION_STAGE maps to one; its inputs come from `stage_inputs`, by
    what the stage registry says it needs)."""
    return Step(stage, depends_on, lambda cfg, done: stage_config(cfg, stage, done), _run_training,
                training_done, TRAIN_IGNORED, _model_version, output="model", training=True,
                enabled=enabled, reduce=reduce)


STEPS: tuple[Step, ...] = (
    # Self-distillation (optional): the base LLM's answers to the training questions become the targets.
    Step("llm-answers", (), llm_answers_config, _run_llm_answers, lambda c: llm_answers_done(Path(c.out)),
         LLM_ANSWERS_IGNORED, _llm_answers_version, files=lambda c: {"source": _sha(c.source)},
         output=LLM_ANSWERS_SOURCE, enabled=lambda cfg: cfg.llm_answers is not None,
         reduce=_NO_SPEECH_LLM),
    Step("corpus", ("llm-answers",), corpus_config, _run_corpus, corpus_done, CORPUS_IGNORED,
         _schema("corpus"), files=_corpus_files),
    Step("pretrain-corpus", (), lambda cfg, done: pretrain_corpus_config(cfg), _run_pretrain_corpus,
         lambda c: corpus_done(c.corpus_config()), PRETRAIN_IGNORED, _pretrain_version,
         files=lambda c: {"qa_source": _sha(c.qa_source)}, enabled=lambda cfg: cfg.encoder is not None,
         reduce=_base_llm_only),
    training_step("encoder", ("pretrain-corpus",), enabled=lambda cfg: cfg.encoder is not None,
                  reduce=_NO_SPEECH_LLM),
    training_step("s2t", ("corpus", "encoder"), reduce=_STAGE_ONE),
    training_step("t2c", ("corpus",), reduce=_NO_SPEECH_LLM),
    training_step("vocoder", ("corpus",), enabled=lambda cfg: cfg.vocoder is not None,
                  reduce=_NO_SPEECH_LLM),
    Step("echo-labels", ("corpus", "s2t", "t2c"), echo_labels_config, _run_labels,
         lambda c: labels_done(Path(c.out)), LABELS_IGNORED, _schema("echo_labels"),
         enabled=lambda cfg: cfg.echo.targets == "offline"),  # online targets are made in the echo step
    training_step("echo", ("corpus", "s2t", "t2c", "echo-labels")),
    Step("evaluate", ("echo", "t2c", "vocoder"), evaluate_config, _run_evaluate,
         lambda c: report_done(Path(c.out)), EVALUATE_IGNORED, _schema("eval_results"),
         files=lambda c: {"eval_set": _sha(c.eval_set)},
         output="report.json", beside=False, enabled=lambda cfg: bool(cfg.eval_set)),
    # The knowledge experiment's no-echo baseline: stage III on the corpus's own answer units.
    Step("baseline-labels", ("corpus", "s2t", "t2c"), baseline_labels_config, _run_baseline_labels,
         lambda c: labels_done(Path(c.out)), BASELINE_LABELS_IGNORED, _baseline_labels_version,
         enabled=lambda cfg: cfg.baseline is not None),
    training_step("baseline", ("corpus", "s2t", "t2c", "baseline-labels"),
                  enabled=lambda cfg: cfg.baseline is not None),
    Step("evaluate-baseline", ("baseline", "t2c", "vocoder"),
         lambda cfg, done: evaluate_config(cfg, done, "baseline"), _run_evaluate,
         lambda c: report_done(Path(c.out)), EVALUATE_IGNORED, _schema("eval_results"),
         files=lambda c: {"eval_set": _sha(c.eval_set)}, output="report.json", beside=False,
         enabled=lambda cfg: cfg.baseline is not None and bool(cfg.eval_set)),
    Step("evaluate-text", (), evaluate_text_config, _run_evaluate, lambda c: report_done(Path(c.out)),
         TEXT_EVALUATE_IGNORED, _schema("eval_results"), files=lambda c: {"eval_set": _sha(c.eval_set)},
         output="report.json", beside=False, enabled=_knowledge_on, reduce=_text_row),
    Step("evaluate-s2t", ("s2t",), evaluate_s2t_config, _run_evaluate, lambda c: report_done(Path(c.out)),
         EVALUATE_IGNORED, _schema("eval_results"), files=lambda c: {"eval_set": _sha(c.eval_set)},
         output="report.json", beside=False,
         enabled=lambda cfg: _knowledge_on(cfg) and cfg.knowledge is not None and cfg.knowledge.s2t),
    # The table of every report of the run folder. Its done check also compares the reports' sha256 with
    # the ones the table was built from (a report rewritten by hand, or by a step not listed here).
    Step("knowledge", ("encoder", "evaluate-text", "evaluate-s2t", "evaluate", "evaluate-baseline"),
         knowledge_config, _run_knowledge, _knowledge_done, KNOWLEDGE_IGNORED, _knowledge_version,
         output="knowledge.json", beside=False, enabled=_knowledge_on),
)
"""In an order where every step comes after the steps it depends on."""

FOLDERS = {"evaluate": "eval", "evaluate-baseline": "eval-baseline", "evaluate-text": "eval-text",
           "evaluate-s2t": "eval-s2t"}
"""Step folders under the pipeline's out that are not named as the step."""


def inputs_of(step: Step, cfg: PipelineConfig) -> tuple[str, ...]:
    """The steps `step` reads in this pipeline: its depends_on that the pipeline runs (the evaluation
    reads the vocoder only when there is one)."""
    return tuple(d for d in step.depends_on if get_step(d).enabled(cfg))


def step_names() -> list[str]:
    """Every step's name, in DAG order (the choices of --from and --only)."""
    return [s.name for s in STEPS]


def get_step(name: str) -> Step:
    """The step called `name`."""
    return next(s for s in STEPS if s.name == name)


def folder(cfg: PipelineConfig, step: Step) -> Path:
    """The step's output folder under the pipeline's out."""
    return Path(cfg.out) / FOLDERS.get(step.name, step.name)


def output_path(cfg: PipelineConfig, step: Step) -> str:
    """The path later steps read from the step (its folder, or a file or folder in it)."""
    base = folder(cfg, step)
    return str(base / step.output) if step.output else str(base)


def downstream(name: str) -> list[str]:
    """`name` and every step that depends on it, directly or not, in DAG order."""
    found = {name}
    for step in STEPS:
        if found & set(step.depends_on):
            found.add(step.name)
    return [s.name for s in STEPS if s.name in found]
