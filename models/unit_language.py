"""The unit language: a BPE model over unit strings that merges frequent unit n-grams into unit-words.

Each unit id becomes one character, so no merge can split a unit and decoding is exact. The T2C and Echo
decoders predict unit-words when their checkpoint holds a unit language (its tokenizer JSON);
tasks/units.py trains one on a corpus and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CheckpointError, ConfigError, InputError

_UNIT_CHAR_BASE = 0x4E00  # one CJK-range character per unit, so no merge can split a unit
_MAX_UNITS = 0xD800 - _UNIT_CHAR_BASE  # stay below the surrogate range


def _units_to_text(units: Sequence[int] | np.ndarray) -> str:
    """Map each unit id to its own character."""
    arr = np.asarray(units, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= _MAX_UNITS):
        raise InputError(f"unit ids must be in 0..{_MAX_UNITS - 1}")
    return "".join(chr(_UNIT_CHAR_BASE + int(u)) for u in arr)


def train_unit_language(
    unit_sequences: Iterable[Sequence[int]], vocab_size: int, *, num_units: int | None = None
) -> str:
    """Train a BPE unit language (every unit of 0..num_units-1 is in the alphabet); its tokenizer JSON."""
    from tokenizers import Tokenizer, models, trainers

    texts = [_units_to_text(s) for s in unit_sequences]
    if not any(texts):
        raise InputError("no unit sequences to train the unit language on")
    seen = max(ord(ch) for t in texts for ch in t) - _UNIT_CHAR_BASE + 1
    n = num_units if num_units is not None else seen
    if n < seen or vocab_size < n:
        raise ConfigError(
            f"need num_units >= {seen} (highest unit seen + 1) and vocab_size >= num_units ({n})"
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=[chr(_UNIT_CHAR_BASE + u) for u in range(n)],
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE())  # no normalizer or pre-tokenizer: an utterance is one word
    tokenizer.train_from_iterator(texts, trainer)
    return str(tokenizer.to_str())


class UnitLanguage:
    """Encodes deduplicated units into unit-word ids and back, exactly."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        self._words: list[tuple[int, ...]] = [()] * (max(vocab.values()) + 1)
        for token, idx in vocab.items():
            self._words[idx] = tuple(ord(ch) - _UNIT_CHAR_BASE for ch in token)
        self._alphabet = {token for token in vocab if len(token) == 1}

    @classmethod
    def load(cls, path: str | Path) -> UnitLanguage:
        """Load a unit language saved by `train_unit_bpe`."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"unit language not found: {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as ex:  # tokenizers raises a bare Exception for unreadable files
            raise CheckpointError(f"unit language is corrupt: {path} ({ex})") from ex

    @classmethod
    def from_str(cls, text: str) -> UnitLanguage:
        """A unit language from its tokenizer JSON (`to_str`; what a T2C checkpoint's config holds)."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(text))
        except Exception as ex:  # tokenizers raises a bare Exception for malformed JSON
            raise CheckpointError(f"unit language is corrupt ({ex})") from ex

    def to_str(self) -> str:
        """The tokenizer JSON that `from_str` reads back."""
        return str(self._tokenizer.to_str())

    @property
    def vocab_size(self) -> int:
        """Number of unit-words."""
        return len(self._words)

    def encode(self, units: Sequence[int] | np.ndarray) -> list[int]:
        """Units -> unit-word ids."""
        text = _units_to_text(units)
        unknown = sorted({ord(ch) - _UNIT_CHAR_BASE for ch in set(text) - self._alphabet})
        if unknown:  # BPE without an unk token would silently drop them
            raise InputError(f"units {unknown[:10]} are outside this unit language's alphabet")
        return list(self._tokenizer.encode(text).ids) if text else []

    def decode(self, word_ids: Sequence[int]) -> list[int]:
        """Unit-word ids -> units."""
        units: list[int] = []
        for idx in word_ids:
            if not 0 <= idx < len(self._words):
                raise InputError(f"unit-word id {idx} is outside the vocabulary of {len(self._words)}")
            units.extend(self._words[idx])
        return units

    def compression_ratio(self, unit_sequences: Iterable[Sequence[int]]) -> float:
        """Total units / total unit-words over the sequences (how much shorter the words are)."""
        n_units = n_words = 0
        for seq in unit_sequences:
            n_units += len(seq)
            n_words += len(self.encode(seq))
        return n_units / n_words if n_words else 1.0
