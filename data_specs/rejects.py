"""The rejects table: one JSON line per input record that is not in the output, with a reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Reject:
    """One rejected input record."""

    line: int
    """1-based line (or row) number in the source; for echo labels, the 0-based corpus row index."""
    id: str | None
    """The record's id when it had one."""
    reason: str
    """Why the record was rejected, in words a user can act on."""
    stage: str = "source"
    """The stage that rejected it: source, text, tts, asr (the --asr-check gate), units, echo,
    baseline (the no-echo baseline's labels)."""

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)
