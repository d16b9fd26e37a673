"""The pipeline's config: read from YAML and expanded into each step's validated config (no Prefect import,
so the CLI can refuse a bad config before it starts a server)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

from pydantic import Field, create_model

from core.config import Frozen, build, load_yaml
from core.errors import ConfigError
from tasks.configs import (
    BuildCorpusConfig,
    EchoLabelsConfig,
    EchoStep,
    EvaluateConfig,
    KnowledgeConfig,
    KnowledgeTableConfig,
    LLMAnswersConfig,
    PretrainCorpusConfig,
    TrainFlowConfig,
    TrainStep,
)

# The EchoX DAG's training stages: two independent ones, then echo training, which needs both (the DAG
# itself is flows/pipeline_steps.py: STEPS).
FIRST_STAGES = ("s2t", "t2c")
ECHO_STAGE = "echo"
SECTION_STAGE = {"baseline": ECHO_STAGE}
"""Training sections that train a registered stage of another name: the no-echo baseline is stage III."""
LABELS_STEP = {"baseline": "baseline-labels"}
"""The step whose labels a section's stage reads as its echo labels (any other section: echo-labels)."""


def section(model: type[Frozen], set_by_pipeline: set[str], name: str, doc: str) -> type[Frozen]:
    """A pipeline section's model: the fields of a step's config (types, defaults, descriptions and choices,
    declared once there) less those the pipeline sets itself. The step's own checks run when its config is
    built; only the options a section gives are passed on (`given`), so the step's defaults still apply."""
    unknown = set_by_pipeline - set(model.model_fields)
    if unknown:
        raise ValueError(f"{name}: {model.__name__} has no fields {sorted(unknown)}")
    fields: dict[str, Any] = {n: (f.annotation, copy.copy(f)) for n, f in model.model_fields.items()
                              if n not in set_by_pipeline}
    return create_model(name, __base__=Frozen, __doc__=doc, **fields)


def given(options: Frozen) -> dict[str, Any]:
    """The options a section sets (in the config file or the form), without the defaults it did not."""
    return options.model_dump(exclude_unset=True)


CorpusOptions = section(BuildCorpusConfig, {"source", "out", "seed", "ray_address", "codebook"},
                        "CorpusOptions", "build-corpus options of the pipeline's corpus step.")
PretrainOptions = section(PretrainCorpusConfig, {"source", "qa_source", "out", "seed", "ray_address",
                                                 "preset", "preset_overrides"},
                          "PretrainOptions", "The encoder-pretraining corpus: its text and build options.")
EchoLabelsOptions = section(EchoLabelsConfig, {"corpus", "s2t", "t2c", "out", "ray_address"},
                            "EchoLabelsOptions", "echo-labels options of the pipeline's echo-labels step.")
LLMAnswersOptions = section(LLMAnswersConfig, {"source", "out", "preset", "preset_overrides"},
                            "LLMAnswersOptions", "The llm-answers step: how the base LLM answers the "
                            "training questions (prompt and length default to the evaluation's).")
EvaluateOptions = section(EvaluateConfig, {"mode", "model", "preset", "preset_overrides", "t2c", "eval_set",
                                           "out", "train_source"},
                          "EvaluateOptions", "Evaluation options of the pipeline's evaluate steps.")


class PipelineConfig(Frozen):
    """The whole DAG: corpus → units → stage I ∥ stage II → echo labels → echo training → evaluation."""

    source: str = Field(description="QA source (JSONL, Parquet or datasets directory).")
    eval_set: str | None = Field(None, description="Held-out eval JSONL (id, question, answers/aliases).")
    out: str = Field(description="Pipeline output directory (one folder per step).")
    corpus: CorpusOptions = Field(default_factory=CorpusOptions,  # type: ignore[valid-type]
                                  description="build-corpus options (tts, num_units, shard_size, workers, "
                                  "...).")
    codebook: str | None = Field(None, description="Reuse this codebook instead of fitting one.")
    preset: str = Field("tiny", description="Model preset for all stages.")
    preset_overrides: dict = Field(default_factory=dict, description="Preset fields to override.")
    s2t: TrainStep = Field(default_factory=TrainStep, description="Stage I (speech → text).")
    t2c: TrainStep = Field(default_factory=TrainStep, description="Stage II (text → units).")
    echo: EchoStep = Field(default_factory=EchoStep, description="Stage III (echo training); `targets` says "
                           "whether its units are the echo-labels step's (offline) or made in each step "
                           "(online).")
    vocoder: TrainStep | None = Field(None, description="The unit vocoder (units → speech), trained on the "
                                      "corpus beside stages I and II; the evaluation then scores the spoken "
                                      "answers (speech-to-speech accuracy with the ASR ceiling). None: no "
                                      "vocoder step.")
    encoder: TrainStep | None = Field(None, description="Encoder pretraining (CTC over the LLM's tokens) on "
                                      "a generated speech corpus, before stage I, which starts from its "
                                      "encoder and adapter. None: stage I starts from random init.")
    pretrain: PretrainOptions = Field(  # type: ignore[valid-type]
        default_factory=PretrainOptions, description="The encoder-pretraining corpus: text options "
                           "(words, repeats, min_words, max_words) and build-corpus options (tts, voices, "
                           "workers, ...); build options not given are the `corpus:` section's.")
    baseline: TrainStep | None = Field(None, description="The no-echo baseline of the knowledge experiment: "
                                       "stage III trained on the corpus's own answer units (baseline-labels) "
                                       "instead of echo pseudo-labels; set the same steps as `echo`. "
                                       "Evaluated into eval-baseline/ like the echo model. None: no baseline "
                                       "steps.")
    llm_answers: LLMAnswersOptions | None = Field(  # type: ignore[valid-type]
        None, description="Self-distillation: the preset's base LLM answers the source's written questions "
        "(step llm-answers) and the corpus is built from its answers instead of the source's, so stage I "
        "learns to answer a spoken question as the LLM answers the written one. None: the source's answers.")
    echo_labels: EchoLabelsOptions = Field(default_factory=EchoLabelsOptions,  # type: ignore[valid-type]
                                           description="echo-labels options (workers, batch_size, "
                                           "max_units, ...).")
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions,  # type: ignore[valid-type]
                                      description="evaluation options (tts, limit, ...).")
    knowledge: KnowledgeConfig | None = Field(None, description="The knowledge experiment (with eval_set): "
                                              "the text LLM on the written questions (evaluate-text), the "
                                              "S2T checkpoint on the spoken ones (evaluate-s2t) and the "
                                              "table of every report (knowledge). None: none of them.")
    parallel_training: bool | None = Field(None, description="Train stages I and II at once; default: "
                                           "when the Ray cluster has the CPUs/GPUs for both.")
    ray_address: str | None = Field(None, description="Existing Ray cluster for every step.")
    seed: int = Field(0, description="Seed for every step.")


def _is_train_step(annotation: Any) -> bool:
    """A section annotated `TrainStep`, a subclass of it (`EchoStep`), or either `| None`."""
    return any(isinstance(t, type) and issubclass(t, TrainStep) for t in (annotation, *get_args(annotation)))


def training_sections(cfg: PipelineConfig | None = None) -> list[str]:
    """The PipelineConfig sections that configure a training stage (its `TrainStep` fields; with `cfg`,
    only those it sets: an optional stage such as the vocoder is left out when its section is None)."""
    names = [name for name, f in PipelineConfig.model_fields.items() if _is_train_step(f.annotation)]
    return names if cfg is None else [n for n in names if getattr(cfg, n) is not None]


def planned_outputs(cfg: PipelineConfig) -> dict[str, str]:
    """Where each step will write its output under `cfg.out` (the input paths `validate` checks with,
    before any step has run; a running pipeline uses what each step returned instead)."""
    out = Path(cfg.out)
    return {"llm-answers": str(out / LLM_ANSWERS / LLM_ANSWERS_SOURCE),
            "corpus": str(out / "corpus"), "pretrain-corpus": str(out / "pretrain-corpus"),
            **{s: str(out / s / "model") for s in training_sections(cfg)},
            "echo-labels": str(out / "echo-labels"), "baseline-labels": str(out / "baseline-labels")}


LLM_ANSWERS = "llm-answers"
"""The llm-answers step's folder (and name)."""
LLM_ANSWERS_SOURCE = "source.jsonl"
"""Its output: the QA source with the base LLM's answers (tasks/llm_answers.py SOURCE_FILE)."""


def corpus_source(cfg: PipelineConfig, done: dict[str, str]) -> str:
    """The QA source the corpus speaks: the llm-answers step's output when the pipeline has one."""
    return done.get(LLM_ANSWERS, str(Path(cfg.out) / LLM_ANSWERS / LLM_ANSWERS_SOURCE)) \
        if cfg.llm_answers is not None else cfg.source


def is_llm_answers_source(path: str) -> bool:
    """A corpus source that the llm-answers step wrote (its fingerprint, not the file's sha, stands for it:
    the file does not exist yet when the pipeline plans)."""
    return Path(path).parent.name == LLM_ANSWERS and Path(path).name == LLM_ANSWERS_SOURCE


def llm_answers_config(cfg: PipelineConfig, done: dict[str, str]) -> LLMAnswersConfig:
    """The llm-answers step's config: the pipeline's preset (and overrides) answer the source's questions
    with the evaluation's system prompt and length unless `llm_answers:` sets its own."""
    from tasks.eval_text import check_text_llm

    data = {"source": cfg.source, "out": str(Path(cfg.out) / LLM_ANSWERS), "preset": cfg.preset,
            "preset_overrides": cfg.preset_overrides,
            **_options(cfg, ("system_prompt", "max_new_tokens", "device", "cache_dir")),
            **given(cfg.llm_answers or LLMAnswersOptions())}
    config = build(LLMAnswersConfig, data, "pipeline.llm_answers")
    try:
        check_text_llm(model=None, preset=cfg.preset, overrides=cfg.preset_overrides)
    except ConfigError as e:
        raise ConfigError(f"pipeline.llm_answers: {e}") from e
    return config  # type: ignore[return-value]


def corpus_config(cfg: PipelineConfig, done: dict[str, str] | None = None) -> BuildCorpusConfig:
    """The corpus step's config (options from `corpus:`; its source from `corpus_source`)."""
    data = {"source": corpus_source(cfg, done or {}), "out": str(Path(cfg.out) / "corpus"), "seed": cfg.seed,
            "ray_address": cfg.ray_address, "codebook": cfg.codebook, **given(cfg.corpus)}
    return build(BuildCorpusConfig, data, "pipeline.corpus")  # type: ignore[return-value]


PRETRAIN_TEXT = "pretrain-text.jsonl"
"""The generated text set, beside the step folders (a corpus refuses a source inside its own folder)."""


PRETRAIN_INHERITS = frozenset({"tts", "voices", "workers", "shard_size", "threads_per_worker", "lang",
                               "max_chars", "max_question_seconds", "max_answer_seconds",
                               "max_reject_fraction"})
"""The `corpus:` options the pretraining corpus takes over: how it speaks and schedules. Not the units (the
encoder reads speech and text only; its corpus keeps the cheap default units) nor the ASR gate."""


def pretrain_corpus_config(cfg: PipelineConfig) -> PretrainCorpusConfig:
    """The encoder-pretraining corpus step's config: `pretrain:` over the `corpus:` speech options."""
    build_options = {k: v for k, v in given(cfg.corpus).items() if k in PRETRAIN_INHERITS}
    data = {**build_options, "qa_source": cfg.source, "source": str(Path(cfg.out) / PRETRAIN_TEXT),
            "out": str(Path(cfg.out) / "pretrain-corpus"), "seed": cfg.seed, "ray_address": cfg.ray_address,
            "preset": cfg.preset, "preset_overrides": cfg.preset_overrides, **given(cfg.pretrain)}
    return build(PretrainCorpusConfig, data, "pipeline.pretrain")  # type: ignore[return-value]


CORPUS_OF = {"encoder": "pretrain-corpus"}
"""Training stages that read another corpus than the QA corpus (step name)."""


def stage_config(cfg: PipelineConfig, section: str, done: dict[str, str]) -> TrainFlowConfig:
    """The training step's config for `section` (a stage's name, or a section in SECTION_STAGE), its inputs
    taken from the steps `done` (name → output); it resumes the checkpoints a killed run of the step left."""
    step: TrainStep = getattr(cfg, section)
    stage = step.stage() if isinstance(step, EchoStep) else SECTION_STAGE.get(section, section)
    out = Path(cfg.out) / section
    data = {"stage": stage, "corpus": done[CORPUS_OF.get(section, "corpus")], "out": str(out),
            "preset": cfg.preset, "preset_overrides": cfg.preset_overrides, "seed": cfg.seed,
            "ray_address": cfg.ray_address, "resume": (out / "checkpoints").is_dir(),
            # Only the TrainStep options: a section's own fields (echo's `targets`) chose the stage above.
            **step.model_dump(include=set(TrainStep.model_fields)),
            **stage_inputs(stage, done, labels=LABELS_STEP.get(section, "echo-labels"))}
    return build(TrainFlowConfig, data, f"pipeline.{section}")  # type: ignore[return-value]


def stage_inputs(stage: str, done: dict[str, str], labels: str = "echo-labels") -> dict[str, str]:
    """What `stage` needs (models/stages.py: echo labels, stage checkpoints), from the steps' outputs
    (`labels`: the step whose output are its echo labels)."""
    from models.stages import get_stage

    sources = {"echo_labels": labels, "s2t": "s2t", "t2c": "t2c"}
    spec = get_stage(stage)
    inputs = {need: done[step] for need, step in sources.items() if need in spec.needs}
    if "encoder_init" in spec.options and "encoder" in done:  # stage I starts from the pretrained encoder
        inputs["encoder_init"] = done["encoder"]
    return inputs


def echo_labels_config(cfg: PipelineConfig, done: dict[str, str]) -> Any:
    """The echo-labels step's config (options from `echo_labels:`), on the outputs of corpus, I and II."""
    data = {"corpus": done["corpus"], "s2t": done["s2t"], "t2c": done["t2c"],
            "out": str(Path(cfg.out) / "echo-labels"), "ray_address": cfg.ray_address,
            **given(cfg.echo_labels)}
    return build(EchoLabelsConfig, data, "pipeline.echo_labels")


def baseline_labels_config(cfg: PipelineConfig, done: dict[str, str]) -> Any:
    """The baseline-labels step's config, on the outputs of corpus, I and II, with echo labels' guard."""
    from tasks.configs import BaselineLabelsConfig

    data = {"corpus": done["corpus"], "s2t": done["s2t"], "t2c": done["t2c"],
            "out": str(Path(cfg.out) / "baseline-labels"),
            "max_units": echo_labels_config(cfg, done).max_units}  # the same guard as the echo labels'
    return build(BaselineLabelsConfig, data, "pipeline.baseline")


def evaluate_config(cfg: PipelineConfig, done: dict[str, str], model: str = ECHO_STAGE) -> Any:
    """The evaluation step's config (options from `evaluate:`), on the `model` step's checkpoint (the echo
    model, into eval/; the baseline, into eval-baseline/) and the T2C. Every evaluation reads the spoken
    questions and reference answers of eval/'s TTS cache (unless `evaluate.audio_cache` names another), so
    the knowledge table's rows hear the same audio and share one ASR ceiling."""
    folder = "eval" if model == ECHO_STAGE else f"eval-{model}"
    data = {"model": done[model], "t2c": done["t2c"], "eval_set": cfg.eval_set,
            "out": str(Path(cfg.out) / folder / "report.json"), "train_source": cfg.source,
            "audio_cache": str(Path(cfg.out) / "eval" / "tts-cache"),
            **({"vocoder": done["vocoder"]} if "vocoder" in done else {}), **given(cfg.evaluate)}
    return build(EvaluateConfig, data, "pipeline.evaluate")


TEXT_OPTIONS = ("system_prompt", "max_new_tokens", "limit", "device", "max_reject_fraction", "cache_dir")
"""The `evaluate:` options that apply to the text LLM's written questions."""
S2T_OPTIONS = ("tts", "voices", "seed", "max_new_tokens", "limit", "device", "audio_cache",
               "max_reject_fraction")
"""The `evaluate:` options that apply to the S2T checkpoint's spoken questions (no units, no vocoder)."""


def _options(cfg: PipelineConfig, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in given(cfg.evaluate).items() if k in names}


def evaluate_text_config(cfg: PipelineConfig, done: dict[str, str]) -> Any:
    """The evaluate-text step's config: the written questions into the base LLM of `knowledge.text_preset`
    (default: the pipeline's preset, with its overrides); ConfigError for a random-init LLM."""
    from tasks.eval_text import check_text_llm

    knowledge = cfg.knowledge or KnowledgeConfig()
    preset = knowledge.text_preset or cfg.preset
    overrides = cfg.preset_overrides if preset == cfg.preset else {}
    data = {"mode": "text", "preset": preset, "preset_overrides": overrides, "eval_set": cfg.eval_set,
            "out": str(Path(cfg.out) / "eval-text" / "report.json"), "train_source": cfg.source,
            "batch_size": knowledge.text_batch_size, **_options(cfg, TEXT_OPTIONS)}
    config = build(EvaluateConfig, data, "pipeline.knowledge")
    try:
        check_text_llm(model=None, preset=preset, overrides=overrides)
    except ConfigError as e:
        raise ConfigError(f"pipeline.knowledge: {e}; name one in knowledge.text_preset") from e
    return config


def evaluate_s2t_config(cfg: PipelineConfig, done: dict[str, str]) -> Any:
    """The evaluate-s2t step's config: the spoken questions into the stage-I checkpoint (their speech from
    the evaluation's TTS cache unless `evaluate.audio_cache` names another)."""
    data = {"model": done["s2t"], "eval_set": cfg.eval_set, "train_source": cfg.source,
            "out": str(Path(cfg.out) / "eval-s2t" / "report.json"),
            "audio_cache": str(Path(cfg.out) / "eval" / "tts-cache"), **_options(cfg, S2T_OPTIONS)}
    return build(EvaluateConfig, data, "pipeline.evaluate")


def knowledge_config(cfg: PipelineConfig, done: dict[str, str]) -> KnowledgeTableConfig:
    """The knowledge step's config: the table of the run folder's reports, in `<out>/knowledge/`."""
    return KnowledgeTableConfig(run=cfg.out, out=str(Path(cfg.out) / "knowledge"))


def validate(cfg: PipelineConfig) -> None:
    """Build every step's config up front, so a bad field fails before any work (naming the field)."""
    planned = planned_outputs(cfg)
    if cfg.llm_answers is not None:
        llm_answers_config(cfg, planned)
    corpus_config(cfg, planned)
    if cfg.encoder is not None:
        from models.presets import resolve_preset
        from tasks.train_stage import check_encoder_preset

        pretrain_corpus_config(cfg)
        check_encoder_preset("encoder", resolve_preset(cfg.preset, **cfg.preset_overrides))
    for stage in training_sections(cfg):
        stage_config(cfg, stage, planned)
    echo_labels_config(cfg, planned)
    if cfg.baseline is not None:
        baseline_labels_config(cfg, planned)
    if cfg.eval_set:
        evaluate_config(cfg, planned)
    if cfg.eval_set and cfg.knowledge is not None:
        evaluate_text_config(cfg, planned)
        evaluate_s2t_config(cfg, planned)


def load_pipeline_config(path: Path, **overrides: Any) -> PipelineConfig:
    """A pipeline config from YAML (unknown or bad fields are named in the error)."""
    data = {**load_yaml(path), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = build(PipelineConfig, data, str(path))
    validate(cfg)  # type: ignore[arg-type]
    return cfg  # type: ignore[return-value]
