"""The `echox` options are generated from the config models: every option has help and the model's default."""

from __future__ import annotations

import argparse

import pytest

from echox.cli import COMMANDS, main, options, parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_and_every_option_help() -> None:
    subs = _subparsers()
    assert sorted(subs) == sorted(c.name for c in COMMANDS)
    for name, sub in subs.items():
        assert sub.description, name
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help and not action.help.startswith("("), (name, action.dest)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_help_shows_the_models_defaults(command: object) -> None:
    sub = _subparsers()[command.name]  # type: ignore[attr-defined]
    fields = command.model.model_fields  # type: ignore[attr-defined]
    for action in sub._actions:
        info = fields.get(action.dest)
        if info is None or info.is_required() or action.option_strings[0] == "--quiet":
            continue
        default = info.get_default(call_default_factory=True)
        assert f"(default: {'none' if default is None else default})" in action.help, (command, action.dest)


def test_an_option_left_out_takes_the_models_default() -> None:
    args = parser().parse_args(["train", "--stage", "t2c", "--corpus", "c", "--out", "o", "--lr", "0.5",
                                "--set", "lora_rank=4", "--set", "llm_path=/m"])
    cfg = options(args)
    assert cfg.lr == 0.5 and cfg.max_steps == type(cfg).model_fields["max_steps"].default
    assert cfg.preset_overrides == {"lora_rank": 4, "llm_path": "/m"}
    quiet = options(parser().parse_args(["build-corpus", "--source", "s", "--out", "o", "--quiet"]))
    assert quiet.progress is False
    assert options(parser().parse_args(["build-corpus", "--source", "s", "--out", "o"])).progress is True


def test_version_and_bad_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("echox ")
    with pytest.raises(SystemExit) as exit_info:
        main(["build-corpus", "--source", "s", "--out", "o", "--tts", "nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_bad_pair_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--stage", "s2t", "--corpus", "c", "--out", "o", "--set", "nopair"]) == 2
    assert "echox train: error: --set expects FIELD=VALUE, got 'nopair'" in capsys.readouterr().err


def test_training_defaults_are_the_step_configs() -> None:
    """The loop's TrainConfig takes its user-facing defaults from TrainStep (they once disagreed)."""
    import dataclasses

    from tasks.configs import TrainStep
    from tasks.train_config import TrainConfig

    loop = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    shared = loop.keys() & TrainStep.model_fields.keys() - {"workers", "use_gpu"}  # set by the launcher
    assert {"max_steps", "lr", "warmup_steps", "batch_size"} <= shared
    for name in shared:
        assert loop[name] == TrainStep.model_fields[name].default, name
