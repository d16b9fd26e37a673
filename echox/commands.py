"""Options of the `echox` commands that run no flow (the flow commands take their flow's config model).

Each option is declared here once, with its default and description; echox/cli_options.py turns the
models into argparse options, and a handler receives the validated model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from core.config import Frozen


def _step_choices(schema: dict[str, Any]) -> None:
    """The pipeline's step names as the field's JSON-schema enum (the generated CLI's choices)."""
    from flows.pipeline_steps import step_names

    schema["enum"] = step_names()


class AskOptions(Frozen):
    """`echox ask`: the S2T answer to a spoken question."""

    model: str = Field(description="Stage-I (or echo) checkpoint: a model directory or its run directory.")
    audio: str = Field(description="A WAV/FLAC file of the question (any rate; resampled to 16 kHz).")
    max_new_tokens: int = Field(64, ge=1, description="Longest answer, in text tokens.")
    sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature (with --sample).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass (with --sample).")
    seed: int = Field(0, description="Seed of the sampling (with --sample).")


class T2COptions(Frozen):
    """`echox t2c`: units for a text."""

    model: str = Field(description="Stage-II (T2C) checkpoint: a model directory or its run directory.")
    text: str = Field(description="The text to turn into units.")
    max_units: int = Field(1000, ge=1, description="Length guard: stop after this many units.")


class SpeakOptions(Frozen):
    """`echox speak`: stream a spoken answer, text and units segment by segment."""

    model: str = Field(description="Echo checkpoint: a model directory or its run directory.")
    audio: str = Field(description="A WAV/FLAC file of the question (any rate; resampled to 16 kHz).")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer, in text tokens.")
    max_units: int = Field(1000, ge=1, description="Unit length guard per segment.")
    vocoder: str | None = Field(None, description="Unit vocoder checkpoint (echox train --stage vocoder) of "
                                "the echo model's codebook: each segment is vocoded as it closes.")
    out_wav: str | None = Field(None, description="WAV of the spoken answer (needs --vocoder; written "
                                "atomically at the end).")
    lookahead: int = Field(5, ge=0, description="Segment trigger: a cut needs a local maximum of the "
                           "similarity within ± this many tokens (so it is decided this many tokens late).")
    min_len_peak: int = Field(50, ge=1, description="Segment trigger: tokens of the segment before a cut "
                              "at any peak.")
    min_len_thresh: int = Field(20, ge=1, description="Segment trigger: tokens of the segment before a cut "
                                "at a peak above --thresh.")
    thresh: float = Field(0.1, description="Segment trigger: cosine similarity to '.' that allows a cut "
                          "after --min-len-thresh tokens.")


class VocodeOptions(Frozen):
    """`echox vocode`: units → a 16 kHz WAV with a unit vocoder."""

    model: str = Field(description="Vocoder checkpoint (train --stage vocoder): model or run directory.")
    units: str | None = Field(None, description='Units to speak, e.g. "12 7 33" (or --corpus with --id).')
    corpus: str | None = Field(None, description="Corpus directory to take a row's units from (with --id).")
    id: str | None = Field(None, description="Row id in --corpus whose units are spoken.")
    side: Literal["answer", "question"] = Field("answer", description="Which units of the --id row.")
    out_wav: str = Field(description="Output WAV (16 kHz, 16-bit; written atomically).")
    duration_scale: float = Field(1.0, gt=0, description="Stretch the predicted unit durations (> 1: slower "
                                  "speech; log-duration training predicts geometric means, a little short).")
    threads: int = Field(1, ge=1, description="Torch threads (Griffin-Lim's small FFTs gain little from "
                         "more, and lose much on a busy machine).")


class EchoEvalOptions(Frozen):
    """`echox echo-eval`: Echo decoder unit accuracy against the pseudo-labels (teacher-forced)."""

    corpus: str = Field(description="Corpus directory built by build-corpus.")
    echo_labels: str = Field(description="Echo pseudo-label directory (echo-labels --out).")
    model: str | None = Field(None, description="Trained echo checkpoint (model or run directory).")
    s2t: str | None = Field(None, description="With --t2c: also score the step-0 echo model (baseline).")
    t2c: str | None = Field(None, description="Stage-II checkpoint of the step-0 baseline.")
    seed: int = Field(0, description="Seed of the step-0 adapter (the training seed).")
    max_examples: int | None = Field(None, ge=1, description="Score this many (row, segment) examples.")
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    first: int = Field(5, ge=1, description="Also score each example's first N targets.")
    threads: int | None = Field(None, ge=1, description="Torch threads (default: torch's choice).")


class PipelineOptions(Frozen):
    """`echox pipeline`: the whole DAG from a YAML config."""

    config: str = Field(description="Pipeline YAML (configs/*.yaml).")
    out: str | None = Field(None, description="Override the config's output directory.")
    dry_run: bool = Field(False, description="Print the plan (each step: skip, resume, redo or run, and "
                          "why) and change nothing.")
    from_step: str | None = Field(None, description="Redo this step and every step after it, whatever "
                                  "their fingerprints say.", json_schema_extra=_step_choices)
    only: str | None = Field(None, description="Run only this step, on the existing outputs of the steps "
                             "before it (which must verify).", json_schema_extra=_step_choices)

    @field_validator("from_step", "only")
    @classmethod
    def _a_step(cls, name: str | None) -> str | None:
        """A step of the pipeline DAG (flows/pipeline_steps.py)."""
        from flows.pipeline_steps import step_names

        if name is not None and name not in step_names():
            raise ValueError(f"not a pipeline step; choose one of {', '.join(step_names())}")
        return name


class KnowledgeOptions(Frozen):
    """`echox knowledge`: the knowledge table of a pipeline run folder (and RESULTS.md)."""

    run: str = Field(description="Pipeline output folder (its eval-text, eval-s2t, eval, eval-baseline and "
                     "encoder reports are read; a missing one is a row that says 'not run').")
    out: str | None = Field(None, description="Also write the table, goals and commands as markdown here.")
    results: str | None = Field(None, description="Write RESULTS.md here: the table with intervals, the "
                                "goals and a reading of them, the encoder WER, loss curves (PNGs in results/ "
                                "beside it), commands, fingerprints, machine, recorded wall times.")
    config: str | None = Field(None, description="The pipeline config the run was made with (RESULTS.md "
                               "names it, with its sha256, in the commands).")


class DemoOptions(Frozen):
    """`echox demo`: the pipeline on the bundled sample, with a Prefect UI left running."""

    config: str = Field("configs/demo.yaml", description="Pipeline YAML of the demo.")
    no_server: bool = Field(False, description="Do not leave a Prefect UI running afterwards.")


class ServerOptions(Frozen):
    """`echox server`: a local Prefect server (UI + API) on 127.0.0.1."""

    port: int = Field(4200, ge=1, le=65535, description="TCP port of the UI and API.")
    stop: bool = Field(False, description="Stop the server started from this folder (by echox server or "
                       "echox demo).")


class ServeOptions(Frozen):
    """`echox serve`: serve the deployments of prefect.yaml."""

    file: str = Field("prefect.yaml", description="The deployments file.")
