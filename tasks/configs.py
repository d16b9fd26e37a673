"""The steps' parameters as pydantic models: validated before a run, rendered as forms in the Prefect UI.

Each option is declared once here, with its default and description; the CLI is generated from these."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.config import Frozen
from tasks.backends import FEATURE_EXTRACTORS, RECOGNISERS, TTS_ENGINES, Choice, Registry

# Options that change how a build runs but not what it produces; left out of the config hash.
EXECUTION_FIELDS = {"out", "source", "workers", "ray_address", "overwrite", "threads_per_worker",
                    "max_reject_fraction", "progress"}
# The ASR gate's options: part of the config hash only when the gate is on, so a build without it
# keeps the hash (and the bytes) it had before they existed.
ASR_GATE_FIELDS = {"asr_check", "asr", "max_asr_wer"}


def registered(registry: Registry, name: str) -> str:
    """`name` if `registry` holds it; else a ValueError naming the known ones (pydantic reports it)."""
    if name not in registry:
        raise ValueError(registry.unknown(name))
    return name


def tts_field(description: str) -> Any:
    """A TTS engine name field: validated against TTS_ENGINES, its names shown as choices in the UI."""
    return Field("piper", description=description, json_schema_extra={"enum": TTS_ENGINES.names()})


def units_field(description: str) -> Any:
    """A feature extractor name field: validated against FEATURE_EXTRACTORS, names shown as choices."""
    return Field("mfcc", description=description, json_schema_extra={"enum": FEATURE_EXTRACTORS.names()})


class BuildCorpusConfig(Frozen):
    """Parameters of the corpus build: QA text → speech → units → Arrow shards."""

    path_fields: ClassVar[tuple[str, ...]] = ("source", "out", "codebook", "feature_checkpoint")

    source: str = Field(description="QA source: a JSONL file, a Parquet file or a datasets directory.")
    out: str = Field(description="Output corpus directory (opens with datasets.load_from_disk).")
    tts: str = tts_field("TTS engine.")
    voices: list[str] | None = Field(None, description="Voices to choose from per record (seeded); "
                                     "default: the engine's configured list.")
    units: str = units_field("Frame features for the units.")
    feature_checkpoint: str | None = Field(None, description="Local wav2vec2/HuBERT checkpoint "
                                           "(fairseq2 or fairseq .pt) for --units wav2vec2.")
    feature_layer: int = Field(11, ge=1, description="Encoder layer whose output is clustered (1-based).")
    feature_arch: str = Field("base", description="fairseq2 wav2vec2 architecture of the checkpoint.")
    num_units: int = Field(100, ge=2, le=65536, description="K of the k-means codebook (paper: 1000).")
    kmeans_max_frames: int = Field(100_000, ge=1, description="Frames sampled for the k-means fit.")
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations of the k-means fit.")
    codebook: str | None = Field(None, description="Reuse this codebook.npz instead of fitting one.")
    shard_size: int = Field(32, ge=1, description="Most records per shard (one coarse task each); the "
                            "records are split into that many even shards (a count that is a multiple "
                            "of the workers keeps them all busy to the end).")
    workers: int = Field(2, ge=1, description="Parallel Ray workers (local Ray) for the shard tasks.")
    threads_per_worker: int | None = Field(None, ge=1, description="Compute threads per worker "
                                           "(default: cores // workers).")
    ray_address: str | None = Field(None, description="Address of an existing Ray cluster ('auto', "
                                    "'ray://host:10001', 'host:6379'); default: start Ray locally.")
    max_chars: int = Field(600, ge=1, description="Longest spoken text accepted (characters).")
    max_question_seconds: float = Field(30.0, gt=0, description="Longest question audio (the speech "
                                        "encoder's window).")
    max_answer_seconds: float = Field(30.0, gt=0, description="Longest answer audio.")
    lang: str = Field("en", description="Language of the text normaliser.")
    seed: int = Field(0, description="Seed for voice choice and the k-means fit.")
    max_reject_fraction: float = Field(0.25, ge=0, le=1, description="Fail the run when more than this "
                                       "fraction of records is rejected.")
    overwrite: bool = Field(False, description="Replace an output directory holding a different build.")
    progress: bool = Field(True, description="Print per-shard progress to the terminal.")
    asr_check: bool = Field(False, description="Transcribe every question and answer with the "
                            "recogniser (--asr) and add the columns question/answer_asr_text and "
                            "question/answer_asr_wer (word error rate against the spoken text).")
    asr: str = Field("pocketsphinx", description="Recogniser of --asr-check.",
                     json_schema_extra={"enum": RECOGNISERS.names()})
    max_asr_wer: float | None = Field(None, ge=0, description="With --asr-check: reject a record whose "
                                      "question or answer word error rate is above this (0 = heard exactly).")

    @field_validator("tts")
    @classmethod
    def _tts_known(cls, name: str) -> str:
        return registered(TTS_ENGINES, name)

    @field_validator("units")
    @classmethod
    def _units_known(cls, name: str) -> str:
        return registered(FEATURE_EXTRACTORS, name)

    @field_validator("asr")
    @classmethod
    def _asr_known(cls, name: str) -> str:
        return registered(RECOGNISERS, name)

    @model_validator(mode="after")
    def _asr_options_need_the_check(self) -> BuildCorpusConfig:
        """--max-asr-wer and --asr only act with --asr-check; without it they would be silently ignored."""
        if not self.asr_check:
            fields = type(self).model_fields
            given = [f for f in ("max_asr_wer", "asr") if getattr(self, f) != fields[f].default]
            if given:
                flags = ", ".join(f"{f} (--{f.replace('_', '-')})" for f in given)
                raise ValueError(f"{flags} needs asr_check (--asr-check)")
        return self

    def content_hash_fields(self) -> dict:
        """The fields that decide the build's content (for the config hash)."""
        return self.model_dump(exclude=EXECUTION_FIELDS | (set() if self.asr_check else ASR_GATE_FIELDS))

    def asr_choice(self) -> Choice | None:
        """The recogniser of --asr-check and its options; None when the gate is off."""
        return RECOGNISERS.choose(self.asr, self) if self.asr_check else None

    def tts_choice(self) -> Choice:
        """The selected TTS engine and its options, built from the flat fields."""
        return TTS_ENGINES.choose(self.tts, self)

    def feature_choice(self) -> Choice:
        """The selected feature extractor and its options, built from the flat fields."""
        return FEATURE_EXTRACTORS.choose(self.units, self)


class PretrainCorpusConfig(BuildCorpusConfig):
    """The encoder-pretraining corpus: a text set generated from the QA source and the base LLM's
    tokenizer (tasks/pretrain_text.py), written to `source`, then built like any corpus."""

    qa_source: str = Field(description="The QA source whose questions and answers the text set includes.")
    preset: str = Field("tiny", description="Model preset whose base LLM tokenizer gives the words.")
    preset_overrides: dict = Field(default_factory=dict, description="Preset fields to override.")
    cache_dir: str | None = Field(None, description="Where base LLM directories are built and cached "
                                  "(default: the state folder).")
    words: int = Field(3000, ge=0, description="The tokenizer's most frequent whole-word tokens to speak.")
    repeats: int = Field(4, ge=1, description="Times each of those words is spoken.")
    min_words: int = Field(5, ge=1, description="Shortest generated sentence (words).")
    max_words: int = Field(9, ge=1, description="Longest generated sentence (words).")

    @model_validator(mode="after")
    def _sentence_lengths(self) -> PretrainCorpusConfig:
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        return self

    def corpus_config(self) -> BuildCorpusConfig:
        """The plain build-corpus config of the generated source."""
        return BuildCorpusConfig(**self.model_dump(include=set(BuildCorpusConfig.model_fields)))


SYSTEM_PROMPT = "Answer the question in one short sentence."
"""The system turn the text LLM answers under (its knowledge row, and its own answers as training targets)."""


class LLMAnswersConfig(Frozen):
    """Self-distillation targets: the base LLM of `preset` answers the training source's written questions,
    greedily, and its answers replace the source's (tasks/llm_answers.py); the corpus is built from them."""

    source: str = Field(description="The QA source whose questions the LLM answers.")
    out: str = Field(description="Folder of source.jsonl (the source with the LLM's answers), rejects.jsonl "
                     "and summary.json.")
    preset: str = Field("tiny", description="Model preset whose base instruct LLM answers (a real LLM).")
    preset_overrides: dict = Field(default_factory=dict, description="Preset fields to override.")
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="System turn of the chat prompt (empty: "
                                      "none); by default the evaluation's, so the targets are what the "
                                      "knowledge table's text-LLM row measures.")
    max_new_tokens: int = Field(64, ge=1, description="Longest answer (text tokens); by default the "
                                "evaluation's.")
    first_sentence: bool = Field(True, description="Keep each answer's first sentence (what the prompt asks "
                                 "for; a small LLM often goes on, and every word is speech to synthesize and "
                                 "sequence to train on).")
    batch_size: int = Field(16, ge=1, description="Questions generated together (left-padded).")
    device: str = Field("cpu", description="Torch device of the LLM (cpu, cuda, cuda:1).")
    cache_dir: str | None = Field(None, description="Where base LLM directories are built and cached "
                                  "(default: the state folder).")


class TrainStep(Frozen):
    """Training options of one pipeline stage."""

    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Examples per worker per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    workers: int = Field(2, ge=1, description="DDP workers.")
    use_gpu: bool = Field(False, description="Train on GPUs.")
    launcher: Literal["ray", "local"] = Field("ray", description="Ray Train or one local process.")
    threads_per_worker: int | None = Field(None, ge=1, description="CPUs each Ray worker reserves and uses "
                                           "(default: the Ray's CPUs shared among the workers).")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts after a lost worker (each resumes).")
    log_every: int = Field(10, ge=1, description="Steps between metrics lines.")
    publish_every: int = Field(50, ge=1, description="Steps between refreshes of the loss-curve and "
                               "metrics artifacts while the stage trains (the progress artifact follows "
                               "every metrics line).")
    ckpt_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    unit_vocab_size: int = Field(0, ge=0, description="T2C target vocabulary: 0 = raw units; N > K = a BPE "
                                 "unit language of N unit-words trained on the corpus's answer units")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="How the workers hold the model: ddp = a "
                                             "whole copy each; fsdp = parameters, gradients and optimizer "
                                             "state sharded across them (FSDP2, one group per transformer "
                                             "block), with sharded checkpoints. fsdp needs launcher ray and "
                                             "workers >= 2.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each transformer block's activations in the backward pass instead of "
        "keeping them (LLM, Whisper encoder, T2C decoder): far less activation memory for about a third more "
        "compute.")
    load_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the frozen weights (the base LLM, a frozen encoder), loaded as such: "
        "auto = bfloat16 with use_gpu, float32 on CPU. Trained parameters stay float32.")

    @model_validator(mode="after")
    def _strategy_fits(self) -> TrainStep:
        """fsdp shards across ranks (one process has nothing to shard with); bf16 weights need a GPU."""
        if self.strategy == "fsdp" and (self.launcher != "ray" or self.workers < 2):
            raise ValueError(f"strategy fsdp shards across workers: it needs launcher ray and workers >= 2 "
                             f"(got launcher {self.launcher}, workers {self.workers}); use strategy ddp")
        if self.load_dtype == "bfloat16" and not self.use_gpu:
            raise ValueError("load_dtype bfloat16 needs use_gpu (CPU training runs in float32)")
        return self


ECHO_TARGET_STAGES = {"offline": "echo", "online": "echo-online"}
"""Stage III's registered stage for each kind of echo targets."""


class EchoStep(TrainStep):
    """Training options of stage III, and where its unit targets come from."""

    targets: Literal["offline", "online"] = Field(
        "offline", description="offline = echo pseudo-labels made once from the stage-I model (the "
        "echo-labels step), the fast option; online = made in every step from the current S2T's Y′ by a "
        "frozen copy of the stage-II model, as the paper trains (no echo-labels step; slower steps).")

    def stage(self) -> str:
        """The registered stage these options train."""
        return ECHO_TARGET_STAGES[self.targets]


def _stage_choices(schema: dict[str, Any]) -> None:
    """The registered stages as the field's JSON-schema enum (the Prefect form), read when it is made."""
    from models.stages import stage_names

    schema["enum"] = list(stage_names())


class TrainFlowConfig(TrainStep):
    """Parameters of one training stage (I: s2t, II: t2c, III: echo): the step options plus paths."""

    path_fields: ClassVar[tuple[str, ...]] = ("corpus", "out", "echo_labels", "s2t", "t2c", "init_checkpoint",
                                              "encoder_init", "cache_dir")

    stage: str = Field(description="Training stage.", json_schema_extra=_stage_choices)
    corpus: str = Field(description="Corpus directory built by build-corpus.")
    out: str = Field(description="Run directory: checkpoints/, metrics.jsonl, model/.")
    preset: str = Field("tiny", description="Model preset: tiny, smollm2-135m, llama-3b, llama-8b.")
    preset_overrides: dict = Field(default_factory=dict, description="Preset fields to override "
                                   "(e.g. llm_path, encoder_path, lora_rank).")
    echo_labels: str | None = Field(None, description="Echo pseudo-label directory (stage echo).")
    s2t: str | None = Field(None, description="Stage-I checkpoint (stage echo).")
    t2c: str | None = Field(None, description="Stage-II checkpoint (stage echo).")
    init_checkpoint: str | None = Field(None, description="Start from this checkpoint of the same stage "
                                        "(retraining on new data).")
    encoder_init: str | None = Field(None, description="Stage s2t: start the speech encoder and adapter from "
                                     "this encoder-pretraining checkpoint (`--stage encoder`).")
    ray_address: str | None = Field(None, description="Existing Ray cluster to train on.")
    threads_per_worker: int | None = Field(None, ge=1, description="launcher ray: CPUs each DDP worker "
                                           "reserves and its torch threads (default: the Ray's CPUs shared "
                                           "among the workers, at most one node's).")
    max_failures: int = Field(2, ge=0, description="launcher ray: restarts after a worker or its node is "
                              "lost, each resuming from the newest verified checkpoint.")
    seed: int = Field(0, description="Seed of init, data order and RNG.")
    resume: bool = Field(False, description="Continue from the last verified checkpoint in out.")
    cache_dir: str | None = Field(None, description="Where base LLM directories are built and cached "
                                  "(default: the state folder).")

    @field_validator("stage")
    @classmethod
    def _stage_is_registered(cls, stage: str) -> str:
        """A stage of the registry (models/stages.py), worded as pydantic words a Literal's error."""
        from models.stages import stage_names

        if stage not in stage_names():
            names = [repr(n) for n in stage_names()]
            expected = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return stage

    @model_validator(mode="after")
    def _unit_vocab_is_t2c_only(self) -> TrainFlowConfig:
        """unit_vocab_size shapes the T2C's vocabulary; other stages would silently ignore it."""
        from models.stages import get_stage, stages_with

        if self.unit_vocab_size and "unit_vocab_size" not in get_stage(self.stage).options:
            accepting = " or ".join(stages_with("unit_vocab_size"))
            raise ValueError(f"unit_vocab_size (--unit-vocab-size) is a stage {accepting} option, "
                             f"not {self.stage}")
        if self.encoder_init and "encoder_init" not in get_stage(self.stage).options:
            accepting = " or ".join(stages_with("encoder_init"))
            raise ValueError(f"encoder_init (--encoder-init) is a stage {accepting} option, not {self.stage}")
        return self


class EchoLabelsConfig(Frozen):
    """Parameters of the echo pseudo-label stage."""

    path_fields: ClassVar[tuple[str, ...]] = ("corpus", "s2t", "t2c", "out")

    corpus: str = Field(description="Corpus directory built by build-corpus.")
    s2t: str = Field(description="Stage-I checkpoint (a model directory or a training run directory).")
    t2c: str = Field(description="Stage-II checkpoint (a model directory or a training run directory).")
    out: str = Field(description="Output directory of the labels (opens with datasets.load_from_disk).")
    workers: int = Field(2, ge=1, description="Ray actors, each holding both models once.")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs (and torch threads) reserved by each actor.")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor; > 0 runs the models on CUDA.")
    batch_size: int = Field(8, ge=1, description="Corpus rows per S2T forward (their segments share one "
                            "batched T2C generation).")
    max_units: int = Field(1000, ge=1, description="Length guard of the T2C per segment; a row whose "
                           "segment hits it is rejected.")
    min_t2c_end_rate: float = Field(0.5, ge=0, le=1, description="Fail fast, before labelling, when the "
                                    "T2C ends fewer than this fraction of sampled answer segments within "
                                    "max_units (an under-trained T2C would have every row rejected after a "
                                    "full pass); 0 turns the check off.")
    t2c_check_samples: int = Field(16, ge=1, description="Corpus answers whose segments the T2C end-rate "
                                   "check generates for (greedy, within max_units).")
    ray_address: str | None = Field(None, description="Address of an existing Ray cluster; default: "
                                    "start Ray locally with workers × cpus_per_actor CPUs.")
    overwrite: bool = Field(False, description="Replace an output directory holding a different run.")
    progress: bool = Field(True, description="Log per-shard progress.")


class BaselineLabelsConfig(Frozen):
    """Parameters of the no-echo baseline's labels: the echo-label format from the corpus's own answers."""

    corpus: str = Field(description="Corpus directory built by build-corpus.")
    s2t: str = Field(description="Stage-I checkpoint: its tokenizer gives the answer tokens (no model runs).")
    t2c: str = Field(description="Stage-II checkpoint: its config gives the Echo decoder's length guard "
                     "(positions, unit language; no model runs).")
    out: str = Field(description="Output directory of the labels (opens with datasets.load_from_disk).")
    max_units: int = Field(1000, ge=1, description="Length guard per answer, as echo-labels' max_units; a "
                           "row whose answer units exceed it is rejected.")
    overwrite: bool = Field(False, description="Replace an output directory holding a different run.")
    progress: bool = Field(True, description="Log what was labelled.")


class EvaluateConfig(Frozen):
    """Parameters of a spoken-QA evaluation of an S2T or echo checkpoint."""

    mode: Literal["speech", "text"] = Field("speech", description="speech: spoken questions into an s2t or "
                                            "echo checkpoint; text: written questions into a base instruct "
                                            "LLM (--preset or --model), the knowledge there is to keep.")
    model: str | None = Field(None, description="Checkpoint to evaluate: an s2t or echo model directory (or "
                              "its run directory); with --mode text, a local HF causal-LM directory.")
    preset: str | None = Field(None, description="With --mode text: the base LLM of this model preset "
                               "(e.g. smollm2-135m), built as training builds it.")
    preset_overrides: dict[str, Any] = Field(default_factory=dict, description="Preset fields to override "
                                             "(--mode text --preset).")
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="With --mode "
                                      "text: the system turn of the chat prompt (empty: none).")
    cache_dir: str | None = Field(None, description="With --mode text --preset: where base LLM directories "
                                  "are built and cached (default: the state folder).")
    train_source: str | None = Field(None, description="The training source: eval questions that also occur "
                                     "there are counted and reported (knowledge is measured on held-out "
                                     "questions).")
    eval_set: str = Field(description="Eval set: JSONL (or Parquet / datasets directory) with id, question "
                          "and answers (a list), or answer + aliases as in data/sample/qa_eval.jsonl.")
    out: str = Field(description="Path of the JSON report; the questions manifest is written beside it.")
    t2c: str | None = Field(None, description="T2C checkpoint: adds Echo-decoder unit accuracy and unit edit "
                            "distance against T2C(reference answer) (echo checkpoints only).")
    vocoder: str | None = Field(None, description="Unit vocoder checkpoint (echo checkpoints): adds "
                                "speech-to-speech accuracy (each spoken answer vocoded, recognised by --asr, "
                                "alias-matched) and the ASR ceiling (the reference TTS speech, recognised).")
    asr: str = Field("pocketsphinx", description="Recogniser of --vocoder's speech-to-speech scoring.",
                     json_schema_extra={"enum": RECOGNISERS.names()})
    tts: str = tts_field("TTS engine that speaks the questions.")
    voices: list[str] | None = Field(None, description="Voices to choose from per question (seeded); "
                                     "default: the engine's list.")
    seed: int = Field(0, description="Seed of the per-question voice choice.")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer (text tokens).")
    max_units: int = Field(1000, ge=1, description="Longest unit sequence per segment (length guard).")
    batch_size: int = Field(1, ge=1, description="With --mode text: written questions answered together "
                            "(prompts left-padded, one greedy generation; each item's latency is its batch's "
                            "time over its size). 1: one at a time, each timed alone.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N valid questions.")
    device: str = Field("cpu", description="Torch device of the model (cpu, cuda, cuda:1).")
    audio_cache: str | None = Field(None, description="Folder of cached question audio (default: "
                                    "tts-cache beside the report); keyed by a content hash.")
    max_reject_fraction: float = Field(0.25, ge=0, le=1, description="Fail the evaluation when more than "
                                       "this fraction of the eval set's items is rejected (a score over "
                                       "a fraction of the set would look complete).")

    @field_validator("tts")
    @classmethod
    def _tts_known(cls, name: str) -> str:
        return registered(TTS_ENGINES, name)

    def tts_choice(self) -> Choice:
        """The selected TTS engine and its options, built from the flat fields."""
        return TTS_ENGINES.choose(self.tts, self)

    @model_validator(mode="after")
    def _inputs_of_mode(self) -> EvaluateConfig:
        """speech needs --model; text needs exactly one of --model / --preset and takes no --t2c."""
        if self.mode == "speech":
            if not self.model:
                raise ValueError("--model (an s2t or echo checkpoint) is required")
            if self.preset:
                raise ValueError("--preset selects a base LLM for --mode text; speech mode reads the "
                                 "checkpoint's own")
            if self.batch_size != 1:
                raise ValueError("--batch-size batches the written questions of --mode text; speech mode "
                                 "answers one spoken question at a time")
        else:
            if bool(self.model) == bool(self.preset):
                raise ValueError("--mode text takes exactly one of --model (a local HF LLM directory) "
                                 "and --preset")
            if self.t2c or self.vocoder:
                raise ValueError("--t2c and --vocoder score an echo checkpoint's units: not with --mode text")
        return self


def _export_targets(schema: dict[str, Any]) -> None:
    """The export targets as the field's JSON-schema enum (the generated CLI's choices)."""
    from tasks.export import exporter_names

    schema["enum"] = exporter_names()


class ExportConfig(Frozen):
    """Parameters of `echox export`: a corpus copied into a format that speech libraries load."""

    corpus: str = Field(description="Corpus directory built by build-corpus (verified before export).")
    to: str = Field(description="Target: hf-audio (a datasets directory with Audio columns of WAV bytes), "
                    "lhotse (recordings, supervisions and cuts manifests, a WAV per utterance) or "
                    "webdataset (tar shards).", json_schema_extra=_export_targets)
    out: str = Field(description="Output folder: new or empty (written in a temp folder beside it, then "
                     "renamed into place).")
    overwrite: bool = Field(False, description="Replace an earlier export in --out (never a folder that "
                            "is not one).")
    progress: bool = Field(True, description="Print a line per exported shard.")

    @field_validator("to")
    @classmethod
    def _target_known(cls, name: str) -> str:
        """A registered export target (tasks/export.py: EXPORTERS)."""
        from tasks.export import exporter_names

        if name not in exporter_names():
            raise ValueError(f"not an export target; choose one of {', '.join(exporter_names())}")
        return name


class KnowledgeConfig(Frozen):
    """The knowledge experiment (the pipeline's `knowledge:` section): how much of the text LLM's knowledge
    the speech models keep, on the same eval set, normaliser and alias match (tasks/knowledge.py)."""

    text_preset: str | None = Field(None, description="Preset whose base instruct LLM answers the written "
                                    "questions (step evaluate-text); default: the pipeline's preset, with "
                                    "its preset_overrides (those apply only to the pipeline's own preset). "
                                    "Name a real-LLM preset (smollm2-135m) beside a random-init one (tiny): "
                                    "the table then says the two are different LLMs.")
    s2t: bool = Field(True, description="Also evaluate the stage-I (S2T) checkpoint on the spoken questions "
                      "(step evaluate-s2t): the knowledge kept before echo training.")
    text_batch_size: int = Field(1, ge=1, description="Written questions the text LLM answers together "
                                 "(evaluate-text's batch_size: faster; batched greedy answers can differ "
                                 "from one-at-a-time ones by float sums). 1: one at a time.")


class KnowledgeTableConfig(Frozen):
    """Parameters of the `knowledge` step: the table of a pipeline run folder's evaluation reports."""

    run: str = Field(description="The pipeline's output folder (its eval*/report.json, encoder/asr_eval.json "
                     "and <step>/fingerprint.json are read).")
    out: str = Field(description="Folder of knowledge.json and knowledge.md.")
