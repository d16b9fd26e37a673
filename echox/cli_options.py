"""The `echox` options, generated from pydantic models: each option is declared once, as a field with its
default and description, and argparse only parses. An option left out is not put in the parsed namespace
(argparse.SUPPRESS), so the model's default applies and `--help` shows that same default."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Handler = Callable[[Any], int]
# Fields that name a file or folder (shown as PATH in --help).
PATH_NAMES = {"source", "out", "corpus", "codebook", "feature_checkpoint", "echo_labels", "s2t", "t2c",
              "init_checkpoint", "cache_dir", "model", "audio", "eval_set", "audio_cache", "vocoder",
              "out_wav", "config", "file", "encoder_init"}


VERBOSE_HELP = ("stream Ray's, Gloo's and Prefect's output here as it comes (default: progress and a summary "
                "here, that output in RUN_FOLDER/logs/echox-<time>.log, named at the end; ECHOX_VERBOSE=1)")


@dataclass(frozen=True)
class Flag:
    """How one model field appears on the command line when the plain `--field-name VALUE` does not fit."""

    flag: str | None = None  # e.g. "--set"; default: --field-name
    metavar: str | None = None
    help: str | None = None  # replaces the field's description
    negate: str | None = None  # a flag that sets the (default True) field to False, e.g. --quiet


@dataclass(frozen=True)
class Command:
    """A subcommand: its options model, how a few fields are spelled, and the handler."""

    name: str
    model: type[BaseModel]
    handler: Handler
    help: str
    description: str = ""
    flags: dict[str, Flag] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()  # fields not offered on the command line
    verbose: bool = False  # runs flows: offers --verbose (stream Ray's and Prefect's output, no run log)


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` → X (None is the default, never typed on the command line)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def choices(info: FieldInfo) -> list[str] | None:
    """A field's allowed values: its Literal arguments, or an `enum` the model put in its JSON schema."""
    annotation = _unwrap_optional(info.annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    extra = info.json_schema_extra
    if callable(extra):  # a registry's names, read when the schema (here: the parser) is made
        schema: dict[str, Any] = {}
        extra(schema)  # type: ignore[call-arg]
        extra = schema
    enum = extra.get("enum") if isinstance(extra, dict) else None
    return [str(e) for e in enum] if isinstance(enum, list) else None


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return "default: none" if default is None else f"default: {default}"


def _help(info: FieldInfo, spelled: Flag) -> str:
    text = (spelled.help or info.description or "").rstrip(".")
    return f"{text} ({_default_text(info)})".replace("%", "%%")


def _argument(name: str, info: FieldInfo, spelled: Flag) -> tuple[list[str], dict[str, Any]]:
    """The argparse flag and keyword arguments of one field."""
    flag = spelled.flag or "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": name, "help": _help(info, spelled), "default": argparse.SUPPRESS}
    annotation = _unwrap_optional(info.annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = "store_true"
    elif origin is list:
        kwargs["nargs"] = "+"
    elif origin is dict or annotation is dict:
        kwargs["action"] = "append"  # FIELD=VALUE pairs, parsed by the command's handler
        kwargs["metavar"] = spelled.metavar or "FIELD=VALUE"
    else:
        kwargs["type"] = annotation if annotation in (int, float) else str
        kwargs["choices"] = choices(info)
        plain = {int: "N", float: "X"}.get(annotation, "PATH" if name in PATH_NAMES else "TEXT")
        kwargs["metavar"] = spelled.metavar or ("{" + ",".join(kwargs["choices"]) + "}" if kwargs["choices"]
                                                else plain)
    if info.is_required():
        kwargs["required"] = True
    return [flag], kwargs


def add_model_options(parser: argparse.ArgumentParser, command: Command) -> None:
    """One argparse option per field of the command's model (a negating flag for `negate` fields)."""
    fields = sorted(command.model.model_fields.items(), key=lambda kv: not kv[1].is_required())
    for name, info in fields:  # required options first, then the model's order
        if name in command.hidden:
            continue
        spelled = command.flags.get(name, Flag())
        if spelled.negate:
            parser.add_argument(spelled.negate, dest=name, action="store_false", default=argparse.SUPPRESS,
                                help=spelled.help or f"not: {info.description}")
            continue
        flags, kwargs = _argument(name, info, spelled)
        parser.add_argument(*flags, **kwargs)


def add_commands(sub: argparse._SubParsersAction, commands: Iterable[Command]) -> None:
    """Register every command as a subparser with its generated options."""
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.description or command.help,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_model_options(p, command)
        if command.verbose:
            p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
        p.set_defaults(handler=command.handler, options_model=command.model, verbose=False)


PARSER_ENTRIES = ("handler", "command", "options_model", "verbose")


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave (argparse's own entries dropped; defaults stay the model's)."""
    return {k: v for k, v in vars(args).items() if k not in PARSER_ENTRIES}
