"""The one small error hierarchy: user mistakes become these, and the CLI prints them."""

from __future__ import annotations


class EchoxError(Exception):
    """A problem the user can fix (bad input, bad config, missing checkpoint); printed without traceback."""


class ConfigError(EchoxError):
    """A configuration value is invalid; the message names the field."""


class InputError(EchoxError):
    """An input file or directory cannot be used as given."""


class CheckpointError(EchoxError):
    """A checkpoint path is missing, of the wrong kind, or corrupt."""


class IntegrityError(EchoxError):
    """A stored artifact does not match its recorded checksum."""


class RecordRejected(Exception):
    """One input record cannot be used; becomes a line in rejects.jsonl with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
