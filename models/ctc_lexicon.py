"""Lexicon beam search for the character CTC: what the LLM reads is a sequence of words it knows.

Greedy decoding spells each word from the frames' argmaxes, so one misheard letter turns "egypt" into
"ptejift", a word the LLM has no token for. This decoder runs a CTC prefix beam search over characters
and scores the words it spells against a lexicon: the base LLM tokenizer's whole-word tokens, with a
Zipf prior from their ids (a byte-level BPE learns its merges roughly in frequency order, the assumption
`tasks/pretrain_text.py` also makes). A word in progress is scored by the best prior below it in the
lexicon's trie (look-ahead), so spellings that lead to known words survive the beam; a spelling that
leaves the trie pays `oov_penalty` once and goes on unconstrained (names the tokenizer splits still come
out, at a price). Digit strings are numbers, scored as known words.

The search runs on lower-case characters (what the character CTC hears); the transcript it returns writes
each lexicon word as the tokenizer spells it most often ("egypt" → "Egypt", "the" stays "the") and
capitalises its first letter, so the LLM reads a sentence like the written question rather than a
lower-case one (`DecoderOptions.cased`).

Scores are natural-log: acoustic log-probabilities plus `weight` × word log-priors plus `word_bonus` per
word (which offsets the prior's cost per word, so the search does not prefer fewer, longer words).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WORD_MARKS = ("Ġ", "▁")
"""How byte-level BPE (GPT-2 style) and SentencePiece tokenizers mark a token that starts a word."""
SHORT_WORDS = frozenset({"a", "i", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it",
                         "me", "my", "no", "of", "on", "or", "so", "to", "up", "us", "we"})
"""Two-letter (or shorter) tokens kept: real words, unlike most short BPE pieces ("th", "re")."""
WORD = re.compile(r"[A-Za-z]+")
HEARD_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
"""A word of a lower-case transcript (an apostrophe joins its parts: "don't" is not recased as "don")."""
SEPARATORS = frozenset(" .,?!-")
"""Characters that end a word (a hyphen joins two words, each scored on its own)."""
NEG = -1e30


def whole_words(tokenizer: Any) -> list[str]:
    """The tokenizer's whole-word tokens (word-start mark + letters; 3+ letters or a SHORT_WORDS entry)
    as plain words, in id order (commonest first)."""
    found: list[tuple[int, str]] = []
    for token, idx in tokenizer.get_vocab().items():
        if token[:1] not in WORD_MARKS:
            continue
        word = token[1:]
        if WORD.fullmatch(word) and (len(word) > 2 or word.lower() in SHORT_WORDS):
            found.append((idx, word))
    found.sort()
    return [w for _, w in found]


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    prior: float = NEG
    """Log-prior of the word ending here (NEG: no word ends here)."""
    best: float = NEG
    """Best log-prior of any word at or below this node (the look-ahead)."""


class Lexicon:
    """A trie of lower-cased words with Zipf log-priors by rank (the first word is the commonest), and each
    word's commonest spelling (the first seen: "Egypt", "the")."""

    def __init__(self, words: Iterable[str]) -> None:
        ranked: list[str] = []
        self.spelling: dict[str, str] = {}
        for word in words:
            w = word.lower()
            if w and w not in self.spelling:
                self.spelling[w] = word
                ranked.append(w)
        if not ranked:
            raise ValueError("a lexicon needs at least one word")
        norm = math.log(sum(1.0 / (r + 1) for r in range(len(ranked))))
        self.root = _Node()
        for rank, word in enumerate(ranked):
            prior = -math.log(rank + 1) - norm
            node = self.root
            node.best = max(node.best, prior)
            for ch in word:
                node = node.children.setdefault(ch, _Node())
                node.best = max(node.best, prior)
            node.prior = max(node.prior, prior)
        self.size = len(ranked)

    def __contains__(self, word: str) -> bool:
        node = self.walk(word)
        return node is not None and node.prior > NEG

    def cased(self, text: str) -> str:
        """Lower-case `text` with each lexicon word in its commonest spelling and the first letter capital."""
        out = HEARD_WORD.sub(lambda m: self.spelling.get(m.group(0), m.group(0)), text)
        return out[:1].upper() + out[1:]

    def walk(self, word: str) -> _Node | None:
        """The trie node of `word` as a prefix, or None when no lexicon word starts so."""
        node: _Node | None = self.root
        for ch in word:
            node = node.children.get(ch) if node is not None else None
        return node


@dataclass(frozen=True)
class DecoderOptions:
    """Search width and the weights of the lexicon's scores (the defaults are the preset's lexicon_* ones,
    chosen with tools/lexicon_sweep.py)."""

    beam: int = 16
    """Prefixes kept per frame."""
    weight: float = 0.4
    """Weight of the word log-priors against the acoustic log-probabilities."""
    word_bonus: float = -1.0
    """Log-score added per word."""
    oov_penalty: float = 16.0
    """Log-score paid once by a word that leaves the lexicon."""
    prune: float = 8.0
    """Characters more than this below the frame's best log-probability are not tried."""
    cased: bool = True
    """Write the transcript's words as the tokenizer spells them and capitalise its first letter."""


@dataclass
class _Beam:
    """One prefix's CTC probabilities (log, ending in blank / in its last character) and word scores."""

    blank: float = NEG
    char: float = NEG
    words: float = 0.0
    """Weighted score of the finished words (prior or OOV penalty, plus the bonus)."""
    partial: str = ""
    """The word in progress (characters since the last separator)."""
    node: _Node | None = None
    """Its trie node; None once it has left the lexicon."""

    def acoustic(self) -> float:
        return _logadd(self.blank, self.char)


def _logadd(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b <= NEG:
        return a
    return a + math.log1p(math.exp(b - a))


class LexiconDecoder:
    """CTC prefix beam search over an alphabet (id 1.. = alphabet[i-1], id `blank` = blank) with word
    scores from a Lexicon."""

    def __init__(self, lexicon: Lexicon, alphabet: str, *, blank: int = 0,
                 options: DecoderOptions | None = None) -> None:
        self.lexicon = lexicon
        self.alphabet = alphabet
        self.blank = blank
        self.options = options or DecoderOptions()

    # ------------------------------------------------------------------ word scores

    def _partial_score(self, beam: _Beam) -> float:
        """The word in progress: its look-ahead prior while in the lexicon, the OOV penalty once out."""
        if not beam.partial or beam.partial.isdigit():
            return 0.0
        o = self.options
        if beam.node is None:
            return -o.oov_penalty
        return o.weight * beam.node.best

    def _finished_score(self, partial: str, node: _Node | None) -> float:
        """A word that ends: its prior (a known word) or the OOV penalty, plus the bonus."""
        o = self.options
        if partial.isdigit():
            return o.word_bonus
        if node is not None and node.prior > NEG:
            return o.weight * node.prior + o.word_bonus
        return -o.oov_penalty + o.word_bonus

    def _total(self, beam: _Beam) -> float:
        return beam.acoustic() + beam.words + self._partial_score(beam)

    def _extend(self, beam: _Beam, ch: str) -> _Beam:
        """The beam of `beam`'s prefix + ch (probabilities empty; word state carried)."""
        if ch in SEPARATORS:
            words = beam.words
            if beam.partial:
                words += self._finished_score(beam.partial, beam.node)
            return _Beam(words=words, partial="", node=self.lexicon.root)
        partial = beam.partial + ch
        node = beam.node.children.get(ch) if beam.node is not None else None
        return _Beam(words=beam.words, partial=partial, node=node)

    # ------------------------------------------------------------------ search

    def decode(self, log_probs: np.ndarray) -> str:
        """The best transcript of (T, K) CTC log-probabilities (valid frames only)."""
        o = self.options
        beams: dict[str, _Beam] = {"": _Beam(blank=0.0, node=self.lexicon.root)}
        for frame in log_probs:
            floor = float(frame.max()) - o.prune
            chars = [k for k in np.flatnonzero(frame >= floor).tolist() if k != self.blank]
            p_blank = float(frame[self.blank])
            nxt: dict[str, _Beam] = {}
            for prefix, beam in beams.items():
                total = beam.acoustic()
                same = nxt.get(prefix)
                if same is None:
                    same = nxt[prefix] = _Beam(words=beam.words, partial=beam.partial, node=beam.node)
                same.blank = _logadd(same.blank, total + p_blank)
                last = prefix[-1:] if prefix else ""
                for k in chars:
                    ch = self.alphabet[k - 1]
                    p = float(frame[k])
                    if ch == last:  # a repeat without a blank between collapses into the same prefix
                        same.char = _logadd(same.char, beam.char + p)
                        if beam.blank <= NEG:
                            continue
                        gain = beam.blank + p
                    else:
                        gain = total + p
                    if ch == " " and (not prefix or last == " "):
                        continue  # no leading or doubled spaces
                    key = prefix + ch
                    ext = nxt.get(key)
                    if ext is None:
                        ext = nxt[key] = self._extend(beam, ch)
                    ext.char = _logadd(ext.char, gain)
            ranked = sorted(nxt.items(), key=lambda kv: self._total(kv[1]), reverse=True)
            beams = dict(ranked[: o.beam])
        best = max(beams.items(), key=lambda kv: self._final(kv[1]))[0].strip()
        return self.lexicon.cased(best) if o.cased else best

    def _final(self, beam: _Beam) -> float:
        """A beam's score once its last word is finished."""
        tail = self._finished_score(beam.partial, beam.node) if beam.partial else 0.0
        return beam.acoustic() + beam.words + tail


def build_decoder(tokenizer: Any, alphabet: str, *, blank: int, max_words: int,
                  options: DecoderOptions) -> LexiconDecoder:
    """The decoder over the first `max_words` whole-word tokens of `tokenizer`."""
    return LexiconDecoder(Lexicon(whole_words(tokenizer)[:max_words]), alphabet, blank=blank, options=options)
