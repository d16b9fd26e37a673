"""Encoder pretraining in the pipeline: the pretrain-corpus and encoder steps are planned, fingerprinted
and invalidated like the others, and stage I reads the encoder (planner only, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from tests.flows.test_pipeline_incremental import tiny_data, verified  # noqa: F401 - a fixture

FIXED = {"preset_overrides": {"llm": "path", "llm_path": "/models/tiny"}}
ENCODER = {"encoder": {"max_steps": 10, "batch_size": 4, "workers": 1, "launcher": "local"},
           "pretrain": {"words": 100, "repeats": 2}}
ALL = ["corpus", "pretrain-corpus", "encoder", "s2t", "t2c", "vocoder", "echo-labels", "echo", "evaluate"]
AFTER_ENCODER = "encoder s2t echo-labels echo evaluate"


def cfg_of(out: Path, **changes: object):
    from flows.pipeline_config import PipelineConfig, build

    data = tiny_data(out) | FIXED | ENCODER
    for key, value in changes.items():
        section, _, field = key.partition(".")
        data[section] = {**(data.get(section) or {}), field: value} if field else value
    return build(PipelineConfig, data, "test")


def record(cfg) -> None:
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    for p in make_plan(cfg):
        where = Path(p.folder)
        where.mkdir(parents=True, exist_ok=True)
        fp.write(where, p.fingerprint)
        section = getattr(cfg, p.step.replace("-", "_"), None)
        if hasattr(section, "max_steps"):
            (where / "checkpoints" / f"step-{section.max_steps:06d}").mkdir(parents=True)


def actions(cfg) -> dict[str, str]:
    from flows.pipeline_plan import make_plan

    return {p.step: p.action for p in make_plan(cfg)}


def expect(redo: str = "", resume: str = "", absent: str = "") -> dict[str, str]:
    out = {s: "skip" for s in ALL if s not in absent.split()}
    return out | dict.fromkeys(redo.split(), "redo") | dict.fromkeys(resume.split(), "resume")


CASES = [
    ({}, expect()),
    ({"pretrain.words": 200}, expect(redo="pretrain-corpus " + AFTER_ENCODER)),
    ({"pretrain.workers": 1}, expect()),  # scheduling only
    ({"corpus.num_units": 17}, expect(redo="corpus s2t t2c vocoder echo-labels echo evaluate")),
    ({"corpus.tts": "piper"}, expect(redo="corpus pretrain-corpus " + AFTER_ENCODER + " t2c vocoder")),
    ({"encoder.lr": 0.01}, expect(redo=AFTER_ENCODER)),
    ({"encoder.max_steps": 20}, expect(resume="encoder", redo="s2t echo-labels echo evaluate")),
    ({"encoder": None}, expect(redo="s2t echo-labels echo evaluate", absent="pretrain-corpus encoder")),
    # the pretraining speech reads the preset only through the base LLM's tokenizer: other preset fields
    # retrain every model but keep it; a field that shapes the base LLM rebuilds it
    ({"preset_overrides": FIXED["preset_overrides"] | {"encoder_dim": 32}},
     expect(redo=AFTER_ENCODER + " t2c vocoder")),
    ({"preset_overrides": FIXED["preset_overrides"] | {"audio_token": "<speech>"}},
     expect(redo="pretrain-corpus " + AFTER_ENCODER + " t2c vocoder")),
]


@pytest.mark.parametrize(("changes", "expected"), CASES, ids=[",".join(c) or "unchanged" for c, _ in CASES])
def test_encoder_changes_rerun_the_steps_that_read_it(tmp_path: Path, verified: None,  # noqa: F811
                                                      changes: dict, expected: dict) -> None:
    record(cfg_of(tmp_path))
    assert actions(cfg_of(tmp_path, **changes)) == expected


def test_stage_one_reads_the_encoder_and_the_encoder_the_pretraining_corpus(tmp_path: Path) -> None:
    from flows.pipeline_config import planned_outputs, pretrain_corpus_config, stage_config

    cfg = cfg_of(tmp_path, **{"corpus.tts": "espeak", "pretrain.tts": "piper"})
    planned = planned_outputs(cfg)
    assert stage_config(cfg, "s2t", planned).encoder_init == str(tmp_path / "encoder" / "model")
    assert stage_config(cfg, "encoder", planned).corpus == str(tmp_path / "pretrain-corpus")
    pre = pretrain_corpus_config(cfg)
    assert pre.tts == "piper" and pre.words == 100  # the corpus's speech options, then pretrain's
    assert pre.num_units == 100 and cfg.corpus.num_units == 16  # not its units
    assert pre.source == str(tmp_path / "pretrain-text.jsonl") and pre.qa_source == cfg.source
    no_encoder = cfg_of(tmp_path, encoder=None)
    assert stage_config(no_encoder, "s2t", planned_outputs(no_encoder)).encoder_init is None


def test_encoder_pretraining_with_a_random_llm_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from flows.pipeline_config import PipelineConfig, build, validate

    cfg = build(PipelineConfig, tiny_data(tmp_path) | ENCODER, "test")
    with pytest.raises(ConfigError, match="stage encoder needs a fixed LLM tokenizer"):
        validate(cfg)
    with pytest.raises(ConfigError, match="max_words"):
        validate(cfg_of(tmp_path, **{"pretrain.min_words": 9, "pretrain.max_words": 3}))


def test_an_interrupted_training_without_a_checkpoint_starts_over_and_says_why(tmp_path: Path) -> None:
    from flows.pipeline_plan import make_plan
    from tasks import fingerprint as fp

    cfg = cfg_of(tmp_path)
    encoder = next(p for p in make_plan(cfg) if p.step == "encoder")
    Path(encoder.folder).mkdir(parents=True)
    fp.write(Path(encoder.folder), encoder.fingerprint, fp.PENDING)  # killed before its first checkpoint
    again = next(p for p in make_plan(cfg) if p.step == "encoder")
    assert (again.action, again.reason) == ("run", "its interrupted run left no checkpoint: start over")
    other = next(p for p in make_plan(cfg_of(tmp_path, **{"encoder.lr": 0.5})) if p.step == "encoder")
    assert other.reason == "its folder holds an unfinished run of another config: start over"


def test_the_ctc_decoder_redoes_stage_one_and_what_reads_it_only(tmp_path: Path) -> None:
    """Decoding and prompt fields (models/presets.py DECODE_FIELDS, PROMPT_FIELDS) change what the LLM reads:
    stage I and everything that runs it. Encoder pretraining, T2C, the vocoder, the base LLM's answers and
    the text LLM's row keep their fingerprints, and a config without them fingerprints as before they
    existed. Stage III's own field (STAGE_THREE_FIELDS) redoes stage III and its evaluations only."""
    from flows.pipeline_plan import make_plan
    from tests.flows.test_pipeline_incremental import BASELINE

    chars = FIXED["preset_overrides"] | {"ctc_target": "chars", "adapter_ctc_embed": True}
    smol = {"preset": "smollm2-135m", "llm_answers": {}, "knowledge": {}, **BASELINE}

    def digests(**overrides: object) -> dict[str, str]:
        plan = make_plan(cfg_of(tmp_path, **smol, preset_overrides=chars | overrides))
        return {p.step: p.fingerprint["digest"] for p in plan}

    greedy = digests()
    stage_three = {"echo", "evaluate", "baseline", "evaluate-baseline", "knowledge"}
    for decoding in ({"ctc_decoder": "lexicon"}, {"ctc_decoder": "lexicon", "lexicon_beam": 4},
                     {"ctc_decoder": "lexicon", "lexicon_cased": False}, {"system_prompt": "Be brief."}):
        lexicon = digests(**decoding)
        assert {s for s in greedy if lexicon[s] != greedy[s]} == {
            "s2t", "echo-labels", "evaluate-s2t", "baseline-labels", *stage_three}
    frozen = digests(echo_train_hearing=False)  # stage III's own option: stage I and its labels stay
    assert {s for s in greedy if frozen[s] != greedy[s]} == stage_three
    assert digests(lexicon_beam=4) != greedy  # a decoding field is still the trained models' business
    assert digests(encoder_dim=32)["encoder"] != greedy["encoder"]  # other preset fields still count
